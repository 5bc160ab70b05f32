"""The web chat page's features, on the real server with a scripted model, in headless Chromium.

The server is :func:`packer.runtime.server.make_server` in this process; only the model is a
stand-in (:class:`ScriptedEngine`: chat prompts are recorded, answers come from a script), so
the answers hold the Markdown, code and HTML the tests need. The route tests of
``/packer/page.json``, ``/packer/license`` and ``/packer/vendor/`` need no browser; the rest
need Debian's ``chromium`` (``tests/chromium.py``) and skip without it. The real model's web
chat: ``test_webpage.py`` (slow).
"""

from __future__ import annotations

import re
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import requests
from chromium import CHROMIUM, Browser

from packer.runtime import gen_core as server_mod
from packer.runtime.engine import EngineOptions
from packer.runtime.manifest import LicenseFile
from packer.runtime.server import HttpOptions, PackerHTTPServer, make_server
from packer.runtime.webpage import PageInfo

NOTES = Path("/work/notes")
MODEL = "SmolLM2-135M-Instruct"
URLS = ("http://192.168.1.20:8080", "http://10.0.0.5:8080")
PAGE = PageInfo(
    quant="Q5_K_M",
    size=105_461_000,
    license="apache-2.0",
    license_link="https://www.apache.org/licenses/LICENSE-2.0",
    license_files=(LicenseFile("LICENSE", "Apache License\nVersion 2.0, January 2004\n"),),
    model_card="---\nlicense: apache-2.0\n---\n# SmolLM2\n\nA **small** model.\n",
)
KEY = "page-key"

ASK_MARKDOWN = "Show me a list and some code"
MARKDOWN = (
    "Here are **three** steps:\n\n1. Copy the file\n2. Run `./model.run`\n3. Ask a question\n\n"
    '```python\nprint("hola")\n```\n\nMore at [the guide](https://example.com/guide).'
)
ASK_SPANISH = "Muéstrame una lista y un poco de código"
SPANISH = (
    "Estos son los **tres** pasos:\n\n1. Copia el archivo\n2. Ejecuta `./model.run`\n"
    '3. Haz una pregunta\n\n```python\nprint("hola")\n```'
)
ASK_EVIL = "Say something nasty"
EVIL = (
    'Look: <img src=x onerror="window.pwned=1"> <script>window.pwned=2</script>\n\n'
    "[click me](javascript:window.pwned=3) and ![a picture](http://example.com/pixel.png)\n\n"
    "<a href=\"javascript:window.pwned=4\">raw link</a> <iframe src='http://example.com'></iframe>"
)
ASK_WIDE = "Show me a long line"
ASK_THINK = "Think first"
THOUGHT = "<think>Counting the sheep one by one.</think>Two sheep."
WIDE = "A long line of code:\n\n```\n" + "x = 1; " * 60 + "\n```\n\n" + "word " * 80


class ScriptedEngine:
    """Stands in for the model behind the real server: what the chat endpoint needs."""

    def __init__(self) -> None:
        self.name = "scripted"
        self.options = EngineOptions(n_parallel=1, max_queue=4)
        self.n_ctx = 4096
        self.llm = SimpleNamespace(_model=object())  # /v1/models reads nothing more from it
        self.seen: list[list[dict[str, Any]]] = []  # every chat request's messages
        self.script = {
            ASK_MARKDOWN: MARKDOWN,
            ASK_SPANISH: SPANISH,
            ASK_EVIL: EVIL,
            ASK_WIDE: WIDE,
            ASK_THINK: THOUGHT,
        }

    def chat_tokens(
        self, engine: Any, messages: list[dict[str, Any]], stop: list[str]
    ) -> tuple[list[int], list[str]]:
        self.seen.append(messages)
        return [1, 2, 3], stop

    def generate(
        self,
        engine: Any,
        prompt: list[int],
        params: Any,
        result: Any,
        cancelled: Any = None,
        every: float = 0.0,
        burst: float | None = None,
    ) -> Iterator[str]:
        question = self.seen[-1][-1]["content"]
        text = self.script.get(question, f"You said: {question}")

        def pieces() -> Iterator[str]:
            t0 = time.perf_counter()
            for piece in re.findall(r"\s*\S+", text) + [text[len(text.rstrip()) :]]:
                if not piece:
                    continue
                time.sleep(0.002)
                result.n_predicted += 1
                yield piece
            result.t_predicted_ms = (time.perf_counter() - t0) * 1e3
            result.stop_type = "eos"

        return pieces()


