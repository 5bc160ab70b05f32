"""Generation: prompts to tokens, and one decode loop with llama.cpp's stats.

Shared by every way of running a model (``-p``, the terminal chat, the HTTP server). Nothing here
knows about HTTP: a prompt the model cannot take raises :class:`PromptError`, which each caller
reports in its own way. Two steps:

1. build the prompt tokens (:func:`completion_tokens`, :func:`chat_tokens`), outside the lock;
2. :func:`generate` them (the engine's scheduler), yielding text pieces and filling a
   :class:`GenResult` (token counts, why it stopped, timings).

Decoding itself is :mod:`packer.runtime.scheduler` (all requests batched together); :func:`generate`
hands a prompt to it.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from packer.runtime.i18n import _

if TYPE_CHECKING:
    from packer.runtime.engine import Engine

log = logging.getLogger("packer.runtime.generate")


# the samplers after the penalties, in llama.cpp's default order, of those this runtime has
DEFAULT_SAMPLERS = ("penalties", "top_k", "typ_p", "top_p", "min_p", "temperature")
# text a person reads as it comes (the terminal's one-shot and chat): at most 20 updates a
# second, the tokens decoded in between shown together; a model slower than that shows every
# token as it comes (see Scheduler._emit)
TERMINAL_EVERY_S = 0.05


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
    repeat_last_n: int = 64  # tokens the penalties look back over; -1 = the context, 0 = none
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    seed: int = -1
    ignore_eos: bool = False
    stop: list[str] = field(default_factory=list)
    # GBNF grammar (root rule "root") constraining the output; None = free text
    grammar: str | None = None
    # the order the samplers apply in (llama.cpp's ``samplers``; the ones left out are skipped)
    samplers: tuple[str, ...] = DEFAULT_SAMPLERS
    # (token id, bias) added to the logits before sampling; -inf = never that token
    logit_bias: tuple[tuple[int, float], ...] = ()
    # > 0: record the chosen token's log-probability and the n_probs most likely alternatives
    n_probs: int = 0
    # special (control) tokens whose text the answer shows, llama-server's "preserved tokens":
    # the reasoning and tool-call markers the answer is split by (those that are one token);
    # other special tokens (end of turn, ...) stay unrendered
    preserved_tokens: tuple[str, ...] = ()


class PromptError(ValueError):
    """A prompt the model cannot take (too long for the context, bad token ids, a conversation
    the chat template refuses). ``n_prompt``/``n_ctx`` are set when it is too long.
    ``message`` is English, for HTTP clients; ``str()`` is ``translated`` (the same in the
    user's language, for the terminal) when given."""

    def __init__(
        self,
        message: str,
        *,
        n_prompt: int | None = None,
        n_ctx: int | None = None,
        translated: str | None = None,
    ) -> None:
        super().__init__(translated or message)
        self.message = message
        self.n_prompt = n_prompt
        self.n_ctx = n_ctx


@dataclass
class TokenProb:
    """One generated token with its log-probability (natural log, before sampling filters) and
    the ``n_probs`` most likely alternatives, best first, as ``(token id, text, logprob)``."""

    token: int
    text: str
    logprob: float
    top: list[tuple[int, str, float]] = field(default_factory=list)


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
    # filled when Sampling.n_probs > 0; an entry is appended before the piece holding its text
    probs: list[TokenProb] = field(default_factory=list)

    @property
    def finish_reason(self) -> str:
        """OpenAI's ``finish_reason``."""
        return "length" if self.stop_type == "limit" else "stop"

    @property
    def gen_steps(self) -> int:
        """The decodes generation took: the first token comes from the prompt's last decode,
        so ``t_predicted_ms`` (from the first token to the last) spans one fewer than
        ``n_predicted`` (llama-server's ``n_gen_steps``)."""
        return max(self.n_predicted - 1, 0)

    @property
    def gen_per_second(self) -> float:
        """Generation speed as llama-server reports it: decode steps per second."""
        t_g = self.t_predicted_ms
        return self.gen_steps * 1e3 / t_g if t_g > 0 else 0.0

    def timings(self) -> dict[str, Any]:
        """llama.cpp server's ``timings`` object (``prompt_n``: prompt tokens not from cache;
        per generated token: per decode step, see :attr:`gen_steps`)."""
        prompt_n = self.n_prompt - self.n_cached
        t_p, t_g, n_g = self.t_prompt_ms, self.t_predicted_ms, self.n_predicted
        steps = self.gen_steps
        return {
            "cache_n": self.n_cached,
            "prompt_n": prompt_n,
            "prompt_ms": t_p,
            "prompt_per_token_ms": t_p / prompt_n if prompt_n else 0.0,
            "prompt_per_second": prompt_n * 1e3 / t_p if t_p > 0 else 0.0,
            "predicted_n": n_g,
            "predicted_ms": t_g,
            "predicted_per_token_ms": t_g / steps if steps else 0.0,
            "predicted_per_second": self.gen_per_second,
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


def completion_tokens(engine: Engine, prompt: str | list[int | str]) -> list[int]:
    """llama.cpp's /completion prompt: a string, token ids, or a mix. BOS as the model asks
    (only when the prompt starts with text, as llama.cpp does)."""
    parts: list[int | str] = [prompt] if isinstance(prompt, str) else list(prompt)
    tokens: list[int] = []
    if parts and isinstance(parts[0], str) and engine.add_bos():
        tokens.append(engine.llm.token_bos())
    for part in parts:
        if isinstance(part, str):
            tokens.extend(tokenize(engine, part, add_special=False))
        else:
            tokens.extend(check_tokens(engine, [part], "prompt"))
    if not tokens:
        bos = engine.llm.token_bos()
        if bos < 0:
            raise PromptError("the prompt is empty", translated=_("the prompt is empty"))
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
    engine: Engine,
    messages: list[dict[str, Any]],
    stop: list[str],
    tools: list[dict[str, Any]] | None = None,
) -> tuple[list[int], list[str]]:
    """The prompt tokens for ``messages`` with the model's chat template, and the stop strings
    (the caller's plus the template's). ``tools`` (OpenAI's shape) go to templates that
    describe them (see :func:`packer.runtime.tool_calls.messages_for_template`); never a
    ``tool_choice``, with which llama-cpp-python's handler would build a grammar of its own."""
    llm = engine.llm
    if not engine.has_chat_template:
        # a base model: a plain transcript, stopping at the next turn
        return completion_tokens(engine, transcript(messages)), [*stop, "\nUser:"]

    handler: Any = engine.chat_handler()
    try:
        extra = {"tools": tools} if tools else {}
        handler(
            llama=_PromptCapture(llm), messages=messages, stop=list(stop), stream=False, **extra
        )
    except _Captured as cap:
        prompt = cap.prompt
        raw_stop = cap.kwargs.get("stop") or []
    except Exception as exc:  # the template refused the conversation (e.g. roles out of order)
        raise PromptError(
            f"the chat template cannot format these messages: {exc}",
            translated=_("the chat template cannot format these messages: {reason}").format(
                reason=exc
            ),
        ) from None
    else:  # pragma: no cover - a handler that does not end in create_completion
        raise RuntimeError("the chat handler did not build a prompt")
    if isinstance(prompt, str):
        prompt = tokenize(engine, prompt, add_special=engine.add_bos())
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
            translated=_(
                "the prompt is {n_prompt} tokens but the context is {n_ctx} tokens: shorten the "
                "prompt or use a larger context size (--ctx-size)"
            ).format(n_prompt=n_prompt, n_ctx=engine.n_ctx),
        )


