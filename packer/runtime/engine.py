"""The inference engine: one llama.cpp model (through llama-cpp-python) shared by the CLI and server.

The rest of the runtime talks to :class:`Engine` and :mod:`packer.runtime.generate`, never to
``llama_cpp`` directly. Generation goes through ``engine.scheduler``
(:class:`packer.runtime.scheduler.Scheduler`): ``n_parallel`` slots sharing one llama.cpp context
with one unified KV cache, decoded together; any one request may use the whole context. The
scheduler gets the model's handles and the context parameters, not the engine.
``llama_cpp.Llama`` itself is kept for the model, its tokenizer, metadata and chat templates; its
own context is made minimal, as nothing decodes with it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from packer.runtime import decode_loop
from packer.runtime.context_size import ContextSize, for_gguf
from packer.runtime.embed import EmbeddingModel, embedding_model
from packer.runtime.generate import (
    GenResult,
    Sampling,
    chat_tokens,
    check_context,
    completion_tokens,
    generate,
)
from packer.runtime.i18n import _, ngettext
from packer.runtime.scheduler import Scheduler

__all__ = ["Engine", "EngineOptions", "GenResult", "Sampling", "default_threads"]

log = logging.getLogger("packer.runtime.engine")

LLAMA_CTX = 64  # tokens of the Llama object's own context (unused: the scheduler decodes)


@dataclass
class EngineOptions:
    # tokens of context, shared by all slots, any one request may use all of it (llama-server's
    # -c with a unified KV cache); 0 = the model's trained context capped by memory
    n_ctx: int = 0
    n_parallel: int = 1  # slots: requests decoded together
    max_queue: int = 64  # requests that may wait for a slot before QueueFull
    # bytes of host memory for idle slots' cells (llama-server's --cache-ram): None = its
    # default capped by memory, 0 = idle slots keep their cells in the KV cache, -1 = no limit
    cache_ram: int | None = None
    n_threads: int | None = None  # None = physical cores
    n_threads_batch: int | None = None  # prompt processing (-tb); None = n_threads
    n_gpu_layers: int = 0
    tensor_split: list[float] | None = None  # -ts: share of the offloaded layers per device
    flash_attn: str = "auto"  # on | off | auto: llama.cpp enables it where the backend can
    use_mmap: bool = True  # --no-mmap: read the weights into buffers instead of mapping the file
    seed: int = -1
    verbose: bool = False
    # --chat-template-file: a Jinja chat template used instead of the model's own
    chat_template: str | None = None


FLASH_ATTN_CHOICES = ("auto", "on", "off")


def flash_attn_type(choice: str) -> int:
    """llama.cpp's ``llama_flash_attn_type`` for ``-fa on|off|auto``. llama-cpp-python's ``Llama``
    turns flash attention off unless asked; llama.cpp's own default (llama-server's too) is
    auto, and on the CPU it is what makes batched decoding pay: with it the server's 4 clients
    get 1.43-1.52x one client's tokens/s, without it 1.35x (benchmarks/server)."""
    import llama_cpp

    return {
        "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
        "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
        "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
    }[choice]


