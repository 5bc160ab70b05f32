"""Which CPU variant of ggml to compute with: the best one this machine really executes.

ggml scores every ``libggml-cpu-VARIANT.so`` by the CPUID bits its instructions need
(``ggml_backend_score``) and loads the best. A CPUID bit is a promise that a hypervisor or the
operating system may not keep: a VM can advertise AVX-512 or AMX without the state enabled
(XCR0), and a variant can carry its own bugs (ggml's AMX kernels died of SIGILL on Sapphire
Rapids VMs, see build/patches/). A wrong variant kills the process with SIGILL in the middle of
an answer. So before a variant is trusted on a machine it runs a self-test in a child process:
matrix products of F32 and quantized weights (Q8_0, Q4_0, Q4_1) through every buffer type the
variant offers (its AMX and repacked kernels included), compared with the same products
computed here in numpy. If the child dies or computes wrong numbers, the next best variant is
tested, and so on. The verdict is remembered in ``<cache>/cpu/<key>.json``, keyed by the CPU
(its /proc/cpuinfo identity and flags, and the variants' scores) and the variant libraries
(names, sizes, times), so the test runs once per machine and runtime. When a variant is
passed over, one line says which one is used and why (``--verbose`` always says).
``--cpu-variant NAME`` or ``PACKER_CPU_VARIANT=NAME`` pins a variant by hand and skips the test.

The child is this runtime itself, ``--self-test-cpu LIBRARY`` (see :func:`self_test_main`).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import resource
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packer.runtime import ggml_api
from packer.runtime.atomic_write import write_json
from packer.runtime.i18n import _

log = logging.getLogger("packer.runtime.cpu_variant")

__all__ = [
    "ENV",
    "SELF_TEST_FLAG",
    "Choice",
    "VariantError",
    "choose",
    "score_variants",
    "self_test_main",
]

ENV = "PACKER_CPU_VARIANT"  # a variant name pins it; "auto" or unset: self-tested choice
SELF_TEST_FLAG = "--self-test-cpu"
CPU_PREFIX = "libggml-cpu-"
SELF_TEST_VERSION = 1  # part of the cache key: a changed test runs again
SELF_TEST_TIMEOUT = 120  # seconds; the test itself takes well under one


class VariantError(Exception):
    """No CPU variant can be used, or the pinned one cannot (one line for the user)."""


class SelfTestUnavailable(Exception):
    """The self-test's child process cannot be started here (no verdict on the variant)."""


@dataclass(frozen=True)
class Choice:
    variant: str
    why: str  # why this variant, one line
    rejected: dict[str, str] = field(default_factory=dict)  # better variants that failed, and how
    remembered: Path | None = None  # the verdict file it was read from or written to


# -- scoring ----------------------------------------------------------------------------------
def variant_name(path: Path) -> str:
    return path.name[len(CPU_PREFIX) : -len(".so")]


def score_variants(lib_dir: Path) -> dict[str, int]:
    """Each variant's ``ggml_backend_score()`` on this CPU (0: an instruction it needs is
    missing), as ggml's own loader computes it. Each library is unloaded again."""
    import _ctypes

    scores: dict[str, int] = {}
    for path in sorted(lib_dir.glob(CPU_PREFIX + "*.so")):
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as exc:
            log.debug("cannot load %s: %s", path.name, exc)
            continue
        try:
            score = lib.ggml_backend_score
            score.restype = ctypes.c_int
            scores[variant_name(path)] = int(score())
        except AttributeError:
            pass
        finally:  # only the chosen variant may stay mapped
            _ctypes.dlclose(lib._handle)
    return scores


def ranked(scores: dict[str, int]) -> list[str]:
    """The usable variants, best first."""
    return sorted((k for k, v in scores.items() if v > 0), key=lambda k: (-scores[k], k))