@contextmanager
def serving(engine: ScriptedEngine, **kw: Any) -> Iterator[PackerHTTPServer]:
    api_key = kw.pop("api_key", None)
    ollama = kw.pop("ollama", False)
    srv = make_server(
        engine, "127.0.0.1", 0, model_alias=MODEL, api_key=api_key, http=HttpOptions(**kw),
        ollama=ollama,
    )  # fmt: skip
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


@pytest.fixture(scope="module")
def engine() -> Iterator[ScriptedEngine]:
    eng = ScriptedEngine()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(server_mod.gen, "chat_tokens", eng.chat_tokens)
        mp.setattr(server_mod.gen, "generate", eng.generate)
        yield eng


@pytest.fixture(scope="module")
def url(engine: ScriptedEngine) -> Iterator[str]:
    """A server of a model.run with its manifest's page info, serving a class (LAN URLs)."""
    with serving(engine, page=PAGE, public_urls=URLS) as srv:
        yield srv.url


# -- the routes ---------------------------------------------------------------------------


def get(url: str, path: str, **headers: str) -> requests.Response:
    return requests.get(url + path, headers=headers, timeout=10)


def test_page_json(url: str) -> None:
    r = get(url, "/packer/page.json", **{"Accept-Language": "en-US,en;q=0.9"})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert body["lang"] in ("en", "en_US")
    assert {k: body[k] for k in ("model", "quant", "size", "urls", "messages")} == {
        "model": MODEL,
        "quant": "Q5_K_M",
        "size": 105_461_000,
        "urls": list(URLS),
        "messages": {},
    }
    assert body["license"] == {
        "id": "apache-2.0",
        "name": None,
        "link": "https://www.apache.org/licenses/LICENSE-2.0",
        "files": ["LICENSE"],
        "model_card": True,
    }
    assert body["qr_svg"].startswith("<svg") and body["qr_svg"].rstrip().endswith("</svg>")
    # no side effects: the same answer again, and HEAD answers the same headers
    assert get(url, "/packer/page.json", **{"Accept-Language": "en-US,en;q=0.9"}).json() == body
    head = requests.head(url + "/packer/page.json", timeout=10)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) > 0


@pytest.mark.parametrize(
    ("query", "accept", "lang"),
    [
        ("", "es-ES,es;q=0.9,en;q=0.8", "es"),
        ("", "fr-FR,fr;q=0.9,es;q=0.5", "es"),  # the first language with a catalog
        ("", "de-DE,de;q=0.9", "en"),
        ("", "", "en"),
        ("?lang=es", "en-US", "es"),  # the page's ?lang= first
        ("?lang=en", "es-ES", "en"),
        ("?lang=xx-%3Cb%3E", "es", "es"),  # junk is ignored
        ("?lang=zz", "", "en"),  # a language we lack: English, no error
    ],
)
def test_page_json_language(url: str, query: str, accept: str, lang: str) -> None:
    body = get(url, "/packer/page.json" + query, **{"Accept-Language": accept}).json()
    assert body["lang"].split("_")[0] == lang
    if lang == "es":
        assert body["messages"]["New chat"] == "Nuevo chat"
    else:
        assert body["messages"] == {}


def test_page_json_without_urls_or_manifest(engine: ScriptedEngine) -> None:
    """--gguf (no manifest) on localhost: no quant, licence, URLs or QR code."""
    with serving(engine) as srv:
        body = get(srv.url, "/packer/page.json").json()
        assert body["model"] == MODEL and body["quant"] is None and body["size"] is None
        assert body["urls"] == [] and body["qr_svg"] is None
        assert body["license"] == {
            "id": None,
            "name": None,
            "link": None,
            "files": [],
            "model_card": False,
        }
        assert get(srv.url, "/packer/license").json() == {
            "id": None,
            "name": None,
            "link": None,
            "files": [],
            "model_card": None,
        }


def test_no_key_needed_for_the_page(engine: ScriptedEngine) -> None:
    with serving(engine, api_key=KEY, page=PAGE, public_urls=URLS) as srv:
        assert get(srv.url, "/v1/models").status_code == 401
        for path in (
            "/",
            "/packer/page.json",
            "/packer/license",
            "/packer/vendor/markdown-it.min.js",
        ):
            assert get(srv.url, path).status_code == 200, path
        assert get(srv.url, "/packer/page.json").json()["urls"] == list(URLS)


