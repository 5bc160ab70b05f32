"""model.run gives up privileges and writes before it loads the model (issue #14, beyond the
anchors): no_new_privs, and Landlock confining writes (runtime/sandbox.py).

The module is tried in a child Python (a sandbox cannot be undone, and pytest must keep
writing); the runtime, unfrozen and frozen, is checked to run under it: every thread of a
running server has NoNewPrivs set, and it still answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, smollm_gguf_path

from packer.runtime import sandbox

sys.path.insert(0, str(Path(__file__).resolve().parent))

import test_backend_isolation as iso  # noqa: E402

smollm_run = iso.smollm_run  # the same fixture: a real model.run of the SmolLM2 GGUF

LANDLOCK_ABI, NO_LANDLOCK_WHY = sandbox.landlock_abi()
needs_landlock = pytest.mark.skipif(
    not LANDLOCK_ABI, reason=f"no Landlock on this machine: {NO_LANDLOCK_WHY}"
)

CHILD = r"""
import errno, json, os, subprocess, sys, threading
from pathlib import Path
from packer.runtime import sandbox

allowed, outside, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
if mode == "no-landlock":  # a kernel without Landlock: its system call answers ENOSYS
    sandbox.SYS_CREATE_RULESET = 100000
opened_before = open(outside / "opened-before", "w")
box = sandbox.restrict([allowed])
if mode == "two-steps":  # model.run's second step: a layer with no folder at all
    box = sandbox.before_model(gpu=False)
out = {"describe": box.describe(), "abi": box.landlock_abi}

def attempt(name, action):
    try:
        action()
        out[name] = "ok"
    except OSError as exc:
        out[name] = errno.errorcode.get(exc.errno, str(exc.errno))

def write(path, mode="w"):
    with open(path, mode) as f:
        f.write("x")

attempt("write_inside", lambda: write(allowed / "new"))
attempt("mkdir_inside", lambda: (allowed / "sub").mkdir())
attempt("rename_inside", lambda: os.replace(allowed / "new", allowed / "sub" / "moved"))
attempt("remove_inside", lambda: (allowed / "sub" / "moved").unlink())
attempt("create_outside", lambda: write(outside / "new"))
attempt("overwrite_outside", lambda: write(outside / "existing", "r+"))
attempt("truncate_outside", lambda: os.truncate(outside / "existing", 0))
attempt("mkdir_outside", lambda: (outside / "sub").mkdir())
attempt("remove_outside", lambda: (outside / "existing").unlink())
attempt("symlink_outside", lambda: (outside / "link").symlink_to("/etc/passwd"))
attempt("rename_out_of_allowed", lambda: os.replace(allowed / "keep", outside / "keep"))
attempt("read_outside", lambda: (outside / "existing").read_text())
attempt("dev_null", lambda: write("/dev/null"))
attempt("fd_opened_before", lambda: opened_before.write("still") and opened_before.flush())
thread = threading.Thread(target=attempt, args=("thread_outside", lambda: write(outside / "t")))
thread.start()
thread.join()
child = subprocess.run(["sh", "-c", f"echo x > {outside}/from-child"], capture_output=True)
out["child_outside"] = "ok" if child.returncode == 0 else "refused"
status = Path("/proc/self/status").read_text()
out["no_new_privs"] = next(l.split()[1] for l in status.splitlines() if l.startswith("NoNewPrivs"))
print(json.dumps(out))
"""


def _child(tmp_path: Path, mode: str = "", env: dict[str, str] | None = None) -> dict[str, object]:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "keep").write_text("k")
    (outside / "existing").write_text("e")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(allowed), str(outside), mode],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or {**os.environ},
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@needs_landlock
def test_writes_only_where_allowed(tmp_path: Path) -> None:
    out = _child(tmp_path)
    assert out["abi"] == LANDLOCK_ABI and out["no_new_privs"] == "1", out
    assert "writes only to" in str(out["describe"]) and str(tmp_path / "allowed") in str(
        out["describe"]
    )
    for name in ("write_inside", "mkdir_inside", "rename_inside", "remove_inside"):
        assert out[name] == "ok", (name, out)
    for name in (
        "create_outside",
        "overwrite_outside",
        "mkdir_outside",
        "remove_outside",
        "symlink_outside",
        "rename_out_of_allowed",
        "thread_outside",
    ):
        assert out[name] == "EACCES", (name, out)
    if LANDLOCK_ABI >= 3:  # truncation is a right of its own from ABI 3 on
        assert out["truncate_outside"] == "EACCES", out
    assert out["child_outside"] == "refused"
    # reading, /dev/null, and files opened before stay usable
    assert out["read_outside"] == out["dev_null"] == out["fd_opened_before"] == "ok", out
    assert not (tmp_path / "outside" / "new").exists()
    assert (tmp_path / "outside" / "existing").read_text() == "e"


@needs_landlock
def test_second_step_closes_the_first_steps_folders(tmp_path: Path) -> None:
    out = _child(tmp_path, "two-steps")
    assert (
        out["describe"]
        == f"sandbox: no_new_privs set; Landlock ABI {LANDLOCK_ABI}: writes only to /dev"
    )
    assert out["write_inside"] == out["mkdir_inside"] == out["create_outside"] == "EACCES", out
    assert out["read_outside"] == out["dev_null"] == "ok", out


def test_without_landlock_it_is_one_debug_line_and_no_failure(tmp_path: Path) -> None:
    out = _child(tmp_path, "no-landlock")
    assert out["abi"] == 0 and out["no_new_privs"] == "1", out
    assert out["describe"] == (
        "sandbox: no_new_privs set; no Landlock (this kernel has none (Linux 5.13 or later has it))"
    )
    assert out["create_outside"] == "ok"  # nothing else is refused


def test_packer_sandbox_0_turns_it_off(tmp_path: Path) -> None:
    out = _child(tmp_path, env={**os.environ, "PACKER_SANDBOX": "0"})
    assert out["abi"] == 0 and out["no_new_privs"] == "0", out
    assert out["create_outside"] == "ok"


def _thread_flags(pid: int) -> dict[str, str]:
    """NoNewPrivs of every thread of ``pid``."""
    flags = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        status = (task / "status").read_text()
        name = next(
            line.split(None, 1)[1] for line in status.splitlines() if line.startswith("Name")
        )
        nnp = next(line.split()[1] for line in status.splitlines() if line.startswith("NoNewPrivs"))
        flags[f"{task.name} {name.strip()}"] = nnp
    return flags


def _check_server(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Start a server, check that it answers and that all its threads are confined; its stderr."""
    port = free_port()
    log_path = cwd / "server.log"  # --verbose says a lot: a pipe nobody reads would fill up
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [*cmd, "--server", "--port", str(port), "-t", "2", "--verbose"],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        iso.wait_healthy(base, proc)
        assert iso.complete(base)  # a generation: the decode thread and llama.cpp's workers
        server_pid = proc.pid
        if Path(cmd[0]).suffix == ".run":  # the launcher execs the runtime: the same pid
            assert Path(f"/proc/{server_pid}/exe").resolve().name == "packer-runtime"
        flags = _thread_flags(server_pid)
        assert len(flags) > 2 and set(flags.values()) == {"1"}, flags
        assert iso.complete(base)
    finally:
        iso.stop(proc)
    return log_path.read_text()


