"""How close to a tie a greedy answer is: the top-2 logit gap at every step of its greedy path.

A greedy answer is only reproducible across machines while, at every step, the chosen token's
logit leads the runner-up's by more than the backends' rounding differences: llama.cpp's CPU
variants (x64, haswell, zen4, sapphirerapids...) and Vulkan round differently, by up to about
0.7 logit on the models the tests use (tests/test_backend.py). :func:`greedy_margins` decodes
the way the runtime's scheduler does (the prompt as ``-p``/the server build it, penalties, an
optional grammar, then the most likely token) and records that gap at every step.

It runs as a script, in a child process (a CPU variant is chosen once per process):
``python tests/margins.py MODEL.gguf CASES.json|- OUT.json``, ``PACKER_CPU_VARIANT`` pinning a
variant. Each case is a JSON object: ``messages`` (a chat) or ``prompt`` (raw completion) and
``steps`` (at most this many tokens), optionally ``repeat_penalty`` (default 1.1, the
runtime's), ``grammar`` (GBNF), ``ignore_eos``, ``until`` (stop once the text holds this) and
``force`` (token ids to take first instead of the greedy ones: a branch at a near tie).
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PENALTY_LAST_N = 64  # packer.runtime.generate.Sampling.repeat_last_n (its default)


def dequantize(src: Path, out: Path) -> None:
    """``src`` with every tensor in F32: the exact computation of the same weights (no
    activation rounding before the dot products, which llama.cpp does for quantized ones)."""
    script = (
        "import sys\n"
        "from packer.runtime.backend import load_backends\n"
        "load_backends('cpu')\n"
        "import llama_cpp as ll\n"
        "p = ll.llama_model_quantize_default_params()\n"
        "p.ftype, p.allow_requantize, p.nthread = ll.LLAMA_FTYPE_ALL_F32, True, 2\n"
        "sys.exit(ll.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(src), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def greedy_margins(
    model: Path,
    cases: list[dict[str, Any]],
    variant: str | None = None,
    *,
    gpu: str = "cpu",
    env: dict[str, str] | None = None,
    timeout: int = 600,
) -> list[dict[str, Any]]:
    """For each case: ``tokens`` (the greedy path), ``gaps`` (top-1 minus top-2 logit at each
    step, after penalties and grammar), ``rivals`` (the runner-up at each step), ``text`` and
    ``ended`` (by the end of turn). Computed in a child process on the CPU, ``variant`` pinned
    (None: the runtime's choice), or with every layer on ``gpu`` (``--gpu``'s names) in ``env``."""
    env = dict(env or os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    if gpu == "cpu":
        env.pop("GGML_VK_VISIBLE_DEVICES", None)
    if variant is not None:
        env["PACKER_CPU_VARIANT"] = variant
    with tempfile.TemporaryDirectory(prefix="margins-") as tmp:
        out = Path(tmp) / "out.json"
        proc = subprocess.run(
            [sys.executable, __file__, str(model), "-", str(out), gpu],
            input=json.dumps(cases),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return list(json.loads(out.read_text()))


# -- the child ---------------------------------------------------------------------------------
def _penalize(logits: Any, recent: list[int], penalty: float) -> Any:
    """llama.cpp's repeat penalty (llama_sampler_init_penalties, no frequency or presence part):
    a token among the last generated ones has a positive logit divided, a negative one
    multiplied by ``penalty``."""
    if penalty == 1.0 or not recent:
        return logits
    out = logits.copy()
    seen = sorted(set(recent[-PENALTY_LAST_N:]))
    out[seen] = [v / penalty if v > 0 else v * penalty for v in out[seen]]
    return out


class _Grammar:
    """llama.cpp's grammar sampler applied to a logit row: what it forbids becomes -inf."""

    def __init__(self, ll: Any, vocab: Any, gbnf: str) -> None:
        self.ll = ll
        self.sampler = ll.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
        assert self.sampler, "invalid grammar"

    def mask(self, logits: Any) -> Any:
        """``logits`` with what the grammar forbids now at -inf, as far as the top two allowed
        tokens go: the likeliest 64 are checked first (checking all is slow), all if fewer
        than two of those are allowed."""
        import numpy as np

        masked = np.full(len(logits), -np.inf, dtype=np.float32)
        for ids in (np.argsort(-logits, kind="stable")[:64], np.arange(len(logits))):
            data = np.zeros(len(ids), dtype=[("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
            data["id"], data["logit"] = ids, logits[ids]
            ptr = data.ctypes.data_as(ctypes.POINTER(self.ll.llama_token_data))
            arr = self.ll.llama_token_data_array(ptr, len(ids), -1, False)
            self.ll.llama_sampler_apply(self.sampler, ctypes.byref(arr))
            kept = data[: arr.size]
            kept = kept[np.isfinite(kept["logit"])]
            if len(kept) >= 2 or len(ids) == len(logits):
                masked[kept["id"]] = kept["logit"]
                return masked
        return masked

    def accept(self, token: int) -> None:
        self.ll.llama_sampler_accept(self.sampler, token)

    def close(self) -> None:
        self.ll.llama_sampler_free(self.sampler)


def _run_case(llm: Any, case: dict[str, Any]) -> dict[str, Any]:
    import llama_cpp as ll
    import numpy as np

    from packer.runtime import generate as gen
    from packer.runtime.engine import Engine

    # a stand-in engine over this Llama: the engine's own accessors, no scheduler
    engine = SimpleNamespace(llm=llm, has_chat_template="tokenizer.chat_template" in llm.metadata)
    for name in ("chat_handler", "add_bos"):
        setattr(engine, name, getattr(Engine, name).__get__(engine))
    engine.vocab = Engine.vocab.fget(engine)  # type: ignore[attr-defined]
    if "messages" in case:
        prompt, _ = gen.chat_tokens(engine, case["messages"], [])  # type: ignore[arg-type]
    else:
        prompt = gen.completion_tokens(engine, case["prompt"])  # type: ignore[arg-type]
    vocab = llm._model.vocab
    grammar = _Grammar(ll, vocab, case["grammar"]) if case.get("grammar") else None
    penalty = float(case.get("repeat_penalty", 1.1))
    n_vocab = int(llm.n_vocab())
    forced = [int(t) for t in case.get("force", [])]
    text = b""
    ended = False  # by the end of turn (not by ``steps`` or ``until``)
    llm.reset()
    llm.eval(prompt)
    tokens: list[int] = []
    gaps: list[float] = []
    rivals: list[int] = []
    try:
        for _ in range(int(case["steps"])):
            row = ll.llama_get_logits_ith(llm._ctx.ctx, -1)  # the last evaluated token's
            logits = np.ctypeslib.as_array(row, shape=(n_vocab,)).astype(np.float32)
            logits = _penalize(logits, tokens, penalty)
            if grammar is not None:
                logits = grammar.mask(logits)
            order = np.argsort(-logits, kind="stable")[:2]
            token, rival = int(order[0]), int(order[1])
            if len(tokens) < len(forced):  # a branch: the path up to here is given
                token = forced[len(tokens)]
                rival = int(order[1]) if token == int(order[0]) else int(order[0])
            gap = float(logits[token] - logits[rival])
            tokens.append(token)
            gaps.append(gap if np.isfinite(gap) else 1e9)  # the grammar left one choice
            rivals.append(rival)
            if not case.get("ignore_eos") and ll.llama_vocab_is_eog(vocab, token):
                ended = True
                break
            text += gen.token_piece(engine, token)  # type: ignore[arg-type]
            if case.get("until") and case["until"].encode() in text:
                break
            if grammar is not None:
                grammar.accept(token)
            llm.eval([token])
    finally:
        if grammar is not None:
            grammar.close()
    pieces = [gen.token_piece(engine, t) for t in tokens]  # type: ignore[arg-type]
    return {
        "tokens": tokens,
        "gaps": gaps,
        "rivals": rivals,
        "pieces": [p.decode("utf-8", "replace") for p in pieces],
        "rival_pieces": [
            gen.token_piece(engine, t).decode("utf-8", "replace")  # type: ignore[arg-type]
            for t in rivals
        ],
        "text": b"".join(pieces).decode("utf-8", "replace"),
        "ended": ended,
        "n_prompt": len(prompt),
    }


def main(argv: list[str]) -> int:
    """``margins.py MODEL CASES.json|- OUT.json [GPU]``: see the module's docstring."""
    from packer.runtime.backend import load_backends

    model, cases_file, out, gpu = [*argv, "cpu"][:4]
    backends = load_backends(gpu)
    assert gpu == "cpu" or backends.gpus(gpu), backends  # no silent fallback to the CPU
    import llama_cpp

    cases = json.loads(sys.stdin.read() if cases_file == "-" else Path(cases_file).read_text())
    llm = llama_cpp.Llama(
        model_path=model,
        n_ctx=2048,
        n_batch=512,
        n_threads=2,
        n_gpu_layers=0 if gpu == "cpu" else 99,
        flash_attn=True,  # the runtime's "auto", on where the backend has it
        verbose=False,
    )
    try:
        where = backends.cpu_variant if gpu == "cpu" else gpu
        results = [_run_case(llm, c) | {"variant": where} for c in cases]
    finally:
        llm.close()
    Path(out).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
