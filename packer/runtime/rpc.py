"""Several machines as one: ggml's RPC backend (``--rpc-server`` and ``--rpc``).

``libggml-rpc.so`` (build/llama-rpc.sh) is one more backend library next to the others in
``llama_cpp/lib``; it is loaded only here, by absolute path, like every backend
(:mod:`packer.runtime.backend`). Two roles, one file:

* a worker, ``--rpc-server``: ``ggml_backend_rpc_start_server`` serves this machine's device
  (CPU, or a GPU) to a main process; no model is loaded;
* the main process, ``--rpc host:port,...``: each worker is added with
  ``ggml_backend_rpc_add_server`` and registered before the model loads, so llama.cpp's loader
  sees its device as one more GPU and places layers on it (by free memory, or ``--tensor-split``).

ggml's RPC client ends the process with ``GGML_ABORT`` when a worker cannot be reached or stops
answering. Workers are therefore checked with a plain TCP connect first (one line naming the
unreachable one), and ggml's abort hook is replaced by one that says which worker failed and
exits with status 1 instead of a core dump.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packer.runtime import ggml_api
from packer.runtime.backend import BackendError, Placement
from packer.runtime.browser_guard import listens_on_loopback
from packer.runtime.i18n import _

__all__ = [
    "DEFAULT_PORT",
    "Endpoint",
    "RpcError",
    "add_workers",
    "check_reachable",
    "is_loopback",
    "parse_endpoint",
    "parse_endpoints",
    "serve",
    "use_workers",
]

log = logging.getLogger("packer.runtime.rpc")

DEFAULT_PORT = 50052  # llama.cpp's rpc-server's
CONNECT_TIMEOUT = 3.0  # seconds: the check before loading
LIBRARY = "libggml-rpc.so"
DEVICE_CHOICES = ("auto", "cpu", "vulkan", "cuda")


class RpcError(BackendError):
    """A worker cannot be used (one line for the user)."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:  # what ggml's RPC client parses: HOST:PORT, the last ':' splits
        return f"{self.host}:{self.port}"


# -- flags -------------------------------------------------------------------------------------
def parse_endpoint(text: str) -> Endpoint:
    """``HOST:PORT`` (``[v6]:PORT`` for an IPv6 address). Raises ValueError (one line)."""
    item = text.strip()
    host, sep, port_text = item.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text:
        raise ValueError(
            _(
                "expected HOST:PORT for an RPC worker, e.g. 192.168.1.20:{port}, not {value!r}"
            ).format(port=DEFAULT_PORT, value=text)
        )
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise ValueError(
            _("the port of RPC worker {value!r} must be a number from 1 to 65535").format(
                value=text
            )
        )
    return Endpoint(host, port)


def parse_endpoints(text: str) -> list[Endpoint]:
    """``--rpc HOST:PORT[,HOST:PORT...]``: the workers, in order, each once."""
    items = [part for part in text.split(",") if part.strip()]
    if not items:
        raise ValueError(_("--rpc needs at least one HOST:PORT"))
    out: list[Endpoint] = []
    for item in items:
        endpoint = parse_endpoint(item)
        if endpoint in out:
            raise ValueError(_("RPC worker {endpoint} is listed twice").format(endpoint=endpoint))
        out.append(endpoint)
    return out


def is_loopback(host: str) -> bool:
    """Whether ``--host`` (brackets allowed around IPv6) binds only this machine."""
    return listens_on_loopback(host.strip("[]"))


# -- the main process --------------------------------------------------------------------------
def check_reachable(endpoints: list[Endpoint], timeout: float = CONNECT_TIMEOUT) -> None:
    """A TCP connect to each worker, before ggml's client (which aborts) is asked to."""
    for endpoint in endpoints:
        try:
            with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout):
                pass
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise RpcError(
                _(
                    "RPC worker {endpoint} cannot be reached ({reason}): start it there with "
                    "`model.run --rpc-server --host ADDRESS --port {port}`, or leave it out of --rpc"
                ).format(endpoint=endpoint, reason=reason, port=endpoint.port)
            ) from None