def test_starting_loads_nothing_that_starts_threads() -> None:
    """The sandbox's first step comes after main's imports: a module they pull in that loads
    numpy (its OpenBLAS pool) or llama.cpp at import time starts threads the sandbox can no
    longer cover (the prompt cache's numpy did). Checked in a fresh interpreter."""
    code = (
        "import sys, threading, packer.runtime.main\n"
        "print(sorted(m for m in ('numpy', 'llama_cpp') if m in sys.modules),"
        " threading.active_count())\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["[]", "1"], res.stdout + res.stderr


@needs_landlock
def test_unfrozen_server_runs_confined(tmp_path: Path) -> None:
    env = {**os.environ, "PACKER_CACHE": str(tmp_path / "cache")}
    env.pop("PACKER_SANDBOX", None)
    err = _check_server(
        [sys.executable, "-m", "packer.runtime", "--gguf", str(smollm_gguf_path())], tmp_path, env
    )
    assert_two_steps(err, tmp_path / "cache")


def assert_two_steps(log: str, cache: Path) -> None:
    """The two debug lines of model.run's sandbox, in order: the cache, then nothing."""
    first = f"sandbox: no_new_privs set; Landlock ABI {LANDLOCK_ABI}: writes only to {cache}, /dev"
    second = f"sandbox: no_new_privs set; Landlock ABI {LANDLOCK_ABI}: writes only to /dev\n"
    assert first in log and second in log and log.index(first) < log.index(second), log[-3000:]


@pytest.mark.slow
@needs_landlock
def test_model_run_runs_confined(smollm_run: Path, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PACKER_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [str(smollm_run), "-p", "Hi", "-n", "4", "--verbose"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr[-3000:]
    assert_two_steps(proc.stderr, tmp_path / "cache")
    assert_two_steps(_check_server([str(smollm_run)], tmp_path, env), tmp_path / "cache")


def test_no_landlock_where_dev_null_is_not_a_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bare root with an empty /dev (tests/test_noinstall.py's): libraries create /dev/null
    as a plain file there, which Landlock would refuse; the sandbox leaves writes alone."""
    from packer.runtime import sandbox

    monkeypatch.setattr(sandbox, "_dev_null_is_a_device", lambda: False)
    monkeypatch.setattr(sandbox, "_set_no_new_privs", lambda libc: True)
    called: list[object] = []
    monkeypatch.setattr(sandbox, "_landlock", lambda *a: called.append(a))
    result = sandbox.restrict([None])
    assert result.no_new_privs and result.landlock_abi == 0 and not called
    assert result.why_not == "/dev/null is not a device here"
    assert "no Landlock (/dev/null is not a device here)" in result.describe()
