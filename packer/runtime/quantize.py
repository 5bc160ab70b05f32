"""The runtime's hidden quantizer mode: ``packer-runtime --packer-quantize JOB.json``.

``packer build`` quantizes with the same frozen llama.cpp that will run the model (issue #13):
it starts the runtime of the stub it packs in this mode, so quantizer and inference can never
disagree, and the build machine needs no llama-cpp-python of its own. In a checkout the same
code runs unfrozen as ``python -m packer.runtime --packer-quantize JOB.json``.

The job is a JSON object written by :mod:`packer.quantize`::

    {"src": GGUF, "dst": GGUF, "ftype": int, "threads": int,
     "imatrix": NPZ or null, "imatrix_name": str}

``imatrix`` is an importance matrix the build side has already read and checked
(:mod:`packer.imatrix` needs ``gguf``, which is not frozen), saved with ``numpy.savez``: one
float32 vector per tensor name. llama.cpp logs every tensor on stderr; the exit status is 0 when
the output was written, 1 when llama.cpp refused, 2 for a malformed job.
"""

from __future__ import annotations

import ctypes
import json
import sys
from pathlib import Path
from typing import Any

FLAG = "--packer-quantize"


def _load_job(path: str) -> dict[str, Any]:
    job = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(job, dict) or not {"src", "dst", "ftype"} <= job.keys():
        raise ValueError("a quantize job needs src, dst and ftype")
    return job


def run(argv: list[str]) -> int:
    """``argv``: the arguments after :data:`FLAG` (one: the job file)."""
    if len(argv) != 1:
        print(f"usage: {FLAG} JOB.json", file=sys.stderr)
        return 2
    try:
        job = _load_job(argv[0])
    except (OSError, ValueError) as exc:
        print(f"cannot read the quantize job {argv[0]}: {exc}", file=sys.stderr)
        return 2

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(job["ftype"])
    params.nthread = int(job.get("threads") or 0)
    keep: list[object] = []  # the buffers llama.cpp reads during the call
    if job.get("imatrix"):
        import numpy as np

        with np.load(job["imatrix"]) as npz:
            vectors = {name: np.ascontiguousarray(npz[name], dtype=np.float32) for name in npz}
        entries = (llama_cpp.llama_model_imatrix_data * (len(vectors) + 1))()
        for i, (name, vec) in enumerate(sorted(vectors.items())):
            buf = (ctypes.c_float * vec.size).from_buffer_copy(vec.tobytes())
            keep.append(buf)
            entries[i].name = name.encode()
            entries[i].data = ctypes.cast(buf, ctypes.POINTER(ctypes.c_float))
            entries[i].size = vec.size  # floats: ne[0] per expert
        # the last entry stays zeroed: name NULL ends the list
        keep.append(entries)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        # recorded in the output's metadata, as llama-quantize does (an empty key ends the list)
        kv = (llama_cpp.llama_model_kv_override * 3)()
        kv[0].key = b"quantize.imatrix.file"
        kv[0].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
        kv[0].value.val_str = str(job.get("imatrix_name") or "imatrix").encode()[:127]
        kv[1].key = b"quantize.imatrix.entries_count"
        kv[1].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
        kv[1].value.val_i64 = len(vectors)
        keep.append(kv)
        params.kv_overrides = ctypes.cast(kv, ctypes.POINTER(llama_cpp.llama_model_kv_override))
    rc = llama_cpp.llama_model_quantize(str(job["src"]).encode(), str(job["dst"]).encode(), params)
    del keep
    return 1 if rc else 0
