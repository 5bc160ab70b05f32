"""Sentence embeddings from the loaded model, for ``/embedding``, ``/v1/embeddings`` and Ollama's
``/api/embed`` and ``/api/embeddings``.

A second llama.cpp context is made lazily on the model already in memory
(``engine.model_ptr``; the weights are shared, only a KV cache is added), with embeddings on
and mean pooling over the input's tokens. It has its own lock, so embedding never waits for a
generation, nor a generation for it.

What llama-server does, for comparison: with ``--embeddings`` it pools as the model says (mean
for most embedding models; a chat model like ours declares none, and we choose mean) and, for
pooled embeddings, normalises each vector to unit Euclidean length (``embd_normalize`` 2, its
default) on ``/embedding`` and ``/v1/embeddings``. Ollama's ``/api/embed`` also returns unit
vectors. We do the same everywhere: every vector returned here has length 1 (a vector of
zeros stays zeros), so a dot product is the cosine similarity.

An embedding model (BERT, XLM-RoBERTa, ...: its GGUF names a ``{arch}.pooling_type``) is
pooled as it says instead (mean, CLS or last token), and normalised only where its
sentence-transformers recipe does (:data:`NORMALIZE_KEY`, written by packer's converter;
absent: normalised, as llama-server does).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from packer.runtime.generate import PromptError

if TYPE_CHECKING:
    from packer.runtime.engine import Engine

log = logging.getLogger("packer.runtime.embed")


MAX_EMBED_CTX = 8192  # tokens of one input to embed, at most

NORMALIZE_KEY = "packer.embeddings.normalize"  # GGUF bool: unit-length vectors, or as pooled
# llama.cpp's enum llama_pooling_type
POOLING_NONE, POOLING_MEAN, POOLING_CLS, POOLING_LAST, POOLING_RANK = 0, 1, 2, 3, 4
_POOLING_NAMES = {POOLING_MEAN: "mean", POOLING_CLS: "cls", POOLING_LAST: "last"}


@dataclass(frozen=True)
class EmbeddingModel:
    """What makes a GGUF an embedding model: its own pooling, and whether it normalises."""

    pooling: int  # POOLING_MEAN, POOLING_CLS or POOLING_LAST
    normalize: bool

    @property
    def pooling_name(self) -> str:
        return _POOLING_NAMES[self.pooling]


def embedding_model(metadata: Mapping[str, str]) -> EmbeddingModel | None:
    """The model's embedding recipe from its GGUF metadata (as llama-cpp-python gives it:
    strings), or None for a model that generates text."""
    arch = metadata.get("general.architecture", "")
    try:
        pooling = int(metadata.get(f"{arch}.pooling_type", POOLING_NONE))
    except ValueError:
        return None
    if pooling not in _POOLING_NAMES:
        return None
    return EmbeddingModel(pooling, metadata.get(NORMALIZE_KEY, "true").lower() != "false")


class Embedder:
    """Embeds texts with ``engine``'s model; the context is created on first use."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.lock = threading.Lock()
        self._ctx: Any = None
        self._batch: Any = None
        self.n_ctx = 0
        # an embedding model pools and normalises as it says; a chat model: mean, unit length
        own = getattr(engine, "embedding", None)  # stand-in engines of the tests have none
        self.model = own or EmbeddingModel(POOLING_MEAN, True)
        self.own_pooling = own is not None

    @property
    def n_embd(self) -> int:
        return int(self.engine.model_facts()["n_embd"])

    @property
    def limit(self) -> int:
        """Tokens one input may have: the model's context, at most :data:`MAX_EMBED_CTX` (one
        input is one batch: its compute buffer grows with it). An embedding model: at most its
        trained context too (its learned positions end there)."""
        limit = min(self.engine.n_ctx, MAX_EMBED_CTX)
        if self.own_pooling:
            limit = min(limit, self.engine.model_facts().get("n_ctx_train", limit) or limit)
        return limit

    def _context(self) -> Any:
        if self._ctx is None:
            import llama_cpp

            from packer.runtime.engine import default_threads, flash_attn_type

            engine = self.engine
            threads = engine.options.n_threads or default_threads()
            params = llama_cpp.llama_context_default_params()
            # one input at a time, all of it in one batch: pooling needs the whole sequence
            n_ctx = self.limit
            params.n_ctx = params.n_batch = params.n_ubatch = n_ctx
            params.n_seq_max = 1
            params.n_threads = params.n_threads_batch = threads
            params.embeddings = True
            params.flash_attn_type = flash_attn_type(engine.options.flash_attn)
            params.pooling_type = llama_pooling(self.model.pooling, self.own_pooling)
            with _quiet(engine.options.verbose):  # llama.cpp warns that we override pooling
                ctx = llama_cpp.llama_init_from_model(engine.model_ptr, params)
            if not ctx:
                raise RuntimeError("llama.cpp could not create the embeddings context")
            self._ctx = ctx
            self._batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
            self.n_ctx = n_ctx
            log.info(
                "embeddings: context of %d tokens, %s pooling%s",
                self.n_ctx,
                self.model.pooling_name,
                ", normalized" if self.model.normalize else "",
            )
        return self._ctx

    def tokens(self, text: str, *, truncate: bool = False) -> list[int]:
        """``text`` as the model's tokens (BOS/EOS as the model asks), checked against the
        context: a longer input is cut (``truncate``) or refused with a :class:`PromptError`."""
        llm = self.engine.llm
        tokens = list(llm.tokenize(text.encode("utf-8"), add_bos=True, special=False))
        if not tokens:
            raise PromptError("the input to embed is empty")
        n_ctx = self.limit
        if len(tokens) > n_ctx:
            if not truncate:
                raise PromptError(
                    f"the input is {len(tokens)} tokens but the context is {n_ctx} tokens: "
                    "shorten the input or use a larger context size",
                    n_prompt=len(tokens),
                    n_ctx=n_ctx,
                )
            tokens = tokens[:n_ctx]
        return tokens

    def embed(self, texts: list[str], *, truncate: bool = False) -> tuple[list[list[float]], int]:
        """Embeddings of ``texts`` (pooled and normalised as the model says; a chat model:
        unit-length, mean-pooled) and the number of tokens read."""
        token_lists = [self.tokens(t, truncate=truncate) for t in texts]
        vectors = []
        with self.lock:
            ctx = self._context()
            for tokens in token_lists:
                vectors.append(self._embed_tokens(ctx, tokens))
        return vectors, sum(len(t) for t in token_lists)

    def _embed_tokens(self, ctx: Any, tokens: list[int]) -> list[float]:
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), 0, -1, -1)
        batch = self._batch
        for i, token in enumerate(tokens):  # the whole input, one sequence, every output pooled
            batch.token[i] = token
            batch.pos[i] = i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = True
        batch.n_tokens = len(tokens)
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama.cpp could not embed the input")
        ptr = llama_cpp.llama_get_embeddings_seq(ctx, 0)
        if not ptr:
            raise RuntimeError("llama.cpp returned no pooled embedding")
        vec = [float(ptr[i]) for i in range(self.n_embd)]
        return normalize(vec) if self.model.normalize else vec


def llama_pooling(pooling: int, own: bool) -> int:
    """llama.cpp's pooling for the embeddings context: the model's own (``own``), else ours."""
    import llama_cpp

    return llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED if own else pooling


@contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Silence llama.cpp's log (routed through llama-cpp-python's logger) unless ``verbose``."""
    logger = logging.getLogger("llama-cpp-python")
    level = logger.level
    if not verbose:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def normalize(vec: list[float]) -> list[float]:
    """``vec`` scaled to unit Euclidean length (zeros stay zeros)."""
    norm = math.sqrt(sum(x * x for x in vec))
    return [x / norm for x in vec] if norm > 0 else vec
