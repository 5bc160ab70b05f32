"""Soak test of ``model.run --server`` (#14): many mixed requests, then is the server as it was?

    .venv/bin/python benchmarks/soak/run.py                      # the demo model.run (make demo)
    .venv/bin/python benchmarks/soak/run.py --model-run m.run --requests 1000 --clients 8
    .venv/bin/python benchmarks/soak/run.py --quick              # 120 requests: a smoke run

C clients send N requests in total, a fixed deterministic mix (seeded): short completions in
every dialect, streams read to the end, streams dropped after the first event (the client
hangs up mid-generation), embeddings and tokenization, and bad requests (broken JSON, wrong
types, a 100,000-long JSON-schema string, a text/plain POST, a negative chunk size, a body
nested 100,000 deep, 100 stop strings over the cap). Each request must get an HTTP status (a
dropped stream counts once its status line arrived); bad ones a 4xx, none a 5xx.

Before the first and after the last request (once the slots are idle again), the server
process's resident memory (VmRSS), open descriptors and threads are read from /proc. The
figures printed are after/before; the targets: RSS within 5 %, descriptors and threads back
to their baseline, 0 requests lost, 0 answers 5xx.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import random
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEMO_RUN = ROOT / "SmolLM2-135M-Instruct.Q5_K_M.run"
TIMEOUT_S = 120.0
RSS_TARGET = 0.05


def _load_base() -> Any:
    """benchmarks/run.py, for its server and model.run helpers."""
    spec = importlib.util.spec_from_file_location("bench_base", ROOT / "benchmarks" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_base"] = module
    spec.loader.exec_module(module)
    return module


base = _load_base()
log = base.log


# -- one request each: returns the HTTP status, raises OSError when none arrived ----------------


def _post(host: str, port: int, path: str, body: bytes, ctype: str = "application/json") -> int:
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": ctype})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _get(host: str, port: int, path: str) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _stream(host: str, port: int, path: str, body: dict[str, Any], *, drop: bool) -> int:
    """A streaming request read to the end, or dropped after its first line of events."""
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
    try:
        conn.request(
            "POST",
            path,
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        if drop:
            resp.readline()  # the first event, then hang up mid-generation
        else:
            resp.read()
        return resp.status
    finally:
        conn.close()


def _raw(host: str, port: int, data: bytes) -> int:
    """Bytes as they are (bad framing); the status from the answer's first line."""
    with socket.create_connection((host, port), timeout=TIMEOUT_S) as s:
        s.sendall(data)
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError("closed without a status line")
            head += chunk
    return int(head.split(b" ", 2)[1])


def _j(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _kinds(host: str, port: int) -> dict[str, tuple[bool, Callable[[], int]]]:
    """name -> (is a bad request, the call)."""
    short = {"n_predict": 8, "temperature": 0}
    chat = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}
    deep = b"[" * 100_000 + b"]" * 100_000
    negative_chunk = (
        b"POST /completion HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n-1\r\n{}\r\n0\r\n\r\n"
    )
    return {
        "completion": (
            False,
            lambda: _post(host, port, "/completion", _j({"prompt": "Hi", **short})),
        ),
        "openai_chat": (False, lambda: _post(host, port, "/v1/chat/completions", _j(chat))),
        "ollama_generate": (
            False,
            lambda: _post(
                host,
                port,
                "/api/generate",
                _j({"model": "m", "prompt": "Hi", "stream": False, "options": {"num_predict": 8}}),
            ),
        ),  # fmt: skip
        "stream_full": (
            False,
            lambda: _stream(
                host, port, "/v1/chat/completions", {**chat, "stream": True}, drop=False
            ),
        ),
        "stream_dropped": (
            False,
            lambda: _stream(
                host,
                port,
                "/completion",
                {"prompt": "Tell a story.", "n_predict": 64, "stream": True},
                drop=True,
            ),
        ),  # fmt: skip
        "embeddings": (False, lambda: _post(host, port, "/v1/embeddings", _j({"input": "hello"}))),
        "tokenize": (False, lambda: _post(host, port, "/tokenize", _j({"content": "hello world"}))),
        "health": (False, lambda: _get(host, port, "/health")),
        "bad_json": (True, lambda: _post(host, port, "/completion", b'{"prompt": "Hi", ')),
        "bad_types": (
            True,
            lambda: _post(host, port, "/completion", _j({"prompt": 5, "n_predict": "x"})),
        ),
        "huge_schema": (
            True,
            lambda: _post(
                host,
                port,
                "/completion",
                _j(
                    {
                        "prompt": "hi",
                        "n_predict": 2,
                        "json_schema": {"type": "string", "maxLength": 100000},
                    }
                ),
            ),
        ),  # fmt: skip
        "text_plain": (
            True,
            lambda: _post(host, port, "/completion", _j({"prompt": "Hi", **short}), "text/plain"),
        ),
        "deep_json": (True, lambda: _post(host, port, "/completion", deep)),
        "many_stops": (
            True,
            lambda: _post(
                host,
                port,
                "/completion",
                _j({"prompt": "Hi", "stop": [f"s{i}" for i in range(100)], **short}),
            ),
        ),  # fmt: skip
        "negative_chunk": (True, lambda: _raw(host, port, negative_chunk)),
    }


# -- the server process, from /proc --------------------------------------------------------------


