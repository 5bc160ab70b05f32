"""End to end on the real demo model.run: a start without a terminal (a double-click), the
browser opened by --server, and serving a class on the LAN (inside a network namespace).

A fake ``xdg-open`` first on PATH records the URL it is given. The model.run runs with a clean
environment (``env -i`` and only what each test names) and the sandbox on (the default).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port
from terminal_qr import decode_terminal_qr, qr_lines

pytestmark = pytest.mark.slow

START_S = 240  # the first start unpacks the model; 2 shared cores


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for this file's starts: the model is unpacked once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def browser(tmp_path: Path) -> tuple[Path, Path]:
    """A folder with a fake xdg-open (for PATH) and the file it records URLs in."""
    folder = tmp_path / "bin"
    folder.mkdir()
    record = tmp_path / "opened.txt"
    script = folder / "xdg-open"
    script.write_text(f'#!/bin/sh\necho "$1" >> {record}\n')
    script.chmod(0o755)
    return folder, record


def start(
    exe: Path, args: list[str], env: dict[str, str], folder: Path, name: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """model.run with nothing but ``env``, no terminal: stdin /dev/null, output to files."""
    err = folder / f"{name}.err"
    with open(folder / f"{name}.out", "wb") as out, open(err, "wb") as errf:
        proc = subprocess.Popen(
            ["env", "-i", *(f"{k}={v}" for k, v in env.items()), str(exe), *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=errf,
            cwd=folder,
        )
    return proc, err


def wait_until(
    what: str, check, proc: subprocess.Popen[bytes], err: Path, timeout: float = START_S
):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        assert proc.poll() is None, f"model.run ended ({proc.returncode}):\n{err.read_text()}"
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{err.read_text()}")


def recorded(record: Path) -> list[str]:
    text = record.read_text() if record.exists() else ""
    return [line for line in text.splitlines() if line] if text.endswith("\n") else []


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


def get(url: str, key: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_double_click_serves_opens_the_browser_and_stops_on_sigterm(
    demo_run: Path, cache: Path, browser: tuple[Path, Path], tmp_path: Path, procs: list
) -> None:
    bindir, record = browser
    port = free_port()
    env = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "DISPLAY": ":99",
        "PACKER_CACHE": str(cache),
        "PACKER_ARGS": f"--port {port} -t 2",  # baked-in style defaults: still no mode flag
    }
    proc, err = start(demo_run, [], env, tmp_path, "first")
    procs.append(proc)
    url = wait_until("the browser", lambda: recorded(record), proc, err)[0]
    assert url == f"http://127.0.0.1:{port}/"
    status, page = get(url)
    assert status == 200 and b"<html" in page.lower()
    first_line = err.read_text().splitlines()[0]
    assert "started without a terminal" in first_line, first_line
    log_file = Path(first_line.rsplit(" in ", 1)[1])
    assert log_file.parent == cache / "logs" and log_file.suffix == ".log"
    assert f"on http://127.0.0.1:{port}" in log_file.read_text()
    assert len(err.read_text().splitlines()) == 1  # the rest goes to the log

    # a second double-click while it runs: the same page again, no second model in memory
    t0 = time.monotonic()
    second, err2 = start(demo_run, [], env, tmp_path, "second")
    procs.append(second)
    assert second.wait(timeout=60) == 0, err2.read_text()
    assert time.monotonic() - t0 < 30
    assert recorded(record) == [url, url]
    assert "already running" in log_file.read_text()

    assert stop(proc, signal.SIGTERM) == 0
    assert "Traceback" not in log_file.read_text()


def test_double_click_port_taken_sighup_and_logout(
    demo_run: Path, cache: Path, browser: tuple[Path, Path], tmp_path: Path, procs: list
) -> None:
    """Wayland this time; the port is taken by another program; SIGHUP stops it; then a start
    whose display goes away (a logout that sends no signal) stops by itself."""
    bindir, record = browser
    display = tmp_path / "wayland-test"
    compositor = socket.socket(socket.AF_UNIX)
    compositor.bind(str(display))
    compositor.listen()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    env = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "WAYLAND_DISPLAY": str(display),
        "PACKER_CACHE": str(cache),
        "PACKER_ARGS": f"--port {port} -t 2",
    }
    proc, err = start(demo_run, [], env, tmp_path, "hup")
    procs.append(proc)
    url = wait_until("the browser", lambda: recorded(record), proc, err)[0]
    assert url != f"http://127.0.0.1:{port}/"  # not the taken port, not a silent failure
    assert get(url)[0] == 200
    taken.close()
    assert stop(proc, signal.SIGHUP) == 0

    proc, err = start(demo_run, [], env, tmp_path, "logout")
    procs.append(proc)
    wait_until("the browser", lambda: len(recorded(record)) == 2, proc, err)
    log_file = Path(err.read_text().splitlines()[0].rsplit(" in ", 1)[1])
    compositor.close()
    display.unlink()
    assert proc.wait(timeout=30) == 0
    assert "desktop session has ended" in log_file.read_text()


def test_server_opens_the_browser_unless_nobrowser_or_no_desktop(
    demo_run: Path, cache: Path, browser: tuple[Path, Path], tmp_path: Path, procs: list
) -> None:
    bindir, record = browser
    base = {"PATH": f"{bindir}:/usr/bin:/bin", "PACKER_CACHE": str(cache)}
    cases = [
        ("nobrowser", {**base, "DISPLAY": ":99"}, ["--nobrowser"], False),
        ("nodisplay", base, [], False),
        ("server", {**base, "DISPLAY": ":99"}, [], True),
    ]
    for name, env, extra, opens in cases:
        port = free_port()
        proc, err = start(
            demo_run, ["--server", "--port", str(port), "-t", "2", *extra], env, tmp_path, name
        )
        procs.append(proc)
        wait_until(
            "the server",
            lambda port=port: _listening(port) and get(f"http://127.0.0.1:{port}/health")[0] == 200,
            proc,
            err,
        )
        if opens:
            wait_until("the browser", lambda: recorded(record), proc, err, timeout=10)
            assert recorded(record) == [f"http://127.0.0.1:{port}/"]
        else:
            time.sleep(1.5)
            assert recorded(record) == [], name
        text = err.read_text()
        assert "serving" in text and "xdg-open" not in text and "started without" not in text
        assert stop(proc) == 0
        record.unlink(missing_ok=True)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# -- serving a class, in a network namespace of its own ----------------------------------------

NS_DRIVER = r"""
import json, subprocess, sys, time, urllib.error, urllib.request
exe, port, keyfile, folder, cache = sys.argv[1:]
def ip(*a): return subprocess.run(["ip", *a], capture_output=True).returncode == 0
ip("link", "set", "lo", "up")
if not ip("link", "add", "class0", "type", "dummy"):  # no dummy module: a veth pair
    ip("link", "add", "class0", "type", "veth", "peer", "name", "class1")
    ip("link", "set", "class1", "up")
