"""Generation: prompts to tokens, and one decode loop with llama.cpp's stats.

Shared by every way of running a model (``-p``, the terminal chat, the HTTP server). Nothing here
knows about HTTP: a prompt the model cannot take raises :class:`PromptError`, which each caller
reports in its own way. Two steps:

1. build the prompt tokens (:func:`completion_tokens`, :func:`chat_tokens`), outside the lock;
2. :func:`generate` them under ``engine.lock``, yielding text pieces and filling a
   :class:`GenResult` (token counts, why it stopped, timings).

A batched scheduler can later replace :func:`generate` without changing its callers.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.engine import Engine

log = logging.getLogger("runtime.generate")


@dataclass
class Sampling:
    """Sampling settings in llama.cpp's vocabulary. ``max_tokens < 0``: until EOS or the context
    is full; ``seed < 0``: a fresh random seed for each generation."""

    max_tokens: int = -1
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    seed: int = -1
    ignore_eos: bool = False
    stop: list[str] = field(default_factory=list)


class PromptError(ValueError):
    """A prompt the model cannot take (too long for the context, bad token ids, a conversation
    the chat template refuses). ``n_prompt``/``n_ctx`` are set when it is too long."""

    def __init__(
        self, message: str, *, n_prompt: int | None = None, n_ctx: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.n_prompt = n_prompt
        self.n_ctx = n_ctx


@dataclass
class GenResult:
    """What one generation did, in llama.cpp's vocabulary (``stop_type``: eos|word|limit|abort)."""

    text: str = ""
    n_prompt: int = 0
    n_cached: int = 0
    n_predicted: int = 0
    stop_type: str = "none"
    stopping_word: str = ""
    truncated: bool = False
    t_prompt_ms: float = 0.0
    t_predicted_ms: float = 0.0

    @property
    def finish_reason(self) -> str:
        """OpenAI's ``finish_reason``."""
        return "length" if self.stop_type == "limit" else "stop"

    def timings(self) -> dict[str, Any]:
        """llama.cpp server's ``timings`` object (``prompt_n``: prompt tokens not from cache)."""
        prompt_n = self.n_prompt - self.n_cached
        t_p, t_g, n_g = self.t_prompt_ms, self.t_predicted_ms, self.n_predicted
        return {
            "cache_n": self.n_cached,
            "prompt_n": prompt_n,
            "prompt_ms": t_p,
            "prompt_per_token_ms": t_p / prompt_n if prompt_n else 0.0,
            "prompt_per_second": prompt_n * 1e3 / t_p if t_p > 0 else 0.0,
            "predicted_n": n_g,
            "predicted_ms": t_g,
            "predicted_per_token_ms": t_g / n_g if n_g else 0.0,
            "predicted_per_second": n_g * 1e3 / t_g if t_g > 0 else 0.0,
        }


# -- prompts ------------------------------------------------------------------------------


def n_vocab(engine: Engine) -> int:
    return int(engine.llm.n_vocab())


def check_tokens(engine: Engine, tokens: Sequence[Any], what: str = "tokens") -> list[int]:
    """Token ids from a caller, validated: an out-of-range id would crash llama.cpp."""
    vocab = n_vocab(engine)
    out: list[int] = []
    for t in tokens:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab:
            raise PromptError(f"'{what}' must hold token ids from 0 to {vocab - 1}, got {t!r}")
        out.append(t)
    return out


def tokenize(
    engine: Engine, text: str, *, add_special: bool, parse_special: bool = True
) -> list[int]:
    return list(
        engine.llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)
    )


def _add_bos(engine: Engine) -> bool:
    llm = engine.llm
    return bool(llm._model.add_bos_token()) and llm.token_bos() >= 0


