"""What an endpoint handler gets (:class:`Call`) and returns (a :data:`Reply`).

Handlers never touch the socket: they return a JSON value, bytes, or a stream of events (or
raise :class:`packer.runtime.server_api.ApiError`), and :mod:`packer.runtime.transport` writes
it: JSON with a Content-Length, events as Server-Sent Events or NDJSON lines, errors in the
route's dialect.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from packer.runtime.gen_core import Core
    from packer.runtime.generate import Sampling
    from packer.runtime.server_api import ApiError


def _never() -> bool:
    return False


@dataclass
class Call:
    """One request as a handler sees it: ``body`` is the parsed JSON object of a POST (``{}``
    otherwise); ``cancelled`` turns true once the client is gone."""

    method: str
    path: str
    body: dict[str, Any] = field(default_factory=dict)
    query: Mapping[str, list[str]] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    cancelled: Callable[[], bool] = _never


@dataclass
class Json:
    value: Any
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Raw:
    body: bytes
    content_type: str
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Events:
    """A stream: each event a JSON value (or a string sent as it is, such as ``[DONE]``).
    ``error_event``: the last event when the stream fails midway; ``close``: called when the
    stream ends, however it ends."""

    events: Iterator[Any]
    ndjson: bool = False
    error_event: Callable[[ApiError], Any] = lambda err: err.body(False)
    close: Callable[[], None] = lambda: None


Reply = Json | Raw | Events


class App(Protocol):
    """What the endpoint handlers read from the server (a stand-in in the dialect tests)."""

    core: Core
    model_name: str
    defaults: Sampling
    started: int  # when the server started (seconds since the epoch)

    def embed(self, texts: list[str], truncate: bool = False) -> tuple[list[list[float]], int]:
        """Unit-length embeddings and the number of tokens read (waits in the embeddings line)."""
        ...

    def model_info(self) -> dict[str, Any]:
        """``n_ctx`` and the model's facts (``n_vocab``, ``n_params``...), for ``/v1/models``."""
        ...
