"""A real model.run server in a thread of the test process, on a loopback port: the shared way
the in-process server tests start and stop one (the main listener, and ``--ollama-port``'s
second listener sharing its engine)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from packer.runtime.engine import Engine
from packer.runtime.server import PackerHTTPServer, make_server


@contextmanager
def serving(engine: Engine, **kw: Any) -> Iterator[PackerHTTPServer]:
    """``make_server(engine, "127.0.0.1", 0, **kw)`` serving until the block ends."""
    srv = make_server(engine, "127.0.0.1", 0, **kw)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


@contextmanager
def serving_with_ollama(engine: Engine, **kw: Any) -> Iterator[tuple[str, str]]:
    """(main URL, Ollama listener URL): two listeners on one engine, as ``--ollama-port``."""
    with serving(engine, **kw) as main, serving(engine, ollama=True, **kw) as oll:
        oll.share_with(main)
        assert oll.gate is main.gate and oll.embedder is main.embedder
        yield main.url, oll.url
