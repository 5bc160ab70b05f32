"""The packer wheel's dependencies as binary wheels in one folder, downloaded once and cached.

    python build/wheelhouse.py dist/packer_llm-0.1.0-py3-none-manylinux_2_31_x86_64.whl
    python build/wheelhouse.py WHEEL --python 3.11 --platform manylinux_2_36_x86_64

Prints the folder as the last line of stdout:
``$XDG_CACHE_HOME/packer/wheelhouse-<key>`` (default ``~/.cache/packer``; ``PACKER_WHEELHOUSE_DIR``
replaces ``$XDG_CACHE_HOME/packer``). The key hashes the wheel's own requirements (its
``Requires-Dist`` outside extras), the target Python (major.minor) and platform, so a rebuilt
wheel with the same requirements reuses the folder offline; new requirements get a new one.
The folder holds the dependencies only, never the packer wheel, and only wheels: ``pip download
--only-binary :all:`` refuses a requirement that has no binary wheel for the target, which is
the check that a user's ``pip install`` builds nothing (issue #13). Install from it with::

    pip install --no-index --find-links FOLDER --only-binary :all: WHEEL

Without ``--python``/``--platform`` the target is this Python on this machine; with them, the
wheels of that target (pip evaluates environment markers with this Python all the same, so use
a Python of the same version where markers matter). Tests (tests/test_install.py) and the
install benchmark (benchmarks/install/run.py) use it.
"""

from __future__ import annotations

import argparse
import contextlib
import email.parser
import fcntl
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

KEY_VERSION = "1"  # bump to re-download every cached wheelhouse
EXTRA_MARKER = re.compile(r"\bextra\s*==")


class WheelhouseError(Exception):
    """A step failed; the message is for the user."""


def wheel_metadata(wheel: Path) -> email.message.Message:
    """The METADATA of ``wheel`` (the one ``*.dist-info/METADATA`` at the top)."""
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
        if len(names) != 1:
            raise WheelhouseError(f"{wheel.name}: expected one *.dist-info/METADATA, got {names}")
        text = zf.read(names[0]).decode()
    return email.parser.Parser().parsestr(text)


def requirements(wheel: Path) -> list[str]:
    """The wheel's ``Requires-Dist`` entries outside extras, as written, sorted."""
    found = wheel_metadata(wheel).get_all("Requires-Dist") or []
    return sorted(r.strip() for r in found if not EXTRA_MARKER.search(r.partition(";")[2]))


def this_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def cache_base() -> Path:
    env = os.environ.get("PACKER_WHEELHOUSE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "packer"


def key(reqs: list[str], python: str, plat: str | None) -> str:
    text = "\n".join([KEY_VERSION, python, plat or f"native-{platform.machine()}", *reqs])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def folder(wheel: Path, python: str | None = None, plat: str | None = None) -> Path:
    """Where the wheelhouse of ``wheel`` for that target is (made or not)."""
    return cache_base() / f"wheelhouse-{key(requirements(wheel), python or this_python(), plat)}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # another process may be making it: wait, then reuse it
        yield


def pip_download_command(
    reqs_file: Path, dest: Path, python: str | None, plat: str | None
) -> list[str]:
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check"]
    cmd += ["--only-binary", ":all:", "--dest", str(dest), "--requirement", str(reqs_file)]
    if python and python != this_python():
        nodot = python.replace(".", "")
        cmd += ["--python-version", python, "--implementation", "cp", "--abi", f"cp{nodot}"]
    if plat:
        cmd += ["--platform", plat]
    return cmd


def ensure(wheel: Path, python: str | None = None, plat: str | None = None) -> Path:
    """The wheelhouse of ``wheel``'s requirements for that target, downloaded the first time."""
    reqs = requirements(wheel)
    target = folder(wheel, python, plat)
    if target.is_dir():
        return target
    with _locked(target.parent / ".wheelhouse.lock"):
        if target.is_dir():
            return target
        work = Path(tempfile.mkdtemp(prefix=".wheelhouse-", dir=target.parent))
        try:
            reqs_file = work / "requirements.txt"
            reqs_file.write_text("".join(f"{r}\n" for r in reqs))
            dest = work / "wheels"
            proc = subprocess.run(
                pip_download_command(reqs_file, dest, python, plat),
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
                raise WheelhouseError(
                    f"pip download --only-binary :all: of {wheel.name}'s requirements failed "
                    f"(a requirement without a binary wheel for Python {python or this_python()}, "
                    f"or no network):\n{tail}"
                )
            not_wheels = sorted(p.name for p in dest.iterdir() if p.suffix != ".whl")
            if not_wheels:
                raise WheelhouseError(f"pip download fetched files other than wheels: {not_wheels}")
            shutil.move(str(reqs_file), dest / "requirements.txt")
            os.rename(dest, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", type=Path, help="the packer wheel (make dist)")
    parser.add_argument("--python", help="target Python as major.minor (default: this one)")
    parser.add_argument("--platform", help="target platform tag, e.g. manylinux_2_36_x86_64")
    parser.add_argument("--path", action="store_true", help="only print where it would be")
    args = parser.parse_args(argv)
    try:
        if args.path:
            print(folder(args.wheel, args.python, args.platform))
        else:
            print(ensure(args.wheel, args.python, args.platform))
    except (WheelhouseError, OSError, zipfile.BadZipFile) as exc:
        print(f"wheelhouse.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
