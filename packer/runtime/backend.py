"""Which ggml backends the runtime computes with: the CPU variant, and a GPU if there is one.

The llama-cpp-python wheel (build/llama-wheel.sh) is built with ``GGML_BACKEND_DL``: every
backend is its own library in ``llama_cpp/lib`` (frozen: ``_internal/llama_cpp/lib``), one
``libggml-cpu-VARIANT.so`` per x86-64 instruction-set level plus ``libggml-vulkan.so`` (and
``libggml-cuda.so`` in the cuda flavour). Nothing is registered when ``llama_cpp`` is imported;
``Llama()`` then calls ``llama_backend_init()``, which runs ggml's default loader
``ggml_backend_load_all()`` when no backend is registered yet. That loader dlopen()s every
``libggml-*.so`` in the executable's folder and in the *working directory* (and
``$GGML_BACKEND_PATH``): it must never run, or a library planted in the folder a user runs
model.run from would execute as that user. So :func:`load_backends` registers the backends by
absolute path from the runtime's own folder, through ggml's registry (``ggml_backend_load``),
before any model is created, and fails rather than leave the registry empty; llama.cpp then
skips its loader (tests/test_backend_isolation.py plants such libraries):

* GPU backends, preferred in the order CUDA, Vulkan. One that cannot be loaded (no
  ``libvulkan.so.1``, no driver) or finds no device is noted, not fatal: the CPU remains.
  Only the wanted GPU backend is loaded, so two backends never split one GPU between them.
  (ggml's Vulkan backend ignores CPU "devices" such as Mesa's lavapipe unless
  ``GGML_VK_VISIBLE_DEVICES`` names them.)
* The CPU: every ``libggml-cpu-*.so`` is scored with its own ``ggml_backend_score()`` (0 = this
  CPU lacks an instruction the variant needs, higher = more features used), as ggml does, and
  the best one that passes its self-test on this machine is registered, or the one pinned with
  ``--cpu-variant`` / ``PACKER_CPU_VARIANT`` (:mod:`packer.runtime.cpu_variant`).

A wheel built without ``GGML_BACKEND_DL`` (backends linked in) is reported as such and works.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from packer.runtime import cpu_variant, ggml_api
from packer.runtime.gpu_layers import auto_gpu_layers, read_layout
from packer.runtime.i18n import _

__all__ = [
    "GPU_CHOICES",
    "BackendError",
    "Backends",
    "Device",
    "Placement",
    "choose",
    "load_backends",
    "parse_gpu_layers",
]

log = logging.getLogger("packer.runtime.backend")

GPU_CHOICES = ("auto", "cpu", "vulkan", "cuda")
GPU_PREFERENCE = ("cuda", "vulkan")  # --gpu auto tries these in order
REGISTRY_NAMES = {"cuda": "CUDA", "vulkan": "Vulkan"}  # our flag -> ggml's backend name


class BackendError(Exception):
    """The requested backend cannot be used (one line for the user)."""


@dataclass(frozen=True)
class Device:
    backend: str  # ggml's backend name: "CPU", "Vulkan", "CUDA"
    name: str  # "CPU", "Vulkan0", "CUDA0"
    description: str
    kind: str  # "cpu", "gpu", "igpu", "accel"
    free: int  # bytes
    total: int

    @property
    def is_gpu(self) -> bool:
        return self.kind in ggml_api.GPU_KINDS


@dataclass
class Backends:
    """What was loaded, and what could not be."""

    lib_dir: str | None  # where the backend libraries were loaded from
    dynamic: bool  # False: a wheel with the backends linked in (no GGML_BACKEND_DL)
    cpu_variant: str | None  # "haswell", ...; None when not dynamic
    cpu_scores: dict[str, int] = field(default_factory=dict)  # variant -> score (0 = unusable)
    cpu_choice: str = ""  # why that variant (runtime.cpu_variant.Choice.why)
    devices: list[Device] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)  # gpu backend -> why it is unusable

    def gpus(self, backend: str | None = None) -> list[Device]:
        wanted = REGISTRY_NAMES.get(backend or "", backend)
        return [d for d in self.devices if d.is_gpu and (wanted is None or d.backend == wanted)]


@dataclass(frozen=True)
class Placement:
    """Where the model runs, and why."""

    backend: str  # "cpu", "vulkan", "cuda"
    device: Device | None
    n_gpu_layers: int
    reason: str

    def describe(self) -> str:
        where = f"{self.device.name} ({self.device.description})" if self.device else _("the CPU")
        return _("{where}, {n} layers offloaded: {reason}").format(
            where=where, n=self.n_gpu_layers, reason=self.reason
        )


# -- flags -------------------------------------------------------------------------------------
def parse_gpu_layers(text: str) -> int | str:
    """``-ngl``: a layer count or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        raise ValueError(
            _("expected a number of layers or 'auto', not {value!r}").format(value=text)
        ) from None
    if n < 0:
        raise ValueError(_("the number of layers must be 0 or more, not {n}").format(n=n))
    return n


