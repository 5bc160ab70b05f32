"""Server throughput of a model.run: one stream vs llama-cpp-python, and many streams at once.

    .venv/bin/python benchmarks/server/run.py                    # the demo model.run (make demo)
    .venv/bin/python benchmarks/server/run.py --model-run m.run  # an existing model.run
    .venv/bin/python benchmarks/server/run.py --unfrozen         # python -m packer.runtime --gguf (dev)
    .venv/bin/python benchmarks/server/run.py --quick            # smoke run

Figures (see README.md next to this file):

* single stream: ``POST /completion`` streaming, generation tokens/s as the server's own
  ``timings`` report them, against llama-cpp-python generating in this process with the same
  GGUF, threads and sampling (target >= 0.95x);
* aggregate: C clients (1, 4, 8) each stream one request of N tokens at the same moment; total
  tokens / wall time from the first request sent to the last token received; the ratio to one
  client is the gain of continuous batching (target: 4 clients >= 1.4x one);
* time to first token (request sent -> first text event) p50/p95 under that load.

``--sampling greedy`` (the default) samples greedily on every side, so the figures are the
decode loop's; ``--sampling default`` sends the runtime's default settings (temperature 0.8,
top-k 40, top-p 0.95, min-p 0.05, repeat penalty 1.1 over 64 tokens, a fixed seed) to every
side alike, llama-server included: what a client that sets nothing pays for sampling.

Runs are interleaved (one client, four, eight, the peer, then again) so background load hits
every figure alike; the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from packer.runtime.generate import Sampling

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# issue #6 sets its 4-client target on the demo model: what `make demo` builds
DEMO_RUN = ROOT / "SmolLM2-135M-Instruct.Q5_K_M.run"
PROMPTS = [
    "Once upon a time, in a small village at the edge of a great forest, there lived",
    "The history of the printing press begins in",
    "Here is a recipe for a simple tomato soup:",
    "The three most important ideas in physics are",
    "Dear diary, today I finally",
    "In the year 2150, the first city on Mars",
    "A short guide to planting trees:",
    "The old lighthouse keeper looked at the sea and",
]


def _load_base() -> Any:
    """benchmarks/run.py (the one-shot benchmark), for its model.run and peer helpers."""
    spec = importlib.util.spec_from_file_location("bench_base", ROOT / "benchmarks" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_base"] = module
    spec.loader.exec_module(module)
    return module


base = _load_base()
log = base.log
BenchError = base.BenchError


# --sampling: the settings every side gets in each request; "default" is the runtime's own
# (llama-server's defaults differ: no repeat penalty; so they are sent, not left to each
# server). The penalties look back over 64 tokens on every side by default (llama-server, the
# runtime, llama-cpp-python's last_n_tokens_size), which the in-process peer cannot be sent
# per request.
_RUNTIME = Sampling()
SAMPLINGS: dict[str, dict[str, float]] = {
    "greedy": base.SAMPLING,
    "default": {key: getattr(_RUNTIME, key) for key in base.SAMPLING},
}


def stream_one(
    url: str, prompt: str, n: int, sampling: dict[str, float] | None = None
) -> dict[str, float]:
    """One streaming /completion of exactly ``n`` tokens: time to first text, end time, and
    the server's own timings."""
    body = {
        "prompt": prompt,
        "n_predict": n,
        "ignore_eos": True,
        "stream": True,
        "seed": base.SEED,
        **(sampling or base.SAMPLING),
    }
    req = urllib.request.Request(
        url + "/completion",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    t0 = time.perf_counter()
    t_first = None
    final: dict[str, Any] = {}
    with urllib.request.urlopen(req, timeout=base.REQUEST_TIMEOUT_S) as resp:
        for raw in resp:
            line = raw.strip()
            if not line.startswith(b"data: "):
                continue
            ev = json.loads(line[6:])
            if t_first is None and ev.get("content"):
                t_first = time.perf_counter()
            if ev.get("stop"):
                final = ev
    t_end = time.perf_counter()
    timings = final.get("timings") or {}
    return {
        "t0": t0,
        "ttft_s": (t_first or t_end) - t0,
        "t_end": t_end,
        "n": float(final.get("tokens_predicted") or timings.get("predicted_n") or 0),
        "server_tok_s": float(timings.get("predicted_per_second") or 0.0),
    }


def concurrent(
    url: str, clients: int, n: int, sampling: dict[str, float] | None = None
) -> dict[str, Any]:
    results: list[dict[str, float] | BaseException] = [None] * clients  # type: ignore[list-item]
    start = threading.Barrier(clients)

    def client(i: int) -> None:
        start.wait()
        try:
            results[i] = stream_one(url, PROMPTS[i % len(PROMPTS)], n, sampling)
        except BaseException as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise BenchError(f"{len(errors)} of {clients} clients failed: {errors[0]}")
    ok: list[dict[str, float]] = results  # type: ignore[assignment]
    wall = max(r["t_end"] for r in ok) - min(r["t0"] for r in ok)
    tokens = sum(r["n"] for r in ok)
    return {
        "tok_s": tokens / wall,
        "tokens": tokens,
        "wall_s": wall,
        "ttft_s": [r["ttft_s"] for r in ok],
        "server_tok_s": [r["server_tok_s"] for r in ok],
    }


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--model-run",
        type=Path,
        help=f"an existing model.run (default: {DEMO_RUN.name} from `make demo` when it is "
        "there, else one built from the SmolLM2 Q4_1 GGUF)",
    )
    p.add_argument("--gguf", type=Path, help="the GGUF for the peer (default: found for you)")
    p.add_argument(
        "--unfrozen",
        action="store_true",
        help="run `python -m packer.runtime --gguf` from this checkout instead of a model.run",
    )
    p.add_argument(
        "--llama-server",
        type=Path,
        metavar="PATH",
        help="also measure llama.cpp's own llama-server binary (build/llama-server.sh builds "
        "it) on the same GGUF, slots and threads, in the same rounds",
    )
    p.add_argument(
        "--cpu-variant",
        metavar="NAME",
        help="pin model.run's CPU variant of ggml (its --cpu-variant), to match a llama-server "
        "built for that variant (benchmarks/variants/llama-peers.sh NAME)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--parallel", type=int, default=4, help="-np of the server (default: 4)")
    p.add_argument("--tokens", type=int, default=128, help="tokens per request (default: 128)")
    p.add_argument("--clients", default="4,8", help="concurrent clients to measure (default: 4,8)")
    p.add_argument("--repeat", type=int, default=5, help="rounds; medians reported (default: 5)")
    p.add_argument(
        "--sampling",
        choices=sorted(SAMPLINGS),
        default="greedy",
        help="greedy (default): the decode loop's speed; default: the runtime's default "
        "sampling settings, sent to every side alike",
    )
    p.add_argument("--quick", action="store_true", help="32 tokens, 1 repeat")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args(argv)


