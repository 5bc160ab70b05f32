"""benchmarks/server: the sampling settings it sends every side (plain unit tests: no server,
no model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import load_script

from packer.runtime.generate import Sampling

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server_bench() -> Any:
    return load_script(ROOT / "benchmarks" / "server" / "run.py", "bench_server")


def test_default_sampling_is_the_runtimes_default(server_bench: Any) -> None:
    """`--sampling default` measures what a client that sets nothing gets from model.run: the
    runtime's own defaults, sent to llama-server too (the 64-token look-back is every side's
    default, not sent)."""
    sent = server_bench.SAMPLINGS["default"]
    runtime = Sampling()
    assert sent == {
        "temperature": runtime.temperature,
        "top_k": runtime.top_k,
        "top_p": runtime.top_p,
        "min_p": runtime.min_p,
        "repeat_penalty": runtime.repeat_penalty,
    }
    assert runtime.repeat_last_n == 64
    assert server_bench.SAMPLINGS["greedy"]["temperature"] == 0.0


def test_sampling_flag(server_bench: Any) -> None:
    assert server_bench.parse_args([]).sampling == "greedy"
    assert server_bench.parse_args(["--sampling", "default"]).sampling == "default"
    with pytest.raises(SystemExit):
        server_bench.parse_args(["--sampling", "creative"])
