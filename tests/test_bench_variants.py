"""benchmarks/variants: the confidence interval and verdict its report gives each ratio (plain
unit tests: no model.run, no llama-bench)."""

from __future__ import annotations

import contextlib
import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def variants() -> Any:
    return load_script(ROOT / "benchmarks" / "variants" / "run.py", "bench_variants")


@pytest.mark.parametrize(
    ("n", "j"),
    # j: the interval is the j-th smallest to the j-th largest (binomial tables, 95 %)
    [(5, 0), (6, 1), (8, 1), (9, 2), (14, 3), (20, 6), (30, 10)],
)
def test_median_interval_order_statistics(variants: Any, n: int, j: int) -> None:
    xs = [float(i) for i in range(1, n + 1)]
    random.Random(n).shuffle(xs)
    lo, hi = variants.median_interval(xs)
    if j == 0:
        assert math.isnan(lo) and math.isnan(hi)
    else:
        assert (lo, hi) == (float(j), float(n + 1 - j))


def test_median_interval_covers_the_median(variants: Any) -> None:
    """Of 400 samples of 14 draws around 0.98, about 95 % (at least 95 %: the order statistics
    give 98.7 % for 14) have the true median inside."""
    rng = random.Random(7)
    covered = 0
    for _ in range(400):
        lo, hi = variants.median_interval([rng.gauss(0.98, 0.06) for _ in range(14)])
        covered += lo <= 0.98 <= hi
    assert covered >= 0.95 * 400


@pytest.mark.parametrize(
    ("interval", "word"),
    [
        ((0.975, 1.02), "meets"),
        ((0.97, 1.0), "meets"),  # at the target counts
        ((0.93, 0.965), "below"),
        ((0.95, 1.01), "undecided"),
        ((math.nan, math.nan), "too few rounds"),
    ],
)
def test_verdict(variants: Any, interval: tuple[float, float], word: str) -> None:
    assert variants.verdict(interval, 0.97) == word


# -- --pool: earlier runs' --json files reported as one run ---------------------------------


def _run_json(
    path: Path,
    rounds: dict[str, dict[str, list[float]]],
    *,
    cpu: str = "Test CPU",
    only: str | None = None,
    prompt_tokens: int = 457,
    model: str = "m.run",
) -> Path:
    """A --json file as run.py writes it, with these per-round samples per variant."""
    keys = ("tg_ours", "tg_theirs", "pp_ours", "pp_theirs", "pp_n")
    variants = {v: {"samples": {k: s.get(k, []) for k in keys}} for v, s in rounds.items()}
    repeat = max(len(x) for s in rounds.values() for x in s.values())
    path.write_text(
        json.dumps(
            {
                "machine": {"cpu": cpu, "usable_cpus": 2, "loadavg_start": [0.1, 0.1, 0.1]},
                "loadavg_end": [1.0, 1.0, 1.0],
                "settings": {
                    "model": model,
                    "threads": 2,
                    "tokens": 128,
                    "tg_depth": 19 if only != "pp" else 0,
                    "prompt_tokens": prompt_tokens if only != "tg" else 0,
                    "repeat": repeat,
                    "only": only,
                },
                "variants": variants,
            }
        )
    )
    return path


def _both(tg: list[float], pp: list[float]) -> dict[str, list[float]]:
    """Samples whose per-round ratios are ``tg`` and ``pp`` (llama-bench at 100 tokens/s)."""
    return {
        "tg_ours": [100 * x for x in tg],
        "tg_theirs": [100.0] * len(tg),
        "pp_ours": [100 * x for x in pp],
        "pp_theirs": [100.0] * len(pp),
        "pp_n": [457.0] * len(pp),
    }


def test_pool_puts_each_variants_rounds_together(variants: Any, tmp_path: Path) -> None:
    a = _run_json(
        tmp_path / "a.json",
        {"zen4": _both([0.9] * 6, [1.0] * 6), "haswell": _both([1.0] * 6, [1.0] * 6)},
    )
    b = _run_json(tmp_path / "b.json", {"zen4": _both([1.0] * 8, [0.95] * 8)})
    r = variants.pool([a, b])
    zen4 = r["variants"]["zen4"]
    assert zen4["tg_rounds"] == zen4["pp_rounds"] == 14
    assert zen4["tg_ratio"] == pytest.approx(1.0)  # 8 of the 14 rounds at 1.0
    assert zen4["pp_ratio"] == pytest.approx(0.95)
    assert zen4["tg_interval"] == pytest.approx([0.9, 1.0])
    assert len(zen4["samples"]["tg_ours"]) == 14
    assert r["variants"]["haswell"]["tg_rounds"] == 6  # only in a.json
    assert r["settings"]["repeat"] == 14
    assert r["settings"]["pooled"] == [str(a), str(b)]