def test_license_route(url: str) -> None:
    r = get(url, "/packer/license")
    assert r.status_code == 200
    assert r.json() == {
        "id": "apache-2.0",
        "name": None,
        "link": "https://www.apache.org/licenses/LICENSE-2.0",
        "files": [{"name": "LICENSE", "text": PAGE.license_files[0].text}],
        "model_card": PAGE.model_card,
    }


def test_vendor_route(url: str, engine: ScriptedEngine) -> None:
    r = get(url, "/packer/vendor/markdown-it.min.js")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/javascript")
    assert b"markdownit" in r.content and len(r.content) > 50_000
    assert get(url, "/packer/vendor/nope.js").status_code == 404
    assert get(url, "/packer/vendor/%2e%2e/page.json").status_code == 404
    # --no-webui: no page and no page scripts; "/" answers as before
    with serving(engine, webui=False, page=PAGE) as srv:
        assert get(srv.url, "/").text == "Ollama is running"
        assert get(srv.url, "/packer/vendor/markdown-it.min.js").status_code == 404
    # the Ollama listener: Ollama's API only
    with serving(engine, ollama=True, page=PAGE) as srv:
        assert get(srv.url, "/").text == "Ollama is running"
        for path in ("/packer/page.json", "/packer/license", "/packer/vendor/markdown-it.min.js"):
            assert get(srv.url, path).status_code == 404, path


def test_browser_guard_applies(url: str) -> None:
    port = url.rsplit(":", 1)[1]
    r = get(url, "/packer/page.json", Host=f"evil.example:{port}")
    assert r.status_code == 403 and "localhost" in r.json()["error"]["message"]
    r = get(url, "/packer/license", Origin="http://evil.example")
    assert r.status_code == 403
    assert get(url, "/packer/license", Origin=url).status_code == 200


# -- the page in Chromium -------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp: Path) -> Iterator[Browser]:
    if CHROMIUM is None or sys.platform != "linux":
        pytest.skip("needs Debian's chromium (apt-get install chromium) on Linux")
    b = Browser(tmp / "profile")
    b.send("Network.enable")
    yield b
    b.close()


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("webpage-features")


def fresh(b: Browser, url: str, accept: str = "en-US,en", width: int = 1280, height: int = 800,
          mobile: bool = False, path: str = "/") -> Browser:  # fmt: skip
    """The page, loaded with nothing stored, ready (its page.json applied)."""
    b.viewport(width, height, mobile=mobile)
    b.languages(accept)
    b.open(url + "/")
    b.js("localStorage.clear()")
    b.open(url + path)
    b.wait("!document.documentElement.classList.contains('loading')", 10, "page.json")
    return b


def ask(b: Browser, text: str) -> str:
    n = b.js("document.querySelectorAll('.msg.assistant .actions').length")
    b.type("#input", text)
    b.click("#send")
    b.wait(
        f"document.querySelectorAll('.msg.assistant .actions').length === {n + 1} "
        "&& !document.getElementById('send').hidden",
        30,
        "the answer",
    )
    return "[...document.querySelectorAll('.msg.assistant')].at(-1)"


def shot(b: Browser, tmp: Path, name: str) -> Path:
    path = b.screenshot(tmp / name)
    assert path.stat().st_size > 10_000
    if NOTES.is_dir():
        shutil.copyfile(path, NOTES / name)
    return path


def test_english_page_renders_markdown(browser: Browser, url: str, tmp: Path) -> None:
    b = fresh(browser, url)
    assert b.js("document.documentElement.lang") in ("en", "en-US")
    assert b.js("document.getElementById('title').textContent") == MODEL
    meta = b.js("document.getElementById('meta').textContent")
    assert "Q5_K_M" in meta and "105 MB" in meta and "Licence: apache-2.0" in meta
    el = ask(b, ASK_MARKDOWN)
    assert b.js(f"{el}.answer") == MARKDOWN
    assert b.js(f"[...{el}.querySelectorAll('.body ol > li')].map(li => li.textContent)") == [
        "Copy the file",
        "Run ./model.run",
        "Ask a question",
    ]
    assert b.js(f"{el}.querySelector('.body strong').textContent") == "three"
    assert b.js(f"{el}.querySelector('.body li code').textContent") == "./model.run"
    assert b.js(f"{el}.querySelector('.code pre code').textContent") == 'print("hola")\n'
    assert b.js(f"{el}.querySelector('.code pre code').className") == "language-python"
    assert b.js(f"!!{el}.querySelector('.code button.copy')")
    link = b.js(
        f"(() => {{ const a = {el}.querySelector('.body a');"
        " return [a.href, a.target, a.rel, a.textContent]; })()"
    )
    assert link == [
        "https://example.com/guide",
        "_blank",
        "noopener noreferrer nofollow",
        "the guide",
    ]
    # the labels of copy buttons are drawn by CSS: the answer's text holds only the answer
    actions = b.js(
        f"[{el}.querySelector('.actions').textContent, {el}.querySelector('.stats').textContent]"
    )
    assert actions[0] == actions[1]
    assert b.js(f"{el}.querySelector('.code').textContent") == 'print("hola")\n'
    assert re.fullmatch(
        r"\d+ tokens, [\d,]+\.\d tokens/s", b.js(f"{el}.querySelector('.stats').textContent")
    )
    shot(b, tmp, "webpage-en.png")