# -- loading -----------------------------------------------------------------------------------
_loaded: Backends | None = None


def load_backends(
    gpu: str = "auto",
    verbose: bool = False,
    cpu: str | None = None,
    cache_dir: Path | None = None,
) -> Backends:
    """Register the backends for ``--gpu gpu`` in ggml (once per process; later calls return
    the first result). ``cpu`` pins a CPU variant (else $PACKER_CPU_VARIANT, else the best that
    passes its self-test, remembered in ``cache_dir``, by default the user's cache folder).
    Raises :class:`BackendError` when no CPU backend can be loaded."""
    global _loaded
    if _loaded is not None:
        return _loaded
    if gpu not in GPU_CHOICES:
        raise BackendError(
            _("--gpu must be one of {choices}, not {value!r}").format(
                choices=", ".join(GPU_CHOICES), value=gpu
            )
        )
    try:
        import llama_cpp  # noqa: F401  (installs llama-cpp-python's log callback)
        import llama_cpp.llama_cpp as llama_lib
    except (OSError, RuntimeError) as exc:  # llama_cpp raises RuntimeError when dlopen fails
        raise BackendError(_load_failure(str(exc))) from exc

    # before the first ggml message: llama-cpp-python prints all of them until Llama() sets this
    logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if verbose else logging.ERROR)
    api = _Ggml(llama_lib._lib)  # dlsym on libllama also finds libggml's symbols (its dependency)
    if api.reg_count() > 0:  # backends linked in: nothing to load
        result = Backends(lib_dir=None, dynamic=False, cpu_variant=None)
        for name in GPU_PREFERENCE:
            result.problems[name] = _no_backend(name)
    else:
        lib_dir = _library_dir(Path(llama_lib.__file__).parent)
        result = Backends(lib_dir=str(lib_dir), dynamic=True, cpu_variant=None)
        wanted = () if gpu == "cpu" else GPU_PREFERENCE if gpu == "auto" else (gpu,)
        for name in wanted:
            problem = _load_gpu(api, lib_dir, name)
            if problem is None and gpu == "auto":
                break  # one GPU backend only: two would split the same GPU between them
            if problem is not None:
                result.problems[name] = problem
        result.cpu_scores = cpu_variant.score_variants(lib_dir)
        choice = _load_cpu(api, lib_dir, result.cpu_scores, cpu, cache_dir)
        result.cpu_variant, result.cpu_choice = choice.variant, choice.why
    result.devices = api.devices()
    _loaded = result
    return result


def _library_dir(package_lib: Path) -> Path:
    """The folder holding libggml-*.so: llama_cpp/lib, unfrozen and frozen alike."""
    candidates = [package_lib / "lib"]
    meipass = getattr(sys, "_MEIPASS", None)
    if meipass:
        candidates += [Path(meipass) / "llama_cpp" / "lib", Path(meipass)]
    for folder in candidates:
        if any(folder.glob("libggml-cpu*.so")):
            return folder
    raise BackendError(
        _(
            "no CPU backend (libggml-cpu-*.so) in {folder}: this runtime is incomplete, "
            "rebuild it with build/llama-wheel.sh"
        ).format(folder=candidates[0])
    )


def _no_backend(name: str) -> str:
    """Why a GPU backend this runtime was built without is unusable (not a problem here)."""
    return _("this runtime has no {backend} backend").format(backend=REGISTRY_NAMES[name])


def _load_gpu(api: _Ggml, lib_dir: Path, name: str) -> str | None:
    """Load one GPU backend; None when it has a usable device, else why it is unusable."""
    label = REGISTRY_NAMES[name]
    path = lib_dir / f"libggml-{name}.so"
    if not path.is_file():
        return _no_backend(name)
    try:  # dlopen it ourselves first: ggml would print the loader's error, we want it as text
        ctypes.CDLL(str(path))
    except OSError as exc:
        return _("cannot load {library}: {reason}").format(
            library=path.name, reason=_loader_error(exc)
        )
    reg = api.load(path)
    if not reg:
        return _("{library} did not initialise").format(library=path.name)
    if not any(d.backend == label and d.is_gpu for d in api.devices()):
        return _no_device(name)
    return None


