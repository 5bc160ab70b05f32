"""Issue #19's generation architectures as a user gets them: a quantized model.run answers.

Qwen3 MoE and the multimodal Gemma 3 are built in their own test files (with their own
checks); here OLMo 2, Granite and SmolLM3 from their tiny synthetic checkpoints
(tests/arch_families.py) are built at Q8_0 and run `-p` in an empty environment elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("gguf")
pytest.importorskip("torch")
pytest.importorskip("transformers")

import arch_families as af  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("name", ["olmo2", "granite", "smollm3"])
def test_quantized_model_run_answers(name: str, tmp_path: Path) -> None:
    from test_e2e import packer, run_clean

    from packer.runtime.payload import read_bundle

    checkpoint = af.make_arch_checkpoint(name, tmp_path)
    out = tmp_path / f"{name}.run"
    packer("build", str(checkpoint), "--quant", "Q8_0", "-o", str(out))
    assert read_bundle(out).manifest.quant == "Q8_0"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    p = run_clean(out, "-p", "hola", "--raw", "-n", "8", "--temp", "0", cwd=elsewhere)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    assert p.stdout.strip(), p.stderr
