#!/usr/bin/env python3
"""Conversion time and peak RSS of ``packer convert`` against a plain ``cp -r``, same disk.

Inputs, measured in the same run and on the same disk (the work folder):

* the demo checkpoint (SmolLM2-135M-Instruct, BF16, ~270 MB), built with
  ``build/demo_checkpoint.py`` into the work folder unless ``--demo DIR`` is given;
* a synthetic Llama checkpoint of ``--size-b`` billion parameters (default 1.0; ``--quick``:
  0.2), BF16 random values in ~1 GB safetensors shards with an index, written in chunks (the
  model is never whole in memory), with the demo's tokenizer (so ``vocab_size`` is 49152).

For each input and each of ``--repeat`` rounds, both sides run as child processes:
``python -m packer convert SRC -o OUT.gguf`` (outtype auto: BF16 stays BF16) and
``cp -r SRC DST`` followed by ``sync DST/*`` (fsync of every copied file). Both sides include
the fsync of their output (packer convert fsyncs the GGUF itself). The order alternates
round by round and the source is read once beforehand, so both sides find it in the page
cache; before every measured step the script runs ``sync`` (untimed) and waits a second, so
writeback left over from earlier steps does not land on either side. Each child's own peak RSS comes from ``os.wait4``. packer's bytecode is compiled once beforehand, as in an installed packer, so no run pays for compiling it. Figures are medians.

Usage: ``.venv/bin/python benchmarks/convert/run.py [--size-b 1.0] [--quick] [--repeat 2]
[--workdir DIR] [--demo DIR] [--synthetic DIR] [--json FILE] [--keep]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from packer.runtime.atomic_write import write_json

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
SHARD_BYTES = 1 << 30  # ~1 GB per safetensors shard
CHUNK_ELEMENTS = 1 << 24  # random values generated 16 Mi at a time (64 MB of float32)
TIME_RATIO_TARGET = 1.5
RSS_SLACK_MB = 300.0


def log(msg: str) -> None:
    print(f"bench-convert: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ synthetic checkpoint


def llama_shape(size_b: float, vocab: int) -> dict[str, int]:
    """A Llama shape with about ``size_b`` billion parameters (layers adjusted)."""
    if size_b >= 0.5:
        shape = {"hidden": 2048, "heads": 32, "kv_heads": 8, "intermediate": 5632}
    else:
        shape = {"hidden": 1024, "heads": 16, "kv_heads": 4, "intermediate": 2816}
    h, inter = shape["hidden"], shape["intermediate"]
    kv_dim = h // shape["heads"] * shape["kv_heads"]
    per_layer = 2 * h * h + 2 * h * kv_dim + 3 * h * inter + 2 * h
    fixed = 2 * vocab * h + h  # untied embeddings + lm_head, final norm
    shape["layers"] = max(1, round((size_b * 1e9 - fixed) / per_layer))
    return shape


def llama_tensors(shape: dict[str, int], vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    h, inter = shape["hidden"], shape["intermediate"]
    kv_dim = h // shape["heads"] * shape["kv_heads"]
    tensors: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, h))]
    for i in range(shape["layers"]):
        p = f"model.layers.{i}."
        tensors += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (h, h)),
            (p + "self_attn.k_proj.weight", (kv_dim, h)),
            (p + "self_attn.v_proj.weight", (kv_dim, h)),
            (p + "self_attn.o_proj.weight", (h, h)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (inter, h)),
            (p + "mlp.up_proj.weight", (inter, h)),
            (p + "mlp.down_proj.weight", (h, inter)),
        ]
    tensors += [("model.norm.weight", (h,)), ("lm_head.weight", (vocab, h))]
    return tensors


def write_random_bf16(f: Any, n: int, rng: np.random.Generator, norm: bool) -> None:
    """``n`` BF16 values (as their uint16 bits), generated and written in chunks."""
    done = 0
    while done < n:
        count = min(CHUNK_ELEMENTS, n - done)
        if norm:
            values = np.ones(count, dtype=np.float32)
        else:
            values = rng.standard_normal(count, dtype=np.float32)
            values *= np.float32(0.02)
        f.write((values.view(np.uint32) >> 16).astype("<u2").tobytes())
        done += count


def make_synthetic(out: Path, size_b: float, demo: Path) -> dict[str, Any]:
    """Write a sharded BF16 Llama checkpoint of about ``size_b`` B parameters into ``out``."""
    demo_config = json.loads((demo / "config.json").read_text(encoding="utf-8"))
    vocab = int(demo_config["vocab_size"])
    shape = llama_shape(size_b, vocab)
    tensors = llama_tensors(shape, vocab)
    n_params = sum(math.prod(s) for _, s in tensors)
    out.mkdir(parents=True)

    # group tensors into shards of about SHARD_BYTES (a tensor is never split)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, tshape in tensors:
        nbytes = 2 * math.prod(tshape)
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, tshape))
        size += nbytes

    rng = np.random.default_rng(1234)
    weight_map: dict[str, str] = {}
    total = 0
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, tshape in shard:
            nbytes = 2 * math.prod(tshape)
            header[name] = {
                "dtype": "BF16",
                "shape": list(tshape),
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
            weight_map[name] = fname
        total += offset
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        with open(out / fname, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for name, tshape in shard:
                write_random_bf16(f, math.prod(tshape), rng, norm=name.endswith("norm.weight"))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    h = shape["hidden"]
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": demo_config.get("bos_token_id"),
        "eos_token_id": demo_config.get("eos_token_id"),
        "pad_token_id": demo_config.get("pad_token_id"),
        "head_dim": h // shape["heads"],
        "hidden_act": "silu",
        "hidden_size": h,
        "initializer_range": 0.02,
        "intermediate_size": shape["intermediate"],
        "max_position_embeddings": 4096,
        "mlp_bias": False,
        "num_attention_heads": shape["heads"],
        "num_hidden_layers": shape["layers"],
        "num_key_value_heads": shape["kv_heads"],
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": vocab,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (demo / name).is_file():
            shutil.copy2(demo / name, out / name)
    return {"n_params": n_params, "shards": len(shards), **shape, "vocab": vocab}


# ------------------------------------------------------------------------- measuring


def largest_tensor_bytes(src: Path) -> int:
    largest = 0
    for file in sorted(src.glob("*.safetensors")):
        with open(file, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
        for name, entry in header.items():
            if name != "__metadata__":
                a, b = entry["data_offsets"]
                largest = max(largest, b - a)
    return largest


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def read_through(path: Path) -> None:
    """Read every file once, so that the source is in the page cache for both sides."""
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                while f.read(1 << 24):
                    pass


# Runs argv[1:] and prints that child's own peak RSS (KiB) on stdout. The wrapper is needed
# because a child started straight from this process inherits this process's peak RSS in
# ru_maxrss (Linux carries the old address space's high-water mark across exec), so a small
# cp would report the benchmark's own footprint.
WRAPPER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""


def measure(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; return (wall seconds, the child's own peak RSS in MB).

    The wall time includes the small wrapper's start (~20 ms of Python start-up).
    """
    start = time.perf_counter()
    proc = subprocess.run([PYTHON, "-S", "-c", WRAPPER, *cmd], capture_output=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(
            f"bench-convert: {' '.join(cmd)} failed ({proc.returncode}):\n"
            f"{proc.stderr.decode(errors='replace')}"
        )
    return wall, int(proc.stdout.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux


# Compiles the packer package that ``python -m packer`` will import (same cwd) to bytecode.
COMPILE = """
import compileall, os, packer
compileall.compile_dir(os.path.dirname(packer.__file__), quiet=1)
print(os.path.dirname(packer.__file__))
"""


def cache_bytecode() -> None:
    """Make sure packer's bytecode is cached, as in an installed packer (pip compiles it).

    Without this, an environment with PYTHONDONTWRITEBYTECODE=1 (or a read-only checkout)
    makes every ``packer convert`` compile its ~25 modules again, about 0.1 s of CPU that
    is no part of conversion. (py_compile writes the files even with that variable set.)
    """
    proc = subprocess.run([PYTHON, "-c", COMPILE], capture_output=True, text=True, check=True)
    log(f"bytecode cached for {proc.stdout.strip()}")


def run_convert(src: Path, out: Path) -> tuple[float, float]:
    return measure([PYTHON, "-m", "packer", "convert", str(src), "-o", str(out)])


def run_copy(src: Path, dst: Path) -> tuple[float, float]:
    # cp -r, then fsync every copied file (packer convert fsyncs its output too)
    script = 'cp -r "$1" "$2" && sync "$2"/*'
    return measure(["sh", "-c", script, "sh", str(src), str(dst)])


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def bench_input(label: str, src: Path, work: Path, repeat: int) -> dict[str, Any]:
    largest = largest_tensor_bytes(src)
    size = folder_bytes(src)
    log(f"{label}: {size / 1e9:.2f} GB, largest tensor {largest / 1e6:.0f} MB; warming the cache")
    read_through(src)
    slug = "".join(c if c.isalnum() else "-" for c in label)
    out = work / f"{slug}.gguf"
    dst = work / f"{slug}.copy"
    samples: dict[str, list[float]] = {"convert_s": [], "convert_rss_mb": [], "cp_s": []}
    samples["cp_rss_mb"] = []
    gguf_bytes = 0
    for r in range(repeat):
        order = ("convert", "cp") if r % 2 == 0 else ("cp", "convert")
        for side in order:
            # untimed: flush what earlier steps left dirty (and the deletes' discards), so
            # that neither side pays for the other's writeback
            os.sync()
            time.sleep(1)
            if side == "convert":
                wall, rss = run_convert(src, out)
                gguf_bytes = out.stat().st_size
                remove(out)
            else:
                wall, rss = run_copy(src, dst)
                remove(dst)
            samples[f"{side}_s"].append(wall)
            samples[f"{side}_rss_mb"].append(rss)
            log(f"{label} round {r + 1}/{repeat}: {side} {wall:.2f} s, peak RSS {rss:.0f} MB")
    convert_s = statistics.median(samples["convert_s"])
    cp_s = statistics.median(samples["cp_s"])
    rss = statistics.median(samples["convert_rss_mb"])
    bound = 1.5 * largest / 1e6 + RSS_SLACK_MB
    return {
        "input": label,
        "path": str(src),
        "size_bytes": size,
        "gguf_bytes": gguf_bytes,
        "largest_tensor_bytes": largest,
        "convert_s": convert_s,
        "cp_s": cp_s,
        "ratio": convert_s / cp_s,
        "convert_rss_mb": rss,
        "rss_bound_mb": bound,
        "time_ok": convert_s / cp_s <= TIME_RATIO_TARGET,
        "rss_ok": rss <= bound,
        "samples": samples,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        "input",
        "size",
        "largest tensor",
        "convert s",
        "cp s",
        "ratio",
        "time",
        "convert peak RSS",
        "RSS bound",
        "RSS",
    )
    lines = [head]
    for r in rows:
        lines.append(
            (
                r["input"],
                f"{r['size_bytes'] / 1e9:.2f} GB",
                f"{r['largest_tensor_bytes'] / 1e6:.0f} MB",
                f"{r['convert_s']:.2f}",
                f"{r['cp_s']:.2f}",
                f"{r['ratio']:.2f}x",
                "ok" if r["time_ok"] else "MISS",
                f"{r['convert_rss_mb']:.0f} MB",
                f"{r['rss_bound_mb']:.0f} MB",
                "ok" if r["rss_ok"] else "MISS",
            )
        )
    print("| " + " | ".join(lines[0]) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for line in lines[1:]:
        print("| " + " | ".join(line) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-b", type=float, default=1.0, help="synthetic model size (B)")
    parser.add_argument("--quick", action="store_true", help="a 0.2B synthetic model instead")
    parser.add_argument("--repeat", type=int, default=2, help="rounds per input (median)")
    parser.add_argument("--workdir", type=Path, help="parent of the temp work folder")
    parser.add_argument("--demo", type=Path, help="existing demo checkpoint folder")
    parser.add_argument(
        "--synthetic", type=Path, help="existing synthetic checkpoint folder (from --keep)"
    )
    parser.add_argument("--json", type=Path, help="write all samples and settings here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    size_b = 0.2 if args.quick else args.size_b
    parent = (args.workdir or REPO.parent).resolve()
    work = Path(tempfile.mkdtemp(prefix="packer-bench-convert-", dir=parent))
    log(f"work folder {work} (all inputs and outputs on this disk)")
    cache_bytecode()
    try:
        if args.demo:
            demo = args.demo.resolve()
            if not (demo / "config.json").is_file() or not (demo / "tokenizer.json").is_file():
                sys.exit(f"bench-convert: {demo} is not the demo checkpoint (no config/tokenizer)")
        else:
            demo = work / "SmolLM2-135M-Instruct"
            subprocess.run(
                [PYTHON, str(REPO / "build" / "demo_checkpoint.py"), str(demo)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        if args.synthetic:
            synth = args.synthetic.resolve()
            config = json.loads((synth / "config.json").read_text(encoding="utf-8"))
            shape = {"reused": str(synth), "layers": config["num_hidden_layers"]}
            size_b = round(folder_bytes(synth) / 2e9, 1)  # BF16: 2 bytes per parameter
            log(f"using {synth} ({size_b:g}B parameters)")
        else:
            synth = work / f"synthetic-llama-{size_b:g}B"
            start = time.perf_counter()
            shape = make_synthetic(synth, size_b, demo)
            log(
                f"wrote {synth.name}: {shape['n_params'] / 1e9:.3f} B params, {shape['layers']}"
                f" layers, {shape['shards']} shards in {time.perf_counter() - start:.1f} s"
            )
        rows = [
            bench_input("SmolLM2-135M BF16", demo, work, args.repeat),
            bench_input(f"synthetic llama {size_b:g}B BF16", synth, work, args.repeat),
        ]
        print(f"\nwork folder: {work} (same disk for sources, GGUF and copy)")
        print("convert and cp both include fsync of their output; medians of", args.repeat)
        print_table(rows)
        if args.json:
            report = {
                "rows": rows,
                "synthetic": shape,
                "settings": {"repeat": args.repeat, "size_b": size_b, "workdir": str(work)},
                "machine": {
                    "platform": platform.platform(),
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "numpy": np.__version__,
                },
            }
            try:
                write_json(args.json, report, indent=2)  # a stopped run leaves no half-written file
            except OSError as exc:
                log(f"cannot write {args.json}: {exc.strerror or exc}")
                return 1
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