def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    env = base.model_env(work / "cache")
    if args.unfrozen:
        gguf = args.gguf or base.default_gguf()
        cmd = [sys.executable, "-m", "packer.runtime", "--gguf", str(gguf)]
        env["PYTHONPATH"] = str(ROOT)
    else:
        model_run = args.model_run
        if model_run is None and args.gguf is None and DEMO_RUN.is_file():
            model_run = DEMO_RUN
        if model_run is None:
            log(f"{DEMO_RUN.name} is not there (make demo): using the SmolLM2 Q4_1 GGUF instead")
            model_run = work / "model.run"
            base.build_model_run(args.gguf or base.default_gguf(), model_run)
        model_run = model_run.resolve()
        cmd = [str(model_run)]
        if args.gguf:
            gguf = args.gguf
        else:  # the peer loads the GGUF the model.run unpacks on its first start
            base.run_timed([str(model_run), "-p", "Hi", "-n", "1"], env, timeout=300)
            gguf = base.cached_gguf(work / "cache", base.read_manifest(model_run, env))
    cmd += ["--server", "-t", str(args.threads), "-c", str(base.N_CTX), "-np", str(args.parallel)]
    if args.cpu_variant:
        cmd += ["--cpu-variant", args.cpu_variant]
    cmd += base.sampling_flags()
    n = 32 if args.quick else args.tokens
    repeat = 1 if args.quick else args.repeat
    sampling = SAMPLINGS[args.sampling]
    levels = [1] + [int(c) for c in args.clients.split(",") if c.strip()]
    facts = base.machine_facts()
    servers = {"model.run": cmd}
    if args.llama_server:  # llama.cpp's own server on the same GGUF, slots and threads
        servers["llama-server"] = [
            str(args.llama_server), "-m", str(gguf), "-t", str(args.threads),
            "-tb", str(args.threads), "-c", str(base.N_CTX), "-np", str(args.parallel),
            "-kvu",  # one KV cache shared by the slots, as model.run has
        ]  # fmt: skip
    agg = {name: {c: [] for c in levels} for name in servers}
    ttft = {name: {c: [] for c in levels} for name in servers}
    single: list[float] = []
    peer_tok_s: list[float] = []
    peer = base.Peer(gguf, args.threads, args.cpu_variant)
    try:
        with contextlib.ExitStack() as stack:
            urls = {
                name: stack.enter_context(base.start_server(c, env, name))
                for name, c in servers.items()
            }
            for url in urls.values():
                concurrent(url, 1, 4)  # warm-up
            for i in range(repeat):
                for name, url in urls.items():
                    for c in levels:
                        log(f"round {i + 1}/{repeat}: {name}, {c} concurrent client(s), {n} tokens")
                        r = concurrent(url, c, n, sampling)
                        agg[name][c].append(r["tok_s"])
                        ttft[name][c].extend(r["ttft_s"])
                        if c == 1 and name == "model.run":
                            single.append(r["server_tok_s"][0])
                log(f"round {i + 1}/{repeat}: llama-cpp-python in-process")
                got = peer.generate(PROMPTS[0], n, sampling)
                peer_tok_s.append(got["predicted_per_second"])
    finally:
        peer.close()
    single_med = statistics.median(single)
    peer_med = statistics.median(peer_tok_s)

    def table(name: str) -> dict[str, Any]:
        a = agg[name]
        med = {c: statistics.median(v) for c, v in a.items()}
        return {
            str(c): {
                "tok_s": med[c],
                "ratio_vs_one": med[c] / med[1] if med[1] else None,
                # the same ratio taken within each round, then the median: background load
                # drifts between rounds, so this pairing is the figure the verdict uses
                "paired_ratio": statistics.median(
                    x / one for x, one in zip(a[c], a[1], strict=True) if one
                ),
                "ttft_p50_s": _pct(ttft[name][c], 0.5),
                "ttft_p95_s": _pct(ttft[name][c], 0.95),
                "samples": a[c],
            }
            for c in levels
        }

    versus = None
    if "llama-server" in servers:  # model.run / llama-server, paired within each round
        versus = {
            str(c): {
                "tok_s_ratio": statistics.median(
                    ours / theirs
                    for ours, theirs in zip(
                        agg["model.run"][c], agg["llama-server"][c], strict=True
                    )
                    if theirs
                ),
                "ttft_p95_s": _pct(ttft["model.run"][c], 0.95),
                "llama_server_ttft_p95_s": _pct(ttft["llama-server"][c], 0.95),
            }
            for c in levels
        }
    return {
        "versus_llama_server": versus,
        "machine": facts,
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "settings": {
            "threads": args.threads,
            "parallel": args.parallel,
            "tokens": n,
            "repeat": repeat,
            "n_ctx": base.N_CTX,
            "unfrozen": args.unfrozen,
            "model": Path(cmd[0]).name if not args.unfrozen else str(gguf),
            "cpu_variant": args.cpu_variant or "auto",
            "sampling": args.sampling,
        },
        "single_stream": {
            "server_tok_s": single_med,
            "peer_tok_s": peer_med,
            "ratio": single_med / peer_med if peer_med else None,
            "samples": {"server": single, "peer": peer_tok_s},
        },
        "aggregate": table("model.run"),
        "llama_server": table("llama-server") if "llama-server" in servers else None,
    }