ip("addr", "add", "10.77.0.2/24", "dev", "class0")
ip("link", "set", "class0", "up")
ip("link", "add", "down0", "type", "veth", "peer", "name", "down1")  # down: not listed
ip("addr", "add", "10.88.0.2/24", "dev", "down0")
def get(url, key=None):
    h = {"Authorization": "Bearer " + key} if key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=h), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
out = {}
for name, extra in (("open", []), ("key", ["--api-key-file", keyfile])):
    with open(f"{folder}/{name}.err", "wb") as err:
        p = subprocess.Popen(["env", "-i", "PACKER_CACHE=" + cache, exe, "--server", "--host",
                              "0.0.0.0", "--port", port, "-t", "2", *extra],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    base = f"http://10.77.0.2:{port}"
    for _ in range(1200):
        try:
            urllib.request.urlopen(base + "/health", timeout=5).read()
            break
        except OSError:
            if p.poll() is not None:
                break
            time.sleep(0.2)
    out[name] = {"no_key": get(base + "/v1/models"), "key": get(base + "/v1/models", "class-key")}
    p.terminate()
    out[name]["rc"] = p.wait(timeout=60)
print(json.dumps(out))
"""


def test_host_0000_lists_lan_urls_qr_and_key_warning(
    demo_run: Path, cache: Path, tmp_path: Path
) -> None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip (util-linux, iproute2) for a network namespace")
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no unprivileged network namespaces here: {probe.stderr.strip()}")
    keyfile = tmp_path / "class.key"
    keyfile.write_text("class-key\n")
    port = str(free_port())
    p = subprocess.run(
        [
            "unshare",
            "-rn",
            sys.executable,
            "-c",
            NS_DRIVER,
            str(demo_run),
            port,
            str(keyfile),
            str(tmp_path),
            str(cache),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    url = f"http://10.77.0.2:{port}/"
    for name in ("open", "key"):
        err = (tmp_path / f"{name}.err").read_text()
        urls = [line.strip() for line in err.splitlines() if line.startswith("  http://")]
        assert urls == [url], err  # the down interface and loopback are not listed
        assert decode_terminal_qr(qr_lines(err)) == [url], err
        assert result[name]["rc"] == 0, err
    assert result["open"]["no_key"] == 200
    assert "no API key" in (tmp_path / "open.err").read_text()
    assert "no API key" not in (tmp_path / "key.err").read_text()
    assert result["key"] == {"no_key": 401, "key": 200, "rc": 0}
