"""The CPU variant: self-tested before it is trusted, the fallback when one faults, pinning.

Fast tests cover the choice with a stand-in self-test (no child process); the slow ones run the
real self-test children: every variant this CPU can run passes it, and a stand-in variant
library that dies of SIGILL as soon as ggml initialises it (what an AMX or AVX-512 variant does
on a VM that advertises instructions it does not enable) is replaced by the next best variant,
with one line saying so, and the verdict is remembered.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from packer.runtime import cpu_variant
from packer.runtime.cpu_variant import VariantError, choose

ROOT = Path(__file__).resolve().parents[1]
SCORES = {"x64": 1, "sse42": 5, "haswell": 60, "icelake": 300, "sapphirerapids": 0}


def _libs(folder: Path, names: list[str]) -> Path:
    """A library folder of empty stand-ins: enough for the verdict's cache key."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"libggml-cpu-{name}.so").write_bytes(b"\0" * (len(name) + 1))
    return folder


@pytest.fixture
def no_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cpu_variant.ENV, raising=False)


def _fake_tests(monkeypatch: pytest.MonkeyPatch, results: dict[str, str | None]) -> list[str]:
    """Stand in for the child process: ``results`` says how each variant's self-test ends."""
    ran: list[str] = []

    def run(library: Path, timeout: float = 0) -> str | None:
        name = cpu_variant.variant_name(library)
        ran.append(name)
        return results.get(name)

    monkeypatch.setattr(cpu_variant, "run_self_test", run)
    return ran


# -- fast: the choice --------------------------------------------------------------------------
def test_ranked_best_first_without_unusable() -> None:
    assert cpu_variant.ranked(SCORES) == ["icelake", "haswell", "sse42", "x64"]


def test_best_variant_that_passes_is_chosen_and_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, no_pin: None
) -> None:
    libs = _libs(tmp_path / "lib", list(SCORES))
    ran = _fake_tests(monkeypatch, {})
    with caplog.at_level(logging.INFO, logger="packer.runtime"):
        choice = choose(libs, SCORES, cache_dir=tmp_path / "cache")
    assert choice.variant == "icelake" and not choice.rejected and ran == ["icelake"]
    assert "passed its self-test" in choice.why
    verdicts = list((tmp_path / "cache" / "cpu").glob("*.json"))
    assert verdicts == [choice.remembered]
    assert json.loads(verdicts[0].read_text())["variant"] == "icelake"
    assert not caplog.records  # a variant that simply passes says nothing


def test_faulting_variant_falls_back_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, no_pin: None
) -> None:
    libs = _libs(tmp_path / "lib", list(SCORES))
    sigill = "died of SIGILL (Illegal instruction) in its self-test"
    ran = _fake_tests(monkeypatch, {"icelake": sigill})
    with caplog.at_level(logging.INFO, logger="packer.runtime"):
        choice = choose(libs, SCORES, cache_dir=tmp_path / "cache")
    assert ran == ["icelake", "haswell"]
    assert choice.variant == "haswell" and choice.rejected == {"icelake": sigill}
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"CPU: using the haswell variant, because icelake {sigill}"]
    saved = json.loads(choice.remembered.read_text())  # type: ignore[union-attr]
    assert saved["variant"] == "haswell" and saved["rejected"] == {"icelake": sigill}


def test_remembered_verdict_skips_the_self_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_pin: None
) -> None:
    libs = _libs(tmp_path / "lib", list(SCORES))
    _fake_tests(monkeypatch, {"icelake": "died of SIGILL (Illegal instruction) in its self-test"})
    first = choose(libs, SCORES, cache_dir=tmp_path / "cache")
    ran = _fake_tests(monkeypatch, {})
    again = choose(libs, SCORES, cache_dir=tmp_path / "cache")
    assert ran == [] and again.variant == first.variant == "haswell"
    assert again.rejected == first.rejected and "remembered in" in again.why
    # other libraries (a new runtime) or another CPU: a new key, so the test runs again
    (libs / "libggml-cpu-icelake.so").write_bytes(b"rebuilt, another size")
    os.utime(libs / "libggml-cpu-x64.so", ns=(0, 10**18))  # the same size, rebuilt later
    assert choose(libs, SCORES, cache_dir=tmp_path / "cache").variant == "icelake"
    assert ran == ["icelake"]
    os.utime(libs / "libggml-cpu-icelake.so", ns=(0, 10**17))  # unpacked again: tested again
    assert choose(libs, SCORES, cache_dir=tmp_path / "cache").variant == "icelake"
    assert ran == ["icelake", "icelake"]
    ran.clear()
    emulated = {**SCORES, "icelake": 0, "haswell": 0}  # e.g. qemu-user -cpu Nehalem
    assert choose(libs, emulated, cache_dir=tmp_path / "cache").variant == "sse42"
    assert choose(libs, SCORES, cache_dir=tmp_path / "cache").variant == "icelake"
    assert ran == ["sse42"]