# -- decoding ------------------------------------------------------------------------------


def token_piece(engine: Engine, token: int, special: bool = False) -> bytes:
    """The bytes of one token, as llama.cpp's server streams them (no 32-byte limit)."""
    import llama_cpp

    vocab = engine.vocab
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


def generate(
    engine: Engine,
    prompt: list[int],
    params: Sampling,
    result: GenResult,
    cancelled: Callable[[], bool] | None = None,
    every: float = 0.0,
    burst: float | None = None,
) -> Iterator[str]:
    """Generate after ``prompt`` through the engine's scheduler (continuous batching), yielding
    text pieces as they are final (never part of a stop string, never half a UTF-8 character).
    ``result`` is complete once the iterator is exhausted. ``cancelled`` is polled while
    waiting (client gone, server stopping); closing the iterator early frees the slot. Raises
    :class:`PromptError` (prompt too long, invalid grammar) or
    :class:`packer.runtime.scheduler.QueueFull` at once, before anything is queued. ``every``
    > 0: pieces come at most that often (seconds), joined (:data:`TERMINAL_EVERY_S`). ``burst``
    (default ``every``): how long the scheduler may decode in C before the pieces come, see
    :meth:`packer.runtime.scheduler.Scheduler.submit`."""
    return engine.scheduler.submit(prompt, params, result, cancelled, every, burst)