def add_workers(endpoints: list[Endpoint]) -> list[str]:
    """Register each worker's devices with ggml (after :func:`backend.load_backends`, before the
    model loads); returns the names of the devices added ("RPC0", ...)."""
    check_reachable(endpoints)
    api = _api()
    reg = _rpc_reg(api)
    add_server = _proc(api, reg, "ggml_backend_rpc_add_server", ctypes.c_void_p, [ctypes.c_char_p])
    before = int(api.backend_dev_count())
    for endpoint in endpoints:
        _watch(str(endpoint))
        worker_reg = add_server(str(endpoint).encode())
        if not worker_reg:
            raise RpcError(_("RPC worker {endpoint} offers no device").format(endpoint=endpoint))
        api.backend_register(worker_reg)
    _watch(", ".join(map(str, endpoints)))
    names = []
    for i in range(before, int(api.backend_dev_count())):
        dev = api.backend_dev_get(i)
        names.append((api.backend_dev_name(dev) or b"?").decode())
    return names


def use_workers(
    endpoints: list[Endpoint],
    placement: Placement,
    gpu_layers: int | str,
    model_path: Path,
    tensor_split: list[float] | None = None,
) -> Placement:
    """Add the workers and return the placement with them: ``-ngl auto`` offloads every layer,
    which llama.cpp spreads over the workers (and a local GPU) by their free memory, or by
    ``--tensor-split``. Says so in one line on stderr."""
    from packer.runtime.gpu_layers import read_layout

    names = add_workers(endpoints)
    n_layer = read_layout(model_path).n_layer
    n = n_layer + 1 if gpu_layers == "auto" else int(gpu_layers)  # + 1: the output layer
    devices = [f"{name} ({endpoint})" for name, endpoint in zip(names, endpoints, strict=False)]
    if placement.device is not None:
        devices.append(f"{placement.device.name} ({placement.device.description})")
    split = (
        _("--tensor-split {split}").format(split=",".join(f"{x:g}" for x in tensor_split))
        if tensor_split
        else _("by free memory")
    )
    reason = _(
        "{n} of {total} layers offloaded to {devices}, split {split}; the rest on this CPU"
    ).format(n=min(n, n_layer + 1), total=n_layer + 1, devices=", ".join(devices), split=split)
    print(_("RPC: {reason}").format(reason=reason), file=sys.stderr, flush=True)
    backend = placement.backend if placement.device is not None else "rpc"
    return dataclasses.replace(placement, backend=backend, n_gpu_layers=n, reason=reason)


# -- the worker --------------------------------------------------------------------------------
def serve(
    host: str,
    port: int,
    *,
    device: str = "auto",
    threads: int | None = None,
    cache: Path | None = None,
    cpu: str | None = None,
    verbose: bool = False,
) -> None:
    """``--rpc-server``: serve this machine's device until killed (blocks)."""
    from packer.runtime import backend

    if device not in DEVICE_CHOICES:
        raise RpcError(
            _("--device must be one of {choices}, not {value!r}").format(
                choices=", ".join(DEVICE_CHOICES), value=device
            )
        )
    if not is_loopback(host):
        log.warning(
            _(
                "warning: the RPC protocol has no authentication: anyone who can reach "
                "{host}:{port} can use this machine's memory and compute; serve only trusted "
                "networks"
            ).format(host=host, port=port)
        )
    loaded = backend.load_backends(device, verbose=verbose, cpu=cpu)
    api = _api()
    reg = _rpc_reg(api)
    start = _proc(
        api,
        reg,
        "ggml_backend_rpc_start_server",
        None,
        [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_void_p],
    )
    wanted = _served_devices(api, device, loaded.problems)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    n_threads = threads or os.cpu_count() or 1
    array = (ctypes.c_void_p * len(wanted))(*wanted)
    sys.stdout.flush()
    # ggml's accept loop never returns to Python, whose handlers would then never run: Ctrl-C
    # and SIGTERM end the worker at once (it holds nothing that needs closing)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # blocks; returns only when it could not start (the reason is on stderr already)
    start(
        str(Endpoint(host, port)).encode(),
        str(cache).encode() if cache is not None else None,
        n_threads,
        len(wanted),
        ctypes.cast(array, ctypes.c_void_p),
    )
    raise RpcError(
        _("the RPC server could not listen on {host}:{port}").format(host=host, port=port)
    )