def completion_tokens(engine: Engine, prompt: str | list[int | str]) -> list[int]:
    """llama.cpp's /completion prompt: a string, token ids, or a mix. BOS as the model asks
    (only when the prompt starts with text, as llama.cpp does)."""
    parts: list[int | str] = [prompt] if isinstance(prompt, str) else list(prompt)
    tokens: list[int] = []
    if parts and isinstance(parts[0], str) and _add_bos(engine):
        tokens.append(engine.llm.token_bos())
    for part in parts:
        if isinstance(part, str):
            tokens.extend(tokenize(engine, part, add_special=False))
        else:
            tokens.extend(check_tokens(engine, [part], "prompt"))
    if not tokens:
        bos = engine.llm.token_bos()
        if bos < 0:
            raise PromptError("the prompt is empty")
        tokens = [bos]
    return tokens


def transcript(messages: list[dict[str, Any]]) -> str:
    """A conversation as plain text, for base models without a chat template."""
    return "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "Assistant:"


class _Captured(Exception):
    def __init__(self, prompt: Any, kwargs: dict[str, Any]) -> None:
        super().__init__("prompt captured")
        self.prompt = prompt
        self.kwargs = kwargs


class _PromptCapture:
    """Stands in for ``Llama`` when calling llama-cpp-python's chat handler, to learn the prompt
    tokens and stop strings it would generate from, without generating: the same template and
    the same handling as ``Llama.create_chat_completion``."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    def create_completion(self, prompt: Any = None, **kwargs: Any) -> Any:
        raise _Captured(prompt, kwargs)

    __call__ = create_completion


def chat_tokens(
    engine: Engine, messages: list[dict[str, Any]], stop: list[str]
) -> tuple[list[int], list[str]]:
    """The prompt tokens for ``messages`` with the model's chat template, and the stop strings
    (the caller's plus the template's)."""
    llm = engine.llm
    if not engine.has_chat_template:
        # a base model: a plain transcript, stopping at the next turn
        return completion_tokens(engine, transcript(messages)), [*stop, "\nUser:"]

    from llama_cpp import llama_chat_format

    handler = (
        llm.chat_handler
        or llm._chat_handlers.get(llm.chat_format)
        or llama_chat_format.get_chat_completion_handler(llm.chat_format)
    )
    try:
        handler(llama=_PromptCapture(llm), messages=messages, stop=list(stop), stream=False)
    except _Captured as cap:
        prompt = cap.prompt
        raw_stop = cap.kwargs.get("stop") or []
    except Exception as exc:  # the template refused the conversation (e.g. roles out of order)
        raise PromptError(f"the chat template cannot format these messages: {exc}") from None
    else:  # pragma: no cover - a handler that does not end in create_completion
        raise RuntimeError("the chat handler did not build a prompt")
    if isinstance(prompt, str):
        prompt = tokenize(engine, prompt, add_special=_add_bos(engine))
    stops = [raw_stop] if isinstance(raw_stop, str) else list(raw_stop)
    return list(prompt), [s for s in dict.fromkeys(stops) if s]


def check_context(engine: Engine, n_prompt: int) -> None:
    """A prompt must leave room for at least one generated token."""
    if n_prompt >= engine.n_ctx:
        raise PromptError(
            f"the prompt is {n_prompt} tokens but the context is {engine.n_ctx} tokens: "
            "shorten the prompt or use a larger context size",
            n_prompt=n_prompt,
            n_ctx=engine.n_ctx,
        )


# -- decoding ------------------------------------------------------------------------------


def token_piece(engine: Engine, token: int, special: bool = False) -> bytes:
    """The bytes of one token, as llama.cpp's server streams them (no 32-byte limit)."""
    import llama_cpp

    vocab = engine.llm._model.vocab
    size = 64
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(
            vocab, llama_cpp.llama_token(token), buf, size, 0, special
        )
        if n >= 0:
            return buf.raw[:n]
        size = -n


def detokenize(engine: Engine, tokens: Sequence[int]) -> str:
    """Text of ``tokens``, special tokens included (llama.cpp's /detokenize)."""
    data = b"".join(token_piece(engine, t, special=True) for t in tokens)
    return data.decode("utf-8", errors="replace")