def test_spanish_page(browser: Browser, url: str, tmp: Path) -> None:
    b = fresh(browser, url, accept="es-ES,es;q=0.9")
    assert b.js("document.documentElement.lang") == "es"
    # every string of the page is translated: none is left as its English text
    left = b.js(
        "[...document.querySelectorAll('[data-i18n]')]"
        ".filter(el => el.textContent === el.dataset.i18n).map(el => el.dataset.i18n)"
    )
    assert left == []
    assert b.js("document.getElementById('clear').textContent") == "Nuevo chat"
    assert b.js("document.getElementById('share').textContent") == "Compartir"
    assert b.js("document.getElementById('input').placeholder") == "Escribe un mensaje"
    assert "Licencia: apache-2.0" in b.js("document.getElementById('meta').textContent")
    el = ask(b, ASK_SPANISH)
    assert b.js(f"{el}.querySelectorAll('.body ol > li').length") == 3
    assert b.js(f"{el}.querySelector('.stats').textContent").endswith("tokens/s")
    assert re.search(r"\d+,\d tokens/s$", b.js(f"{el}.querySelector('.stats').textContent"))
    shot(b, tmp, "webpage-es.png")
    # ?lang= in the page's address wins over the browser's languages
    fresh(b, url, accept="es-ES,es", path="/?lang=en")
    assert b.js("document.getElementById('clear').textContent") == "New chat"
    fresh(b, url, accept="en-US,en", path="/?lang=es")
    assert b.js("document.getElementById('clear').textContent") == "Nuevo chat"


def test_model_output_cannot_run_or_load_anything(browser: Browser, url: str) -> None:
    b = fresh(browser, url)
    b.events.clear()
    el = ask(b, ASK_EVIL)
    assert b.js(f"{el}.answer") == EVIL
    time.sleep(0.3)  # an onerror or a late image load would have happened by now
    assert b.js("window.pwned === undefined")
    assert b.js(f"{el}.querySelectorAll('img, script, iframe').length") == 0
    body = b.js(f"{el}.querySelector('.body').textContent")
    assert '<img src=x onerror="window.pwned=1">' in body and "<script>" in body
    # no javascript: link anywhere (the picture is only a link, opened in a new tab on a click)
    hrefs = b.js(f"[...{el}.querySelectorAll('a[href]')].map(a => a.href)")
    assert hrefs and all(h.startswith("http://example.com/") for h in hrefs), hrefs
    assert b.js(f"[...{el}.querySelectorAll('a')].every(a => a.target === '_blank')")
    requested = [
        e["params"]["request"]["url"]
        for e in b.events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    assert not [u for u in requested if "example.com" in u or u.endswith("/x")], requested


def test_conversation_survives_reload_and_new_chat_clears_it(
    browser: Browser, url: str, engine: ScriptedEngine
) -> None:
    b = fresh(browser, url)
    ask(b, "first question")
    ask(b, ASK_MARKDOWN)
    before = b.js("[...document.querySelectorAll('.msg')].map(m => m.textContent)")
    b.open(url + "/")
    b.wait("document.querySelectorAll('.msg').length === 4", 10, "the conversation back")
    assert b.js("[...document.querySelectorAll('.msg')].map(m => m.textContent)") == before
    assert b.js("document.querySelectorAll('.msg.assistant .stats').length") == 2
    # the next question goes with the whole conversation, as the model wrote it
    ask(b, "third question")
    assert engine.seen[-1] == [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "You said: first question"},
        {"role": "user", "content": ASK_MARKDOWN},
        {"role": "assistant", "content": MARKDOWN},
        {"role": "user", "content": "third question"},
    ]
    b.click("#clear")
    assert b.js("document.querySelectorAll('.msg').length") == 0
    assert b.js("JSON.parse(localStorage.getItem('packer.chat'))") == []
    b.open(url + "/")
    b.wait("!document.documentElement.classList.contains('loading')", 10, "page.json")
    assert b.js("document.querySelectorAll('.msg').length") == 0
    assert b.js("!!document.querySelector('.empty')")
    ask(b, "alone")
    assert engine.seen[-1] == [{"role": "user", "content": "alone"}]


