"""A generation core without a model, for the dialect tests: it "generates" scripted pieces.

The real :class:`packer.runtime.gen_core.Core` does everything else (the token cap, the system
prompt, the reasoning splitter, the whole-or-stream fork), so what the dialect tests see is what
a client sees, minus HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext
from types import SimpleNamespace
from typing import Any

from packer.runtime.gen_core import Core, GenRequest
from packer.runtime.generate import GenResult, Sampling, TokenProb
from packer.runtime.replies import Events, Json, Reply
from packer.runtime.server_options import ServerFeatures

PROMPT = [1, 2, 3]


class FakeCore(Core):
    def __init__(
        self,
        pieces: list[str],
        *,
        stop_type: str = "eos",
        features: ServerFeatures | None = None,
        max_tokens: int = -1,
        fail: Exception | None = None,
        chat_template: str = "",
    ) -> None:
        engine = SimpleNamespace(n_ctx=4096, chat_template=chat_template, name="fake")
        super().__init__(
            engine,  # type: ignore[arg-type]
            nullcontext,
            lambda: False,
            max_tokens=max_tokens,
            features=features,
        )
        self.pieces = pieces
        self.stop_type = stop_type
        self.fail = fail  # raised after the first piece
        self.requests: list[GenRequest] = []
        self.messages: list[dict[str, Any]] | None = None  # as the template would get them
        self.template_kwargs: dict[str, Any] = {}  # what else the template would get (tools)
        self.params: Sampling | None = None
        self.stream: bool | None = None  # what the core was asked: a stream or a whole answer

    def _prompt(
        self, req: GenRequest, template_kwargs: dict[str, Any]
    ) -> tuple[list[int], list[str]]:
        self.requests.append(req)
        self.messages = req.messages
        self.template_kwargs = template_kwargs
        return [*req.context, *PROMPT], list(req.sampling.stop)

    def _generate(
        self,
        prompt: list[int],
        params: Sampling,
        result: GenResult,
        stop: Callable[[], bool],
        stream: bool,
    ) -> Iterator[str]:
        self.params = params
        self.stream = stream
        result.n_prompt = len(prompt)

        def run() -> Iterator[str]:
            for i, piece in enumerate(self.pieces):
                if params.n_probs:
                    top = [(100 + i, piece, -0.5), (7, "x", -2.0), (8, "y", -3.0)]
                    result.probs.append(TokenProb(100 + i, piece, -0.5, top[: params.n_probs]))
                result.n_predicted += 1
                result.text += piece
                yield piece
                if self.fail is not None:
                    raise self.fail
            result.stop_type = self.stop_type
            result.t_predicted_ms = 10.0

        return run()

    def text_of(self, tokens: list[int]) -> str:
        return "<" + ",".join(map(str, tokens)) + ">"

    def tokens_of(self, text: str) -> list[int]:
        return [9] * len(text.split())


def fake_app(core: FakeCore, **kw: Any) -> Any:
    """What the handlers read from the server."""
    return SimpleNamespace(
        core=core,
        model_name=kw.get("model_name", "fake-model"),
        defaults=kw.get("defaults", Sampling()),
        started=1700000000,
        embed=lambda texts, truncate=False: ([[0.6, 0.8] for _ in texts], 2 * len(texts)),
        model_info=lambda: {"n_ctx": 4096, "n_vocab": 49152},
    )


def answer(reply: Reply) -> Any:
    """A JSON reply's value, or every event of a stream (closed afterwards)."""
    if isinstance(reply, Json):
        return reply.value
    assert isinstance(reply, Events)
    try:
        return list(reply.events)
    finally:
        reply.close()


THINKING = ["<think>", "Let me", " think.</", "think>", "\n\nThe answer", " is 4."]
