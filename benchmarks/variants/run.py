"""One-shot generation (tg) and prompt processing (pp) of a model.run, per CPU variant of ggml,
against llama.cpp's own ``llama-bench`` built for the same variant with gcc.

    .venv/bin/python benchmarks/variants/run.py                      # demo model.run, every variant this CPU runs
    .venv/bin/python benchmarks/variants/run.py --variants haswell   # only these
    .venv/bin/python benchmarks/variants/run.py --model-run m.run --repeat 5
    .venv/bin/python benchmarks/variants/run.py --only tg --repeat 12 # generation only, more rounds
    .venv/bin/python benchmarks/variants/run.py --pool a.json b.json  # earlier runs as one

For each variant, model.run runs pinned to it (``--cpu-variant NAME``) and llama-bench is the
one ``benchmarks/variants/llama-peers.sh NAME`` builds (the vendored llama.cpp, our patches, the
variant's instruction set features, gcc; ~10 minutes for the first variant, ~3 for each more).
Same GGUF (the one the model.run unpacks), threads and flash attention (auto).

* tg: ``model.run -p STORY --raw -n N --stats``: the runtime's own generation tokens/s (greedy
  sampling included) against ``llama-bench -n N -d D`` (decoding only, no sampling), where D is
  the number of prompt tokens model.run decoded first: both generate after a prompt of the same
  size, so every token attends over as many cells on both sides;
* pp: ``model.run -p TEXT --raw -n 1 --stats`` with a prompt of about P tokens: the runtime's
  prompt tokens/s against ``llama-bench -p P``.

Target: each >= 0.97x. Rounds are interleaved (every variant, both programs, then again) and
medians reported, so background load hits every figure alike; the two programs take turns at
going first, so a machine getting faster or slower over a round favours neither.

Each ratio comes with a 95 % confidence interval for the median of the per-round ratios (from
their order statistics, no assumption about their distribution) and a verdict: "meets" when the
whole interval is at or above the target, "below" when it is all under it, "undecided" when it
holds the target (more rounds narrow it: on a 2-core VM whose per-round ratios spread ~6 %, about
30 rounds put the interval within +-2 %; with fewer than 6 rounds there is no 95 % interval).
The last line pools every variant's rounds: one ratio for the machine.

``--pool`` measures nothing: it reads earlier runs' ``--json`` files (same machine, threads and
sizes, or a one-line error) and reports each variant's rounds from all of them together, with
how many there are, since a 2-core VM needs more rounds than one run of every variant takes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEMO_RUN = ROOT / "SmolLM2-135M-Instruct.Q5_K_M.run"
TARGET = 0.97
PP_TEXT = (
    "The river ran past the mill, under the old stone bridge and out into the fields, where the "
    "farmers had planted wheat, barley and rows of beans that the children weeded every summer. "
)

# ggml's x86-64 CPU variants and the instruction set features each needs (ggml/src/CMakeLists.txt
# of the vendored llama.cpp), as the kernel's /proc/cpuinfo flags name them
VARIANTS: dict[str, tuple[str, ...]] = {
    "x64": (),
    "sse42": ("sse4_2",),
    "sandybridge": ("sse4_2", "avx"),
    "ivybridge": ("sse4_2", "avx", "f16c"),
    "piledriver": ("sse4_2", "avx", "f16c", "fma"),
    "haswell": ("sse4_2", "avx", "f16c", "fma", "avx2", "bmi2"),
    "skylakex": ("sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx512f"),
    "cannonlake": ("sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx512f", "avx512vbmi"),
    "cascadelake": ("sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx512f", "avx512_vnni"),
    "icelake": (
        "sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx512f", "avx512vbmi", "avx512_vnni",
    ),
    "cooperlake": (
        "sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx512f", "avx512_vnni", "avx512_bf16",
    ),
    "zen4": (
        "sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx512f", "avx512vbmi", "avx512_vnni",
        "avx512_bf16",
    ),
    "alderlake": ("sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx_vnni"),
    "sapphirerapids": (
        "sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx512f", "avx512vbmi", "avx512_vnni",
        "avx512_bf16", "amx_tile", "amx_int8",
    ),
}  # fmt: skip


def _load_base() -> Any:
    """benchmarks/run.py, for its model.run helpers."""
    spec = importlib.util.spec_from_file_location("bench_base", ROOT / "benchmarks" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_base"] = module
    spec.loader.exec_module(module)
    return module


base = _load_base()
log = base.log
BenchError = base.BenchError


def median_interval(xs: list[float], level: float = 0.95) -> tuple[float, float]:
    """A confidence interval for the median of what ``xs`` are draws of, distribution-free: the
    order statistics x(j) and x(n+1-j), j the largest with P(Binomial(n, 1/2) < j) at most
    (1 - level) / 2. (nan, nan) when there are too few values for ``level``."""
    xs = sorted(x for x in xs if not math.isnan(x))
    n = len(xs)
    tail = (1.0 - level) / 2.0
    below, j = 0.0, 0
    for k in range(n + 1):
        below += math.comb(n, k) / 2.0**n
        if below > tail:
            break
        j = k + 1
    if j == 0:
        return math.nan, math.nan
    return xs[j - 1], xs[n - j]


def verdict(interval: tuple[float, float], target: float = TARGET) -> str:
    lo, hi = interval
    if math.isnan(lo):
        return "too few rounds"
    if lo >= target:
        return "meets"
    if hi < target:
        return "below"
    return "undecided"


Samples = dict[str, list[float]]  # SAMPLE_KEYS: one figure per round each
SAMPLE_KEYS = ("tg_ours", "tg_theirs", "pp_ours", "pp_theirs", "pp_n")


def ratios(ours: list[float], theirs: list[float]) -> list[float]:
    """The per-round ratios (a round whose peer figure is 0 is left out)."""
    return [x / y for x, y in zip(ours, theirs, strict=True) if y]


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def figures(ours: list[float], theirs: list[float]) -> dict[str, Any]:
    """Medians of both sides, the median per-round ratio, its 95 % interval, the rounds."""
    rs = ratios(ours, theirs)
    return {
        "model_run": _median(ours),
        "llama_bench": _median(theirs),
        "ratio": _median(rs),
        "interval": list(median_interval(rs)),
        "rounds": len(rs),
    }


def _prefixed(what: str, fig: dict[str, Any]) -> dict[str, Any]:
    return {f"{what}_{k}": x for k, x in fig.items()}


def summarize(samples: dict[str, Samples]) -> dict[str, dict[str, Any]]:
    """The report's row for each variant, from its per-round samples."""
    table: dict[str, dict[str, Any]] = {}
    for v, s in samples.items():
        row: dict[str, Any] = {}
        for what in ("tg", "pp"):
            row.update(_prefixed(what, figures(s[f"{what}_ours"], s[f"{what}_theirs"])))
        row["pp_prompt_tokens"] = _median(s["pp_n"])
        row["samples"] = s
        table[v] = row
    return table