def _cached_prefix(llm: Any, prompt: list[int]) -> int:
    """How many prompt tokens llama-cpp-python will reuse from the previous generation's KV
    cache."""
    cached = llm.input_ids[: llm.n_tokens].tolist()
    n = 0
    for a, b in zip(cached, prompt, strict=False):
        if a != b:
            break
        n += 1
    return min(n, len(prompt) - 1) if n else 0


def _held_back(text: str, start: int, stops: list[str]) -> int:
    """Length of the longest tail of ``text[start:]`` that could begin one of ``stops``."""
    tail = len(text) - start
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, tail), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


def generate(
    engine: Engine,
    prompt: list[int],
    params: Sampling,
    result: GenResult,
    cancelled: Callable[[], bool] | None = None,
) -> Iterator[str]:
    """Decode after ``prompt`` under the engine lock, yielding text pieces as they are final
    (never part of a stop string, never half a UTF-8 character). ``result`` is complete once
    the iterator is exhausted. ``cancelled`` is polled per token (client gone, server stopping).
    Closing the iterator early stops decoding and releases the lock. Call :func:`check_context`
    first: a prompt that fills the context generates nothing (``stop_type`` "limit")."""
    import llama_cpp

    llm = engine.llm
    n_prompt = len(prompt)
    result.n_prompt = n_prompt
    room = engine.n_ctx - n_prompt
    max_new = room if params.max_tokens < 0 else min(params.max_tokens, room)
    stops = [s for s in params.stop if s]
    vocab = llm._model.vocab
    with engine.lock:
        if cancelled is not None and cancelled():
            result.stop_type = "abort"
            return
        if max_new <= 0:
            result.stop_type = "limit"
            result.truncated = room <= 0
            return
        result.n_cached = _cached_prefix(llm, prompt)
        llm.set_seed(params.seed if params.seed >= 0 else llama_cpp.LLAMA_DEFAULT_SEED)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text = ""
        sent = 0
        t0 = time.perf_counter()
        t_first: float | None = None
        tokens = llm.generate(
            prompt,
            top_k=params.top_k,
            top_p=params.top_p,
            min_p=params.min_p,
            typical_p=params.typical_p,
            temp=params.temperature,
            repeat_penalty=params.repeat_penalty,
            frequency_penalty=params.frequency_penalty,
            presence_penalty=params.presence_penalty,
            mirostat_mode=params.mirostat,
            mirostat_tau=params.mirostat_tau,
            mirostat_eta=params.mirostat_eta,
            reset=True,
        )
        try:
            for token in tokens:
                if t_first is None:
                    t_first = time.perf_counter()
                if not params.ignore_eos and llama_cpp.llama_vocab_is_eog(vocab, token):
                    result.stop_type = "eos"
                    break
                result.n_predicted += 1
                text += decoder.decode(token_piece(engine, token))
                hit = min(
                    ((i, s) for s in stops if (i := text.find(s, sent)) >= 0),
                    default=None,
                )
                if hit is not None:
                    pos, word = hit
                    text = text[:pos]
                    result.stop_type, result.stopping_word = "word", word
                    break
                end = len(text) - _held_back(text, sent, stops)
                if end > sent:
                    piece, sent = text[sent:end], end
                    yield piece
                if result.n_predicted >= max_new:
                    result.stop_type = "limit"
                    result.truncated = max_new == room
                    break
                if cancelled is not None and cancelled():
                    result.stop_type = "abort"
                    break
            else:  # pragma: no cover - llm.generate only ends when we stop it
                result.stop_type = "limit"
            if result.stop_type != "word":
                text += decoder.decode(b"", final=True)
            if len(text) > sent:
                yield text[sent:]
        finally:
            tokens.close()
            t_end = time.perf_counter()
            t_first = t_first or t_end
            result.text = text
            result.t_prompt_ms = (t_first - t0) * 1e3
            result.t_predicted_ms = (t_end - t_first) * 1e3
