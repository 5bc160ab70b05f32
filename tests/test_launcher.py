"""The native launcher (build/launcher/launcher.c): unpack the runtime once, safely, then exec it.

The fast tests pack a stand-in runtime (a shell script in a small tree) behind the real launcher,
compiled here with build/launcher.sh. The slow ones check the real stub (glibc baseline, size).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from packer.archive import read_archive
from packer.pack import pack
from packer.runtime.manifest import Manifest
from packer.runtime.payload import read_bundle
from packer.stub import assemble_stub

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# The stand-in runtime prints what the launcher gave it: the bundle, argv[0], its args, its folder.
FAKE_RUNTIME = """#!/bin/sh
if [ "$1" = "hold" ]; then echo started; sleep "$2"; exit 0; fi
echo "bundle=$PACKER_BUNDLE"
echo "dir=$(cd "$(dirname "$0")" && pwd -P)"
echo "args=$*"
cat "$(dirname "$0")/data/hello.txt"
"""


def _needs_gcc() -> None:
    if not shutil.which("gcc"):
        pytest.skip("gcc is needed to build the launcher")


@pytest.fixture(scope="session")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _needs_gcc()
    out = tmp_path_factory.mktemp("launcher") / "launcher"
    proc = subprocess.run(
        ["bash", str(ROOT / "build" / "launcher.sh"), str(out)], capture_output=True, text=True
    )
    if proc.returncode != 0 and "libzstd-dev" in proc.stderr:
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="session")
def fake_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("tree") / "packer-runtime"
    (tree / "data" / "sub").mkdir(parents=True)
    exe = tree / "packer-runtime"
    exe.write_text(FAKE_RUNTIME)
    exe.chmod(0o755)
    (tree / "data" / "hello.txt").write_text("hello from the runtime\n")
    (tree / "data" / "sub" / "big.bin").write_bytes(os.urandom(300_000))
    (tree / "data" / "zeros.bin").write_bytes(bytes(3_000_000))  # tiny input, many output blocks
    (tree / "data" / "copy.txt").write_text("hello from the runtime\n")  # deduplicated
    (tree / "data" / "link.txt").symlink_to("hello.txt")
    return tree


@pytest.fixture()
def model_run(launcher: Path, fake_tree: Path, tmp_path: Path) -> Path:
    stub = tmp_path / "stub"
    assemble_stub(launcher, fake_tree, stub)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 100)
    out = tmp_path / "dist" / "model.run"
    pack(stub, gguf, out, Manifest(name="tiny"))
    return out


@pytest.fixture()
def elsewhere(tmp_path: Path) -> Path:
    d = tmp_path / "elsewhere"
    d.mkdir()
    return d


def run(
    exe: Path, *args: str, env: dict[str, str], cwd: Path, timeout: int = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["env", "-i", *(f"{k}={v}" for k, v in env.items()), str(exe), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def runtime_dir(cache: Path, exe: Path) -> Path:
    return cache / "runtime" / read_bundle(exe).runtime_key


def test_archive_roundtrip_dedups_copies(fake_tree: Path, tmp_path: Path, launcher: Path) -> None:
    stub = tmp_path / "stub"
    key = assemble_stub(launcher, fake_tree, stub)
    data = stub.read_bytes()
    n = launcher.stat().st_size
    assert data[:n] == launcher.read_bytes()
    entries = read_archive(data[n:-64])
    assert entries["packer-runtime"][0] == "f" and entries["packer-runtime"][1] == 0o755
    assert entries["data/sub"][0] == "d"
    assert entries["data/link.txt"] == ("l", 0o777, b"hello.txt")
    kinds = {entries["data/copy.txt"][0], entries["data/hello.txt"][0]}
    assert kinds == {"f", "l"}, "an identical file is stored once, the copy as a symlink"
    assert len(key) == 32 and re.fullmatch(r"[0-9a-f]+", key)


def test_unpacks_once_and_execs_runtime(model_run: Path, tmp_path: Path, elsewhere: Path) -> None:
    home = tmp_path / "home"
    p = run(model_run, "-p", "hi there", env={"HOME": str(home)}, cwd=elsewhere)
    assert p.returncode == 0, p.stderr
    target = runtime_dir(home / ".cache" / "packer", model_run)
    lines = p.stdout.splitlines()
    assert lines[0] == f"bundle={model_run}"
    assert lines[1] == f"dir={target.resolve()}"
    assert lines[2] == "args=-p hi there"
    assert lines[3] == "hello from the runtime"
    assert (target / "data" / "link.txt").read_text() == "hello from the runtime\n"
    assert (target / "data" / "copy.txt").read_text() == "hello from the runtime\n"
    assert (target / "data" / "zeros.bin").read_bytes() == bytes(3_000_000)
    before = {p: p.lstat().st_mtime_ns for p in target.rglob("*")}
    inode = target.stat().st_ino
    p = run(model_run, "x", env={"HOME": str(home)}, cwd=elsewhere)
    assert p.returncode == 0, p.stderr
    assert target.stat().st_ino == inode, "the second start must not unpack again"
    assert {p: p.lstat().st_mtime_ns for p in target.rglob("*")} == before
    assert sorted(x.name for x in target.parent.iterdir()) == sorted(
        [target.name, target.name + ".inuse", target.name + ".lock"]
    ), "no temp folders left"


def _age(path: Path, days: float) -> None:
    t = time.time() - days * 86400
    os.utime(path, (t, t))


def test_old_unused_runtimes_are_removed(model_run: Path, tmp_path: Path, elsewhere: Path) -> None:
    """Unpacking a new runtime removes the other runtime folders that nobody holds and nobody
    started for 30 days; held, recently used and lock files stay; old leftovers go."""
    cache = tmp_path / "cache"
    rt = cache / "runtime"
    rt.mkdir(parents=True)

    def old_runtime(name: str, dir_days: float, inuse_days: float | None = None) -> Path:
        d = rt / (name * 32)
        (d / "lib").mkdir(parents=True)
        (d / "lib" / "big.so").write_bytes(b"x" * 1000)
        _age(d / "lib", dir_days)
        _age(d, dir_days)
        if inuse_days is not None:
            (rt / f"{d.name}.inuse").touch()
            _age(rt / f"{d.name}.inuse", inuse_days)
        return d

    unused = old_runtime("a", 60)  # from a launcher without .inuse files: the folder's age
    held = old_runtime("b", 60, 60)
    recent = old_runtime("c", 60, 5)  # unpacked long ago, started 5 days ago
    stale = old_runtime("d", 40, 40)
    leftover = rt / ".old-eeee-123"
    leftover.mkdir()
    _age(leftover, 2)
    in_progress = rt / ".tmp-ffff-456"
    in_progress.mkdir()
    with open(rt / f"{held.name}.inuse", "rb") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH)  # a model.run of that version is running
        p = run(model_run, env={"PACKER_CACHE": str(cache)}, cwd=elsewhere)
    assert p.returncode == 0, p.stderr
    target = runtime_dir(cache, model_run)
    assert sorted(x.name for x in rt.iterdir()) == sorted(
        [
            target.name, f"{target.name}.inuse", f"{target.name}.lock",
            held.name, f"{held.name}.inuse", recent.name, f"{recent.name}.inuse",
            f"{unused.name}.inuse", f"{stale.name}.inuse", in_progress.name,
        ]
    )  # fmt: skip
    # a start that unpacks nothing removes nothing
    again = old_runtime("g", 90)
    p = run(model_run, env={"PACKER_CACHE": str(cache)}, cwd=elsewhere)
    assert p.returncode == 0, p.stderr
    assert again.is_dir()


def test_a_running_runtime_holds_its_folder(
    model_run: Path, tmp_path: Path, elsewhere: Path
) -> None:
    """The shared lock taken by the launcher lives on in the runtime it execs."""
    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        ["env", "-i", f"PACKER_CACHE={cache}", str(model_run), "hold", "5"],
        cwd=elsewhere,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        inuse = runtime_dir(cache, model_run).with_suffix(".inuse")
        with open(inuse, "rb") as fh:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            assert proc.wait(timeout=30) == 0
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # free once it ended
        assert time.time() - inuse.stat().st_mtime < 60  # marks the last start
    finally:
        proc.kill()
        proc.wait()


def test_cache_dir_flag_and_env(model_run: Path, tmp_path: Path, elsewhere: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a folder should be")
    for args, env, cache in [
        (["--cache-dir", str(tmp_path / "c1")], {}, tmp_path / "c1"),
        (
            [f"--cache-dir={tmp_path / 'c2'}"],
            {"PACKER_CACHE": str(tmp_path / "no")},
            tmp_path / "c2",
        ),
        ([], {"PACKER_CACHE": str(tmp_path / "c3")}, tmp_path / "c3"),
        ([], {"XDG_CACHE_HOME": str(tmp_path / "xdg")}, tmp_path / "xdg" / "packer"),
        ([], {"HOME": str(blocked), "TMPDIR": str(tmp_path)}, tmp_path / f"packer-{os.getuid()}"),
    ]:
        p = run(model_run, *args, env=env, cwd=elsewhere)
        assert p.returncode == 0, (args, env, p.stderr)
        assert (runtime_dir(cache, model_run) / ".packer-complete").is_file(), (args, env)
    assert not (tmp_path / "no").exists()


def test_no_home_uses_the_passwd_entry(model_run: Path, tmp_path: Path, elsewhere: Path) -> None:
    import pwd

    home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    if not os.access(home, os.W_OK):
        pytest.skip(f"the passwd home {home} is not writable")
    target = runtime_dir(home / ".cache" / "packer", model_run)
    try:
        p = run(model_run, env={}, cwd=elsewhere)  # env -i: no HOME, as runtime/cache.py's pwd
        assert p.returncode == 0, p.stderr
        assert p.stdout.splitlines()[1] == f"dir={target.resolve()}"
    finally:  # the stand-in runtime must not stay in the real user cache
        shutil.rmtree(target, ignore_errors=True)
        target.with_name(target.name + ".lock").unlink(missing_ok=True)
        target.with_name(target.name + ".inuse").unlink(missing_ok=True)


def test_concurrent_first_starts(model_run: Path, tmp_path: Path, elsewhere: Path) -> None:
    cache = tmp_path / "shared"
    cmd = ["env", "-i", f"PACKER_CACHE={cache}", str(model_run), "go"]
    procs = [
        subprocess.Popen(
            cmd, cwd=elsewhere, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(6)
    ]
    results = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    assert len({out for out, _ in results}) == 1, results
    target = runtime_dir(cache, model_run)
    assert sorted(x.name for x in (cache / "runtime").iterdir()) == [
        target.name,
        target.name + ".inuse",
        target.name + ".lock",
    ]


@pytest.mark.parametrize(
    "damage", ["no-marker", "missing-file", "short-file", "stray-temp", "not-executable"]
)
def test_damaged_runtime_dir_is_replaced(
    model_run: Path, tmp_path: Path, elsewhere: Path, damage: str
) -> None:
    cache = tmp_path / "cache"
    env = {"PACKER_CACHE": str(cache)}
    assert run(model_run, env=env, cwd=elsewhere).returncode == 0
    target = runtime_dir(cache, model_run)
    if damage == "no-marker":  # as if the unpack had been interrupted before its last write
        (target / ".packer-complete").unlink()
        (target / "packer-runtime").write_text("#!/bin/sh\necho half-unpacked\n")
    elif damage == "missing-file":  # e.g. a temp cleaner removed old files
        (target / "data" / "hello.txt").unlink()
    elif damage == "not-executable":  # the marker still matches: exec fails, then re-unpack
        (target / "packer-runtime").chmod(0o644)
    elif damage == "short-file":
        (target / "data" / "sub" / "big.bin").write_bytes(b"x")
    else:  # a crashed unpacker's temp folder next to a good runtime
        stray = cache / "runtime" / f".tmp-{target.name}-abcdef"
        stray.mkdir()
        (target / ".packer-complete").unlink()
    p = run(model_run, env=env, cwd=elsewhere)
    assert p.returncode == 0, p.stderr
    assert "hello from the runtime" in p.stdout and "half-unpacked" not in p.stdout
    assert (target / "data" / "sub" / "big.bin").stat().st_size == 300_000
    assert sorted(x.name for x in target.parent.iterdir()) == [
        target.name,
        target.name + ".inuse",
        target.name + ".lock",
    ]


def test_no_writable_cache_is_one_clear_line(
    model_run: Path, tmp_path: Path, elsewhere: Path
) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a folder should be")
    for args, env in [
        ([], {"PACKER_CACHE": str(blocked)}),
        (["--cache-dir", str(blocked / "sub")], {"HOME": str(tmp_path / "home")}),
    ]:
        p = run(model_run, *args, env=env, cwd=elsewhere)
        assert p.returncode == 1
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1, p.stderr
        assert lines[0].startswith("model.run: error: no usable cache folder"), lines
        assert "PACKER_CACHE" in lines[0] and "--cache-dir" in lines[0]


def test_truncated_and_corrupted_files(model_run: Path, tmp_path: Path, elsewhere: Path) -> None:
    data = model_run.read_bytes()
    env = {"PACKER_CACHE": str(tmp_path / "cache")}
    b = read_bundle(model_run)
    trunc = tmp_path / "trunc.run"
    trunc.write_bytes(data[: b.payload_offset + b.payload_size // 2])  # a copy cut short
    trunc.chmod(0o755)
    p = run(trunc, env=env, cwd=elsewhere)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [
        "trunc.run: error: trunc.run has no model attached (its end is missing or damaged): "
        "the file is truncated or corrupted; copy it again"
    ]
    tiny = tmp_path / "tiny.run"
    tiny.write_bytes(data[:10])
    tiny.chmod(0o755)
    p = run(tiny, env=env, cwd=elsewhere)
    assert p.returncode != 0  # the kernel may refuse a 10-byte "ELF" before the launcher runs

    bad = bytearray(data)
    mid = b.runtime_offset + b.runtime_size // 2
    bad[mid : mid + 32] = bytes(x ^ 0xFF for x in bad[mid : mid + 32])
    corrupt = tmp_path / "corrupt.run"
    corrupt.write_bytes(bytes(bad))
    corrupt.chmod(0o755)
    p = run(corrupt, env=env, cwd=elsewhere)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [
        "corrupt.run: error: corrupt.run is corrupted (cannot unpack its runtime): copy the file again"
    ]
    assert sorted(x.name for x in (tmp_path / "cache" / "runtime").iterdir()) == [
        f"{b.runtime_key}.inuse",
        f"{b.runtime_key}.lock",
    ]


def test_stub_without_runtime(tmp_path: Path, launcher: Path, elsewhere: Path) -> None:
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF" * 10)
    out = tmp_path / "bare.run"
    pack(launcher, gguf, out, Manifest(name="x"))  # a launcher without a runtime archive behind it
    p = run(out, env={"PACKER_CACHE": str(tmp_path / "c")}, cwd=elsewhere)
    assert p.returncode == 1 and "no runtime attached" in p.stderr


# ---- hostile archives and trailers (#14 Low: launcher unpack) ---------------------------------


def craft_model_run(launcher: Path, entries: list[tuple[str, str, int, bytes]], out: Path) -> Path:
    """A model.run whose runtime archive holds exactly ``entries`` (type, path, mode, content or
    link target), in the format of packer/archive.py, behind the real launcher; its key is the
    archive's true sha256, so only the entries themselves can be wrong."""
    import hashlib

    import zstandard

    from packer.archive import ENTRY, MAGIC
    from packer.runtime.payload import KEY_LEN, pack_stub_footer

    raw = bytearray(MAGIC)
    for kind, rel, mode, data in entries:
        path = rel.encode()
        raw += ENTRY.pack(ord(kind), mode, len(path), len(data)) + path + data
    raw += ENTRY.pack(ord("e"), 0, 0, 0)
    archive = zstandard.ZstdCompressor(write_checksum=True).compress(bytes(raw))
    key = hashlib.sha256(archive).hexdigest()[:KEY_LEN]
    head = launcher.read_bytes()
    stub = out.with_suffix(".stub")
    stub.write_bytes(head + archive + pack_stub_footer(len(head), len(archive), key))
    gguf = out.with_suffix(".gguf")
    gguf.write_bytes(b"GGUF" * 10)
    pack(stub, gguf, out, Manifest(name="crafted"))
    return out


