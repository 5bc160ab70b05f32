"""Another local user must not get code or data into model.run through its cache (#14 H1, M4).

The launcher (build/launcher/launcher.c) and the runtime (packer/runtime/cache.py) use a cache
folder only when it is a real folder of this uid that no one else can write, on a filesystem
that allows exec; they trust an unpacked runtime or model only when this uid owns it, and unpack
only what matches the file's hashes. The tests marked ``needs_root`` make folders owned by
another uid, run the launcher as an unprivileged uid (setpriv) and mount a noexec tmpfs; the
others run anywhere.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_launcher import FAKE_RUNTIME, run, runtime_dir

from packer.pack import pack
from packer.runtime import cache as cache_mod
from packer.runtime.cache import (
    CacheError,
    cache_dir_problem,
    cached_gguf_path,
    candidate_dirs,
    ensure_gguf,
    resolve_cache_dir,
)
from packer.runtime.manifest import Manifest
from packer.runtime.payload import TRAILER, BundleError, pack_trailer, read_bundle
from packer.stub import assemble_stub

ROOT = Path(__file__).resolve().parents[1]
VICTIM = 4242  # the user who runs model.run (no passwd entry needed: HOME is given)
OTHER = 65534  # another local user (nobody)
needs_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: makes folders owned by another uid, runs the launcher as an "
    "unprivileged uid (setpriv) and mounts a noexec tmpfs",
)
# The code another user plants: it leaves a file behind if it ever runs.
PLANTED = """#!/bin/sh
touch {evidence}/planted-ran
echo PLANTED
"""


# ---- fixtures: the real launcher in front of a stand-in runtime -----------------------------


@pytest.fixture(scope="session")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not shutil.which("gcc"):
        pytest.skip("gcc is needed to build the launcher")
    out = tmp_path_factory.mktemp("launcher") / "launcher"
    proc = subprocess.run(
        ["bash", str(ROOT / "build" / "launcher.sh"), str(out)], capture_output=True, text=True
    )
    if proc.returncode != 0 and "libzstd-dev" in proc.stderr:
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stderr
    return out


def _fake_tree(folder: Path) -> Path:
    tree = folder / "packer-runtime"
    (tree / "data").mkdir(parents=True)
    exe = tree / "packer-runtime"
    exe.write_text(FAKE_RUNTIME)
    exe.chmod(0o755)
    (tree / "data" / "hello.txt").write_text("hello from the runtime\n")
    return tree


def _model_run(launcher: Path, folder: Path) -> Path:
    stub = folder / "stub"
    assemble_stub(launcher, _fake_tree(folder / "tree"), stub)
    gguf = folder / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 100)
    out = folder / "model.run"
    pack(stub, gguf, out, Manifest(name="tiny"))
    return out


@pytest.fixture()
def model_run(launcher: Path, tmp_path: Path) -> Path:
    return _model_run(launcher, tmp_path)


@pytest.fixture()
def elsewhere(tmp_path: Path) -> Path:
    d = tmp_path / "elsewhere"
    d.mkdir()
    return d


@pytest.fixture()
def shared(launcher: Path) -> Iterator[Path]:
    """A folder every user can reach (pytest's own are root's, 0700): model.run, a sticky
    world-writable ``tmp`` (like /tmp), ``evidence`` (where planted code would leave its mark)
    and ``home`` (root's: a HOME the victim cannot write)."""
    base = Path(tempfile.mkdtemp(prefix="packer-h1-"))
    try:
        base.chmod(0o755)
        (base / "build").mkdir()
        exe = _model_run(launcher, base / "build")
        shutil.copy2(exe, base / "model.run")
        shutil.rmtree(base / "build")
        for name in ("tmp", "evidence"):
            (base / name).mkdir()
            (base / name).chmod(0o1777)
        (base / "home").mkdir(mode=0o755)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _chown_tree(path: Path, uid: int) -> None:
    os.lchown(path, uid, uid)
    if path.is_dir() and not path.is_symlink():
        for p in path.rglob("*"):
            os.lchown(p, uid, uid)


def _plant(cache: Path, key: str, evidence: Path, owner: int) -> None:
    """What another user leaves in ``cache``: a runtime folder with a completion marker whose
    sizes match, as the launcher checked before #14."""
    target = cache / "runtime" / key
    target.mkdir(parents=True)
    exe = target / "packer-runtime"
    exe.write_text(PLANTED.format(evidence=evidence))
    exe.chmod(0o755)
    (target / ".packer-complete").write_text(
        f"packer-runtime 1 {key}\n{exe.stat().st_size} packer-runtime\n"
    )
    (cache / "runtime").chmod(0o777)
    _chown_tree(cache / "runtime", owner)


def _as_victim(exe: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = ["setpriv", f"--reuid={VICTIM}", f"--regid={VICTIM}", "--clear-groups", "env", "-i"]
    return subprocess.run(
        [*cmd, *(f"{k}={v}" for k, v in env.items()), str(exe), *args],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )


# ---- H1: a cache folder another user prepared ----------------------------------------------


@needs_root
@pytest.mark.parametrize("how", ["foreign-owner", "open-to-all", "symlink"])
def test_planted_temp_cache_never_runs(shared: Path, how: str) -> None:
    """HOME is not writable, so the cache falls back to $TMPDIR/packer-<uid>, which another
    user created first (as their own, as the victim's but writable by all, or as a symlink to
    their folder) with a runtime in it. Before #14 the launcher exec'd it as the victim."""
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is needed")
    exe = shared / "model.run"
    key = read_bundle(exe).runtime_key
    evidence = shared / "evidence"
    fallback = shared / "tmp" / f"packer-{VICTIM}"
    if how == "symlink":
        theirs = shared / "tmp" / "theirs"
        theirs.mkdir()
        _plant(theirs, key, evidence, OTHER)
        theirs.chmod(0o777)
        os.lchown(theirs, OTHER, OTHER)
        fallback.symlink_to(theirs)
        os.lchown(fallback, OTHER, OTHER)
    else:
        fallback.mkdir()
        _plant(fallback, key, evidence, OTHER)
        fallback.chmod(0o777)
        os.lchown(fallback, OTHER if how == "foreign-owner" else VICTIM, OTHER)
    env = {"HOME": str(shared / "home"), "TMPDIR": str(shared / "tmp")}
    p = _as_victim(exe, "-p", "hi", env=env)
    assert not (evidence / "planted-ran").exists(), "another user's code ran as the victim"
    assert "PLANTED" not in p.stdout
    assert p.returncode == 1, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    reason = {
        "foreign-owner": "is owned by another user",
        "open-to-all": "is writable by other users",
        "symlink": "is a symlink",
    }[how]
    assert lines[0].startswith("model.run: error: no usable cache folder ("), lines
    assert f"{fallback} {reason}" in lines[0]
    assert "PACKER_CACHE" in lines[0] and "--cache-dir" in lines[0]


@needs_root
def test_planted_temp_cache_falls_back_to_xdg_runtime_dir(shared: Path) -> None:
    """With $XDG_RUNTIME_DIR (private to the user, unlike the temp folder) the launcher skips
    the planted temp folder and runs from there."""
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is needed")
    exe = shared / "model.run"
    key = read_bundle(exe).runtime_key
    fallback = shared / "tmp" / f"packer-{VICTIM}"
    fallback.mkdir()
    _plant(fallback, key, shared / "evidence", OTHER)
    fallback.chmod(0o777)
    os.lchown(fallback, OTHER, OTHER)
    xdg = shared / "run-user"
    xdg.mkdir(mode=0o700)
    os.chown(xdg, VICTIM, VICTIM)
    env = {"HOME": str(shared / "home"), "TMPDIR": str(shared / "tmp"), "XDG_RUNTIME_DIR": str(xdg)}
    p = _as_victim(exe, "-p", "hi", env=env)
    assert not (shared / "evidence" / "planted-ran").exists()
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[1] == f"dir={xdg / 'packer' / 'runtime' / key}"
    assert "hello from the runtime" in p.stdout
    assert stat.S_IMODE((xdg / "packer").stat().st_mode) == 0o700


@needs_root
def test_explicit_foreign_cache_is_one_line(shared: Path) -> None:
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is needed")
    exe = shared / "model.run"
    theirs = shared / "tmp" / "theirs"
    theirs.mkdir(mode=0o777)
    theirs.chmod(0o777)
    _plant(theirs, read_bundle(exe).runtime_key, shared / "evidence", OTHER)
    os.lchown(theirs, OTHER, OTHER)
    p = _as_victim(exe, env={"HOME": str(shared / "home"), "PACKER_CACHE": str(theirs)})
    assert not (shared / "evidence" / "planted-ran").exists()
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [
        f"model.run: error: no usable cache folder ({theirs} is owned by another user): set "
        "PACKER_CACHE=/some/dir or pass --cache-dir (a folder of your own that no one else can "
        "write, on a filesystem that allows running programs)"
    ]


@needs_root
def test_runtime_folder_of_another_uid_is_not_trusted(shared: Path) -> None:
    """In the victim's own cache, a complete-looking runtime folder that another uid owns (left
    while runtime/ was open to others) is replaced, never run: only what this uid wrote counts."""
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is needed")
    exe = shared / "model.run"
    key = read_bundle(exe).runtime_key
    cache = shared / "own-cache"
    cache.mkdir(mode=0o700)
    _plant(cache, key, shared / "evidence", OTHER)
    os.chown(cache / "runtime", VICTIM, VICTIM)  # ours, but it was 0777
    os.chown(cache, VICTIM, VICTIM)
    p = _as_victim(exe, "-p", "hi", env={"HOME": str(shared / "home"), "PACKER_CACHE": str(cache)})
    assert not (shared / "evidence" / "planted-ran").exists()
    assert p.returncode == 0, p.stderr
    assert "hello from the runtime" in p.stdout
    target = cache / "runtime" / key
    assert target.stat().st_uid == VICTIM
    assert stat.S_IMODE((cache / "runtime").stat().st_mode) == 0o700, "made private"


def test_archive_not_matching_its_key_is_refused(
    model_run: Path, tmp_path: Path, elsewhere: Path
) -> None:
    """The runtime key in the trailer is the archive's sha256: a file whose archive is not the
    one its key names is refused before anything is renamed into runtime/<key>."""
    data = bytearray(model_run.read_bytes())
    key_at = len(data) - TRAILER.size + 56
    key = data[key_at : key_at + 32].decode()
    other = ("0" if key[0] != "0" else "1") + key[1:]
    data[key_at : key_at + 32] = other.encode()
    bad = tmp_path / "other-key.run"
    bad.write_bytes(bytes(data))
    bad.chmod(0o755)
    cache = tmp_path / "cache"
    p = run(bad, env={"PACKER_CACHE": str(cache)}, cwd=elsewhere)
    assert p.returncode == 1, p.stdout
    assert p.stderr.strip().splitlines() == [
        "other-key.run: error: other-key.run is corrupted (cannot unpack its runtime): copy the "
        "file again"
    ]
    assert not (cache / "runtime" / other).exists()


# ---- M4: noexec caches, runtimes in use ------------------------------------------------------


@pytest.fixture()
def noexec_dir(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root and mount (a noexec tmpfs)")
    d = tmp_path / "noexec"
    d.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "noexec,size=64m,mode=0700", "tmpfs", str(d)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "--lazy", str(d)], capture_output=True)


@needs_root
def test_noexec_cache_named_is_one_line(model_run: Path, noexec_dir: Path, elsewhere: Path) -> None:
    """Before #14: unpacked there, could not exec, unpacked again, then "delete ... and run
    again", on every start."""
    p = run(model_run, env={"PACKER_CACHE": str(noexec_dir)}, cwd=elsewhere)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [
        f"model.run: error: no usable cache folder ({noexec_dir} is on a filesystem mounted "
        "noexec (no program can start from there)): set PACKER_CACHE=/some/dir or pass "
        "--cache-dir (a folder of your own that no one else can write, on a filesystem that "
        "allows running programs)"
    ]
    assert list(noexec_dir.iterdir()) == [], "nothing unpacked there"


@needs_root
def test_noexec_temp_folder_is_skipped(
    model_run: Path, noexec_dir: Path, tmp_path: Path, elsewhere: Path
) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where HOME should be")
    xdg = tmp_path / "xdg-run"
    xdg.mkdir(mode=0o700)
    env = {"HOME": str(blocked), "TMPDIR": str(noexec_dir), "XDG_RUNTIME_DIR": str(xdg)}
    p = run(model_run, env=env, cwd=elsewhere)
    assert p.returncode == 0, p.stderr
    assert "hello from the runtime" in p.stdout
    assert (runtime_dir(xdg / "packer", model_run) / ".packer-complete").is_file()
    skipped = noexec_dir / f"packer-{os.getuid()}"
    assert not (skipped / "runtime").exists(), "nothing unpacked on the noexec folder"
    del env["XDG_RUNTIME_DIR"]
    p = run(model_run, env=env, cwd=elsewhere)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "is on a filesystem mounted noexec" in lines[0], lines


def _break(target: Path) -> None:
    (target / "data" / "hello.txt").unlink()  # e.g. a temp cleaner took a file


def test_damaged_runtime_in_use_is_not_renamed_away(
    model_run: Path, tmp_path: Path, elsewhere: Path
) -> None:
    """A runtime folder that another model.run is running from (its .inuse lock) stays where it
    is, damaged or not: renaming it away breaks that process's later imports."""
    cache = tmp_path / "cache"
    env = {"PACKER_CACHE": str(cache)}
    assert run(model_run, env=env, cwd=elsewhere).returncode == 0
    target = runtime_dir(cache, model_run)
    _break(target)
    inode = target.stat().st_ino
    with open(target.with_name(target.name + ".inuse"), "rb") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH)  # a model.run of this runtime is running
        p = run(model_run, env=env, cwd=elsewhere)
        assert target.stat().st_ino == inode, "the folder in use was replaced"
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"model.run: error: the runtime in {target} is damaged, and other ")
    assert "stop them and run again" in lines[0]
    # once nobody runs from it, it is replaced as before
    p = run(model_run, env=env, cwd=elsewhere)
    assert p.returncode == 0, p.stderr
    assert (target / "data" / "hello.txt").is_file()


