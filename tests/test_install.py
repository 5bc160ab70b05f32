"""packer installed as a wheel, with no compiler anywhere (#13).

``build/dist.py --out DIR`` (``make dist``) builds ``packer_llm-<version>-py3-none-
manylinux_2_31_x86_64.whl``: the ``packer`` package with the prebuilt runtime stub, whose
dependencies are all binary wheels. Here:

* the wheel's content, name, size and requirements (built once per module);
* ``build/wheelhouse.py``: the requirements downloaded once with ``pip download --only-binary
  :all:`` (which is the check that they resolve to wheels on this Python) and cached under
  ``~/.cache/packer/wheelhouse-<key>``, so reruns are offline;
* a fresh venv on this machine: ``pip install --no-index --only-binary :all:`` from that
  wheelhouse, then ``packer --help`` and ``python -m packer --help``;
* the end-to-end check: a bare Debian 12 root (debootstrap minbase + python3 + python3-venv,
  ``build/debian-root.sh --include``, cached under ~/.cache/packer/roots) with no compiler nor
  build tool on any PATH folder. Inside it, as the non-root user ``student``, with no network
  (its own network namespace): a venv, the wheel installed from the wheelhouse, ``packer build``
  of the demo checkpoint to Q5_K_M, and the model.run answering the demo question. Nothing may
  be written outside the user's home and /tmp.

The fast tests cover build/wheelhouse.py and build/debian-root.sh's naming only. The slow ones
need build/dist.py (skipped until it exists), the network the first time (PyPI, and
deb.debian.org for the root), and root for the Debian root (chroot, mount, unshare).
The step times are printed at the end of the module (root, wheelhouse, install, build, run).
Run: .venv/bin/pytest -q tests/test_install.py
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from answers import DEMO_ANSWER, DEMO_QUESTION
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
DIST_SCRIPT = ROOT / "build" / "dist.py"
WHEELHOUSE_SCRIPT = ROOT / "build" / "wheelhouse.py"
MAKE_ROOT = ROOT / "build" / "debian-root.sh"
WHEEL_TAG = "py3-none-manylinux_2_31_x86_64"
MAX_WHEEL_BYTES = 45_000_000
STUB_IN_WHEEL = "packer/_stub/cpu/packer-runtime"
NOT_DEPENDENCIES = ("llama-cpp-python", "pyinstaller")  # the runtime-build extra's
SUITE = "bookworm"
ROOT_PACKAGES = "python3,python3-venv"
USER = "student"
HOME = f"/home/{USER}"
QUANT = "Q5_K_M"
# compilers, linkers, assemblers and build tools, with or without a target prefix
# (x86_64-linux-gnu-gcc-12) or a version suffix (gcc-12, clang-16, ld.bfd)
BUILD_TOOL = re.compile(
    r"(?:[\w.-]+-)?(?:cc|c\+\+|gcc|g\+\+|cpp|clang|clang\+\+|tcc|icx|icc|ld|ld\.\w+|as|"
    r"cmake|make|gmake|ninja|meson)(?:-[0-9.]+)?"
)
NOT_BUILD_TOOLS = {"ld.so"}  # Debian's /usr/bin/ld.so: the dynamic loader, not a linker
# what the root test may change in the root: the user's home (output included), /tmp, and the
# mount points of the run
WRITABLE = ("home/" + USER, "tmp", "proc", "dev")

TIMES: dict[str, float] = {}


wheelhouse_mod = load_script(WHEELHOUSE_SCRIPT)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(req: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    assert m, req
    return _canonical(m.group(1))


def _bare_env(home: Path, *path: Path) -> dict[str, str]:
    """A user's environment: no PYTHONPATH (the checkout must not leak into a venv), no VIRTUAL_ENV
    nor PIP_* settings of this session."""
    dirs = [*(str(p) for p in path), "/usr/local/bin", "/usr/bin", "/bin"]
    return {"HOME": str(home), "PATH": ":".join(dirs), "LANG": "C.UTF-8"}


def _timed(name: str, started: float) -> float:
    TIMES[name] = time.monotonic() - started
    return TIMES[name]


@pytest.fixture(scope="module", autouse=True)
def _report_times(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if TIMES:
        line = "test_install times: " + ", ".join(f"{k} {v:.1f} s" for k, v in TIMES.items())
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print(f"\n{line}", file=sys.stderr)


# -- fast: build/wheelhouse.py and build/debian-root.sh's names ---------------------------------


def _fake_wheel(folder: Path, requires: list[str], version: str = "0.1.0") -> Path:
    wheel = folder / f"packer_llm-{version}-{WHEEL_TAG}.whl"
    meta = "Metadata-Version: 2.1\nName: packer-llm\nVersion: " + version + "\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("packer/__init__.py", "")
        zf.writestr(f"packer_llm-{version}.dist-info/METADATA", meta)
    return wheel


def test_wheelhouse_requirements_and_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACKER_WHEELHOUSE_DIR", str(tmp_path / "cache"))
    reqs = ["numpy>=1.24", "click>=8.1", 'pyinstaller>=6.0; extra == "runtime-build"']
    wheel = _fake_wheel(tmp_path, reqs)
    assert wheelhouse_mod.requirements(wheel) == ["click>=8.1", "numpy>=1.24"]
    where = wheelhouse_mod.folder(wheel)
    assert where.parent == tmp_path / "cache" and where.name.startswith("wheelhouse-")
    # a rebuilt wheel (another version) with the same requirements shares the folder
    (tmp_path / "v2").mkdir()
    assert wheelhouse_mod.folder(_fake_wheel(tmp_path / "v2", reqs, "0.2.0")) == where
    # new requirements, another Python or platform: another folder
    (tmp_path / "v3").mkdir()
    assert wheelhouse_mod.folder(_fake_wheel(tmp_path / "v3", [*reqs, "zstandard>=0.22"])) != where
    assert wheelhouse_mod.folder(wheel, "3.99") != where
    assert wheelhouse_mod.folder(wheel, None, "manylinux_2_31_x86_64") != where
    # --path only says where; nothing is made
    proc = subprocess.run(
        [sys.executable, str(WHEELHOUSE_SCRIPT), "--path", str(wheel)],
        capture_output=True,
        text=True,
        env={**os.environ, "PACKER_WHEELHOUSE_DIR": str(tmp_path / "cache")},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(where)
    assert not (tmp_path / "cache").exists()


def test_wheelhouse_download_command_for_another_python(tmp_path: Path) -> None:
    reqs = tmp_path / "r.txt"
    mine = wheelhouse_mod.pip_download_command(reqs, tmp_path, None, None)
    assert mine[mine.index("--only-binary") + 1] == ":all:"
    assert "--python-version" not in mine and "--platform" not in mine
    other = wheelhouse_mod.pip_download_command(reqs, tmp_path, "3.99", "manylinux_2_36_x86_64")
    assert other[other.index("--python-version") + 1] == "3.99"
    assert other[other.index("--abi") + 1] == "cp399"
    assert other[other.index("--platform") + 1] == "manylinux_2_36_x86_64"


def test_debian_root_names(tmp_path: Path) -> None:
    env = {**os.environ, "PACKER_ROOTS_DIR": str(tmp_path)}

    def path(*args: str) -> str:
        proc = subprocess.run(
            ["bash", str(MAKE_ROOT), "--path", *args], capture_output=True, text=True, env=env
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    assert path() == f"{tmp_path}/debian-bookworm-minbase-amd64.tar.gz"
    assert path("--include", ROOT_PACKAGES, SUITE) == (
        f"{tmp_path}/debian-bookworm-minbase+python3+python3-venv-amd64.tar.gz"
    )
    bad = subprocess.run(
        ["bash", str(MAKE_ROOT), "--include", "python3;rm", SUITE],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 2 and "package names" in bad.stderr
    assert not any(tmp_path.iterdir())


def test_build_tool_names() -> None:
    for name in ("cc", "gcc", "gcc-12", "x86_64-linux-gnu-gcc-12", "c++", "g++", "clang-16"):
        assert BUILD_TOOL.fullmatch(name), name
    for name in ("cmake", "make", "ld", "ld.bfd", "ld.gold", "as", "x86_64-linux-gnu-ld"):
        assert BUILD_TOOL.fullmatch(name), name
    for name in ("python3", "pip", "packer", "ldd", "cat", "tclsh", "dash", "chacl", "base64"):
        assert not BUILD_TOOL.fullmatch(name), name


# -- the wheel ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `make dist` builds, built once for this module."""
    if not DIST_SCRIPT.is_file():
        pytest.skip("build/dist.py (the wheel builder, `make dist`) does not exist yet")
    out = tmp_path_factory.mktemp("dist")
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(DIST_SCRIPT), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    _timed("wheel build", started)
    assert proc.returncode == 0, f"build/dist.py failed ({proc.returncode}):\n{proc.stderr}"
    lines = proc.stdout.strip().splitlines()
    assert lines, f"build/dist.py printed nothing on stdout:\n{proc.stderr}"
    path = Path(lines[-1])
    assert path.is_file(), f"build/dist.py's last line is not a file: {lines[-1]!r}"
    assert path.parent.resolve() == out.resolve(), f"the wheel is not in --out: {path}"
    assert [p.name for p in out.iterdir()] == [path.name], "more than the wheel in --out"
    return path


