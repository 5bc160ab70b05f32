#!/usr/bin/env python3
"""From ``pip install`` of the packer wheel to a finished demo model.run, and ``packer build``
installed against the checkout's, measured in the same run.

    .venv/bin/python benchmarks/install/run.py                  # builds the wheel and the demo
    .venv/bin/python benchmarks/install/run.py --demo demo/SmolLM2-135M-Instruct
    .venv/bin/python benchmarks/install/run.py --wheel dist/packer_llm-0.1.0-...whl --json out.json

A user's first run: a fresh venv (``python -m venv``), ``pip install --no-index --only-binary
:all:`` of the wheel from a local wheelhouse (``build/wheelhouse.py``: its dependencies, downloaded
once and cached, so the download is not counted), then ``packer build DEMO --quant Q5_K_M`` with
an empty packer cache (whatever the installed packer does the first time counts). The total,
install included, has a target of 2 minutes on 2 cores. The model.run then answers the demo
question once (first start: unpacks the runtime and the model), shown but not counted.

The peer of the build: ``python -m packer build`` of the checkout (this Python, PYTHONPATH = the
repository: what ``make install`` gives a maintainer), with its runtime stub cached (a warm-up
build runs first, untimed). Both sides then build the demo ``--repeat`` times, in turns, each
with its own cache already warm; figures are medians and the ratio is installed / checkout.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from answers import DEMO_ANSWER, DEMO_QUESTION  # noqa: E402

from packer.runtime.atomic_write import write_json  # noqa: E402

QUANT = "Q5_K_M"
TOTAL_TARGET_S = 120.0
BUILD_TIMEOUT_S = 1800
RUN_NAME = "SmolLM2-135M-Instruct.Q5_K_M.run"


class BenchError(Exception):
    """A step failed; the message is one line (plus the step's output) for the user."""


def log(msg: str) -> None:
    print(f"bench-install: {msg}", file=sys.stderr, flush=True)


def timed(
    cmd: list[str], env: dict[str, str], cwd: Path, what: str, timeout: float = BUILD_TIMEOUT_S
) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise BenchError(f"{what} failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    return elapsed, proc


def last_line(proc: subprocess.CompletedProcess[str], what: str) -> Path:
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise BenchError(f"{what} printed nothing on stdout")
    return Path(lines[-1])


def user_env(home: Path, venv: Path) -> dict[str, str]:
    """A user's shell: the venv's commands, their own HOME (so an empty packer cache), nothing
    of this session (no PYTHONPATH: the checkout must not leak in)."""
    path = f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"
    return {"HOME": str(home), "PATH": path, "LANG": "C.UTF-8"}


def checkout_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def build_cmd(packer: list[str], demo: Path, out: Path) -> list[str]:
    return [*packer, "build", str(demo), "--quant", QUANT, "-o", str(out)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, help="the wheel; default: build/dist.py builds one")
    parser.add_argument("--demo", type=Path, help="the demo checkpoint; default: build one")
    parser.add_argument("--repeat", type=int, default=3, help="warm builds per side (median)")
    parser.add_argument("--workdir", type=Path, help="parent of the temp work folder")
    parser.add_argument("--json", type=Path, help="write all samples and settings here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="packer-bench-install-", dir=args.workdir))
    python = sys.executable
    try:
        report = run(args, work, python)
    except (BenchError, subprocess.TimeoutExpired) as exc:
        log(str(exc))
        return 1
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        try:
            write_json(args.json, report, indent=2)  # a stopped run leaves no half-written file
        except OSError as exc:
            log(f"cannot write {args.json}: {exc.strerror or exc}")
            return 1
    return 0


def run(args: argparse.Namespace, work: Path, python: str) -> dict[str, Any]:
    here = dict(os.environ)
    setup: dict[str, float] = {}  # not counted in the total
    wheel: Path | None = args.wheel
    if wheel is None:
        dist = REPO / "build" / "dist.py"
        if not dist.is_file():
            raise BenchError("build/dist.py (make dist) does not exist: pass --wheel WHEEL")
        log("building the wheel (build/dist.py)")
        (work / "dist").mkdir()
        setup["wheel build"], proc = timed(
            [python, str(dist), "--out", str(work / "dist")], here, REPO, "build/dist.py"
        )
        wheel = last_line(proc, "build/dist.py")
    demo: Path | None = args.demo
    if demo is None:
        log("making the demo checkpoint (build/demo_checkpoint.py)")
        setup["demo checkpoint"], proc = timed(
            [python, str(REPO / "build" / "demo_checkpoint.py"), str(work / "demo")],
            here,
            REPO,
            "build/demo_checkpoint.py",
        )
        demo = last_line(proc, "build/demo_checkpoint.py")
    demo = demo.resolve()
    log("the wheelhouse (build/wheelhouse.py: downloaded once, cached)")
    setup["wheelhouse"], proc = timed(
        [python, str(REPO / "build" / "wheelhouse.py"), str(wheel)], here, REPO, "wheelhouse"
    )
    wheelhouse = last_line(proc, "build/wheelhouse.py")

    # -- a user's first run: venv, pip install, packer build with an empty cache -----------------
    home = work / "home"
    home.mkdir()
    venv = work / "venv"
    env = user_env(home, venv)
    log("fresh venv + pip install (offline, binary only)")
    start = time.perf_counter()
    timed([python, "-m", "venv", str(venv)], env, home, "python -m venv")
    pip = [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "--no-cache-dir"]
    pip += ["--no-index", "--only-binary", ":all:", "--find-links", str(wheelhouse), str(wheel)]
    timed(pip, env, home, "pip install")
    install_s = time.perf_counter() - start
    log(f"installed in {install_s:.1f} s; first packer build (empty cache)")
    installed = [str(venv / "bin" / "packer")]
    first_run = work / "first" / RUN_NAME
    first_run.parent.mkdir()
    first_build_s, _ = timed(build_cmd(installed, demo, first_run), env, home, "packer build")
    ask = ["env", "-i", f"HOME={home}", str(first_run), "-p", DEMO_QUESTION, "--temp", "0"]
    answer_s, proc = timed(ask, env, home, "model.run", timeout=600)
    answer = proc.stdout.strip()
    if DEMO_ANSWER not in answer:
        raise BenchError(f"model.run answered {answer!r}, without {DEMO_ANSWER!r}")

    # -- packer build, warm: installed vs the checkout ------------------------------------------
    checkout = [python, "-m", "packer"]
    peer_env = checkout_env()
    log("checkout packer build warm-up (builds its runtime stub the first time)")
    warm_up_s, _ = timed(
        build_cmd(checkout, demo, work / "peer-warm-up.run"), peer_env, REPO, "checkout build"
    )
    samples: dict[str, list[float]] = {"installed": [], "checkout": []}
    for i in range(args.repeat):
        sides = [("installed", installed, env, home), ("checkout", checkout, peer_env, REPO)]
        for side, packer, side_env, cwd in sides if i % 2 == 0 else reversed(sides):
            out = work / f"{side}-{i}.run"
            elapsed, _ = timed(build_cmd(packer, demo, out), side_env, cwd, f"{side} build")
            samples[side].append(elapsed)
            out.unlink()
            log(f"round {i + 1}/{args.repeat}: {side} {elapsed:.1f} s")
    med = {side: statistics.median(v) for side, v in samples.items()}
    total = install_s + first_build_s

    print(f"\npacker wheel -> demo model.run ({QUANT}), {os.cpu_count()} CPUs")
    print(f"wheel: {wheel.name} ({wheel.stat().st_size / 1e6:.1f} MB)")
    print(f"{'step':<48}{'s':>8}")
    for name, value in setup.items():
        print(f"{name + ' (not counted)':<48}{value:>8.1f}")
    print(f"{'fresh venv + pip install (offline)':<48}{install_s:>8.1f}")
    print(f"{'first packer build (empty cache)':<48}{first_build_s:>8.1f}")
    verdict = "ok" if total <= TOTAL_TARGET_S else "MISS"
    print(f"{'total: pip install -> model.run':<48}{total:>8.1f}  target <= 120 s: {verdict}")
    print(f"{'first answer (unpack + generate; not counted)':<48}{answer_s:>8.1f}  {answer!r}")
    print(f"{'checkout build warm-up (not counted)':<48}{warm_up_s:>8.1f}")
    print(f"\npacker build, warm caches, median of {args.repeat}:")
    print(f"{'installed s':>12}{'checkout s':>12}{'ratio':>8}")
    print(
        f"{med['installed']:>12.1f}{med['checkout']:>12.1f}{med['installed'] / med['checkout']:>7.2f}x"
    )
    return {
        "wheel": str(wheel),
        "wheel_bytes": wheel.stat().st_size,
        "setup_s": setup,
        "install_s": install_s,
        "first_build_s": first_build_s,
        "total_s": total,
        "total_target_s": TOTAL_TARGET_S,
        "answer_s": answer_s,
        "answer": answer,
        "checkout_warm_up_s": warm_up_s,
        "warm_build_s": samples,
        "settings": {"repeat": args.repeat, "quant": QUANT, "demo": str(demo)},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
    }


if __name__ == "__main__":
    sys.exit(main())