RUNTIME_ENTRY = ("f", "packer-runtime", 0o755, FAKE_RUNTIME.encode())
DATA_ENTRIES = [("d", "data", 0o755, b""), ("f", "data/hello.txt", 0o644, b"hello\n")]


@pytest.mark.parametrize(
    "entries",
    [
        [("l", "up", 0o777, b"../../.."), ("f", "up/planted", 0o644, b"x")],
        # lexically inside, but "a" is a link to "." so a/a/../.. climbs two folders out
        [("l", "a", 0o777, b"."), ("l", "b", 0o777, b"a/a/../.."), ("f", "b/planted", 0o644, b"x")],
        [("l", "data/lib.so", 0o777, b"../../../../../../../tmp/lib.so")],
        [("l", "data/lib.so", 0o777, b"/tmp/lib.so")],
        [("l", "d", 0o777, b"data"), ("f", "d/planted", 0o644, b"x")],  # under a linked folder
    ],
    ids=["dotdot", "dotdot-through-link", "link-out", "absolute", "under-link"],
)
def test_archive_entries_leaving_the_tree_are_refused(
    launcher: Path,
    tmp_path: Path,
    elsewhere: Path,
    entries: list[tuple[str, str, int, bytes]],
) -> None:
    """A symlink whose target leaves the runtime folder (``..`` above it, an absolute path, or
    through another link), and any entry under a symlinked folder, make the archive corrupt:
    nothing is written outside the folder and nothing is renamed into place."""
    exe = craft_model_run(launcher, [RUNTIME_ENTRY, *DATA_ENTRIES, *entries], tmp_path / "x.run")
    cache = tmp_path / "cache"
    p = run(exe, env={"PACKER_CACHE": str(cache)}, cwd=elsewhere)
    assert p.returncode == 1, p.stdout
    assert p.stderr.strip().splitlines() == [
        "x.run: error: x.run is corrupted (cannot unpack its runtime): copy the file again"
    ]
    assert not list(tmp_path.rglob("planted")), "written outside the runtime folder"
    assert not runtime_dir(cache, exe).exists()


