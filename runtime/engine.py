"""The inference engine: one llama.cpp model (through llama-cpp-python) shared by the CLI and server.

The rest of the runtime talks to :class:`Engine`, never to ``llama_cpp`` directly, except the
server, which calls ``engine.llm`` while holding ``engine.lock`` (one request decodes at a time
until the batched scheduler of the server issue replaces that lock).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("runtime.engine")


RANDOM_SEED = 0xFFFFFFFF  # llama.cpp's LLAMA_DEFAULT_SEED: draw a fresh seed


@dataclass
class EngineOptions:
    n_ctx: int = 4096  # 0 = the model's trained context
    n_threads: int | None = None  # None = physical cores
    n_gpu_layers: int = 0
    seed: int = -1
    verbose: bool = False


@dataclass
class Sampling:
    """Sampling settings in llama.cpp's vocabulary. ``max_tokens < 0`` = until EOS or context end."""

    max_tokens: int = -1
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    def kwargs(self, n_ctx: int, n_prompt: int) -> dict[str, Any]:
        max_tokens = self.max_tokens if self.max_tokens >= 0 else max(n_ctx - n_prompt, 1)
        return {
            "max_tokens": max_tokens,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "min_p": self.min_p,
            "repeat_penalty": self.repeat_penalty,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            # llama-cpp-python replays its load-time seed when given None: ask for a random one
            "seed": self.seed if self.seed is not None and self.seed >= 0 else RANDOM_SEED,
            "stop": list(self.stop) or None,
        }


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
        self.lock = threading.Lock()
        threads = options.n_threads or default_threads()
        log.info("loading %s (ctx %s, %d threads)", self.name, options.n_ctx or "trained", threads)
        self.llm = llama_cpp.Llama(
            model_path=str(self.path),
            n_ctx=options.n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=options.n_gpu_layers,
            seed=options.seed if options.seed >= 0 else llama_cpp.LLAMA_DEFAULT_SEED,
            verbose=options.verbose,
        )
        self.n_ctx = self.llm.n_ctx()
        self.has_chat_template = "tokenizer.chat_template" in self.llm.metadata
        self._closed = False

    # -- prompts -------------------------------------------------------------------------
    def count_tokens(self, text: str, add_special: bool = True) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True))

    # -- generation (streaming text pieces) -----------------------------------------------
    def complete(self, prompt: str, sampling: Sampling) -> Iterator[str]:
        """Plain completion of ``prompt``; yields text pieces as they are decoded."""
        n_prompt = self.count_tokens(prompt)
        with self.lock:
            for chunk in self.llm.create_completion(
                prompt, stream=True, **sampling.kwargs(self.n_ctx, n_prompt)
            ):
                text = chunk["choices"][0]["text"]
                if text:
                    yield text

    def chat(self, messages: list[dict[str, str]], sampling: Sampling) -> Iterator[str]:
        """Chat completion with the model's own chat template; yields text pieces."""
        if not self.has_chat_template:
            # a base model: fall back to a plain transcript completion
            prompt = (
                "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages)
                + "Assistant:"
            )
            yield from self.complete(prompt, sampling)
            return
        kwargs = sampling.kwargs(self.n_ctx, 0)
        if sampling.max_tokens < 0:
            kwargs["max_tokens"] = None  # llama-cpp-python: until EOS or the context is full
        with self.lock:
            for chunk in self.llm.create_chat_completion(messages=messages, stream=True, **kwargs):
                delta = chunk["choices"][0].get("delta", {})
                text = delta.get("content")
                if text:
                    yield text

    # -- llama.cpp's own timing counters (what llama-server reports as "timings") ------------
    def perf_reset(self) -> None:
        import llama_cpp

        llama_cpp.llama_perf_context_reset(self.llm._ctx.ctx)

    def perf(self) -> dict[str, float]:
        import llama_cpp

        d = llama_cpp.llama_perf_context(self.llm._ctx.ctx)
        return {
            "prompt_n": d.n_p_eval,
            "prompt_ms": round(d.t_p_eval_ms, 3),
            "predicted_n": d.n_eval,
            "predicted_ms": round(d.t_eval_ms, 3),
            "predicted_per_second": round(1000.0 * d.n_eval / d.t_eval_ms, 3)
            if d.t_eval_ms
            else 0.0,
        }

    def close(self) -> None:
        """Free the model now. Must be called before interpreter shutdown (see runtime.main)."""
        if not self._closed:
            self._closed = True
            self.llm.close()