def print_report(r: dict[str, Any]) -> None:
    s = r["single_stream"]
    m = r["machine"]
    print(
        f"\nserver benchmark: {r['settings']['threads']} threads, -np {r['settings']['parallel']},"
        f" {r['settings']['tokens']} tokens/request, median of {r['settings']['repeat']}"
    )
    print(
        f"model: {r['settings']['model']}, CPU variant {r['settings']['cpu_variant']}, "
        f"sampling: {r['settings'].get('sampling', 'greedy')}"
    )
    print(f"load average: start {m['loadavg_start']}, end {r['loadavg_end']}")
    verdict = "ok" if s["ratio"] and s["ratio"] >= 0.95 else "below target"
    print(
        f"single stream: server {s['server_tok_s']:.1f} tok/s, llama-cpp-python "
        f"{s['peer_tok_s']:.1f} tok/s, ratio {s['ratio']:.2f}x (target >= 0.95x: {verdict})"
    )
    tables = [("model.run", r["aggregate"])]
    if r.get("llama_server"):
        tables.append(("llama-server", r["llama_server"]))
    print(
        f"{'server':<13} {'clients':>7} {'aggregate tok/s':>16} {'vs one':>8} {'paired':>8}"
        f" {'TTFT p50':>9} {'TTFT p95':>9}"
    )
    for name, t in tables:
        for c, a in t.items():
            print(
                f"{name:<13} {c:>7} {a['tok_s']:>16.1f} {a['ratio_vs_one']:>7.2f}x"
                f" {a['paired_ratio']:>7.2f}x {a['ttft_p50_s']:>8.2f}s {a['ttft_p95_s']:>8.2f}s"
            )
    print("(vs one: ratio of the medians; paired: median of the ratios within each round)")
    four = r["aggregate"].get("4")
    if four:
        ok = "ok" if four["paired_ratio"] >= 1.4 else "below target"
        print(f"4 clients vs one, paired: {four['paired_ratio']:.2f}x (target >= 1.4x: {ok})")
        theirs = (r.get("llama_server") or {}).get("4")
        if theirs:
            print(f"llama-server, same run: {theirs['paired_ratio']:.2f}x")
    versus = r.get("versus_llama_server")
    if versus:
        print("model.run vs llama-server, same run (tok/s paired within each round):")
        for c in ("1", "4"):
            v = versus.get(c)
            if v is None:
                continue
            ok = "ok" if v["tok_s_ratio"] >= 0.97 else "below target"
            print(f"  {c} client(s): {v['tok_s_ratio']:.3f}x (target >= 0.97x: {ok})")
        v4 = versus.get("4")
        if v4:
            ok = "ok" if v4["ttft_p95_s"] <= v4["llama_server_ttft_p95_s"] else "worse"
            print(
                f"  TTFT p95, 4 clients: {v4['ttft_p95_s']:.3f}s vs "
                f"{v4['llama_server_ttft_p95_s']:.3f}s (target: no worse: {ok})"
            )


def main(argv: list[str] | None = None) -> int:
    return int(base.run_benchmark(parse_args(argv), bench, print_report, "packer-bench-server-"))


if __name__ == "__main__":
    sys.exit(main())