def overall(samples: dict[str, Samples], what: str) -> dict[str, Any]:
    """``what`` (tg or pp) with every variant's rounds pooled: one ratio for the machine."""
    ours = [x for s in samples.values() for x in s[f"{what}_ours"]]
    theirs = [x for s in samples.values() for x in s[f"{what}_theirs"]]
    return figures(ours, theirs)


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def runnable_variants() -> list[str]:
    """The variants this CPU has every feature of, best (most features) first."""
    flags = cpu_flags()
    ok = [name for name, needs in VARIANTS.items() if set(needs) <= flags]
    return sorted(ok, key=lambda n: -len(VARIANTS[n]))


def build_peer(variant: str) -> Path:
    """llama-bench for ``variant`` (built once, cached)."""
    script = HERE / "llama-peers.sh"
    log(f"llama-bench for {variant}: {script.name} (builds it the first time, minutes)")
    res = subprocess.run(
        ["bash", str(script), variant, sys.executable], capture_output=True, text=True
    )
    if res.returncode != 0:
        tail = " | ".join(res.stderr.strip().splitlines()[-3:])
        raise BenchError(f"llama-peers.sh {variant} failed: {tail}")
    return Path(res.stdout.strip().splitlines()[-1]) / "llama-bench"


def llama_bench(
    binary: Path, gguf: Path, threads: int, n_prompt: int, n_gen: int, depth: int = 0
) -> dict:
    """One llama-bench run (its warm-up, then one repetition): tokens/s of pp and tg (only
    those asked for: a size of 0 leaves that test out), each after ``depth`` tokens already in
    the context (``-d``)."""
    cmd = [str(binary), "-m", str(gguf), "-t", str(threads), "-p", str(n_prompt)]
    cmd += ["-n", str(n_gen), "-d", str(depth), "-fa", "auto", "-r", "1", "-o", "json"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=base.PROC_TIMEOUT_S)
    if res.returncode != 0:
        tail = " | ".join(res.stderr.strip().splitlines()[-3:])
        raise BenchError(f"llama-bench failed (exit {res.returncode}): {tail}")
    out: dict[str, float] = {}
    for row in json.loads(res.stdout):
        key = "pp" if row.get("n_gen", 0) == 0 else "tg"
        out[key] = float(row["avg_ts"])
    return out