def _wheelhouse(wheel: Path, *target: str) -> Path:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(WHEELHOUSE_SCRIPT), str(wheel), *target],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    _timed("wheelhouse" + (f" ({' '.join(target)})" if target else ""), started)
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def wheelhouse(wheel: Path) -> Path:
    """The wheel's requirements as binary wheels for this Python, cached across sessions."""
    return _wheelhouse(wheel)


def _version() -> str:
    m = re.search(r'^__version__ = "([^"]+)"', (ROOT / "packer" / "__init__.py").read_text(), re.M)
    assert m
    return m.group(1)


@pytest.mark.slow
def test_wheel_name_and_size(wheel: Path) -> None:
    assert wheel.name == f"packer_llm-{_version()}-{WHEEL_TAG}.whl"
    size = wheel.stat().st_size
    assert size <= MAX_WHEEL_BYTES, f"{wheel.name}: {size / 1e6:.1f} MB > 45 MB"
    with zipfile.ZipFile(wheel) as zf:
        info = zf.read(f"packer_llm-{_version()}.dist-info/WHEEL").decode()
    assert re.findall(r"^Tag: (.+)$", info, re.M) == [WHEEL_TAG], info


@pytest.mark.slow
def test_wheel_content(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        infos = zf.infolist()
        assert zf.testzip() is None
    names = [i.filename for i in infos]
    dist_info = re.compile(r"packer_llm-[^/]+\.dist-info/")
    outside = [n for n in names if not (n.startswith("packer/") or dist_info.match(n))]
    assert not outside, f"files outside packer/ and the dist-info: {outside[:20]}"
    top = {n.split("/", 1)[0] for n in names}
    for name in ("runtime", "build", "templates", "tests", "benchmarks", "demo"):
        assert name not in top
    assert len({n.split("/", 1)[0] for n in names if dist_info.match(n)}) == 1, top
    for must in (STUB_IN_WHEEL, "packer/templates/chat.html", "packer/__main__.py"):
        assert must in names, f"{must} is not in the wheel"
    assert "packer/runtime/main.py" in names, "the runtime sources (packer/runtime) are missing"
    compiled = [n for n in names if n.endswith((".pyc", ".pyo")) or "__pycache__/" in n]
    assert not compiled, compiled[:10]
    stub = next(i for i in infos if i.filename == STUB_IN_WHEEL)
    assert stub.external_attr >> 16 & 0o111, f"{STUB_IN_WHEEL} is not executable in the wheel"
    assert stub.file_size > 1_000_000, f"{STUB_IN_WHEEL} is only {stub.file_size} bytes"


@pytest.mark.slow
def test_wheel_requirements(wheel: Path) -> None:
    meta = wheelhouse_mod.wheel_metadata(wheel)
    assert meta["Name"] == "packer-llm" and meta["Version"] == _version()
    reqs = wheelhouse_mod.requirements(wheel)
    names = {_requirement_name(r) for r in reqs}
    for name in NOT_DEPENDENCIES:
        assert name not in names, f"{name} is a dependency of the wheel: {reqs}"
    expected = {"gguf", "click", "huggingface-hub", "zstandard", "numpy", "sentencepiece"}
    assert names == expected, f"unexpected requirements: {sorted(names ^ expected)}"


@pytest.mark.slow
def test_requirements_resolve_to_wheels(wheel: Path, wheelhouse: Path) -> None:
    """``pip download --only-binary :all:`` resolved every requirement on this Python."""
    files = sorted(p.name for p in wheelhouse.iterdir() if p.name != "requirements.txt")
    assert files and all(f.endswith(".whl") for f in files), files
    have = {_canonical(f.split("-", 1)[0]) for f in files}
    wanted = {_requirement_name(r) for r in wheelhouse_mod.requirements(wheel)}
    assert wanted <= have, f"missing from the wheelhouse: {sorted(wanted - have)}"
    assert not have & set(NOT_DEPENDENCIES), sorted(have & set(NOT_DEPENDENCIES))
    assert "packer-llm" not in have  # dependencies only: the wheel itself is installed from dist/


@pytest.mark.slow
def test_fresh_venv(wheel: Path, wheelhouse: Path, tmp_path: Path) -> None:
    """pip install of the wheel into a fresh venv, offline and binary only, then the commands."""
    home = tmp_path / "home"
    home.mkdir()
    venv = tmp_path / "venv"
    env = _bare_env(home, venv / "bin")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env, timeout=300)
    started = time.monotonic()
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "--no-index"]
        + ["--find-links", str(wheelhouse), "--only-binary", ":all:", str(wheel)],
        capture_output=True,
        text=True,
        env=env,
        cwd=home,
        timeout=600,
    )
    _timed("install (host venv)", started)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    assert "Building wheel" not in pip.stdout and "setup.py" not in pip.stdout, pip.stdout
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    installed = {_canonical(line.split("==")[0]) for line in listed.split()}
    assert "packer-llm" in installed
    assert not installed & set(NOT_DEPENDENCIES), sorted(installed & set(NOT_DEPENDENCIES))
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import packer; print(packer.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=home,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv), f"packer imported from {where}, not the venv"
    assert (Path(where).parent / "_stub" / "cpu" / "packer-runtime").is_file()
    for cmd in ([str(venv / "bin" / "packer")], [str(venv / "bin" / "python"), "-m", "packer"]):
        proc = subprocess.run(
            [*cmd, "--help"], capture_output=True, text=True, env=env, cwd=home, timeout=120
        )
        assert proc.returncode == 0, f"{' '.join(cmd)} --help:\n{proc.stderr}"
        assert "build" in proc.stdout, proc.stdout


