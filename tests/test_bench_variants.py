"""benchmarks/variants: the confidence interval and verdict its report gives each ratio (plain
unit tests: no model.run, no llama-bench)."""

from __future__ import annotations

import math
import random
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