def process_facts(pid: int) -> dict[str, int] | None:
    """VmRSS, threads and descriptors of ``pid``; None when it is gone (died: a zombie)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if "VmRSS" not in fields:
        return None
    return {
        "rss_kb": int(fields["VmRSS"].split()[0]),
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def settle(host: str, port: int, pid: int, seconds: float = 3.0) -> dict[str, int] | None:
    """The facts once the server is idle: /health answers and a few readings agree."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if _get(host, port, "/health") == 200:
                break
        except OSError:
            pass
        time.sleep(0.5)
    time.sleep(seconds)  # dropped streams end at their next token; connection threads exit
    return process_facts(pid)


def soak(url: str, pid: int, requests: int, clients: int, seed: int) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    kinds = _kinds(host, int(port))
    names = sorted(kinds)
    rng = random.Random(seed)
    plan = [rng.choice(names) for _ in range(requests)]
    for name in names[: min(len(names), requests)]:  # every kind at least once
        plan[names.index(name)] = name
    for _ in range(3):  # warm-up: the first requests allocate what later ones reuse
        for name in ("completion", "openai_chat", "embeddings", "stream_full"):
            kinds[name][1]()
    before = settle(host, int(port), pid)
    if before is None:
        raise base.BenchError("the server died during the warm-up")
    statuses: dict[str, Counter[str]] = {n: Counter() for n in names}
    lock = threading.Lock()

    def one(name: str) -> None:
        bad, call = kinds[name]
        try:
            code = str(call())
        except OSError as exc:
            code = f"lost ({type(exc).__name__})"
        with lock:
            statuses[name][code] += 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, plan))
    wall = time.perf_counter() - t0
    after = settle(host, int(port), pid)
    lost = sum(n for c in statuses.values() for k, n in c.items() if k.startswith("lost"))
    server_errors = sum(n for c in statuses.values() for k, n in c.items() if k.startswith("5"))
    bad_not_4xx = sum(
        n
        for name, c in statuses.items()
        if kinds[name][0]
        for k, n in c.items()
        if not k.startswith("4")
    )
    return {
        "requests": requests,
        "clients": clients,
        "wall_s": round(wall, 1),
        "statuses": {n: dict(c) for n, c in statuses.items()},
        "lost": lost,
        "server_errors_5xx": server_errors,
        "bad_requests_not_4xx": bad_not_4xx,
        "before": before,
        "after": after,
        "rss_ratio": round(after["rss_kb"] / before["rss_kb"], 4) if after else None,
        "alive": after is not None and _alive(host, int(port)),
    }


def _alive(host: str, port: int) -> bool:
    try:
        return _get(host, port, "/health") == 200
    except OSError:
        return False


def print_report(r: dict[str, Any]) -> bool:
    b, a = r["before"], r["after"]
    print(f"soak: {r['requests']} requests, {r['clients']} clients, {r['wall_s']} s")
    for name, codes in sorted(r["statuses"].items()):
        print(f"  {name:16s} {', '.join(f'{k}: {v}' for k, v in sorted(codes.items()))}")
    if a is None:
        a = {"rss_kb": 0, "fds": -1, "threads": -1}
        print("  [FAIL] the server process died during the soak")
    rss_ok = r["rss_ratio"] is not None and abs(r["rss_ratio"] - 1) <= RSS_TARGET
    dead = r["after"] is None
    lost, e5, bad = r["lost"], r["server_errors_5xx"], r["bad_requests_not_4xx"]
    checks = {
        f"RSS after/before {r['rss_ratio'] or 0:.3f} ({b['rss_kb'] / 1024:.0f} -> "
        f"{a['rss_kb'] / 1024:.0f} MB, target within 5 %)": rss_ok,
        f"open descriptors {b['fds']} -> {a['fds']} (back to baseline)": not dead
        and a["fds"] <= b["fds"],
        f"threads {b['threads']} -> {a['threads']} (back to baseline)": not dead
        and a["threads"] <= b["threads"],
        f"requests lost: {lost}": lost == 0,
        f"5xx answers: {e5}": e5 == 0,
        f"bad requests not refused with a 4xx: {bad}": bad == 0,
        "server alive afterwards (/health 200)": r["alive"],
    }
    for text, ok in checks.items():
        print(f"  [{'ok' if ok else 'FAIL'}] {text}")
    return all(checks.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-run", type=Path, help="the model.run to serve (default: the demo)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=4, help="-np slots")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--quick", action="store_true", help="120 requests")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    requests = 120 if args.quick else args.requests
    with tempfile.TemporaryDirectory(prefix="packer-soak-") as tmp:
        work = Path(tmp)
        env = base.model_env(work / "cache")
        model_run = args.model_run or (DEMO_RUN if DEMO_RUN.is_file() else None)
        if model_run is None:
            log(f"{DEMO_RUN.name} is not there (make demo): using the SmolLM2 Q4_1 GGUF instead")
            model_run = work / "model.run"
            base.build_model_run(base.default_gguf(), model_run)
        cmd = [
            str(model_run.resolve()),
            "--server",
            "-t",
            str(args.threads),
            "-np",
            str(args.parallel),
        ]
        with base.start_server_process(cmd, env) as (url, proc):
            result = soak(url, proc.pid, requests, args.clients, args.seed)
    ok = print_report(result)
    if args.json:
        base.save_json(args.json, result, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except base.BenchError as exc:
        print(f"soak: error: {exc}", file=sys.stderr)
        sys.exit(2)