def model_run_stats(
    model_run: Path, env: dict[str, str], variant: str, prompt: str, n: int, threads: int
) -> dict[str, Any]:
    """model.run's ``--stats`` timings. Its answer goes to a file, not to a pipe this script
    reads: llama-bench prints nothing while it generates, and a reader here would wake for
    every token, on the two cores the decode runs on."""
    cmd = [str(model_run), "-p", prompt, "--raw", "-n", str(n), "-t", str(threads)]
    cmd += ["-c", str(base.N_CTX), "--cpu-variant", variant, *base.sampling_flags(), "--stats"]
    res = base.run_timed(cmd, env, watch=False)
    return base._stats_line(base._check(res, f"model.run --cpu-variant {variant}").stderr)


def asked_variants(args: argparse.Namespace) -> list[str]:
    """The names ``--variants`` gave (none: an empty list)."""
    return [v.strip() for v in (args.variants or "").split(",") if v.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-run", type=Path, help=f"default: {DEMO_RUN.name} (make demo)")
    p.add_argument("--gguf", type=Path, help="the GGUF for llama-bench (default: found for you)")
    p.add_argument(
        "--variants", help="comma-separated variant names (default: every one this CPU runs)"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=128, help="tg: tokens generated (default 128)")
    p.add_argument("--prompt-tokens", type=int, default=512, help="pp: prompt size (default 512)")
    p.add_argument("--repeat", type=int, default=5, help="rounds; medians reported (default 5)")
    p.add_argument(
        "--only",
        choices=["tg", "pp"],
        help="measure only generation or only prompts (default both)",
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument(
        "--pool",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="measure nothing: pool the rounds of earlier runs' --json files, per variant\n"
        "(those of --variants only, when given) and report them as one run",
    )
    return p.parse_args(argv)


def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    env = base.model_env(work / "cache")
    model_run = (args.model_run or DEMO_RUN).resolve()
    if not model_run.is_file():
        raise BenchError(f"{model_run} is not there: make demo, or pass --model-run")
    variants = asked_variants(args) or runnable_variants()
    if not variants:
        raise BenchError("no CPU variant of ggml runs on this CPU")
    tg_on, pp_on = args.only in (None, "tg"), args.only in (None, "pp")
    # a prompt of about --prompt-tokens tokens
    words = len(PP_TEXT.split())
    pp_prompt = PP_TEXT * max(1, round(args.prompt_tokens / (words * 1.25)))

    def prompt_tokens(prompt: str) -> int:
        return int(
            model_run_stats(model_run, env, variants[0], prompt, 1, args.threads)["prompt_n"]
        )

    # the sizes model.run's prompts come to: llama-bench generates after as many tokens (-d)
    # and measures a prompt of as many (-p); the first of these runs unpacks the model.run
    depth = prompt_tokens(base.STORY) if tg_on else 0
    n_pp = prompt_tokens(pp_prompt) if pp_on else 0
    gguf = args.gguf or base.cached_gguf(work / "cache", base.read_manifest(model_run, env))
    peers = {v: build_peer(v) for v in variants}
    samples: dict[str, Samples] = {v: {k: [] for k in SAMPLE_KEYS} for v in variants}
    facts = base.machine_facts()

    def ours(v: str, s: dict[str, list[float]]) -> None:
        if tg_on:
            tg = model_run_stats(model_run, env, v, base.STORY, args.tokens, args.threads)
            if int(tg["prompt_n"]) != depth:
                raise BenchError(f"model.run's prompt was {tg['prompt_n']} tokens, not {depth}")
            s["tg_ours"].append(float(tg["predicted_per_second"]))
        if pp_on:
            pp = model_run_stats(model_run, env, v, pp_prompt, 1, args.threads)
            if int(pp["prompt_n"]) != n_pp:
                raise BenchError(f"model.run's prompt was {pp['prompt_n']} tokens, not {n_pp}")
            s["pp_ours"].append(float(pp["prompt_per_second"]))
            s["pp_n"].append(float(pp["prompt_n"]))

    def theirs(v: str, s: dict[str, list[float]]) -> None:
        # two runs: -d would put the prompt test after the tg prompt too
        if tg_on:
            got = llama_bench(peers[v], gguf, args.threads, 0, args.tokens, depth)
            s["tg_theirs"].append(got["tg"])
        if pp_on:
            got = llama_bench(peers[v], gguf, args.threads, n_pp, 0)
            s["pp_theirs"].append(got["pp"])

    names = {ours: "model.run", theirs: "llama-bench"}
    for i in range(args.repeat):
        # the two take turns at going first: a machine speeding up or slowing down over a
        # round favours neither
        first, then = (ours, theirs) if i % 2 == 0 else (theirs, ours)
        for v in variants:
            log(f"round {i + 1}/{args.repeat}: {v}: {names[first]}, then {names[then]}")
            first(v, samples[v])
            then(v, samples[v])

    return {
        "machine": facts,
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "settings": {
            "model": model_run.name,
            "gguf": str(gguf),
            "threads": args.threads,
            "tokens": args.tokens,
            "tg_depth": depth,
            "prompt_tokens": n_pp,
            "repeat": args.repeat,
            "only": args.only,
        },
        "variants": summarize(samples),
    }


# what must be the same in every run pooled: the machine, and the sizes of what was measured
_SAME_MACHINE = ("cpu", "usable_cpus")
_SAME_TG = ("tokens", "tg_depth")


def pool(files: list[Path], only: list[str] | None = None) -> dict[str, Any]:
    """The rounds of the runs in ``files`` (their ``--json``) as one run: each variant's samples
    put together, from every file that measured it. Raises BenchError (one line) when a file
    cannot be read or the runs are not comparable: another machine, thread count, number of
    generated tokens or prompt size."""
    runs: list[tuple[Path, dict[str, Any]]] = []
    for f in files:
        try:
            r = json.loads(f.read_text())
            for key in ("model", "threads", "repeat", "only", *_SAME_TG, "prompt_tokens"):
                r["settings"][key]  # noqa: B018 - what pooling reads, there before it starts
            for row in r["variants"].values():
                row["samples"].items()  # noqa: B018
            r["machine"].get("cpu")  # noqa: B018
        except (OSError, ValueError, KeyError, TypeError) as exc:
            why = f"no {exc}" if isinstance(exc, KeyError) else exc
            raise BenchError(f"{f} is not a --json file of this benchmark ({why})") from None
        runs.append((f, r))
    first_file, first = runs[0]
    for f, r in runs[1:]:
        for key in _SAME_MACHINE:
            if r["machine"].get(key) != first["machine"].get(key):
                raise BenchError(
                    f"{f} was measured on another machine than {first_file} ({key}: "
                    f"{r['machine'].get(key)!r}, not {first['machine'].get(key)!r}): pool runs "
                    f"of one machine"
                )
        if r["settings"]["threads"] != first["settings"]["threads"]:
            raise BenchError(f"{f} ran another number of threads than {first_file}")
    # the tg and pp sizes: the same in every run that measured them, and the pooled run's
    settings = dict(first["settings"])
    for what, keys in (("tg", _SAME_TG), ("pp", ("prompt_tokens",))):
        measured = [(f, r) for f, r in runs if r["settings"].get("only") in (None, what)]
        for key in keys:
            settings[key] = measured[0][1]["settings"][key] if measured else 0
            for f, r in measured[1:]:
                if r["settings"][key] != settings[key]:
                    raise BenchError(
                        f"{f} measured {what} with {key} {r['settings'][key]}, "
                        f"{measured[0][0]} with {settings[key]}: pool runs of the same sizes"
                    )
    # (a pooled run's model is the list of its runs' models)
    models = sorted({m for _, r in runs for m in r["settings"]["model"].split(", ")})
    if len(models) > 1:
        log(
            f"pooling the rounds of {', '.join(models)}: a variant's figure means something "
            f"only where its library is the same in all of them"
        )
    samples: dict[str, Samples] = {}
    for _, r in runs:
        for v, row in r["variants"].items():
            if only and v not in only:
                continue
            s = samples.setdefault(v, {k: [] for k in SAMPLE_KEYS})
            for k in SAMPLE_KEYS:
                s[k] += row["samples"].get(k, [])
    if not samples:
        asked = f"none of {', '.join(only)} is" if only else "no variant is"
        raise BenchError(f"{asked} in these runs")
    onlies = {r["settings"].get("only") for _, r in runs}
    settings.update(
        model=", ".join(models),
        repeat=sum(r["settings"]["repeat"] for _, r in runs),
        only=onlies.pop() if len(onlies) == 1 else None,
        pooled=[str(f) for f in files],
    )
    return {
        "machine": first["machine"],
        "loadavg_end": runs[-1][1].get("loadavg_end"),
        "settings": settings,
        "variants": summarize(samples),
    }


def print_report(r: dict[str, Any]) -> None:
    st, m = r["settings"], r["machine"]
    pooled = st.get("pooled")
    rounds = f"{len(pooled)} runs pooled" if pooled else f"median of {st['repeat']}"
    print(
        f"\nCPU variants: {st['model']}, {st['threads']} threads, tg {st['tokens']} tokens "
        f"after {st['tg_depth']} prompt tokens, pp {st['prompt_tokens']} tokens, {rounds}"
    )
    print(f"load average: start {m['loadavg_start']}, end {r['loadavg_end']}")
    print(
        f"{'variant':<15} {'tg model.run':>12} {'llama-bench':>11} {'ratio':>7} {'95 % interval':>13}"
        f" {'':<10} {'pp model.run':>12} {'llama-bench':>11} {'ratio':>7} {'95 % interval':>13}"
        + (f" {'':<10} rounds tg/pp" if pooled else "")
    )

    def figure(t: dict[str, Any], what: str) -> str:
        if math.isnan(t[f"{what}_ratio"]):  # not measured (--only)
            return f"{'':>12} {'':>11} {'':>7} {'':>13} {'':<10}"
        iv = t[f"{what}_interval"]
        span = "-" if math.isnan(iv[0]) else f"{iv[0]:.3f}-{iv[1]:.3f}"
        return (
            f"{t[f'{what}_model_run']:>12.1f} {t[f'{what}_llama_bench']:>11.1f}"
            f" {t[f'{what}_ratio']:>6.3f}x {span:>13} {verdict(tuple(iv)):<10}"
        )

    def count(t: dict[str, Any]) -> str:  # rounds of tg/pp
        return f"{t['tg_rounds'] or '-'}/{t['pp_rounds'] or '-'}"

    for v, t in r["variants"].items():
        print(f"{v:<15} {figure(t, 'tg')} {figure(t, 'pp')} {count(t) if pooled else ''}".rstrip())
    if len(r["variants"]) > 1:
        samples = {v: t["samples"] for v, t in r["variants"].items()}
        pooled_row = {
            **_prefixed("tg", overall(samples, "tg")),
            **_prefixed("pp", overall(samples, "pp")),
        }
        print(f"{'all pooled':<15} {figure(pooled_row, 'tg')} {figure(pooled_row, 'pp')}".rstrip())
    print(
        f"(tokens/s; ratio: median of the per-round ratios, with a 95 % confidence interval for "
        f"it; target >= {TARGET}x: meets, below, or undecided while the interval holds it; "
        f"all pooled: every variant's rounds together)"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.pool:  # measures nothing: the scratch folder stays unused

        def pooled(args: argparse.Namespace, _work: Path) -> dict[str, Any]:
            return pool(args.pool, asked_variants(args) or None)

        return int(base.run_benchmark(args, pooled, print_report, "packer-bench-variants-"))
    return int(base.run_benchmark(args, bench, print_report, "packer-bench-variants-"))


if __name__ == "__main__":
    sys.exit(main())