def test_runtime_in_use_that_cannot_start_is_left_alone(
    model_run: Path, tmp_path: Path, elsewhere: Path
) -> None:
    cache = tmp_path / "cache"
    env = {"PACKER_CACHE": str(cache)}
    assert run(model_run, env=env, cwd=elsewhere).returncode == 0
    target = runtime_dir(cache, model_run)
    (target / "packer-runtime").chmod(0o644)
    inode = target.stat().st_ino
    with open(target.with_name(target.name + ".inuse"), "rb") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
        p = run(model_run, env=env, cwd=elsewhere)
        assert target.stat().st_ino == inode
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "other model.run processes are running from it" in lines[0], lines


def test_concurrent_starts_replace_a_damaged_runtime(
    model_run: Path, tmp_path: Path, elsewhere: Path
) -> None:
    """Launchers that are only waiting for the unpack do not count as using the runtime: six
    starts at once on a damaged folder all succeed."""
    cache = tmp_path / "cache"
    assert run(model_run, env={"PACKER_CACHE": str(cache)}, cwd=elsewhere).returncode == 0
    _break(runtime_dir(cache, model_run))
    cmd = ["env", "-i", f"PACKER_CACHE={cache}", str(model_run), "go"]
    procs = [
        subprocess.Popen(
            cmd, cwd=elsewhere, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(6)
    ]
    results = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    assert (runtime_dir(cache, model_run) / "data" / "hello.txt").is_file()


# ---- the runtime's side: packer/runtime/cache.py ---------------------------------------------


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("PACKER_CACHE", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    return tmp_path


def test_folder_checks(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ok = env / "ok"
    assert cache_dir_problem(ok) is None
    assert stat.S_IMODE(ok.stat().st_mode) == 0o700, "created private"
    link = env / "link"
    link.symlink_to(ok)
    assert cache_dir_problem(link) == "is a symlink"
    afile = env / "file"
    afile.write_text("x")
    assert cache_dir_problem(afile) == "is not a folder"
    open_dir = env / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    assert cache_dir_problem(open_dir) == "is writable by other users"
    open_dir.chmod(0o755)
    assert cache_dir_problem(open_dir) is None, "readable by others is fine"
    monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)
    assert cache_dir_problem(ok) == "is owned by another user"


def test_noexec_folder_is_a_problem(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.statvfs

    class NoExec:
        def __init__(self, path: str | os.PathLike[str]) -> None:
            self.f_flag = real(path).f_flag | os.ST_NOEXEC

    monkeypatch.setattr(os, "statvfs", NoExec)
    assert cache_dir_problem(env / "x") == (
        "is on a filesystem mounted noexec (no program can start from there)"
    )


def test_xdg_runtime_dir_comes_before_the_temp_folder(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(env / "run"))
    assert candidate_dirs()[-2:] == [env / "run" / "packer", env / "tmp" / f"packer-{os.getuid()}"]


def test_implicit_choice_skips_unsafe_folders(
    env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    home_cache = env / "home" / ".cache" / "packer"
    home_cache.mkdir(parents=True)
    home_cache.chmod(0o777)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(env / "run"))
    (env / "run").mkdir()
    (env / "run" / "packer").symlink_to(env / "elsewhere", target_is_directory=True)
    with caplog.at_level("WARNING", logger="packer.runtime.cache"):
        assert resolve_cache_dir() == env / "tmp" / f"packer-{os.getuid()}"
    assert caplog.messages == [
        f"cache: using {env / 'tmp' / f'packer-{os.getuid()}'} ({home_cache} is writable by other "
        f"users; {env / 'run' / 'packer'} is a symlink)"
    ]


def test_explicit_unsafe_choice_is_one_line(env: Path) -> None:
    open_dir = env / "open"
    open_dir.mkdir()
    open_dir.chmod(0o757)
    with pytest.raises(CacheError) as err:
        resolve_cache_dir(str(open_dir))
    assert str(err.value) == (
        f"no usable cache folder ({open_dir} is writable by other users): set "
        "PACKER_CACHE=/some/dir or pass --cache-dir (a folder of your own that no one else can "
        "write, on a filesystem that allows running programs)"
    )


@pytest.fixture()
def bundle_file(tmp_path: Path) -> Path:
    gguf = tmp_path / "in.gguf"
    gguf.write_bytes(b"GGUF" + os.urandom(100_000))
    stub = tmp_path / "stub"
    stub.write_bytes(b"\x7fELF stand-in stub\n")
    out = tmp_path / "model.run"
    pack(stub, gguf, out, Manifest(name="tiny"))
    return out


def test_model_of_another_uid_is_unpacked_again(
    bundle_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A models/<sha>.gguf of the right size that this uid does not own, or that has another
    name too (a hard link someone made), is not trusted: the model is unpacked over it."""
    b = read_bundle(bundle_file)
    cache = tmp_path / "cache"
    target = cached_gguf_path(cache, b)
    target.parent.mkdir(parents=True)
    target.parent.chmod(0o777)
    target.write_bytes(b"X" * b.gguf_size)  # planted: same size, other content
    monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)  # the file is someone else's
    monkeypatch.setattr(cache_mod, "private_subdir", lambda folder: folder, raising=False)
    assert ensure_gguf(b, cache) == target
    assert target.read_bytes()[:4] == b"GGUF"
    monkeypatch.undo()

    target.write_bytes(b"Y" * b.gguf_size)
    os.link(target, tmp_path / "their-name")
    assert ensure_gguf(b, cache) == target
    assert target.read_bytes()[:4] == b"GGUF"
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700, "models/ made private"


def test_models_folder_of_another_uid_is_one_line(
    bundle_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = read_bundle(bundle_file)
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)
    with pytest.raises(CacheError) as err:
        ensure_gguf(b, cache)
    assert str(err.value).startswith(
        f"the cache folder {cache / 'models'} is owned by another user: remove it, or set "
        "PACKER_CACHE"
    )


# ---- the payload: no more than declared, checksummed -----------------------------------------


def _bundle_declaring(tmp_path: Path, real: bytes, declared: int) -> Path:
    """A model.run whose payload decompresses to ``real`` while its manifest says ``declared``
    bytes."""
    import zstandard

    payload = zstandard.ZstdCompressor(level=1).compress(real)
    manifest = Manifest(name="liar", gguf_size=declared, gguf_sha256="0" * 64).to_json()
    stub = b"\x7fELF stand-in stub\n"
    out = tmp_path / "liar.run"
    out.write_bytes(
        stub
        + payload
        + manifest
        + pack_trailer(len(stub), len(payload), len(stub) + len(payload), len(manifest))
    )
    return out


_UNPACK_LIMITED = """
import resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from packer.runtime.cache import ensure_gguf
from packer.runtime.payload import read_bundle
try:
    ensure_gguf(read_bundle(sys.argv[1]), Path(sys.argv[2]))
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def test_payload_larger_than_declared_is_an_error_not_a_disk_filler(tmp_path: Path) -> None:
    """64 MB of zeros compress to almost nothing; a manifest that declares 1 MB must not lead to
    64 MB on disk. The child may write 8 MB files (RLIMIT_FSIZE): before #14 it hit that limit
    ("File too large"), now it stops at the declared size."""
    bundle = _bundle_declaring(tmp_path, bytes(64 << 20), 1 << 20)
    script = _UNPACK_LIMITED.format(limit=8 << 20)
    proc = subprocess.run(
        [sys.executable, "-c", script, str(bundle), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.strip() == (
        "BundleError liar.run is corrupted (its model is larger than its manifest says): "
        "copy the file again"
    ), proc.stdout + proc.stderr
    left = [p.name for p in (tmp_path / "cache" / "models").iterdir()]
    assert [n for n in left if not n.endswith((".inuse", ".lock"))] == [], left


def test_payload_is_checksummed(bundle_file: Path, tmp_path: Path) -> None:
    """pack() writes the zstd frame with its content checksum, which the unpack verifies."""
    b = read_bundle(bundle_file)
    data = bytearray(bundle_file.read_bytes())
    frame = data[b.payload_offset : b.payload_offset + b.payload_size]
    assert frame[:4] == b"\x28\xb5\x2f\xfd"
    assert frame[4] & 0x04, "the frame header's Content_Checksum_flag"
    end = b.payload_offset + b.payload_size
    data[end - 4 : end] = bytes(x ^ 0xFF for x in data[end - 4 : end])  # the checksum itself
    bad = tmp_path / "bad.run"
    bad.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="bad.run is corrupted"):
        ensure_gguf(read_bundle(bad), tmp_path / "cache")