def default_threads() -> int:
    """Physical cores are what llama.cpp scales with; fall back to the CPUs we may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class Engine:
    def __init__(
        self, model_path: str | os.PathLike[str], options: EngineOptions, name: str = ""
    ) -> None:
        import llama_cpp  # heavy import: only when a model is really loaded

        self.options = options
        self.path = Path(model_path)
        self.name = name or self.path.stem
        threads = options.n_threads or default_threads()
        threads_batch = options.n_threads_batch or threads
        n_parallel = max(1, options.n_parallel)
        ctx = for_gguf(self.path, options.n_ctx)
        log.info(
            ngettext(
                "loading {name} (ctx {ctx}, {slots} slot, {threads} threads, flash attention "
                "{flash_attn})",
                "loading {name} (ctx {ctx}, {slots} slots, {threads} threads, flash attention "
                "{flash_attn})",
                n_parallel,
            ).format(
                name=self.name,
                ctx=ctx.describe() if ctx is not None else _("trained"),
                slots=n_parallel,
                threads=threads,
                flash_attn=options.flash_attn,
            )
        )
        from packer.runtime.backend import load_backends

        backends = load_backends(verbose=options.verbose)  # main may have chosen (--gpu)
        self.llm = llama_cpp.Llama(
            model_path=str(self.path),
            n_ctx=LLAMA_CTX,
            n_batch=LLAMA_CTX,
            n_threads=threads,
            n_threads_batch=threads_batch,
            n_gpu_layers=options.n_gpu_layers,
            tensor_split=options.tensor_split,
            use_mmap=options.use_mmap,
            seed=options.seed if options.seed >= 0 else llama_cpp.LLAMA_DEFAULT_SEED,
            verbose=options.verbose,
        )
        if options.chat_template:  # --chat-template-file: used everywhere the model's would be
            from packer.runtime.chat_template import use_chat_template

            use_chat_template(self.llm, options.chat_template)
        n_ctx_train = int(self.llm._model.n_ctx_train())
        if ctx is None:  # the GGUF header could not be read here: llama.cpp's trained size
            ctx = ContextSize(n_ctx_train, n_ctx_train, "trained")
        ctx = replace(ctx, n_ctx_train=n_ctx_train)
        self.context = ctx
        params = self.context_params()
        params.n_ctx = ctx.n_ctx  # type: ignore[attr-defined]
        params.n_threads = threads  # type: ignore[attr-defined]
        params.n_threads_batch = threads_batch  # type: ignore[attr-defined]
        params.flash_attn_type = flash_attn_type(options.flash_attn)  # type: ignore[attr-defined]
        try:
            self.scheduler = Scheduler(
                self.model_ptr,
                self.vocab,
                params,
                n_parallel=n_parallel,
                max_queue=options.max_queue,
                cache_ram=options.cache_ram,
                decode_loop=decode_loop.load(backends.lib_dir),
            )
        except BaseException:
            self.llm.close()
            raise
        self.n_ctx = self.scheduler.n_ctx  # what one request may use: the whole context
        self.has_chat_template = "tokenizer.chat_template" in self.llm.metadata
        # an embedding model (its GGUF names its pooling): it embeds, it does not generate
        self.embedding: EmbeddingModel | None = embedding_model(self.llm.metadata)
        self.last_result: GenResult | None = None  # of the latest complete()/chat()
        self._closed = False

    # -- the model, as the rest of the runtime may see it ----------------------------------
    # Nothing outside this module touches llama-cpp-python's private members: these are the
    # handles and facts the scheduler, the embedder and the server need.
    @property
    def model_ptr(self) -> object:
        """llama.cpp's ``llama_model *`` (for contexts the scheduler and embedder create)."""
        return self.llm._model.model

    @property
    def vocab(self) -> object:
        """llama.cpp's ``llama_vocab *``."""
        return self.llm._model.vocab

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.llm.metadata)

    @property
    def chat_template(self) -> str:
        return str(self.llm.metadata.get("tokenizer.chat_template", ""))

    def context_params(self) -> object:
        """A copy of llama.cpp's ``llama_context_params`` the model was loaded with."""
        import llama_cpp

        return llama_cpp.llama_context_params.from_buffer_copy(self.llm.context_params)

    def model_facts(self) -> dict[str, int]:
        """``n_vocab``, ``n_ctx_train``, ``n_embd``, ``n_params``, ``size`` (bytes), where this
        llama-cpp-python has them."""
        out: dict[str, int] = {}
        for key in ("n_vocab", "n_ctx_train", "n_embd", "n_params", "size"):
            fn = getattr(self.llm._model, key, None)
            if fn is not None:
                out[key] = int(fn())
        return out

    def description(self) -> str:
        """llama.cpp's one-line model description (``llama 135M Q8_0``)."""
        import ctypes

        import llama_cpp

        buf = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(self.llm._model.model, buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    def add_bos(self) -> bool:
        """Whether prompts begin with BOS, as the model's metadata asks."""
        return bool(self.llm._model.add_bos_token()) and self.llm.token_bos() >= 0

    def chat_handler(self) -> object:
        """llama-cpp-python's chat-completion handler for this model's template."""
        from llama_cpp import llama_chat_format

        llm = self.llm
        return (
            llm.chat_handler
            or llm._chat_handlers.get(llm.chat_format)
            or llama_chat_format.get_chat_completion_handler(llm.chat_format)
        )

    # -- prompts -------------------------------------------------------------------------
    def count_tokens(self, text: str, add_special: bool = True) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True))

    # -- generation (streaming text pieces) -----------------------------------------------
    def complete(self, prompt: str, sampling: Sampling, every: float = 0.0) -> Iterator[str]:
        """Plain completion of ``prompt``; yields text pieces as they are decoded (``every`` >
        0: at most that often, see :func:`packer.runtime.generate.generate`). Raises
        :class:`packer.runtime.generate.PromptError` when the prompt does not fit the context."""
        yield from self._generate(completion_tokens(self, prompt), sampling, every=every)

    def chat(
        self, messages: list[dict[str, str]], sampling: Sampling, every: float = 0.0
    ) -> Iterator[str]:
        """Chat completion with the model's own chat template (a plain transcript for base
        models); yields text pieces."""
        tokens, stop = chat_tokens(self, messages, sampling.stop)
        yield from self._generate(tokens, sampling, stop, every)

    def _generate(
        self,
        tokens: list[int],
        sampling: Sampling,
        stop: list[str] | None = None,
        every: float = 0.0,
    ) -> Iterator[str]:
        check_context(self, len(tokens))
        if stop is not None:
            sampling = replace(sampling, stop=stop)
        self.last_result = result = GenResult()
        yield from generate(self, tokens, sampling, result, every=every)

    def close(self) -> None:
        """Free the model now. Must be called before interpreter shutdown (see packer.runtime.main)."""
        if not self._closed:
            self._closed = True
            self.scheduler.close()
            self.llm.close()
