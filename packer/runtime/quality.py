"""Measured quantization quality, computed by the runtime's llama.cpp (hidden mode
``packer-runtime --packer-eval JOB.json``, started by :mod:`packer.evaluate`).

The definitions are llama.cpp's ``llama-perplexity`` ones (tools/perplexity), so the figures can
be compared with what its users publish:

* the text is tokenized once with the model's special tokens (BOS where the model adds one) and
  cut into ``len(tokens) // ctx`` windows of ``ctx`` tokens; the first token of each window is
  replaced by BOS (where the model adds one); each window is decoded from an empty KV cache;
* only the second half of a window is scored: the logits at positions ``ctx/2 .. ctx-2`` predict
  the tokens at ``ctx/2+1 .. ctx-1`` (the model always has half a window of context);
* perplexity is ``exp(mean negative log-likelihood)`` over all scored tokens;
* against a reference (the F16/BF16/F32 conversion of the same checkpoint), for each scored
  position: KL divergence ``sum_v p_ref(v) * (log p_ref(v) - log p(v))`` over the whole
  vocabulary, averaged; top-1 agreement: the share of positions where both models' most likely
  token is the same; and the reference's own perplexity, for the difference.

Windows are decoded ``2048 // ctx`` at a time, one sequence each, in one ``llama_batch`` (as
llama-perplexity with its default batch of 2048). The file and its reference run in the same
pass, group by group: only one group's logits are in memory, nothing is stored on disk.

The job is a JSON object written by :mod:`packer.evaluate`::

    {"model": GGUF, "ref": GGUF or null, "text": str, "ctx": int, "threads": int,
     "result": JSON path}

The result file gets ``{"figures": {...}}`` (:class:`Figures`) or ``{"error": one line,
"unreadable": bool}`` for input the user can fix (a text too short, a reference of another
model, a file llama.cpp cannot load); progress goes to stdout as ``progress DONE TOTAL`` lines
(windows). Exit status: 0 measured, 1 input error (in the result file), 2 malformed job.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packer.runtime.i18n import _

if TYPE_CHECKING:
    from packer.runtime.manifest import Manifest

FLAG = "--packer-eval"
N_BATCH = 2048  # llama-perplexity's default batch: ctx-token windows decoded together
N_UBATCH = 512

Progress = Callable[[int, int], None]


class EvalInputError(Exception):
    """Input the user can fix (one line: what is wrong and what to do); ``unreadable``: a
    model file llama.cpp cannot load, rather than a bad choice of text, context or reference."""

    def __init__(self, message: str, *, unreadable: bool = False) -> None:
        super().__init__(message)
        self.unreadable = unreadable


@dataclass(frozen=True)
class Figures:
    """What one evaluation measured. The ``ref_*``, ``kl_divergence`` and ``top1`` fields are
    None without a reference."""

    ctx: int
    chunks: int  # windows of ``ctx`` tokens
    tokens: int  # tokens scored (the second half of each window)
    text_tokens: int  # the whole text, tokenized
    perplexity: float
    seconds: float
    ref_perplexity: float | None = None
    kl_divergence: float | None = None
    top1: float | None = None  # 0..1

    @property
    def tokens_per_second(self) -> float:
        """Tokens decoded (whole windows, of the file alone) per second."""
        return self.chunks * self.ctx / self.seconds if self.seconds > 0 else 0.0


class _Model:
    """One GGUF; :meth:`open` gives it a llama.cpp context for ``n_seq`` windows of
    ``n_ctx`` tokens."""

    def __init__(self, path: str) -> None:
        import llama_cpp

        self._ll = ll = llama_cpp
        self.name = Path(path).name
        self._ctx: Any = None
        self._batch: Any = None
        self._pool: Any = None
        self._model = ll.llama_model_load_from_file(path.encode(), ll.llama_model_default_params())
        if not self._model:
            raise EvalInputError(
                f"llama.cpp cannot load {self.name}: it is no GGUF model this llama.cpp reads "
                "(run with --verbose to see why)",
                unreadable=True,
            )
        self.vocab = ll.llama_model_get_vocab(self._model)
        self.n_vocab = int(ll.llama_vocab_n_tokens(self.vocab))

    def open(self, n_ctx: int, n_seq: int, threads: int) -> None:
        from packer.runtime.scheduler import Threadpool

        ll = self._ll
        self.piece = min(n_ctx, N_BATCH)  # positions of a window per llama_decode
        n_batch = self.piece * (n_seq if n_ctx <= N_BATCH else 1)
        params = ll.llama_context_default_params()
        params.n_ctx = n_ctx * n_seq
        params.n_batch = n_batch
        params.n_ubatch = min(N_UBATCH, n_batch)
        params.n_seq_max = n_seq
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = False  # each window its own n_ctx cells, as llama-perplexity
        params.embeddings = False
        self._ctx = ll.llama_init_from_model(self._model, params)
        if not self._ctx:
            raise EvalInputError(
                f"llama.cpp could not make a context of {n_ctx * n_seq} tokens for {self.name}: "
                "give a smaller --ctx"
            )
        self._pool = Threadpool.attach(ll, self._ctx, threads, threads)
        self._mem = ll.llama_get_memory(self._ctx)
        self._batch = ll.llama_batch_init(n_batch, 0, 1)

    def meta(self, key: str) -> str:
        buf = ctypes.create_string_buffer(256)
        n = self._ll.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else ""

    @property
    def add_bos(self) -> bool:
        return bool(self._ll.llama_vocab_get_add_bos(self.vocab))

    @property
    def bos(self) -> int:
        return int(self._ll.llama_vocab_bos(self.vocab))

    def tokenize(self, text: str) -> list[int]:
        """``text`` as llama-perplexity tokenizes it: special tokens added, none parsed."""
        data = text.encode("utf-8")
        n_max = len(data) + 8
        out = (self._ll.llama_token * n_max)()
        n = self._ll.llama_tokenize(self.vocab, data, len(data), out, n_max, True, False)
        if n < 0:  # cannot happen: a token is at least one byte, plus BOS/EOS
            raise EvalInputError(f"{self.name}: the text does not tokenize")
        return list(out[:n])

    def decode(self, tokens: Any, positions: Any, seqs: Any, outputs: Any) -> Any:
        """Decode one batch (numpy int arrays of equal length; ``outputs`` 0/1) from where
        each sequence stands; returns the logits of the output rows, in batch order, as a
        (rows, n_vocab) float32 view valid until the next call."""
        import numpy as np

        b = self._batch
        n = len(tokens)
        np.ctypeslib.as_array(b.token, shape=(n,))[:] = tokens
        np.ctypeslib.as_array(b.pos, shape=(n,))[:] = positions
        np.ctypeslib.as_array(b.n_seq_id, shape=(n,))[:] = 1
        np.ctypeslib.as_array(b.logits, shape=(n,))[:] = outputs
        seq_id = b.seq_id
        for i, s in enumerate(seqs.tolist()):
            seq_id[i][0] = s
        b.n_tokens = n
        rc = self._ll.llama_decode(self._ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed on {self.name} (code {rc})")
        rows = int(outputs.sum())
        ptr = self._ll.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(ptr, shape=(rows, self.n_vocab))

    def clear(self) -> None:
        self._ll.llama_memory_clear(self._mem, True)

    def close(self) -> None:
        ll = self._ll
        if self._batch is not None:
            ll.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            ll.llama_free(self._ctx)
            self._ctx = None
        if self._pool is not None:
            self._pool.free()
            self._pool = None
        if self._model:
            ll.llama_model_free(self._model)
            self._model = None


def _check_reference(model: _Model, ref: _Model, tokens: list[int], text: str) -> None:
    """The reference must be the same model in another precision: same architecture, same
    vocabulary (so the same tokens, and distributions over the same ids)."""
    how = (
        "give the F16/BF16/F32 conversion of the same checkpoint "
        "(packer convert SOURCE -o ref.gguf --outtype f16)"
    )
    arch, ref_arch = model.meta("general.architecture"), ref.meta("general.architecture")
    if arch != ref_arch:
        raise EvalInputError(
            f"the reference {ref.name} is a {ref_arch or 'unknown'} model and {model.name} a "
            f"{arch or 'unknown'} one: {how}"
        )
    if model.n_vocab != ref.n_vocab or ref.tokenize(text) != tokens:
        raise EvalInputError(
            f"the reference {ref.name} has another vocabulary than {model.name} "
            f"({ref.n_vocab} and {model.n_vocab} tokens): {how}"
        )


_ROWS = 16  # rows scored per task: a task's scratch (rows x n_vocab float32) stays in cache


class _Scratch(threading.local):
    """Each scoring thread's two (_ROWS, n_vocab) float32 buffers, allocated once: a fresh
    array of 50 M floats per batch costs more in page faults than the arithmetic."""

    a: Any = None
    b: Any = None

    def get(self, rows: int, n_vocab: int) -> tuple[Any, Any]:
        import numpy as np

        if self.a is None or self.a.shape[1] != n_vocab:
            self.a = np.empty((_ROWS, n_vocab), dtype=np.float32)
            self.b = np.empty((_ROWS, n_vocab), dtype=np.float32)
        return self.a[:rows], self.b[:rows]


def _log_probs(x: Any, out: Any) -> Any:
    """Rows of logits -> their log-probabilities, written into ``out`` (same shape)."""
    import numpy as np

    top = x.max(axis=1, keepdims=True)
    np.subtract(x, top, out=out)
    np.exp(out, out=out)
    # float32 pairwise sums: relative error ~1e-7 over a vocabulary, far below what is reported
    lse = np.log(out.sum(axis=1, keepdims=True)) + top
    np.subtract(x, lse, out=out)
    return out


def _score_rows(
    scratch: _Scratch, logits: Any, ref_logits: Any | None, targets: Any
) -> tuple[float, float, float, int]:
    """One block of rows: (NLL, the reference's NLL, KL divergence, same top-1 count), sums."""
    import numpy as np

    rows = np.arange(len(targets))
    a, b = scratch.get(len(targets), logits.shape[1])
    lq = _log_probs(logits, a)
    nll = -float(lq[rows, targets].sum(dtype=np.float64))
    if ref_logits is None:
        return nll, 0.0, 0.0, 0
    same = int((logits.argmax(axis=1) == ref_logits.argmax(axis=1)).sum())
    lp = _log_probs(ref_logits, b)
    nll_ref = -float(lp[rows, targets].sum(dtype=np.float64))
    np.subtract(lq, lp, out=lq)  # log q - log p
    np.exp(lp, out=lp)  # p
    kl = -float(np.einsum("ij,ij->", lp, lq, dtype=np.float64))
    return nll, nll_ref, kl, same


class _Totals:
    """Sums over all scored positions. Scoring a batch's rows (a log-softmax over the whole
    vocabulary per row, two with a reference) runs in blocks of :data:`_ROWS` on ``threads``
    threads (numpy releases the GIL), as llama-perplexity scores on all its threads."""

    def __init__(self, threads: int) -> None:
        self.count = 0
        self.nll = 0.0
        self.nll_ref = 0.0
        self.kl = 0.0
        self.same_top = 0
        self._scratch = _Scratch()
        self._pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def add(self, logits: Any, ref_logits: Any | None, targets: Any) -> None:
        n = len(targets)
        self.count += n

        def block(lo: int) -> tuple[float, float, float, int]:
            hi = min(n, lo + _ROWS)
            ref = None if ref_logits is None else ref_logits[lo:hi]
            return _score_rows(self._scratch, logits[lo:hi], ref, targets[lo:hi])

        starts = range(0, n, _ROWS)
        parts = self._pool.map(block, starts) if self._pool is not None else map(block, starts)
        for nll, nll_ref, kl, same in parts:
            self.nll += nll
            self.nll_ref += nll_ref
            self.kl += kl
            self.same_top += same

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


def measure(
    model_path: str,
    text: str,
    ctx: int,
    *,
    ref_path: str | None = None,
    threads: int = 0,
    progress: Progress | None = None,
) -> Figures:
    """Perplexity of ``model_path`` on ``text`` with ``ctx``-token windows, and against
    ``ref_path`` the KL divergence, top-1 agreement and the reference's perplexity.
    Raises :class:`EvalInputError` for a text shorter than one window or a reference of
    another model."""
    import numpy as np

    from packer.runtime.backend import load_backends
    from packer.runtime.engine import default_threads

    if ctx < 8:
        raise EvalInputError(f"--ctx {ctx} is too small: give 128 or more (default 512)")
    load_backends("auto")
    threads = threads or default_threads()
    totals = _Totals(threads)
    models: list[_Model] = []
    try:
        models.append(_Model(model_path))
        if ref_path is not None:
            models.append(_Model(ref_path))
        tokens = models[0].tokenize(text)
        if len(models) > 1:
            _check_reference(models[0], models[1], tokens, text)
        n_chunk = len(tokens) // ctx
        if n_chunk < 1:
            raise EvalInputError(
                f"the text is {len(tokens)} tokens long, shorter than one window of --ctx "
                f"{ctx}: give a longer text or a smaller --ctx"
            )
        n_seq = min(max(1, N_BATCH // ctx), n_chunk)
        for m in models:
            m.open(ctx, n_seq, threads)
        add_bos, bos = models[0].add_bos, models[0].bos
        all_tokens = np.asarray(tokens[: n_chunk * ctx], dtype=np.int32).reshape(n_chunk, ctx)
        if add_bos:
            all_tokens[:, 0] = bos
        first = ctx // 2
        piece = models[0].piece
        start_time = time.perf_counter()
        for i in range(0, n_chunk, n_seq):
            group = all_tokens[i : i + n_seq]
            for m in models:
                m.clear()
            for lo in range(0, ctx, piece):
                hi = min(ctx, lo + piece)
                pos = np.arange(lo, hi, dtype=np.int32)
                out = ((pos >= first) & (pos <= ctx - 2)).astype(np.int8)
                n_rows = len(group)
                batch_tokens = group[:, lo:hi].reshape(-1)
                batch_pos = np.tile(pos, n_rows)
                batch_seq = np.repeat(np.arange(n_rows, dtype=np.int32), hi - lo)
                batch_out = np.tile(out, n_rows)
                # the token each output row predicts: the next one in its window
                out_pos = pos[out.astype(bool)]
                targets = group[:, out_pos + 1].reshape(-1)
                logits = [m.decode(batch_tokens, batch_pos, batch_seq, batch_out) for m in models]
                if len(targets):
                    totals.add(logits[0], logits[1] if len(logits) > 1 else None, targets)
            if progress is not None:
                progress(min(i + n_seq, n_chunk), n_chunk)
        seconds = time.perf_counter() - start_time
    finally:
        totals.close()
        for m in models:
            m.close()
    has_ref = ref_path is not None
    return Figures(
        ctx=ctx,
        chunks=n_chunk,
        tokens=totals.count,
        text_tokens=len(tokens),
        perplexity=math.exp(totals.nll / totals.count),
        seconds=seconds,
        ref_perplexity=math.exp(totals.nll_ref / totals.count) if has_ref else None,
        kl_divergence=max(0.0, totals.kl / totals.count) if has_ref else None,
        top1=totals.same_top / totals.count if has_ref else None,
    )


def text_label(key: str) -> str:
    """How a measurement's text is named to users: the built-in ones by their language."""
    if key == "en":
        return _("English text")
    if key == "es":
        return _("Spanish text")
    return _("text {name}").format(name=key)


def summary(manifest: Manifest) -> str | None:
    """One line on the file's measured quality (``packer build --eval``), None without it:
    "Q4_K_M: 105 MB, KL 0.031, top-1 96.8 % vs BF16, English text"."""
    from packer.runtime.sizes import format_size

    q = getattr(manifest, "quality", None)  # stand-ins with only args (tests) have none
    if q is None:
        return None
    figures = _("KL {kl}, top-1 {top1} % vs {reference}, {text}").format(
        kl=f"{q.kl_divergence:.3f}",
        top1=f"{100 * q.top1:.1f}",
        reference=q.reference or "?",
        text=text_label(q.text),
    )
    size = f"{format_size(manifest.gguf_size)}, " if manifest.gguf_size else ""
    return f"{manifest.quant or '?'}: {size}{figures}"


def run(argv: list[str]) -> int:
    """``argv``: the arguments after :data:`FLAG` (one: the job file)."""
    if len(argv) != 1:
        print(f"usage: {FLAG} JOB.json", file=sys.stderr)
        return 2
    try:
        job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
        if not isinstance(job, dict) or not {"model", "text", "ctx", "result"} <= job.keys():
            raise ValueError("an eval job needs model, text, ctx and result")
    except (OSError, ValueError) as exc:
        print(f"cannot read the eval job {argv[0]}: {exc}", file=sys.stderr)
        return 2

    def report(done: int, total: int) -> None:
        print(f"progress {done} {total}", flush=True)

    try:
        figures = measure(
            str(job["model"]),
            str(job["text"]),
            int(job["ctx"]),
            ref_path=job.get("ref"),
            threads=int(job.get("threads") or 0),
            progress=report,
        )
    except EvalInputError as exc:
        result: dict[str, object] = {"error": str(exc), "unreadable": exc.unreadable}
        code = 1
    else:
        result = {"figures": dataclasses.asdict(figures)}
        code = 0
    Path(job["result"]).write_text(json.dumps(result), encoding="utf-8")
    return code