def test_pool_takes_a_generation_only_run_with_a_full_one(variants: Any, tmp_path: Path) -> None:
    full = _run_json(tmp_path / "full.json", {"icelake": _both([1.0] * 6, [0.98] * 6)})
    tg = _run_json(tmp_path / "tg.json", {"icelake": _both([0.97] * 10, [])}, only="tg")
    row = variants.pool([full, tg])["variants"]["icelake"]
    assert (row["tg_rounds"], row["pp_rounds"]) == (16, 6)
    assert row["pp_ratio"] == pytest.approx(0.98)


def test_pool_only_the_variants_asked_for(variants: Any, tmp_path: Path) -> None:
    a = _run_json(
        tmp_path / "a.json",
        {"zen4": _both([1.0] * 6, [1.0] * 6), "haswell": _both([1.0] * 6, [1.0] * 6)},
    )
    assert list(variants.pool([a], ["haswell"])["variants"]) == ["haswell"]
    with pytest.raises(variants.BenchError, match="none of skylakex"):
        variants.pool([a], ["skylakex"])


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ({"cpu": "Other CPU"}, "another machine"),
        ({"prompt_tokens": 300}, "pp with prompt_tokens 300"),
    ],
)
def test_pool_refuses_runs_that_are_not_comparable(
    variants: Any, tmp_path: Path, second: dict[str, Any], message: str
) -> None:
    a = _run_json(tmp_path / "a.json", {"zen4": _both([1.0] * 6, [1.0] * 6)})
    b = _run_json(tmp_path / "b.json", {"zen4": _both([1.0] * 6, [1.0] * 6)}, **second)
    with pytest.raises(variants.BenchError, match=message):
        variants.pool([a, b])


def test_pool_report_and_errors_from_the_command_line(
    variants: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _run_json(
        tmp_path / "a.json",
        {"zen4": _both([0.99] * 6, [0.96] * 6), "haswell": _both([1.0] * 6, [1.0] * 6)},
    )
    b = _run_json(tmp_path / "b.json", {"zen4": _both([0.99] * 6, [0.96] * 6)}, model="other.run")
    out_json = tmp_path / "pooled.json"
    assert variants.main(["--pool", str(a), str(b), "--json", str(out_json)]) == 0
    out, err = capsys.readouterr()
    zen4 = next(line for line in out.splitlines() if line.startswith("zen4"))
    assert "0.990x" in zen4 and "0.960x" in zen4 and "meets" in zen4 and "below" in zen4
    assert zen4.split()[-1] == "12/12"  # rounds of tg/pp
    assert next(line for line in out.splitlines() if line.startswith("all pooled"))
    assert "2 runs pooled" in out
    assert "m.run, other.run" in err  # rounds of two files named differently: said on stderr
    pooled = json.loads(out_json.read_text())
    assert pooled["variants"]["zen4"]["pp_rounds"] == 12
    assert pooled["settings"]["model"] == "m.run, other.run"

    # a pooled run pools again: its rounds and its models' names, each once
    assert variants.main(["--pool", str(out_json), str(a)]) == 0
    out, err = capsys.readouterr()
    assert next(line for line in out.splitlines() if line.startswith("zen4")).split()[-1] == "18/18"
    assert "CPU variants: m.run, other.run, 2 threads" in out

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert variants.main(["--pool", str(a), str(broken)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("bench: error: ") and "broken.json is not a --json file" in err
    assert len(err.strip().splitlines()) == 1


def test_json_is_written_whole_or_not_at_all(
    variants: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--json goes through packer's atomic write (save_json: atomic_write.write_json): a run that
    fails while saving leaves the old file as it was and no temp file; a folder that is not
    there is a one-line error and exit code 1."""
    a = _run_json(tmp_path / "a.json", {"zen4": _both([1.0] * 6, [1.0] * 6)})
    out_json = tmp_path / "out.json"
    out_json.write_text('{"old": true}')

    from packer.runtime import atomic_write as module

    real = module.atomic_write

    @contextlib.contextmanager
    def stopped_halfway(path: Path) -> Iterator[Any]:
        with real(path) as f:

            class Half:
                def write(self, data: bytes) -> None:
                    f.write(data[: len(data) // 2])
                    raise KeyboardInterrupt  # Ctrl-C while saving

            yield Half()

    monkeypatch.setattr(module, "atomic_write", stopped_halfway)  # what write_json calls
    with pytest.raises(KeyboardInterrupt):
        variants.main(["--pool", str(a), "--json", str(out_json)])
    monkeypatch.undo()
    assert json.loads(out_json.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "out.json"]
    capsys.readouterr()

    missing = tmp_path / "no-such-folder" / "out.json"
    assert variants.main(["--pool", str(a), "--json", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("bench: error: cannot write ") and "No such file or directory" in err
    assert len(err.strip().splitlines()) == 1