# -- the choice -------------------------------------------------------------------------------
def choose(
    lib_dir: Path,
    scores: dict[str, int],
    pinned: str | None = None,
    cache_dir: Path | None = None,
) -> Choice:
    """The variant to load: ``pinned`` (else $PACKER_CPU_VARIANT) if set, else the verdict
    remembered in ``cache_dir`` for this CPU and these libraries, else the best one that passes
    its self-test (remembered when ``cache_dir`` is given). Raises :class:`VariantError`."""
    candidates = ranked(scores)
    pinned = pinned or os.environ.get(ENV) or None
    if pinned and pinned != "auto":
        return _pinned(pinned, scores, candidates)
    if not candidates:
        raise VariantError(
            _("no CPU variant in {folder} supports this CPU (scores: {scores})").format(
                folder=lib_dir, scores=scores
            )
        )
    verdict = _verdict_path(cache_dir, lib_dir, scores) if cache_dir is not None else None
    remembered = _read_verdict(verdict, candidates) if verdict is not None else None
    if remembered is not None:
        return remembered
    rejected: dict[str, str] = {}
    for name in candidates:
        try:
            problem = run_self_test(lib_dir / f"{CPU_PREFIX}{name}.so")
        except SelfTestUnavailable as exc:  # says nothing about the CPU: run as ggml would
            log.warning(
                _("CPU: using the {variant} variant untested: {reason}").format(
                    variant=name, reason=exc
                )
            )
            return Choice(name, _("not self-tested: {reason}").format(reason=exc), rejected)
        if problem is None:
            break
        rejected[name] = problem
    else:
        raise VariantError(
            _(
                "no CPU variant passed its self-test on this machine ({failures}): pin one with "
                "--cpu-variant NAME or {env}=NAME"
            ).format(failures="; ".join(f"{k}: {v}" for k, v in rejected.items()), env=ENV)
        )
    if rejected:  # the one line a user sees; a variant that simply passes says nothing
        failed = "; ".join(f"{k} {v}" for k, v in rejected.items())
        why = _("the better-scored {failed}").format(failed=failed)
        log.warning(
            _("CPU: using the {variant} variant, because {failed}").format(
                variant=name, failed=failed
            )
        )
    else:
        why = _("the best for this CPU; passed its self-test")
        log.debug("CPU: the %s variant passed its self-test (remembered in %s)", name, verdict)
    choice = Choice(name, why, rejected, verdict)
    if verdict is not None:
        _write_verdict(verdict, choice)
    return choice


def _pinned(name: str, scores: dict[str, int], candidates: list[str]) -> Choice:
    if name not in scores:
        raise VariantError(
            _(
                "--cpu-variant {name}: this runtime has no such CPU variant (it has: {names})"
            ).format(name=name, names=", ".join(sorted(scores)) or _("none"))
        )
    if name not in candidates:
        raise VariantError(
            _(
                "--cpu-variant {name}: this CPU lacks instructions that variant needs (usable "
                "here: {names})"
            ).format(name=name, names=", ".join(candidates) or _("none"))
        )
    return Choice(name, _("pinned by --cpu-variant or {env}; not self-tested").format(env=ENV))


# -- the remembered verdict -------------------------------------------------------------------
def cpu_identity() -> dict[str, str]:
    """The first processor's identity and flags from /proc/cpuinfo (the flags are the ones the
    kernel enabled: a VM that hides AMX state has no amx_tile there)."""
    keep = ("vendor_id", "cpu family", "model", "model name", "stepping", "flags")
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return {}
    fields = (ln.split(":", 1) for ln in text.split("\n\n", 1)[0].splitlines() if ":" in ln)
    return {k.strip(): " ".join(v.split()) for k, v in fields if k.strip() in keep}