def test_archive_links_inside_the_tree_still_work(
    launcher: Path, tmp_path: Path, elsewhere: Path
) -> None:
    """What real runtimes hold: ``..`` that stays inside, links to links, links to folders."""
    entries = [
        RUNTIME_ENTRY,
        *DATA_ENTRIES,
        ("d", "data/sub", 0o755, b""),
        ("l", "data/sub/up.txt", 0o777, b"../hello.txt"),
        ("l", "chain.txt", 0o777, b"data/sub/up.txt"),
        ("l", "dir-link", 0o777, b"data/sub"),
        ("l", "data/sub/self", 0o777, b".."),
    ]
    exe = craft_model_run(launcher, entries, tmp_path / "ok.run")
    cache = tmp_path / "cache"
    p = run(exe, env={"PACKER_CACHE": str(cache)}, cwd=elsewhere)
    assert p.returncode == 0, p.stderr
    target = runtime_dir(cache, exe)
    assert (target / "chain.txt").read_text() == "hello\n"
    assert (target / "dir-link" / "up.txt").read_text() == "hello\n"


def test_unpacked_modes_lose_setuid_and_write_for_others(
    launcher: Path, tmp_path: Path, elsewhere: Path
) -> None:
    entries = [
        ("f", "packer-runtime", 0o6755, FAKE_RUNTIME.encode()),
        ("d", "data", 0o755, b""),
        ("f", "data/hello.txt", 0o1666, b"hello\n"),
    ]
    exe = craft_model_run(launcher, entries, tmp_path / "suid.run")
    cache = tmp_path / "cache"
    p = run(exe, env={"PACKER_CACHE": str(cache)}, cwd=elsewhere)
    assert p.returncode == 0, p.stderr
    target = runtime_dir(cache, exe)
    assert oct((target / "packer-runtime").stat().st_mode & 0o7777) == oct(0o755)
    assert oct((target / "data" / "hello.txt").stat().st_mode & 0o7777) == oct(0o644)