def test_thinking_is_folded_away_and_not_sent_back(
    browser: Browser, url: str, engine: ScriptedEngine
) -> None:
    b = fresh(browser, url)
    el = ask(b, ASK_THINK)
    assert b.js(f"{el}.answer") == "Two sheep."
    assert b.js(f"{el}.querySelector('.body').textContent").strip() == "Two sheep."
    assert b.js(f"{el}.querySelector('details.thinking summary').textContent") == "Thinking"
    assert b.js(f"{el}.querySelector('details.thinking').open") is False
    text = b.js(f"{el}.querySelector('details.thinking .text').textContent")
    assert text == "Counting the sheep one by one."
    ask(b, "and then?")
    assert engine.seen[-1][-2] == {"role": "assistant", "content": "Two sheep."}


LAST = "#log > .msg.assistant:last-child"


def test_copy_buttons(browser: Browser, url: str) -> None:
    b = fresh(browser, url)
    ask(b, ASK_MARKDOWN)
    b.js("window.copied = []; navigator.clipboard.writeText = async (t) => { copied.push(t); }")
    b.click(f"{LAST} .actions .copy")
    b.wait("copied.length === 1", 5, "the clipboard")
    assert b.js("copied") == [MARKDOWN]  # the answer as written, Markdown included
    label = f"document.querySelector('{LAST} .actions .copy').dataset.label"
    assert b.js(label) == "Copied"
    b.wait(f"{label} === 'Copy'", 5, "the label back")
    b.click(f"{LAST} .code .copy")
    b.wait("copied.length === 2", 5, "the clipboard")
    assert b.js("copied[1]") == 'print("hola")\n'
    # a LAN address (http://192.168...) has no navigator.clipboard: the page falls back to
    # execCommand("copy") on a hidden text field
    b.js(
        "window.copiedOld = []; navigator.clipboard.writeText = async () => { throw new Error('no'); };"
        "document.execCommand = (cmd) => { copiedOld.push([cmd, document.activeElement.value]); return true; }"
    )
    b.click(f"{LAST} .actions .copy")
    b.wait("copiedOld.length === 1", 5, "the fallback")
    assert b.js("copiedOld") == [["copy", MARKDOWN]]
    assert b.js(label) == "Copied"


def test_phone_layout(browser: Browser, url: str, tmp: Path) -> None:
    b = fresh(browser, url, accept="es-ES,es", width=390, height=844, mobile=True)
    ask(b, ASK_WIDE)  # a long code line and a long paragraph
    ask(b, ASK_SPANISH)
    b.click("#toggle")
    sizes = b.js(
        """(() => {
        const box = (id) => document.getElementById(id).getBoundingClientRect();
        const visible = (r) => r.width > 0 && r.left >= 0 && r.right <= innerWidth + 0.5
                                && r.top >= 0 && r.bottom <= innerHeight + 0.5;
        const buttons = [...document.querySelectorAll("button")].filter((b) => b.offsetParent)
                          .map((b) => b.getBoundingClientRect());
        return {scroll: document.documentElement.scrollWidth, width: innerWidth,
                input: visible(box("input")), send: visible(box("send")),
                header: box("clear").bottom < 200, count: buttons.length,
                smallest: Math.min(...buttons.map((r) => Math.min(r.width, r.height)))};
        })()"""
    )
    assert sizes["width"] == 390
    assert sizes["scroll"] <= 390, f"the page scrolls sideways on a phone: {sizes}"
    assert sizes["input"] and sizes["send"] and sizes["header"], sizes
    assert sizes["count"] >= 8 and sizes["smallest"] >= 44, f"touch targets under 44 px: {sizes}"
    b.click("#toggle")
    # the wide code block scrolls inside its own box
    assert b.js(
        "(() => { const p = document.querySelector('.code pre'); return p.scrollWidth > p.clientWidth; })()"
    )
    assert b.js("document.documentElement.scrollWidth") <= 390
    shot(b, tmp, "webpage-phone-es.png")