def _verdict_path(cache_dir: Path, lib_dir: Path, scores: dict[str, int]) -> Path:
    """The verdict's file: one per CPU (as the kernel and as CPUID describe it: the scores; a
    CPU emulated by qemu-user shows the host's /proc/cpuinfo) and set of libraries."""
    stats = {p.name: p.stat() for p in sorted(lib_dir.glob("libggml*.so"))}
    key = {
        "cpu": cpu_identity(),
        "scores": scores,
        "libraries": {name: [st.st_size, st.st_mtime_ns] for name, st in stats.items()},
        "self_test": SELF_TEST_VERSION,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / "cpu" / f"{digest}.json"


def _read_verdict(path: Path, candidates: list[str]) -> Choice | None:
    try:
        data = json.loads(path.read_text())
        variant, why = str(data["variant"]), str(data["why"])
        rejected = {str(k): str(v) for k, v in dict(data.get("rejected", {})).items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None  # none yet, or unreadable: test again
    if variant not in candidates:
        return None
    return Choice(
        variant, _("{why} (remembered in {path})").format(why=why, path=path), rejected, path
    )


def _write_verdict(path: Path, choice: Choice) -> None:
    """Atomically; a cache that cannot be written only means testing again next time."""
    data = {
        "variant": choice.variant,
        "why": choice.why,
        "rejected": choice.rejected,
        "cpu": cpu_identity().get("model name", "unknown"),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, data, indent=1)
    except OSError as exc:
        log.debug("cannot remember the CPU variant in %s: %s", path, exc)


# -- the self-test, parent side ---------------------------------------------------------------
def self_test_command(library: Path) -> list[str]:
    """This runtime, in self-test mode: the frozen executable itself, or ``python -m packer.runtime``."""
    me = (
        [sys.executable]
        if getattr(sys, "frozen", False)
        else [sys.executable, "-m", "packer.runtime"]
    )
    return [*me, SELF_TEST_FLAG, str(library)]


def run_self_test(library: Path, timeout: float = SELF_TEST_TIMEOUT) -> str | None:
    """None when ``library`` passes its self-test in a child process, else what went wrong.
    Raises :class:`SelfTestUnavailable` when no child process can be started."""
    command = self_test_command(library)
    try:
        proc = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return _("did not finish its self-test in {seconds:.0f} s").format(seconds=timeout)
    except OSError as exc:
        raise SelfTestUnavailable(
            _("cannot start {program}: {reason}").format(program=command[0], reason=exc)
        ) from exc
    log.debug("self-test of %s: rc %s, %s", library.name, proc.returncode, proc.stdout.strip())
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode)
        return _("died of {signal} ({description}) in its self-test").format(
            signal=sig.name, description=signal.strsignal(sig) or "signal"
        )
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        last = lines[-1] if lines else _("exit code {code}").format(code=proc.returncode)
        return _("failed its self-test: {reason}").format(reason=last)
    return None


# -- the self-test, child side ----------------------------------------------------------------
GGML_F32, GGML_Q4_0, GGML_Q4_1, GGML_Q8_0 = 0, 2, 3, 8  # enum ggml_type
QK = 32  # values per Q4_0 / Q4_1 / Q8_0 block
K, N = 256, 64  # weight columns (the dot-product length) and rows: AMX-sized (N % 32, K % 32)
BATCHES = (1, 5, 32)  # activation rows: the one-token path, a ragged block, whole AMX tiles
TOLERANCE = {GGML_F32: 1e-4, GGML_Q4_0: 0.02, GGML_Q4_1: 0.02, GGML_Q8_0: 0.02}  # allowed:
# ggml quantizes the activations to 8 bits for quantized weights; a broken kernel is off by ~1


def _quantize(w: Any, qtype: int) -> tuple[bytes, Any]:
    """Our own Q8_0 / Q4_0 / Q4_1 encoding of ``w`` (rows of K floats), and the values it
    decodes to. (The K-quants' nested scales are not written here: their AMX kernels share the
    tile set-up and the activation path with these.)"""
    import numpy as np

    blocks = w.reshape(-1, QK).astype(np.float32)
    if qtype == GGML_F32:
        return w.astype(np.float32).tobytes(), w.astype(np.float64)
    if qtype == GGML_Q8_0:
        d = np.abs(blocks).max(axis=1) / 127
        q = np.round(blocks / np.where(d == 0, 1, d)[:, None]).astype(np.int8)
        d16 = d.astype(np.float16)
        raw = np.empty((len(blocks), 34), dtype=np.uint8)
        raw[:, :2] = d16.view(np.uint8).reshape(-1, 2)
        raw[:, 2:] = q.view(np.uint8)
        values = q.astype(np.float64) * d16.astype(np.float64)[:, None]
    elif qtype == GGML_Q4_1:  # codes 0..15 from the block's minimum m in steps of d
        lo, hi = blocks.min(axis=1), blocks.max(axis=1)
        d = (hi - lo) / 15
        inv = np.where(d == 0, 0, 1 / np.where(d == 0, 1, d))
        q = np.clip(np.round((blocks - lo[:, None]) * inv[:, None]), 0, 15).astype(np.uint8)
        d16, m16 = d.astype(np.float16), lo.astype(np.float16)
        raw = np.empty((len(blocks), 20), dtype=np.uint8)
        raw[:, :2] = d16.view(np.uint8).reshape(-1, 2)
        raw[:, 2:4] = m16.view(np.uint8).reshape(-1, 2)
        raw[:, 4:] = q[:, : QK // 2] | (q[:, QK // 2 :] << 4)
        values = q * d16.astype(np.float64)[:, None] + m16.astype(np.float64)[:, None]
    else:  # Q4_0: d = -(the value of largest magnitude) / 8, codes 0..15 around 8
        idx = np.abs(blocks).argmax(axis=1)
        d = blocks[np.arange(len(blocks)), idx] / -8
        inv = np.where(d == 0, 0, 1 / np.where(d == 0, 1, d))
        q = np.clip(np.floor(blocks * inv[:, None] + 8.5), 0, 15).astype(np.uint8)
        d16 = d.astype(np.float16)
        raw = np.empty((len(blocks), 18), dtype=np.uint8)
        raw[:, :2] = d16.view(np.uint8).reshape(-1, 2)
        raw[:, 2:] = q[:, : QK // 2] | (q[:, QK // 2 :] << 4)
        values = (q.astype(np.float64) - 8) * d16.astype(np.float64)[:, None]
    return raw.tobytes(), values.reshape(w.shape)


def _buffer_types(g: Any, reg: int, dev: int) -> list[tuple[str, int]]:
    """The device's plain buffer type, then its extra ones (AMX, repacked weights)."""
    out = [("CPU", g.backend_dev_buffer_type(dev))]
    addr = g.backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
    if addr:
        get = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(addr)
        extra = get(dev)
        k = 0
        while extra and extra[k]:
            out.append(((g.backend_buft_name(extra[k]) or b"?").decode(), extra[k]))
            k += 1
    return out


def _product(
    g: Any, backend: int, dev: int, buft: int, qtype: int, m: int, rng: Any
) -> float | None:
    """ggml's product of N weight rows (stored in ``buft`` as ``qtype``) with ``m`` activation
    rows; the relative error against numpy, or None when this buffer type does not take it."""
    import numpy as np

    w = rng.standard_normal((N, K)).astype(np.float32)
    x = rng.standard_normal((m, K)).astype(np.float32)
    raw, w_values = _quantize(w, qtype)
    size = g.tensor_overhead() * 4 + g.graph_overhead()
    ctx_w = g.init(ggml_api.InitParams(size, None, True))
    ctx = g.init(ggml_api.InitParams(size, None, True))
    buffers = []
    try:
        wt = g.new_tensor_2d(ctx_w, qtype, K, N)
        buffers.append(g.backend_alloc_ctx_tensors_from_buft(ctx_w, buft))
        xt = g.new_tensor_2d(ctx, GGML_F32, K, m)
        yt = g.mul_mat(ctx, wt, xt)
        if not buffers[0] or not g.backend_dev_supports_op(dev, yt):
            return None
        buffers.append(g.backend_alloc_ctx_tensors(ctx, backend))
        g.backend_tensor_set(wt, raw, 0, len(raw))
        g.backend_tensor_set(xt, x.tobytes(), 0, x.nbytes)
        graph = g.new_graph(ctx)
        g.build_forward_expand(graph, yt)
        status = g.backend_graph_compute(backend, graph)
        if status != 0:
            raise RuntimeError(f"ggml_backend_graph_compute returned {status}")
        y = np.empty((m, N), dtype=np.float32)
        g.backend_tensor_get(yt, y.ctypes.data, 0, y.nbytes)
    finally:
        for buf in buffers:
            if buf:
                g.backend_buffer_free(buf)
        g.free(ctx)
        g.free(ctx_w)
    expected = x.astype(np.float64) @ w_values.T
    if not np.isfinite(y).all():
        return float("inf")
    return float(np.linalg.norm(y - expected) / np.linalg.norm(expected))


def self_test(library: Path) -> list[str]:
    """Load ``library`` as ggml's CPU backend and check its products; the failures (empty: it
    passed). A fault in the library kills this process, which is why it runs in a child."""
    import llama_cpp.llama_cpp as llama_lib
    import numpy as np

    g = ggml_api.bind(llama_lib._lib)
    reg = g.backend_load(str(library).encode())
    if not reg:
        return [f"{library.name} did not initialise as a ggml backend"]
    dev = g.backend_reg_dev_get(reg, 0)
    backend = g.backend_dev_init(dev, None)
    if not backend:
        return [f"{library.name}: no CPU backend could be created"]
    rng = np.random.default_rng(20)
    failures, checked = [], []
    for buft_name, buft in _buffer_types(g, reg, dev):
        for qtype, qname in (
            (GGML_F32, "F32"),
            (GGML_Q8_0, "Q8_0"),
            (GGML_Q4_0, "Q4_0"),
            (GGML_Q4_1, "Q4_1"),
        ):
            for m in BATCHES:
                what = f"{buft_name} {qname} x{m}"
                error = _product(g, backend, dev, buft, qtype, m, rng)
                if error is None:
                    continue
                checked.append(what)
                if not error <= TOLERANCE[qtype]:
                    failures.append(f"{what}: wrong result (relative error {error:.3g})")
    print(json.dumps({"library": library.name, "checked": checked}))
    return failures


def self_test_main(argv: list[str]) -> int:
    """``runtime --self-test-cpu LIBRARY``: exit 0 when the variant computes right."""
    if len(argv) != 1:
        print(f"usage: {SELF_TEST_FLAG} LIBRARY", file=sys.stderr)
        return 2
    # a variant dying of SIGILL here is an expected answer, not a crash worth a core file
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        failures = self_test(Path(argv[0]))
    except Exception as exc:  # a missing symbol, a refused graph: the variant is unusable
        failures = [f"{type(exc).__name__}: {exc}"]
    for line in failures:
        print(line, file=sys.stderr)
    sys.stdout.flush()
    return 1 if failures else 0
