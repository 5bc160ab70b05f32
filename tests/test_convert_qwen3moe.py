"""Qwen3 MoE: per-expert tensors merged into GGUF's stacked expert tensors, streamed.

A tiny transformers checkpoint converts to a GGUF that llama.cpp runs like transformers; a
missing expert is one clear line; converting a wider MoE keeps peak RSS within the
converter's bound (largest tensor x 1.5 + 300 MB, a stacked expert tensor counting as the
largest), far below the model's size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")
pytest.importorskip("torch")
pytest.importorskip("transformers")

import arch_families as af  # noqa: E402
from test_convert_families import DELETE, copy_folder  # noqa: E402

from packer.convert import convert_checkpoint, inspect_checkpoint  # noqa: E402
from packer.errors import ConversionError, UnsupportedModelError  # noqa: E402

NAME = "qwen3moe"
RSS_SLACK_MB = 300.0  # as benchmarks/convert/run.py


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return af.make_arch_checkpoint(NAME, tmp_path_factory.mktemp(NAME))


@pytest.fixture(scope="module")
def converted(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return af.convert_f32(checkpoint, tmp_path_factory.mktemp(NAME + "-gguf") / "m.gguf")


def test_f32_logits_match_transformers(checkpoint: Path, converted: Path) -> None:
    af.check_logits(NAME, checkpoint, converted)


def test_token_ids_match(checkpoint: Path, converted: Path) -> None:
    af.check_token_ids(checkpoint, converted)


def test_metadata(converted: Path) -> None:
    af.check_metadata(NAME, converted)


def test_stacked_expert_tensors(checkpoint: Path, converted: Path) -> None:
    """Each stacked tensor holds the experts in order, each as stored in the checkpoint."""
    import gguf
    from safetensors.numpy import load_file

    weights = load_file(checkpoint / "model.safetensors")
    tensors = {t.name: t for t in gguf.GGUFReader(converted).tensors}
    assert not any(".experts." in name for name in tensors)
    for i in range(2):
        for kind, proj in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
            stacked = np.asarray(tensors[f"blk.{i}.ffn_{kind}_exps.weight"].data)
            assert stacked.shape[0] == 4
            for e in range(4):
                expected = weights[f"model.layers.{i}.mlp.experts.{e}.{proj}.weight"]
                np.testing.assert_array_equal(stacked[e], expected)
        router = np.asarray(tensors[f"blk.{i}.ffn_gate_inp.weight"].data)
        np.testing.assert_array_equal(router, weights[f"model.layers.{i}.mlp.gate.weight"])


def test_inspect_counts_experts(checkpoint: Path) -> None:
    from safetensors.numpy import load_file

    total = sum(t.size for t in load_file(checkpoint / "model.safetensors").values())
    # the tied lm_head is not in the file; every stored tensor counts, experts included
    assert inspect_checkpoint(checkpoint).n_params == total


def test_missing_expert_is_one_line(checkpoint: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    folder = copy_folder(checkpoint, tmp_path / "broken")
    weights = load_file(folder / "model.safetensors")
    del weights["model.layers.1.mlp.experts.3.up_proj.weight"]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConversionError) as err:
        convert_checkpoint(folder, tmp_path / "out.gguf")
    message = str(err.value)
    assert "\n" not in message
    assert "model.layers.1.mlp.experts.3.up_proj.weight" in message
    assert not (tmp_path / "out.gguf").exists()


def test_missing_expert_shard_is_one_line(checkpoint: Path, tmp_path: Path) -> None:
    """Experts split over two shards, the second one absent: the shard is named."""
    from safetensors.numpy import load_file, save_file

    folder = copy_folder(checkpoint, tmp_path / "sharded")
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    first = {k: v for k, v in weights.items() if ".experts." not in k}
    experts = {k: v for k, v in weights.items() if ".experts." in k}
    save_file(first, str(folder / "model-00001-of-00002.safetensors"))
    weight_map = {k: "model-00001-of-00002.safetensors" for k in first}
    weight_map |= {k: "model-00002-of-00002.safetensors" for k in experts}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ConversionError) as err:
        convert_checkpoint(folder, tmp_path / "out.gguf")
    assert "\n" not in str(err.value)
    assert "model-00002-of-00002.safetensors" in str(err.value)
    assert not (tmp_path / "out.gguf").exists()


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"norm_topk_prob": False}, "norm_topk_prob"),
        ({"mlp_only_layers": [1]}, "mlp_only_layers"),
        ({"num_experts_per_tok": 9}, "num_experts_per_tok"),
        ({"num_experts": DELETE, "num_local_experts": DELETE}, "num_experts"),
    ],
)
def test_refused_configs(
    changes: dict[str, object], needle: str, checkpoint: Path, tmp_path: Path
) -> None:
    folder = copy_folder(checkpoint, tmp_path / "m", **changes)
    with pytest.raises((ConversionError, UnsupportedModelError), match=needle):
        convert_checkpoint(folder, tmp_path / "out.gguf")


# Runs the conversion in a child and prints the child's own peak RSS (KiB), as
# benchmarks/convert/run.py measures it.
_MEASURE = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(proc.pid, 0)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""
_CONVERT = (
    "import sys; from packer.convert import convert_checkpoint as c; c(sys.argv[1], sys.argv[2])"
)


@pytest.mark.slow
def test_streaming_peak_rss(checkpoint: Path, tmp_path: Path) -> None:
    """6 layers x 16 experts of 1024 x 512 F32 (~600 MB of experts): peak RSS stays within
    1.5 x one stacked tensor (32 MB) + 300 MB."""
    from safetensors.numpy import save_file

    folder = tmp_path / "wide-moe"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((checkpoint / name).read_bytes())
    config = json.loads((checkpoint / "config.json").read_text())
    d, ff, layers, experts, vocab = 512, 1024, 6, 16, config["vocab_size"]
    config.update(
        hidden_size=d,
        num_hidden_layers=layers,
        num_experts=experts,
        moe_intermediate_size=ff,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
        tie_word_embeddings=True,
    )
    (folder / "config.json").write_text(json.dumps(config))
    largest = experts * ff * d * 4
    total = 0
    weight_map: dict[str, str] = {}
    for i in range(layers):  # one shard per layer, so that no writer holds the model
        p = f"model.layers.{i}."
        shapes = {
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (512, d),
            p + "self_attn.k_proj.weight": (256, d),
            p + "self_attn.v_proj.weight": (256, d),
            p + "self_attn.o_proj.weight": (d, 512),
            p + "self_attn.q_norm.weight": (64,),
            p + "self_attn.k_norm.weight": (64,),
            p + "mlp.gate.weight": (experts, d),
        }
        for e in range(experts):
            q = f"{p}mlp.experts.{e}."
            shapes |= {
                q + "gate_proj.weight": (ff, d),
                q + "up_proj.weight": (ff, d),
                q + "down_proj.weight": (d, ff),
            }
        if i == 0:
            shapes |= {"model.embed_tokens.weight": (vocab, d), "model.norm.weight": (d,)}
        shard = f"model-{i + 1:05d}-of-{layers:05d}.safetensors"
        tensors = {k: np.full(s, 0.01, dtype=np.float32) for k, s in shapes.items()}
        total += sum(t.nbytes for t in tensors.values())
        save_file(tensors, str(folder / shard))
        weight_map |= dict.fromkeys(tensors, shard)
        del tensors
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-c", _MEASURE, sys.executable, "-c", _CONVERT]
    proc = subprocess.run(
        [*cmd, str(folder), str(tmp_path / "wide.gguf")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    peak_mb = int(proc.stdout.split()[-1]) / 1024
    bound = 1.5 * largest / 1e6 + RSS_SLACK_MB
    print(f"model {total / 1e6:.0f} MB, stacked {largest / 1e6:.0f} MB, peak RSS {peak_mb:.0f} MB")
    assert peak_mb < bound
    assert peak_mb < total / 1e6


@pytest.mark.slow
def test_quantized_model_run_answers(checkpoint: Path, tmp_path: Path) -> None:
    """As test_e2e's tiny checkpoints: a Q4_K_M model.run of the MoE builds and generates."""
    from test_e2e import packer, run_clean

    from packer.runtime.payload import read_bundle

    out = tmp_path / "moe.run"
    packer("build", str(checkpoint), "--quant", "Q4_K_M", "-o", str(out))
    assert read_bundle(out).manifest.quant == "Q4_K_M"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    p = run_clean(out, "-p", "hola", "--raw", "-n", "8", "--temp", "0", cwd=elsewhere)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