def _no_device(name: str) -> str:
    return _("no {backend} device found").format(backend=REGISTRY_NAMES[name])


def _load_cpu(
    api: _Ggml,
    lib_dir: Path,
    scores: dict[str, int],
    pinned: str | None,
    cache_dir: Path | None,
) -> cpu_variant.Choice:
    """Choose the CPU variant (:func:`packer.runtime.cpu_variant.choose`) and register it."""
    single = lib_dir / "libggml-cpu.so"  # a build without GGML_CPU_ALL_VARIANTS: nothing to choose
    if not scores and single.is_file():
        if not api.load(single):
            raise BackendError(_("cannot load the CPU backend {path}").format(path=single))
        return cpu_variant.Choice("base", _("the only CPU backend in this runtime"))
    if cache_dir is None:  # none at all: the self-test runs at every start
        from packer.runtime.cache import optional_cache_dir

        cache_dir = optional_cache_dir()
    try:
        choice = cpu_variant.choose(lib_dir, scores, pinned, cache_dir)
    except cpu_variant.VariantError as exc:
        raise BackendError(str(exc)) from None
    path = lib_dir / f"{cpu_variant.CPU_PREFIX}{choice.variant}.so"
    if not api.load(path):
        raise BackendError(_("cannot load the CPU backend {path}").format(path=path))
    return choice


def _load_failure(message: str) -> str:
    """What to tell the user when llama.cpp itself (libllama.so) cannot be loaded."""
    if "libstdc++" in message or "GLIBCXX" in message or "libgcc_s" in message:
        return _(
            "this machine's C++ runtime is missing or older than GCC 10's (libstdc++ with "
            "GLIBCXX_3.4.28, as in Debian 11 / Ubuntu 20.04): install or update libstdc++6 "
            "(Debian/Ubuntu) or libstdc++ (Fedora/RHEL) ({message})"
        ).format(message=message)
    return _("cannot load llama.cpp: {message}").format(message=message)


def _loader_error(exc: OSError) -> str:
    """dlopen's message without the library path it starts with. A frozen runtime's ctypes
    (PyInstaller) replaces it with a guess ("not found when the application was frozen");
    the loader's own message, e.g. a missing libvulkan.so.1, is the exception's cause."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, OSError) and "when the application was frozen" in str(exc):
        exc = cause
    text = str(exc)
    return text.split(": ", 1)[1] if text.startswith("/") and ": " in text else text


class _Ggml:
    """The ggml registry calls made here (ggml-backend.h, prototypes from
    :mod:`packer.runtime.ggml_api`)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.g = ggml_api.bind(lib)

    def load(self, path: Path) -> int | None:
        return self.g.backend_load(str(path).encode())  # type: ignore[no-any-return]

    def reg_count(self) -> int:
        return int(self.g.backend_reg_count())

    def devices(self) -> list[Device]:
        g = self.g
        out = []
        for i in range(g.backend_dev_count()):
            dev = g.backend_dev_get(i)
            free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
            g.backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
            out.append(
                Device(
                    backend=_text(g.backend_reg_name(g.backend_dev_backend_reg(dev))),
                    name=_text(g.backend_dev_name(dev)),
                    description=_text(g.backend_dev_description(dev)),
                    kind=ggml_api.device_kind(g.backend_dev_type(dev)),
                    free=int(free.value),
                    total=int(total.value),
                )
            )
        return out


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", "replace").strip() if raw else ""