def qr_text(b: Browser) -> str | None:
    """The QR code the page shows, decoded (its pixels through a canvas, then zxing-cpp)."""
    zxingcpp = pytest.importorskip("zxingcpp")
    pixels = b.js(
        """(async () => {
        const img = document.getElementById("share-qr");
        await img.decode();
        const c = document.createElement("canvas");
        c.width = c.height = 400;
        const g = c.getContext("2d");
        g.fillStyle = "#fff"; g.fillRect(0, 0, 400, 400);
        g.drawImage(img, 0, 0, 400, 400);
        const d = g.getImageData(0, 0, 400, 400).data;
        const out = [];
        for (let i = 0; i < d.length; i += 4) out.push(d[i + 1]);
        return out;
        })()"""
    )
    found = zxingcpp.read_barcodes(np.array(pixels, dtype=np.uint8).reshape(400, 400))
    return found[0].text if found else None


def test_share_panel(browser: Browser, url: str, tmp: Path) -> None:
    b = fresh(browser, url, accept="es-ES,es")
    b.click("#share")
    assert b.js("document.getElementById('share-dialog').open")
    assert b.js("document.getElementById('share-url').textContent") == URLS[0]
    assert URLS[1] in b.js("document.getElementById('share-more').textContent")
    assert b.js("document.getElementById('share-qr').src").startswith("data:image/svg+xml")
    box = b.js(
        "(() => { const r = document.getElementById('share-qr').getBoundingClientRect(); return [r.width, r.height]; })()"
    )
    assert box[0] == box[1] and box[0] >= 300, f"the QR code is small for a projector: {box}"
    assert qr_text(b) == URLS[0]
    shot(b, tmp, "webpage-share-es.png")
    b.click("#share-dialog .close")
    assert not b.js("document.getElementById('share-dialog').open")


def test_license_dialog(browser: Browser, url: str) -> None:
    b = fresh(browser, url)
    b.click("#license")
    b.wait("document.querySelectorAll('#license-body h3').length === 2", 10, "the licence")
    assert b.js("[...document.querySelectorAll('#license-body h3')].map(h => h.textContent)") == [
        "LICENSE",
        "Model card",
    ]
    assert b.js("document.querySelector('#license-body .text').textContent") == (
        PAGE.license_files[0].text
    )
    paragraphs = b.js("[...document.querySelectorAll('#license-body p')].map(p => p.textContent)")
    assert paragraphs[:2] == [
        "Licence: apache-2.0",
        "Terms: https://www.apache.org/licenses/LICENSE-2.0",
    ]
    card = "document.querySelector('#license-body .md')"
    assert b.js(f"{card}.querySelector('h1').textContent") == "SmolLM2"
    assert b.js(f"{card}.querySelector('strong').textContent") == "small"
    assert "license: apache-2.0" in b.js(f"{card}.querySelector('pre').textContent")
    b.click("#license-dialog .close")
    assert not b.js("document.getElementById('license-dialog').open")


def test_no_request_leaves_the_server(browser: Browser, url: str) -> None:
    """Everything the page loads comes from model.run (a classroom may have no network)."""
    b = fresh(browser, url)
    b.events.clear()
    b.open(url + "/")
    b.wait("!document.documentElement.classList.contains('loading')", 10, "page.json")
    assert b.js("typeof window.markdownit") == "function"  # the vendored script is there
    ask(b, ASK_MARKDOWN)
    ask(b, ASK_EVIL)
    b.click("#license")
    b.wait("document.querySelectorAll('#license-body h3').length === 2", 10, "the licence")
    b.click("#license-dialog .close")
    b.click("#share")
    b.js("document.getElementById('share-qr').decode()")
    requested = [
        e["params"]["request"]["url"]
        for e in b.events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    outside = [u for u in requested if not u.startswith((url + "/", "data:"))]
    assert not outside, outside
    assert {u.split("?")[0] for u in requested if u.startswith(url)} >= {
        url + "/",
        url + "/packer/page.json",
        url + "/packer/vendor/markdown-it.min.js",
        url + "/packer/license",
        url + "/v1/chat/completions",
    }


def test_page_of_a_plain_gguf(browser: Browser, engine: ScriptedEngine) -> None:
    """No manifest, no LAN URLs: no share button, no licence line."""
    with serving(engine) as srv:
        b = fresh(browser, srv.url)
        assert b.js("document.getElementById('title').textContent") == MODEL
        assert b.js("document.getElementById('share').hidden")
        assert b.js("document.getElementById('meta').children.length") == 0