@pytest.mark.parametrize("field", ["runtime", "payload", "manifest"])
def test_trailer_offsets_that_wrap_around_are_inconsistent(
    model_run: Path, tmp_path: Path, elsewhere: Path, field: str
) -> None:
    """offset + size computed in 64 bits must not wrap around to pass the layout check (the
    runtime's reader, with Python's integers, already said "inconsistent layout")."""
    from packer.runtime.payload import TRAILER, BundleError

    data = bytearray(model_run.read_bytes())
    t = list(TRAILER.unpack(data[-TRAILER.size :]))
    b = read_bundle(model_run)
    if field == "runtime":  # runtime_off + runtime_size wraps to 0
        t[2] = 2**64 - b.runtime_offset
    elif field == "payload":
        t[4] = 2**64 - 1
    else:  # manifest_off + manifest_size wraps to the trailer's offset; manifest_off is huge
        end = len(data) - TRAILER.size
        t[5] = 2**64 - 16
        t[6] = end + 16
    data[-TRAILER.size :] = TRAILER.pack(*t)
    bad = tmp_path / "wrapped.run"
    bad.write_bytes(bytes(data))
    bad.chmod(0o755)
    with pytest.raises(BundleError, match="inconsistent layout"):
        read_bundle(bad)
    p = run(bad, env={"PACKER_CACHE": str(tmp_path / "cache")}, cwd=elsewhere)
    assert p.returncode == 1, p.stdout
    assert p.stderr.strip().splitlines() == [
        "wrapped.run: error: wrapped.run has an inconsistent layout: the file is corrupted; copy "
        "it again"
    ]