def test_unreadable_or_stale_verdict_is_tested_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_pin: None
) -> None:
    libs = _libs(tmp_path / "lib", list(SCORES))
    ran = _fake_tests(monkeypatch, {})
    path = cpu_variant._verdict_path(tmp_path / "cache", libs, SCORES)
    path.parent.mkdir(parents=True)
    for content in ("{not json", json.dumps({"variant": "nosuch", "why": "x"})):
        path.write_text(content)
        assert choose(libs, SCORES, cache_dir=tmp_path / "cache").variant == "icelake"
    assert ran == ["icelake", "icelake"]


def test_no_cache_folder_tests_every_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_pin: None
) -> None:
    libs = _libs(tmp_path / "lib", list(SCORES))
    ran = _fake_tests(monkeypatch, {})
    assert choose(libs, SCORES).remembered is None
    choose(libs, SCORES)
    assert ran == ["icelake", "icelake"]


def test_every_variant_failing_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_pin: None
) -> None:
    libs = _libs(tmp_path / "lib", list(SCORES))
    _fake_tests(monkeypatch, {k: "died of SIGILL (Illegal instruction)" for k in SCORES})
    with pytest.raises(VariantError, match="no CPU variant passed its self-test") as exc:
        choose(libs, SCORES, cache_dir=tmp_path / "cache")
    assert "--cpu-variant NAME" in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "cache" / "cpu").exists()  # nothing remembered


def test_no_child_process_runs_the_best_variant_untested(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, no_pin: None
) -> None:
    """A sandbox that forbids starting processes says nothing about the CPU: ggml's own choice
    is used, with one line, and nothing is remembered."""

    def cannot(library: Path, timeout: float = 0) -> str | None:
        raise cpu_variant.SelfTestUnavailable("cannot start python: [Errno 1] no")

    monkeypatch.setattr(cpu_variant, "run_self_test", cannot)
    libs = _libs(tmp_path / "lib", list(SCORES))
    with caplog.at_level(logging.INFO, logger="packer.runtime"):
        choice = choose(libs, SCORES, cache_dir=tmp_path / "cache")
    assert choice.variant == "icelake" and "not self-tested" in choice.why
    assert [r.getMessage() for r in caplog.records] == [
        "CPU: using the icelake variant untested: cannot start python: [Errno 1] no"
    ]
    assert not (tmp_path / "cache" / "cpu").exists()


def test_pinned_variant_skips_the_self_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_pin: None
) -> None:
    libs = _libs(tmp_path / "lib", list(SCORES))
    ran = _fake_tests(monkeypatch, {})
    assert choose(libs, SCORES, pinned="sse42", cache_dir=tmp_path).variant == "sse42"
    monkeypatch.setenv(cpu_variant.ENV, "haswell")
    assert choose(libs, SCORES, cache_dir=tmp_path).variant == "haswell"
    assert choose(libs, SCORES, pinned="x64").variant == "x64"  # the flag beats the variable
    monkeypatch.setenv(cpu_variant.ENV, "auto")
    assert choose(libs, SCORES).variant == "icelake"
    assert ran == ["icelake"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nosuch", "this runtime has no such CPU variant (it has: haswell, icelake, sapphi"),
        ("sapphirerapids", "this CPU lacks instructions that variant needs (usable here: ice"),
    ],
)
def test_pinned_variant_that_cannot_run_is_refused(
    tmp_path: Path, name: str, message: str, no_pin: None
) -> None:
    with pytest.raises(VariantError, match=r"^--cpu-variant " + name) as exc:
        choose(_libs(tmp_path, list(SCORES)), SCORES, pinned=name)
    assert message in str(exc.value)


def test_cpu_identity_reads_this_machine() -> None:
    ident = cpu_variant.cpu_identity()
    assert ident.get("flags") and "model name" in ident


# -- fast: our own quantized encodings, the self-test's yardstick ------------------------------
@pytest.mark.parametrize(
    ("qtype", "block_bytes", "error"),
    [
        (cpu_variant.GGML_Q8_0, 34, 0.01),
        (cpu_variant.GGML_Q4_0, 18, 0.15),
        (cpu_variant.GGML_Q4_1, 20, 0.12),
    ],
)
def test_quantized_encoding_decodes_close_to_the_input(
    qtype: int, block_bytes: int, error: float
) -> None:
    w = np.random.default_rng(1).standard_normal((4, 256)).astype(np.float32)
    raw, values = cpu_variant._quantize(w, qtype)
    assert len(raw) == 4 * 256 // 32 * block_bytes and values.shape == w.shape
    assert np.linalg.norm(values - w) / np.linalg.norm(w) < error


# -- slow: the real children -------------------------------------------------------------------
def _lib_dir() -> Path:
    llama_cpp = pytest.importorskip("llama_cpp")
    from packer.runtime.backend import _library_dir

    folder = _library_dir(Path(llama_cpp.__file__).parent)
    if not list(folder.glob("libggml-cpu-*.so")):
        pytest.skip("a llama-cpp-python wheel without CPU variants")
    return folder