# -- the decision ------------------------------------------------------------------------------
def choose(
    backends: Backends,
    gpu: str,
    gpu_layers: int | str,
    model_path: str | Path | None,
    n_ctx: int,
) -> Placement:
    """Decide CPU or GPU and the layer count for ``--gpu gpu -ngl gpu_layers``. Raises
    :class:`BackendError` when an explicitly requested GPU backend has no usable device."""
    if gpu == "cpu":
        return Placement("cpu", None, 0, "--gpu cpu")
    candidates = backends.gpus(None if gpu == "auto" else gpu)
    if not candidates:
        if gpu != "auto":
            why = backends.problems.get(gpu, _no_device(gpu))
            raise BackendError(
                _("--gpu {gpu}: {why}; use --gpu auto or --gpu cpu").format(gpu=gpu, why=why)
            )
        why = "; ".join(f"{REGISTRY_NAMES[k]}: {v}" for k, v in _present(backends).items())
        return Placement(
            "cpu",
            None,
            0,
            _("no usable GPU ({why})").format(why=why or _("this runtime has none")),
        )
    device = candidates[0]
    backend = next(k for k, v in REGISTRY_NAMES.items() if v == device.backend)
    free = _("{gib:.1f} GiB free").format(gib=device.free / 2**30)
    if gpu_layers != "auto":
        return Placement(backend, device, int(gpu_layers), f"-ngl {gpu_layers}, {free}")
    if model_path is None:
        return Placement(backend, device, 0, _("-ngl auto: decided when the model is loaded"))
    layout = read_layout(model_path)
    n = auto_gpu_layers(layout, device.free, n_ctx)
    if n > layout.n_layer:
        fits = _("-ngl auto: all fit in {free}").format(free=free)
    else:
        fits = _("-ngl auto: {n} of {total} layers fit in {free}").format(
            n=n, total=layout.n_layer, free=free
        )
    return Placement(backend, device, n, fits)


def plan(
    gpu: str,
    gpu_layers: int | str,
    model_path: str | Path | None,
    n_ctx: int,
    verbose: bool = False,
    cpu: str | None = None,
    cache_dir: Path | None = None,
) -> tuple[Backends, Placement]:
    """Load the backends, decide, and log the decision (details with --verbose; a one-line
    notice when ``--gpu auto`` falls back to the CPU although a GPU backend exists)."""
    backends = load_backends(gpu, verbose=verbose, cpu=cpu, cache_dir=cache_dir)
    placement = choose(backends, gpu, gpu_layers, model_path, n_ctx)
    if backends.dynamic:
        scores = ", ".join(f"{k} {v}" for k, v in sorted(backends.cpu_scores.items()))
        log.debug(
            "CPU backend: %s: %s (scores: %s)", backends.cpu_variant, backends.cpu_choice, scores
        )
    else:
        log.debug("CPU backend: built in (a wheel without GGML_BACKEND_DL)")
    for dev in backends.gpus():
        log.debug("GPU: %s (%s), %.1f GiB free", dev.name, dev.description, dev.free / 2**30)
    for name, why in backends.problems.items():
        log.debug("%s backend: %s", REGISTRY_NAMES[name], why)
    log.debug("%s", summary(backends, placement))
    if gpu == "auto" and placement.backend == "cpu" and _present(backends):
        log.warning(_("{reason}; running on the CPU").format(reason=placement.reason))
    return backends, placement


def _present(backends: Backends) -> dict[str, str]:
    """The GPU backends this runtime has but cannot use here, and why."""
    return {k: v for k, v in backends.problems.items() if v != _no_backend(k)}


def summary(backends: Backends, placement: Placement) -> str:
    """One line: the CPU variant, the GPUs (or why none), and the decision."""
    if backends.dynamic:
        usable = sum(1 for v in backends.cpu_scores.values() if v > 0)
        cpu = _("CPU {variant} variant (best of {usable} usable here)").format(
            variant=backends.cpu_variant or "base", usable=usable
        )
    else:
        cpu = _("CPU built in")
    gpus = ", ".join(f"{d.name} ({d.description})" for d in backends.gpus()) or _("none")
    return _("{cpu}; GPU: {gpus}; running on {placement}").format(
        cpu=cpu, gpus=gpus, placement=placement.describe()
    )


def info(backends: Backends, placement: Placement | None) -> dict[str, Any]:
    """The ``backend`` section of ``--info``."""
    out: dict[str, Any] = {
        "library_dir": backends.lib_dir,
        "cpu_variant": backends.cpu_variant if backends.dynamic else "built-in",
        "cpu_variant_scores": backends.cpu_scores,
        "cpu_variant_why": backends.cpu_choice,
        "devices": [asdict(d) for d in backends.devices],
        "unusable_gpu_backends": backends.problems,
    }
    if placement is not None:
        out["chosen"] = {
            "backend": placement.backend,
            "device": placement.device.name if placement.device else "CPU",
            "n_gpu_layers": placement.n_gpu_layers,
            "why": placement.reason,
        }
    return out