def _served_devices(api: Any, device: str, problems: dict[str, str]) -> list[int]:
    """The ggml devices a worker serves: the GPUs of the chosen backend, else the CPU."""
    gpus, cpus = [], []
    for i in range(int(api.backend_dev_count())):
        dev = api.backend_dev_get(i)
        kind = ggml_api.device_kind(int(api.backend_dev_type(dev)))
        if kind == "cpu":
            cpus.append(dev)
        elif kind in ggml_api.GPU_KINDS:
            gpus.append(dev)
    if device in ("vulkan", "cuda") and not gpus:
        why = problems.get(device, _("no {backend} device found").format(backend=device))
        raise RpcError(_("--device {device}: {why}").format(device=device, why=why))
    if device != "cpu" and gpus:
        return gpus
    if not cpus:
        raise RpcError(_("no CPU backend to serve"))
    return cpus[:1]


# -- ggml --------------------------------------------------------------------------------------
def _api() -> Any:
    """ggml's functions (:mod:`packer.runtime.ggml_api`) in llama-cpp-python's library."""
    import llama_cpp.llama_cpp as llama_lib

    return ggml_api.bind(llama_lib._lib)  # dlsym on libllama also finds libggml's symbols


def _rpc_reg(api: Any) -> int:
    """ggml's "RPC" registry entry, loading libggml-rpc.so from the backends' folder."""
    reg = api.backend_reg_by_name(b"RPC")
    if reg:
        return int(reg)
    from packer.runtime import backend

    loaded = backend.load_backends()
    path = Path(loaded.lib_dir or "") / LIBRARY
    if not loaded.lib_dir or not path.is_file():
        raise RpcError(
            _(
                "this runtime has no RPC backend ({library}): rebuild it with build/llama-rpc.sh "
                "(make install)"
            ).format(library=LIBRARY)
        )
    reg = api.backend_load(str(path).encode())
    if not reg:
        raise RpcError(_("{library} did not initialise").format(library=LIBRARY))
    return int(reg)


def _proc(api: Any, reg: int, name: str, restype: Any, argtypes: list[Any]) -> Any:
    address = api.backend_reg_get_proc_address(reg, name.encode())
    if not address:
        raise RpcError(_("this RPC backend lacks {function}").format(function=name))
    return ctypes.CFUNCTYPE(restype, *argtypes)(address)


# ggml's client aborts the process when a worker fails (connection refused, lost mid-answer,
# a protocol version it does not speak): said as one line naming the workers, then exit 1.
_ABORT_HOOK = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
_hook: Any = None
_workers = ""


def _on_abort(message: bytes | None) -> None:
    text = (message or b"").decode("utf-8", "replace").strip().splitlines()
    detail = text[-1] if text else ""
    prog = os.environ.get("PACKER_PROG") or Path(sys.argv[0]).name
    if "handshake failed for " in detail:  # the worker answered, but not as this ggml does
        worker = detail.rsplit("handshake failed for ", 1)[1].strip()
        line = _(
            "RPC worker {worker} speaks another version of the RPC protocol (or is not an RPC "
            "worker): start the same model.run (or the same llama.cpp version) on every machine"
        ).format(worker=worker)
    else:
        line = _("RPC worker {workers} failed or stopped answering: {detail}").format(
            workers=_workers, detail=detail
        )
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    os.write(2, f"\n{prog}: error: {line}\n".encode("utf-8", "replace"))
    os._exit(1)


def _watch(workers: str) -> None:
    """Name the workers in the abort line, and install the hook (once)."""
    global _hook, _workers
    _workers = workers
    if _hook is None:
        _hook = _ABORT_HOOK(_on_abort)
        _api().set_abort_callback(ctypes.cast(_hook, ctypes.c_void_p))
