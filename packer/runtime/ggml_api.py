"""ggml's C functions the runtime calls through ctypes (ggml.h, ggml-backend.h), declared once.

llama-cpp-python binds llama.h only. Where the runtime needs ggml itself (loading backends,
listing devices, the CPU variants' self-test, the RPC backend, a threadpool for the decode),
it takes the function from :func:`bind`, so one function never gets two prototypes: ctypes
keeps one function object per library and name, and the prototype set last would win for
every caller.

    g = bind(llama_cpp.llama_cpp._lib)  # dlsym on libllama also finds libggml's symbols
    for i in range(g.backend_dev_count()):
        print(g.backend_dev_name(g.backend_dev_get(i)))

Attributes are the C names without ``ggml_``; a name not in :data:`SIGNATURES` is an
AttributeError, and a function the library lacks is the AttributeError ctypes raises.
"""

from __future__ import annotations

import ctypes
from typing import Any

GGML_MAX_N_THREADS = 512


class InitParams(ctypes.Structure):
    """``struct ggml_init_params``."""

    _fields_ = [
        ("mem_size", ctypes.c_size_t),
        ("mem_buffer", ctypes.c_void_p),
        ("no_alloc", ctypes.c_bool),
    ]


class ThreadpoolParams(ctypes.Structure):
    """``struct ggml_threadpool_params``."""

    _fields_ = [
        ("cpumask", ctypes.c_bool * GGML_MAX_N_THREADS),
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),
        ("poll", ctypes.c_uint32),
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


_p, _s, _i, _b, _c = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_bool, ctypes.c_char_p
_i64 = ctypes.c_int64

# name: (restype, argtypes)
SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    # ggml.h: contexts, tensors and graphs (the CPU variants' self-test), the abort hook
    "ggml_init": (_p, [InitParams]),
    "ggml_free": (None, [_p]),
    "ggml_tensor_overhead": (_s, []),
    "ggml_graph_overhead": (_s, []),
    "ggml_new_tensor_2d": (_p, [_p, _i, _i64, _i64]),
    "ggml_mul_mat": (_p, [_p, _p, _p]),
    "ggml_new_graph": (_p, [_p]),
    "ggml_build_forward_expand": (None, [_p, _p]),
    "ggml_set_abort_callback": (_p, [_p]),
    "ggml_threadpool_params_init": (None, [ctypes.POINTER(ThreadpoolParams), _i]),
    # ggml-backend.h: the registry, devices, buffers, computing a graph
    "ggml_backend_load": (_p, [_c]),
    "ggml_backend_register": (None, [_p]),
    "ggml_backend_reg_count": (_s, []),
    "ggml_backend_reg_name": (_c, [_p]),
    "ggml_backend_reg_by_name": (_p, [_c]),
    "ggml_backend_reg_dev_get": (_p, [_p, _s]),
    "ggml_backend_reg_get_proc_address": (_p, [_p, _c]),
    "ggml_backend_dev_count": (_s, []),
    "ggml_backend_dev_get": (_p, [_s]),
    "ggml_backend_dev_by_type": (_p, [_i]),
    "ggml_backend_dev_name": (_c, [_p]),
    "ggml_backend_dev_description": (_c, [_p]),
    "ggml_backend_dev_type": (_i, [_p]),
    "ggml_backend_dev_backend_reg": (_p, [_p]),
    "ggml_backend_dev_memory": (None, [_p, ctypes.POINTER(_s), ctypes.POINTER(_s)]),
    "ggml_backend_dev_init": (_p, [_p, _c]),
    "ggml_backend_dev_buffer_type": (_p, [_p]),
    "ggml_backend_dev_supports_op": (_b, [_p, _p]),
    "ggml_backend_buft_name": (_c, [_p]),
    "ggml_backend_alloc_ctx_tensors_from_buft": (_p, [_p, _p]),
    "ggml_backend_alloc_ctx_tensors": (_p, [_p, _p]),
    "ggml_backend_buffer_free": (None, [_p]),
    "ggml_backend_tensor_set": (None, [_p, _p, _s, _s]),
    "ggml_backend_tensor_get": (None, [_p, _p, _s, _s]),
    "ggml_backend_graph_compute": (_i, [_p, _p]),
}
# enum ggml_backend_dev_type, in its order
DEVICE_KINDS = ("cpu", "gpu", "igpu", "accel", "meta")
GPU_KINDS = ("gpu", "igpu")  # the kinds that are a GPU (discrete or integrated)


def device_kind(code: int) -> str:
    """The name of an ``enum ggml_backend_dev_type`` value (its number for one this table
    does not know)."""
    return DEVICE_KINDS[code] if 0 <= code < len(DEVICE_KINDS) else str(code)


class Ggml:
    """ggml's functions in one loaded library, each with its prototype from
    :data:`SIGNATURES`, set when first asked for."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib

    def __getattr__(self, name: str) -> Any:
        full = "ggml_" + name
        if full not in SIGNATURES:
            raise AttributeError(f"{full} is not declared in packer.runtime.ggml_api")
        restype, argtypes = SIGNATURES[full]
        f = getattr(self._lib, full)
        f.restype, f.argtypes = restype, argtypes
        setattr(self, name, f)  # found once
        return f


_bound: dict[int, Ggml] = {}


def bind(lib: ctypes.CDLL) -> Ggml:
    """The :class:`Ggml` of ``lib`` (one per library)."""
    g = _bound.get(id(lib))
    if g is None or g._lib is not lib:
        g = _bound[id(lib)] = Ggml(lib)
    return g