@pytest.mark.slow
def test_every_usable_variant_passes_its_self_test() -> None:
    """Each variant this CPU can run computes the products right in a child process, its extra
    buffer types (repacked weights; AMX where the CPU has it) included."""
    lib_dir = _lib_dir()
    usable = cpu_variant.ranked(cpu_variant.score_variants(lib_dir))
    assert usable
    for name in usable:
        library = lib_dir / f"libggml-cpu-{name}.so"
        proc = subprocess.run(
            cpu_variant.self_test_command(library), capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, (name, proc.stderr[-2000:])
        checked = json.loads(proc.stdout.strip().splitlines()[-1])["checked"]
        print(name, checked)
        assert {"CPU F32 x32", "CPU Q8_0 x1", "CPU Q8_0 x32", "CPU Q4_0 x5", "CPU Q4_1 x32"} <= set(
            checked
        )


FAULTY_VARIANT = """
int ggml_backend_score(void) { return 1 << 30; }           /* the best on paper */
void *ggml_backend_init(void) { __builtin_trap(); return 0; } /* ud2: SIGILL */
"""


@pytest.mark.slow
def test_variant_dying_of_sigill_falls_back_to_the_next_best(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, no_pin: None
) -> None:
    """A stand-in variant library scores above every real one and dies of SIGILL when ggml
    initialises it: its self-test child dies, the best real variant is chosen with one warning
    line, the verdict is remembered, and a second choice runs no child at all."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the stand-in variant library")
    real = _lib_dir()
    libs = tmp_path / "lib"
    libs.mkdir()
    for lib in real.iterdir():
        (libs / lib.name).symlink_to(lib)
    source = tmp_path / "faulty.c"
    source.write_text(FAULTY_VARIANT)
    subprocess.run(
        [cc, "-shared", "-fPIC", "-O1", "-o", str(libs / "libggml-cpu-zz_faulty.so"), str(source)],
        check=True,
    )
    scores = cpu_variant.score_variants(libs)
    best_real = cpu_variant.ranked(cpu_variant.score_variants(real))[0]
    assert cpu_variant.ranked(scores)[:2] == ["zz_faulty", best_real]

    with caplog.at_level(logging.INFO, logger="packer.runtime"):
        choice = choose(libs, scores, cache_dir=tmp_path / "cache")
    assert choice.variant == best_real
    assert choice.rejected == {"zz_faulty": "died of SIGILL (Illegal instruction) in its self-test"}
    notices = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert notices == [
        f"CPU: using the {best_real} variant, because zz_faulty died of SIGILL "
        "(Illegal instruction) in its self-test"
    ]
    assert not list(tmp_path.glob("core*")) and not list(Path.cwd().glob("core.*"))

    def no_child(*args: object, **kw: object) -> None:
        raise AssertionError("the remembered verdict must be used")

    import packer.runtime.cpu_variant as mod

    saved, mod.run_self_test = mod.run_self_test, no_child  # type: ignore[assignment]
    try:
        again = choose(libs, scores, cache_dir=tmp_path / "cache")
    finally:
        mod.run_self_test = saved
    assert again.variant == best_real and again.rejected == choice.rejected


def _runtime(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "packer.runtime", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, **env},
    )


@pytest.mark.slow
def test_runtime_pins_a_variant_by_flag_or_environment(tmp_path: Path) -> None:
    from conftest import smollm_gguf_path

    _lib_dir()
    gguf = str(smollm_gguf_path())
    env = {"PACKER_CACHE": str(tmp_path / "cache"), cpu_variant.ENV: ""}
    info = ("--gguf", gguf, "--info", "--verbose", "--gpu", "cpu")
    pinned = _runtime(*info, "--cpu-variant", "x64", env=env)
    assert pinned.returncode == 0, pinned.stderr
    backend = json.loads(pinned.stdout)["backend"]
    assert backend["cpu_variant"] == "x64" and "pinned" in backend["cpu_variant_why"]
    by_env = _runtime(*info, env={**env, cpu_variant.ENV: "sse42"})
    assert json.loads(by_env.stdout)["backend"]["cpu_variant"] == "sse42"
    assert not (tmp_path / "cache" / "cpu").exists()  # pinned: no self-test, nothing remembered

    chosen = _runtime(*info, env=env)
    backend = json.loads(chosen.stdout)["backend"]
    assert "passed its self-test" in backend["cpu_variant_why"]
    assert len(list((tmp_path / "cache" / "cpu").glob("*.json"))) == 1

    bad = _runtime("--gguf", gguf, "-p", "hi", "--gpu", "cpu", "--cpu-variant", "nosuch", env=env)
    assert bad.returncode == 1 and bad.stdout == ""
    lines = bad.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and "--cpu-variant nosuch: this runtime has no such CPU variant" in lines[0]
    )
