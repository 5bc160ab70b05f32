"""``make dist``: the wheel users install, with the prebuilt ``cpu`` runtime stub inside.

    .venv/bin/python build/dist.py --out dist     # prints the wheel's path (last line of stdout)

Builds (or reuses) this checkout's ``cpu`` stub, which must have been frozen in the Debian 11
build root (``make install`` as root), so every model.run it makes needs glibc 2.31 at most;
stages the package with the stub in ``packer/_stub/cpu/`` (never in the checkout itself) and
builds ``packer_llm-<version>-py3-none-manylinux_2_31_x86_64.whl`` with setuptools: pure Python
plus one prebuilt executable, so one wheel serves every CPython >= 3.10 on x86-64 Linux.
Zip timestamps come from ``SOURCE_DATE_EPOCH`` (default: the last commit's time), so the same
checkout gives the same wheel. Refuses a wheel over :data:`MAX_BYTES`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLATFORM_TAG = "manylinux_2_31_x86_64"
MAX_BYTES = 45_000_000  # issue #13: the wheel stays under 45 MB
TOP_FILES = ("pyproject.toml", "README.md", "CHANGELOG.md")


def _fail(message: str) -> None:
    print(f"dist: error: {message}", file=sys.stderr)
    raise SystemExit(1)


def _package_files() -> list[Path]:
    """The files of the ``packer`` package git tracks or would (not ignored: no caches, no builds)."""
    proc = subprocess.run(
        [
            "git",
            "-C",
            str(ROOT),
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
            "packer",
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        _fail(f"git ls-files failed: {proc.stderr.strip()} (build the wheel from a git checkout)")
    return [Path(p) for p in proc.stdout.split("\0") if p and (ROOT / p).is_file()]


def _source_date_epoch() -> str:
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return os.environ["SOURCE_DATE_EPOCH"]
    proc = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%ct"], capture_output=True, text=True
    )
    return proc.stdout.strip() or "315532800"  # 1980-01-01: the oldest a zip file can say


def stage(stage_dir: Path, stub: Path, build_info: Path) -> None:
    for rel in _package_files():
        dst = stage_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, dst)
        dst.chmod(0o644)  # not the checkout's modes (its umask): the same wheel everywhere
    for name in TOP_FILES:
        shutil.copyfile(ROOT / name, stage_dir / name)
    shipped = stage_dir / "packer" / "_stub" / "cpu"
    shipped.mkdir(parents=True)
    shutil.copyfile(stub, shipped / stub.name)
    (shipped / stub.name).chmod(0o755)
    shutil.copyfile(build_info, shipped / build_info.name)
    (shipped / build_info.name).chmod(0o644)


def build_wheel(stage_dir: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    code = (
        "import sys; from setuptools import build_meta as b; "
        "print(b.build_wheel(sys.argv[1], config_settings={'--build-option': "
        f"['--plat-name', '{PLATFORM_TAG}', '--python-tag', 'py3']}}))"
    )
    env = {**os.environ, "SOURCE_DATE_EPOCH": _source_date_epoch()}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out)],
        cwd=stage_dir,
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-5:])
        _fail(f"setuptools could not build the wheel: {tail}")
    return out / proc.stdout.strip().splitlines()[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="folder for the wheel")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the stub build's log")
    args = parser.parse_args(argv)
    os.umask(0o022)  # folders and build copies get the same modes whatever the caller's umask

    sys.path.insert(0, str(ROOT))
    from packer.errors import PackerError
    from packer.host import GLIBC_FLOOR, version_tuple
    from packer.runtime.atomic_write import atomic_write
    from packer.stub import BUILD_INFO, ensure_stub, read_build

    try:
        stub = ensure_stub("cpu", verbose=args.verbose)
        build = read_build(stub)
    except PackerError as exc:
        _fail(str(exc))
    if not build.glibc or version_tuple(build.glibc) > GLIBC_FLOOR:
        _fail(
            f"the cpu runtime here needs glibc {build.glibc or '?'} (frozen with "
            f"{build.frozen_with}); a wheel must ship one frozen in the Debian 11 build root: "
            "run `make install` as root first"
        )
    with tempfile.TemporaryDirectory(prefix="packer-dist-") as tmp:
        stage_dir = Path(tmp) / "src"
        stage(stage_dir, stub, stub.parent / BUILD_INFO)
        built = build_wheel(stage_dir, Path(tmp) / "wheel")
        size = built.stat().st_size
        if size > MAX_BYTES:
            _fail(f"{built.name} is {size / 1e6:.1f} MB, over the {MAX_BYTES / 1e6:.0f} MB limit")
        args.out.mkdir(parents=True, exist_ok=True)
        final = args.out / built.name
        with open(built, "rb") as src, atomic_write(final) as dst:
            shutil.copyfileobj(src, dst)
    print(
        f"dist: {final.name}: {size / 1e6:.1f} MB, runtime stub {build.key} "
        f"({build.llama_cpp}, glibc {build.glibc}+)",
        file=sys.stderr,
    )
    print(final.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