def _mount_read_only(src: Path, dst: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    dst.mkdir()
    if subprocess.run(["mount", "--bind", str(src), str(dst)], capture_output=True).returncode:
        return False
    ro = ["mount", "-o", "remount,ro,bind", str(dst)]
    if subprocess.run(ro, capture_output=True).returncode:
        subprocess.run(["umount", str(dst)], capture_output=True)
        return False
    return True


@pytest.fixture()
def read_only_dir(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A folder mounted read-only (root only); yields (writable source, read-only view)."""
    src, ro = tmp_path / "media-src", tmp_path / "media"
    src.mkdir()
    if not _mount_read_only(src, ro):
        pytest.skip("needs root and mount --bind (a read-only bind mount)")
    try:
        yield src, ro
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def test_runs_from_read_only_media(
    model_run: Path, read_only_dir: tuple[Path, Path], tmp_path: Path, elsewhere: Path
) -> None:
    src, ro = read_only_dir
    shutil.copy2(model_run, src / "model.run")
    exe = ro / "model.run"
    with pytest.raises(OSError):
        (ro / "probe").write_text("x")
    home = tmp_path / "home"
    p = run(exe, "-p", "hi", env={"HOME": str(home)}, cwd=elsewhere)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == f"bundle={exe}"
    assert (runtime_dir(home / ".cache" / "packer", exe) / ".packer-complete").is_file()
    assert sorted(x.name for x in src.iterdir()) == ["model.run"]


# ---- the real stub (slow: PyInstaller builds it once, then it is cached) --------------------


GLIBC_LINE = re.compile(r"^- \*\*glibc (\d+)\.(\d+)\*\* or newer", re.M)
GLIBCXX_LINE = re.compile(r"^  \*\*libstdc\+\+ .*\(GLIBCXX_3\.4\.(\d+)\)", re.M)


def documented_glibc() -> tuple[int, int]:
    m = GLIBC_LINE.search(README.read_text())
    assert m, "README.md must state the oldest glibc in its 'Runs on' section"
    return int(m.group(1)), int(m.group(2))


def documented_glibcxx() -> int:
    """README's oldest libstdc++, as the z of GLIBCXX_3.4.z."""
    m = GLIBCXX_LINE.search(README.read_text())
    assert m, "README.md must state the oldest libstdc++ (GLIBCXX_3.4.z) under the glibc line"
    return int(m.group(1))


def glibc_needed(path: Path) -> tuple[int, int] | None:
    """The newest GLIBC_x.y version that ``path`` needs (readelf's version-needs section)."""
    proc = subprocess.run(["readelf", "-V", "-W", str(path)], capture_output=True, text=True)
    found = [
        (int(a), int(b))
        for a, b in re.findall(r"Name: GLIBC_(\d+)\.(\d+)(?:\.\d+)?\s", proc.stdout)
    ]
    return max(found) if found else None


def glibcxx_needed(path: Path) -> int | None:
    """The newest GLIBCXX_3.4.z that ``path`` needs, as z."""
    proc = subprocess.run(["readelf", "-V", "-W", str(path)], capture_output=True, text=True)
    found = [int(z) for z in re.findall(r"Name: GLIBCXX_3\.4\.(\d+)\s", proc.stdout)]
    return max(found) if found else None


@pytest.fixture(scope="session")
def real_runtime(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(stub, the unpacked runtime tree) of the real cached stub."""
    _needs_gcc()
    from packer.runtime.payload import read_stub_footer
    from packer.stub import ensure_stub

    stub = ensure_stub()
    info = read_stub_footer(stub)
    assert info is not None
    data = stub.read_bytes()
    tree = tmp_path_factory.mktemp("real-runtime")
    for rel, (kind, mode, content) in read_archive(
        data[info.launcher_size : info.launcher_size + info.archive_size]
    ).items():
        p = tree / rel
        if kind == "d":
            p.mkdir(parents=True, exist_ok=True)
        elif kind == "l":
            p.symlink_to(content.decode())
        else:
            p.write_bytes(content)
            p.chmod(mode)
    launcher = tree.parent / "launcher"
    launcher.write_bytes(data[: info.launcher_size])
    return launcher, tree


@pytest.mark.slow
def test_glibc_baseline(real_runtime: tuple[Path, Path]) -> None:
    if not shutil.which("readelf"):
        pytest.skip("readelf (binutils) is needed")
    launcher, tree = real_runtime
    limit, cxx_limit = documented_glibc(), documented_glibcxx()
    assert glibc_needed(launcher) is None, "the launcher must be static (no glibc versions)"
    too_new = {}
    elves = 0
    for p in sorted(tree.rglob("*")):
        if p.is_symlink() or not p.is_file() or p.read_bytes()[:4] != b"\x7fELF":
            continue
        elves += 1
        need = glibc_needed(p)
        if need and need > limit:
            too_new[str(p.relative_to(tree))] = f"GLIBC_{need[0]}.{need[1]}"
        cxx = glibcxx_needed(p)
        if cxx and cxx > cxx_limit:
            too_new[str(p.relative_to(tree))] = f"GLIBCXX_3.4.{cxx}"
    assert elves > 10
    assert not too_new, (
        f"need a newer glibc/libstdc++ than README's {limit}, {cxx_limit}: {too_new}"
    )


@pytest.mark.slow
def test_runtime_bundles_backends_not_the_vulkan_loader(real_runtime: tuple[Path, Path]) -> None:
    import llama_cpp

    _, tree = real_runtime
    libdir = Path(llama_cpp.__file__).parent / "lib"
    bundled = {p.name for p in (tree / "_internal" / "llama_cpp" / "lib").iterdir()}
    assert {p.name for p in libdir.glob("*.so*")} <= bundled
    assert not [p for p in tree.rglob("libvulkan.so*")], "the system's Vulkan loader must be used"
    # the system's C++ runtime too: GPU drivers need it as new as the machine's GCC made them
    assert not [p.name for p in tree.rglob("libstdc++.so*")]
    assert not [p.name for p in tree.rglob("libgcc_s.so*")]


def test_runtime_that_cannot_start_is_one_line(
    launcher: Path, fake_tree: Path, tmp_path: Path, elsewhere: Path
) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(fake_tree, tree, symlinks=True)
    (tree / "packer-runtime").chmod(0o644)  # unpacked as it is archived: not executable
    stub = tmp_path / "stub"
    assemble_stub(launcher, tree, stub)
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF" * 10)
    out = tmp_path / "broken.run"
    pack(stub, gguf, out, Manifest(name="x"))
    p = run(out, env={"PACKER_CACHE": str(tmp_path / "c")}, cwd=elsewhere)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("broken.run: error: cannot start the runtime")
    assert "run again" in lines[0]


@pytest.mark.slow
def test_runs_without_proc(tmp_path: Path) -> None:
    """In a root without /proc mounted (#14 Low) the real model.run answers. Before, the frozen
    runtime's bootloader looked for itself through /proc/self/exe, fell back to argv[0] (the
    model.run) and stopped with "Could not load PyInstaller's embedded PKG archive from the
    executable"; now the launcher gives it its own path as argv[0] there, and its name for
    messages in PACKER_PROG."""
    if os.geteuid() != 0:
        pytest.skip("needs root: chroot")
    from answers import ANSWER, QUESTION
    from conftest import smollm_gguf_path
    from test_noinstall import _root_tarball

    from packer.stub import ensure_stub

    root = tmp_path / "root"
    root.mkdir()
    tarball = _root_tarball("bookworm")
    subprocess.run(
        ["tar", "--numeric-owner", "--exclude=./dev/*", "-xzf", str(tarball), "-C", str(root)],
        check=True,
    )
    assert not (root / "proc" / "self").exists(), "no /proc in the root"
    pack(ensure_stub(), smollm_gguf_path(), root / "model.run", Manifest(name="smol"))
    p = subprocess.run(
        ["chroot", str(root), "/usr/bin/env", "-i", "HOME=/root"]
        + ["/model.run", "-p", QUESTION, "--temp", "0", "-n", "16"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    assert ANSWER in p.stdout, (p.stdout, p.stderr)
    assert all(line.startswith("model.run: ") for line in p.stderr.strip().splitlines()), p.stderr
