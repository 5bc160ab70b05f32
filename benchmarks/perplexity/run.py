"""``packer eval`` against llama.cpp's own ``llama-perplexity``: the same GGUF, text and context,
in one run; prints both perplexities and tokens/s and the ratio.

    .venv/bin/python benchmarks/perplexity/run.py --gguf model.gguf
    .venv/bin/python benchmarks/perplexity/run.py --gguf model.gguf --text es --ctx 512 --repeat 3
    .venv/bin/python benchmarks/perplexity/run.py --model-run SmolLM2-135M-Instruct.Q5_K_M.run

The peer is the binary ``benchmarks/perplexity/llama-perplexity.sh`` builds (the vendored
llama.cpp, our patches, in the build folder of ``benchmarks/variants/llama-peers.sh``), or
``--peer PATH``. tokens/s on both sides: tokens decoded (whole windows) per second of decoding,
model loading left out (ours: :attr:`Figures.tokens_per_second`; the peer's: from its log's
timestamps, "calculating perplexity" to "Final estimate"). Rounds alternate (ours, the peer's, ours, ...) and medians are
reported, so background load hits both alike.

Targets: tokens/s >= 0.9x the peer's; perplexity within 1 % of the peer's (the definitions are
the same, so it should be within rounding). Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

SPEED_TARGET = 0.9
PPL_TOLERANCE = 0.01
# llama-perplexity's log lines start with a timestamp, minutes.seconds.ms.us since it started
STAMP = r"(\d+)\.(\d+)\.(\d+)\.(\d+)"
START = re.compile(STAMP + r" I perplexity: calculating perplexity over (\d+) chunks, n_ctx=(\d+)")
FINAL = re.compile(STAMP + r" I Final estimate: PPL = ([0-9.]+)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf", type=Path, help="the GGUF to measure")
    src.add_argument("--model-run", type=Path, help="a model.run: its GGUF is measured")
    ap.add_argument("--text", default="en", help="en, es or a UTF-8 file (default: en)")
    ap.add_argument("--ctx", type=int, default=512, help="tokens per window (default: 512)")
    ap.add_argument("--threads", type=int, default=0, help="threads (default: all CPUs)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds (default: 1)")
    ap.add_argument("--peer", type=Path, help="llama-perplexity binary (default: build it)")
    args = ap.parse_args(argv)
    if args.ctx < 16:
        ap.error("--ctx must be 16 or more")
    if args.repeat < 1:
        ap.error("--repeat must be 1 or more")
    if args.peer is not None and not os.access(args.peer, os.X_OK):
        ap.error(f"--peer {args.peer}: not an executable file")
    model = args.gguf or args.model_run
    if not model.is_file():
        ap.error(f"{model}: no such file")
    return args


def peer_binary(given: Path | None) -> Path:
    if given is not None:
        return given
    proc = subprocess.run(
        [str(HERE / "llama-perplexity.sh"), "haswell", sys.executable],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return Path(proc.stdout.strip().splitlines()[-1])


def run_peer(
    peer: Path, gguf: Path, text_file: Path, ctx: int, threads: int
) -> tuple[float, float]:
    """The peer's perplexity and decoding tokens/s."""
    proc = subprocess.run(
        [str(peer), "-m", str(gguf), "-f", str(text_file), "-c", str(ctx), "-t", str(threads)],
        capture_output=True,
        text=True,
    )
    log = proc.stdout + proc.stderr
    start, final = START.search(log), FINAL.search(log)
    if proc.returncode != 0 or not start or not final:
        tail = "\n".join(log.splitlines()[-15:])
        raise SystemExit(f"llama-perplexity failed ({proc.returncode}):\n{tail}")

    def seconds(m: re.Match[str]) -> float:
        mins, secs, ms, us = (int(g) for g in m.groups()[:4])
        return mins * 60 + secs + ms / 1e3 + us / 1e6

    tokens = int(start.group(5)) * int(start.group(6))
    return float(final.group(5)), tokens / (seconds(final) - seconds(start))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from packer.evaluate import gguf_of, load_text, measure, runtime_for_eval

    text = load_text(args.text)
    gguf = gguf_of(args.gguf or args.model_run)
    threads = args.threads or len(os.sched_getaffinity(0))
    peer = peer_binary(args.peer)
    ours_ppl, ours_tps, peer_ppl, peer_tps = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp, runtime_for_eval() as runtime:
        text_file = Path(tmp) / "text.txt"
        text_file.write_text(text.text, encoding="utf-8")  # without the built-in's header
        for r in range(args.repeat):
            t = time.perf_counter()
            f = measure(gguf, text, ctx=args.ctx, threads=threads, runtime=runtime)
            ours_ppl.append(f.perplexity)
            ours_tps.append(f.tokens_per_second)
            print(
                f"round {r + 1}: packer eval       PPL {f.perplexity:.4f}  "
                f"{f.tokens_per_second:8.1f} tokens/s  ({time.perf_counter() - t:.0f} s in all)",
                flush=True,
            )
            t = time.perf_counter()
            ppl, tps = run_peer(peer, gguf, text_file, args.ctx, threads)
            peer_ppl.append(ppl)
            peer_tps.append(tps)
            print(
                f"round {r + 1}: llama-perplexity  PPL {ppl:.4f}  {tps:8.1f} tokens/s  "
                f"({time.perf_counter() - t:.0f} s in all)",
                flush=True,
            )
    ours, theirs = statistics.median(ours_tps), statistics.median(peer_tps)
    ppl_o, ppl_p = statistics.median(ours_ppl), statistics.median(peer_ppl)
    ratio = ours / theirs
    diff = abs(ppl_o - ppl_p) / ppl_p
    print(f"{gguf.name}, text {text.key}, ctx {args.ctx}, {threads} threads, {f.chunks} windows")
    print(f"tokens/s: packer eval {ours:.1f}, llama-perplexity {theirs:.1f}: ratio {ratio:.3f}x")
    print(f"perplexity: packer eval {ppl_o:.4f}, llama-perplexity {ppl_p:.4f}: {100 * diff:.3f} %")
    ok = ratio >= SPEED_TARGET and diff <= PPL_TOLERANCE
    print(
        f"targets: speed >= {SPEED_TARGET}x, perplexity within {100 * PPL_TOLERANCE:.0f} %: "
        + ("met" if ok else "MISSED")
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
