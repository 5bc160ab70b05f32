"""packer.runtime.ggml_api: one prototype per ggml function, for every module that calls one."""

from __future__ import annotations

import ctypes

import pytest

from packer.runtime import ggml_api


@pytest.fixture(scope="module")
def lib() -> ctypes.CDLL:
    import llama_cpp.llama_cpp as llama_lib

    return llama_lib._lib  # type: ignore[no-any-return]


def test_every_declared_function_is_in_the_library(lib: ctypes.CDLL) -> None:
    g = ggml_api.bind(lib)
    for full, (restype, argtypes) in ggml_api.SIGNATURES.items():
        f = getattr(g, full.removeprefix("ggml_"))
        assert f.restype is restype and f.argtypes == argtypes, full


def test_one_binding_per_library_and_only_declared_names(lib: ctypes.CDLL) -> None:
    g = ggml_api.bind(lib)
    assert ggml_api.bind(lib) is g
    assert g.backend_dev_count is g.backend_dev_count  # looked up once
    assert g.backend_dev_count() >= 1  # the test session's backends are loaded (conftest)
    with pytest.raises(AttributeError, match="not declared"):
        g.backend_sched_new  # noqa: B018  (a real ggml function, not declared: no prototype)


def test_device_kinds() -> None:
    assert ggml_api.device_kind(0) == "cpu" and ggml_api.device_kind(2) == "igpu"
    assert ggml_api.device_kind(9) == "9"  # a kind a newer ggml adds: its number


def test_structures_match_ggml(lib: ctypes.CDLL) -> None:
    g = ggml_api.bind(lib)
    params = ggml_api.ThreadpoolParams()
    g.threadpool_params_init(ctypes.byref(params), 3)
    assert params.n_threads == 3 and params.poll == 50 and not params.paused  # ggml's defaults
    assert all(params.cpumask[i] is False for i in range(ggml_api.GGML_MAX_N_THREADS))
    size = 16 * g.tensor_overhead()
    ctx = g.init(ggml_api.InitParams(size, None, True))
    assert ctx
    t = g.new_tensor_2d(ctx, 0, 4, 2)  # GGML_TYPE_F32, no data (no_alloc)
    assert t
    g.free(ctx)