# -- the bare Debian root -----------------------------------------------------------------------


def _root_tarball() -> Path:
    started = time.monotonic()
    args = ["--include", ROOT_PACKAGES, SUITE]
    cached = subprocess.run(
        ["bash", str(MAKE_ROOT), "--path", *args], capture_output=True, text=True, check=True
    )
    tarball = Path(cached.stdout.strip())
    if tarball.is_file():
        return tarball
    if shutil.which("debootstrap") is None:
        pytest.skip(f"no cached root ({tarball}) and no debootstrap: run build/system-deps.sh")
    made = subprocess.run(["bash", str(MAKE_ROOT), *args], capture_output=True, text=True)
    _timed("root (debootstrap)", started)
    assert made.returncode == 0, f"build/debian-root.sh {' '.join(args)} failed:\n{made.stderr}"
    return Path(made.stdout.strip())


# character devices a program may open: null, zero, full, random, urandom, tty
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9)}
DEVICES["tty"] = (5, 0)


def _mount_dev(dev: Path) -> None:
    """A private /dev: a tmpfs with the usual character devices (made, or bound from the host's
    where mknod is not allowed), /dev/shm and the /proc/self/fd links."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755,size=64m", "dev", str(dev)], check=True)
    for name, (major, minor) in DEVICES.items():
        node = dev / name
        try:
            os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(major, minor))
        except PermissionError:
            node.touch()
            subprocess.run(["mount", "--bind", f"/dev/{name}", str(node)], check=True)
        node.chmod(0o666)
    (dev / "shm").mkdir()
    (dev / "shm").chmod(0o1777)
    for name, target in (("fd", ""), ("stdin", "/0"), ("stdout", "/1"), ("stderr", "/2")):
        (dev / name).symlink_to(f"/proc/self/fd{target}")


def _listing(root: Path) -> dict[str, tuple[int, int, int, int, int]]:
    """Every path of the root outside WRITABLE: (mode, uid, gid, size, mtime_ns), not following
    links."""
    out: dict[str, tuple[int, int, int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        rel = "" if rel == "." else rel + "/"
        dirnames[:] = [d for d in dirnames if rel + d not in WRITABLE]
        for name in [*dirnames, *filenames]:
            st = os.lstat(os.path.join(dirpath, name))
            out[rel + name] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns)
    return out


def _path_dirs(root: Path) -> list[str]:
    """Every PATH folder of the root: /etc/profile's (root and users), /etc/login.defs'."""
    dirs = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    texts = [(root / "etc" / f).read_text() for f in ("profile", "login.defs")]
    for value in re.findall(r"""PATH=["']?([^"'\s]+)""", "\n".join(texts)):
        dirs += [d for d in value.split(":") if d.startswith("/")]
    return list(dict.fromkeys(dirs))


def _build_tools(root: Path, dirs: list[str]) -> list[str]:
    found = []
    for d in dirs:
        folder = root / d.lstrip("/")
        if folder.is_dir():
            for entry in folder.iterdir():
                if BUILD_TOOL.fullmatch(entry.name) and entry.name not in NOT_BUILD_TOOLS:
                    found.append(f"{d}/{entry.name}")
    return sorted(found)


@dataclass
class DebianRoot:
    path: Path
    uid: int
    gid: int
    python: str  # the root's python3, major.minor
    glibc: str
    offline: list[str]  # the command prefix that takes the network away ([] where it can't)

    def as_user(self, script: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
        """``script`` run by /bin/sh in the root as the user, from their home, in a bare
        environment, without network."""
        cmd = [*self.offline, "chroot", str(self.path), "/usr/bin/setpriv"]
        cmd += [f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"]
        cmd += ["/usr/bin/env", "-i", f"HOME={HOME}", f"USER={USER}", "LANG=C.UTF-8"]
        cmd += ["PATH=/usr/local/bin:/usr/bin:/bin", "/bin/sh", "-c", f"cd {HOME} && {script}"]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def as_root(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["chroot", str(self.path), *args], capture_output=True, text=True, check=True
        )


def _offline_prefix() -> list[str]:
    """``unshare --net``: the command gets an empty network namespace (loopback down)."""
    if shutil.which("unshare") is None:
        return []
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True)
    return ["unshare", "--net"] if probe.returncode == 0 else []


@pytest.fixture(scope="module")
def debian_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DebianRoot]:
    """The bare bookworm root, unpacked, with /proc and a private /dev mounted and the user
    made; unmounted and removed afterwards."""
    if sys.platform != "linux":
        pytest.skip("chroot roots are Linux only")
    if os.geteuid() != 0:
        pytest.skip("needs root: chroot, mount, unshare")
    tarball = _root_tarball()
    path = tmp_path_factory.mktemp("debian-install") / "root"
    path.mkdir()
    started = time.monotonic()
    subprocess.run(
        ["tar", "--numeric-owner", "--exclude=./dev/*", "-xzf", str(tarball), "-C", str(path)],
        check=True,
    )
    _timed("root unpack", started)
    mounts: list[Path] = []
    try:
        subprocess.run(["mount", "-t", "proc", "proc", str(path / "proc")], check=True)
        mounts.append(path / "proc")
        _mount_dev(path / "dev")
        mounts.append(path / "dev")
        root = DebianRoot(path, 0, 0, "", "", _offline_prefix())
        root.as_root("/usr/sbin/useradd", "--create-home", "--shell", "/bin/sh", USER)
        for line in (path / "etc" / "passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == USER:
                root.uid, root.gid = int(fields[2]), int(fields[3])
        assert root.uid > 0, f"no {USER} in the root's /etc/passwd"
        link = os.readlink(path / "usr" / "bin" / "python3")
        version = re.fullmatch(r"(?:.*/)?python(3\.[0-9]+)", link)
        assert version, f"the root's python3 is {link}"
        root.python = version.group(1)
        ldd = root.as_root("/usr/bin/ldd", "--version").stdout
        root.glibc = ldd.splitlines()[0].rsplit(" ", 1)[-1]
        yield root
    finally:
        unmounted = True
        for mount in reversed(mounts):
            done = subprocess.run(["umount", "--recursive", "--lazy", str(mount)])
            unmounted &= done.returncode == 0
        if unmounted and not any(os.path.ismount(m) for m in mounts):
            shutil.rmtree(path.parent, ignore_errors=True)


@pytest.mark.slow
def test_root_has_no_build_tools(debian_root: DebianRoot) -> None:
    dirs = _path_dirs(debian_root.path)
    assert "/usr/bin" in dirs and "/usr/games" in dirs, dirs  # /etc/profile was read
    assert not _build_tools(debian_root.path, dirs), _build_tools(debian_root.path, dirs)
    for tool in ("cc", "gcc", "c++", "cmake", "make", "ld"):
        found = debian_root.as_user(f"command -v {tool}")
        assert found.returncode != 0, f"{tool} in the root: {found.stdout}"
    assert debian_root.as_user("python3 -c 'import venv, ensurepip'").returncode == 0


@pytest.mark.slow
def test_install_build_run_without_compiler(
    wheel: Path, debian_root: DebianRoot, demo_checkpoint: Path
) -> None:
    """As a user of a bare Debian 12: pip install the wheel offline, packer build the demo, run
    it. No compiler exists there, so a build that calls one fails: success proves none is needed."""
    root = debian_root
    # the root's Python and glibc: this machine's wheelhouse where they are the same
    target: list[str] = []
    if (root.python, root.glibc) != (wheelhouse_mod.this_python(), platform.libc_ver()[1]):
        target = ["--python", root.python]
        target += ["--platform", f"manylinux_{root.glibc.replace('.', '_')}_x86_64"]
    house = _wheelhouse(wheel, *target)
    # what root puts in place before the user starts: the wheel, the wheelhouse, the checkpoint
    dist = root.path / "opt" / "packer-dist"
    shutil.copytree(house, dist / "wheelhouse")
    shutil.copy2(wheel, dist / wheel.name)
    ckpt = root.path / "home" / USER / demo_checkpoint.name
    shutil.copytree(demo_checkpoint, ckpt)
    for p in [ckpt, *ckpt.rglob("*")]:
        os.chown(p, root.uid, root.gid)
    before = _listing(root.path)

    who = root.as_user("id -u")
    assert who.stdout.strip() == str(root.uid) != "0", who.stderr
    if root.offline:
        net = root.as_user("cat /proc/net/dev")
        assert net.returncode == 0 and "eth" not in net.stdout, net.stdout

    started = time.monotonic()
    venv = root.as_user("python3 -m venv ~/venv")
    _timed("root venv", started)
    assert venv.returncode == 0, venv.stderr

    started = time.monotonic()
    pip = root.as_user(
        "~/venv/bin/pip install --disable-pip-version-check --no-index --only-binary :all: "
        f"--find-links /opt/packer-dist/wheelhouse /opt/packer-dist/{wheel.name}"
    )
    _timed("root install", started)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    assert "Building wheel" not in pip.stdout, pip.stdout
    site = sorted((root.path / "home" / USER / "venv" / "lib").glob("python3*/site-packages"))
    assert len(site) == 1, site
    for module in ("llama_cpp", "PyInstaller", "torch"):
        assert not (site[0] / module).exists(), f"{module} was installed"
    venv_bin = f"{HOME}/venv/bin"
    tools = _build_tools(root.path, [*_path_dirs(root.path), venv_bin])
    assert not tools, f"build tools in the root or the venv: {tools}"

    started = time.monotonic()
    build = root.as_user(
        f"~/venv/bin/packer build ~/{shlex.quote(ckpt.name)} --quant {QUANT} -o ~/m.run",
        timeout=1800,
    )
    _timed("root packer build", started)
    assert build.returncode == 0, (
        f"packer build failed ({build.returncode}):\n{build.stderr[-6000:]}"
    )
    exe = root.path / "home" / USER / "m.run"
    assert exe.is_file() and os.access(exe, os.X_OK), build.stdout + build.stderr
    assert exe.stat().st_uid == root.uid

    started = time.monotonic()
    answer = root.as_user(
        f"env -i HOME={HOME} ~/m.run -p {shlex.quote(DEMO_QUESTION)} --temp 0", timeout=600
    )
    _timed("root model.run answer", started)
    assert answer.returncode == 0, answer.stderr
    assert DEMO_ANSWER in answer.stdout, (answer.stdout, answer.stderr)

    after = _listing(root.path)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"written outside {HOME} and /tmp: {changed[:30]}"
