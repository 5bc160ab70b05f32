"""The web chat page (templates/chat.html) in a real headless Chromium against a real server.

The browser is driven over the Chrome DevTools Protocol on ``--remote-debugging-pipe`` (NUL-
separated JSON on fds 3/4), so the test needs nothing beyond Debian's ``chromium``: clicks and
typing are real input events (``Input.dispatchMouseEvent`` / ``Input.insertText``).
The server is the unfrozen runtime, ``python -m packer.runtime --gguf SmolLM2 --server``.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import free_port, smollm_gguf_path

ROOT = Path(__file__).resolve().parents[1]
ALIAS = "smollm2-web"
KEY = "web-key"
REPORT_SHOT = Path("/work/notes/webpage.png")
MAX_TOKENS = 40
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or sys.platform != "linux",
        reason="needs Debian's chromium (apt-get install chromium) on Linux",
    ),
]


# -- a tiny DevTools client ---------------------------------------------------------------


class CDPError(RuntimeError):
    pass


class Browser:
    """Headless Chromium with one page, driven over the DevTools pipe."""

    def __init__(self, profile: Path) -> None:
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        # move the child's ends above 10 so dup2 onto 3 and 4 cannot clobber one another
        child_in = fcntl.fcntl(to_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(from_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_r)
        os.close(from_w)

        def fds() -> None:
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        args = [
            str(CHROMIUM),
            "--headless",
            "--remote-debugging-pipe",
            "--no-sandbox",  # root in a container
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,  # only fds 3/4 (made inheritable by dup2) are inheritable here
            preexec_fn=fds,  # noqa: PLW1509 - single-threaded test process
        )
        os.close(child_in)
        os.close(child_out)
        self._w, self._r = to_w, from_r
        self._buf = b""
        self._id = 0
        self.session: str | None = None
        self.events: list[dict[str, Any]] = []
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        self.send("Page.enable")
        self.send("Runtime.enable")

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._r, 1 << 16)
            if not chunk:
                raise CDPError("chromium exited")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def js(self, expression: str) -> Any:
        r = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in r:
            raise CDPError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, expression: str, timeout: float = 300, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what or expression}")
            time.sleep(0.1)

    def open(self, url: str) -> None:
        self.js("window.oldPage = true")
        self.send("Page.navigate", url=url)
        self.wait("!window.oldPage && document.readyState === 'complete'", 30, url)

    def viewport(self, width: int, height: int, mobile: bool = False) -> None:
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=2 if mobile else 1,
            mobile=mobile,
        )
        self.send("Emulation.setTouchEmulationEnabled", enabled=mobile, maxTouchPoints=5)

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element (fails if it is not visible)."""
        box = self.js(
            f"""(() => {{ const el = document.querySelector({json.dumps(selector)});
            if (!el) return null; el.scrollIntoView({{block: "nearest"}});
            const r = el.getBoundingClientRect();
            return r.width && r.height ? [r.x + r.width / 2, r.y + r.height / 2] : null; }})()"""
        )
        assert box, f"{selector} is not on the page or not visible"
        for kind in ("mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent",
                type=kind,
                x=box[0],
                y=box[1],
                button="left",
                clickCount=1,
            )

    def type(self, selector: str, text: str, replace: bool = False) -> None:
        self.click(selector)
        if replace:
            self.js(f"document.querySelector({json.dumps(selector)}).select()")
        self.send("Input.insertText", text=text)

    def key(self, key: str, code: int) -> None:
        for kind in ("keyDown", "keyUp"):
            self.send(
                "Input.dispatchKeyEvent",
                type=kind,
                key=key,
                code=key,
                windowsVirtualKeyCode=code,
                nativeVirtualKeyCode=code,
                text="\r" if kind == "keyDown" and key == "Enter" else "",
            )

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        with suppress(CDPError, TimeoutError, OSError):
            self.send("Browser.close", timeout=5)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)


# -- fixtures -----------------------------------------------------------------------------


def _serve(tmp: Path, *extra: str) -> Iterator[str]:
    port = free_port()
    log = (tmp / f"server-{port}.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "packer.runtime", "--gguf", str(smollm_gguf_path()), "--server"]
        + ["--port", str(port), "-c", "1024", "-t", "2", *extra],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp / f"server-{port}.log").read_text()
            try:
                if requests.get(url + "/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the server did not start in 60 s"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("webpage")


@pytest.fixture(scope="module")
def url(tmp: Path) -> Iterator[str]:
    yield from _serve(tmp, "--alias", ALIAS)


@pytest.fixture(scope="module")
def browser(tmp: Path) -> Iterator[Browser]:
    b = Browser(tmp / "profile")
    yield b
    b.close()


@pytest.fixture
def page(browser: Browser, url: str) -> Browser:
    """The chat page, fresh, at a desktop size, with greedy decoding and short answers."""
    browser.viewport(1280, 800)
    browser.open(url + "/")
    browser.js("localStorage.clear()")
    browser.open(url + "/")
    browser.wait(f"document.getElementById('title').textContent === {json.dumps(ALIAS)}", 10)
    browser.click("#toggle")
    browser.type("#temperature", "0", replace=True)
    browser.type("#max_tokens", str(MAX_TOKENS), replace=True)
    return browser


def api_answer(url: str, messages: list[dict[str, str]]) -> str:
    r = requests.post(
        url + "/v1/chat/completions",
        json={"messages": messages, "temperature": 0, "max_tokens": MAX_TOKENS},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def as_shown(text: str) -> str:
    """What the page shows of an answer: ``` fence lines become <pre> blocks (text stays)."""
    return re.sub(r"(?m)^```.*$\n?", "", text)


def send_and_wait(b: Browser, text: str, via: Callable[[Browser], None] | None = None) -> str:
    n = b.js("document.querySelectorAll('.msg.assistant').length")
    b.type("#input", text)
    if via is None:
        b.click("#send")
    else:
        via(b)
    b.wait(
        f"document.querySelectorAll('.msg.assistant').length === {n + 1} "
        "&& document.body.dataset.busy === '' && !document.getElementById('send').hidden",
        what="the streamed answer",
    )
    return b.js("[...document.querySelectorAll('.msg.assistant')].at(-1).textContent")


# -- tests --------------------------------------------------------------------------------


def test_chat_streams_the_greedy_answer(page: Browser, url: str, tmp: Path) -> None:
    system = "You are a patient teacher. Answer briefly."
    question = "¿Qué es la cuantización?"
    page.type("#system", system)
    answer = send_and_wait(page, question)
    expected = api_answer(
        url, [{"role": "system", "content": system}, {"role": "user", "content": question}]
    )
    assert answer.strip() and answer == as_shown(expected)
    # the question round-trips as typed, non-ASCII included
    assert page.js("document.querySelector('.msg.user').textContent") == question
    stats = page.js("document.querySelector('.stats').textContent")
    assert re.fullmatch(r"\d+ tokens, \d+\.\d tokens/s", stats), stats

    # the conversation is kept: the second turn is sent with the first (Enter sends too)
    follow = "Give one example."
    answer2 = send_and_wait(page, follow, via=lambda b: b.key("Enter", 13))
    expected2 = api_answer(
        url,
        [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
            {"role": "assistant", "content": expected},
            {"role": "user", "content": follow},
        ],
    )
    assert answer2 == as_shown(expected2)
    shot = page.screenshot(tmp / "desktop.png")
    assert shot.stat().st_size > 10_000

    page.click("#clear")
    assert page.js("document.querySelectorAll('.msg').length") == 0
    # after "New chat" the next question goes alone
    answer3 = send_and_wait(page, question)
    assert answer3 == answer


def test_stop_frees_the_server(page: Browser, url: str) -> None:
    page.type("#max_tokens", "400", replace=True)
    page.type("#input", "Write a long story about a cat who learns to read.")
    page.click("#send")
    page.wait("document.querySelector('.msg.assistant')?.textContent.length > 0", 300, "a token")
    page.click("#stop")
    page.wait("!document.getElementById('send').hidden", 10, "the Send button back")
    shown = page.js("document.querySelector('.msg.assistant').textContent")
    time.sleep(0.5)
    assert page.js("document.querySelector('.msg.assistant').textContent") == shown
    assert page.js("document.querySelector('.stats').textContent").endswith("stopped")
    # the server noticed the closed connection and freed the model for the next request
    deadline = time.monotonic() + 10
    while requests.get(url + "/props", timeout=10).json()["default_generation_settings"][
        "is_processing"
    ]:
        assert time.monotonic() < deadline, "the generation went on after Stop"
        time.sleep(0.1)
    assert api_answer(url, [{"role": "user", "content": "Hi"}])


def test_server_errors_are_shown(page: Browser) -> None:
    long_text = "palabra " * 3000  # well over the 1024-token context
    page.type("#input", long_text)
    page.click("#send")
    page.wait("!!document.querySelector('.error')", 120, "the error")
    err = page.js("document.querySelector('.error').textContent")
    assert err.startswith("Error 400: "), err
    # the question is taken back for editing; no empty bubbles are left
    assert page.js("document.getElementById('input').value") == long_text.strip()
    assert page.js("document.querySelectorAll('.msg').length") == 0


def test_model_output_is_text_not_html(page: Browser) -> None:
    evil = 'hi <img src=x onerror="window.pwned=1">\n```html\n<b>bold</b>\n```\nbye'
    page.js(f"add('msg assistant', {json.dumps(evil)})")
    el = "[...document.querySelectorAll('.msg.assistant')].at(-1)"
    assert page.js(f"{el}.querySelectorAll('img, b').length") == 0
    assert page.js(f"{el}.querySelector('pre').textContent") == "<b>bold</b>\n"
    assert page.js(f"{el}.textContent") == as_shown(evil)
    assert page.js("window.pwned === undefined")
    # an answer still waiting for its first token shows "…"
    page.js("add('msg assistant', '')")
    assert page.js(f"getComputedStyle({el}, '::after').content") == '"…"'


def test_phone_layout(browser: Browser, url: str, tmp: Path) -> None:
    browser.viewport(390, 844, mobile=True)
    browser.open(url + "/")
    browser.js(f"localStorage.clear(); localStorage.setItem('packer.max_tokens', '{MAX_TOKENS}')")
    browser.open(url + "/")
    browser.wait(f"document.getElementById('title').textContent === {json.dumps(ALIAS)}", 10)
    answer = send_and_wait(browser, "¿Qué es la cuantización?")
    assert answer.strip()
    browser.click("#toggle")
    sizes = browser.js(
        """(() => {
        const box = (id) => document.getElementById(id).getBoundingClientRect();
        const visible = (r) => r.width > 0 && r.left >= 0 && r.right <= innerWidth + 0.5
                                && r.top >= 0 && r.bottom <= innerHeight + 0.5;
        const buttons = [...document.querySelectorAll("button:not([hidden])")]
                          .map((b) => b.getBoundingClientRect());
        return {scroll: document.documentElement.scrollWidth, width: innerWidth,
                input: visible(box("input")), send: visible(box("send")),
                smallest: Math.min(...buttons.map((r) => Math.min(r.width, r.height)))};
        })()"""
    )
    assert sizes["width"] == 390
    assert sizes["scroll"] <= 390, "the page scrolls sideways on a phone"
    assert sizes["input"] and sizes["send"], sizes
    assert sizes["smallest"] >= 44, f"touch targets under 44 px: {sizes}"
    browser.screenshot(tmp / "phone-settings.png")
    browser.click("#toggle")
    assert browser.js("document.documentElement.scrollWidth") <= 390
    shot = browser.screenshot(tmp / "phone.png")
    if REPORT_SHOT.parent.is_dir():
        shutil.copyfile(shot, REPORT_SHOT)


def test_api_key_prompt(browser: Browser, tmp: Path) -> None:
    for keyed in _serve(tmp, "--api-key", KEY, "--alias", ALIAS):
        browser.viewport(1280, 800)
        browser.open(keyed + "/")
        browser.wait("!document.getElementById('notice').hidden", 10, "the API key notice")
        assert "API key" in browser.js("document.getElementById('notice').textContent")
        assert browser.js("document.getElementById('settings').classList.contains('open')")
        browser.type("#api_key", KEY)
        browser.click("#input")  # leaving the field commits it
        browser.wait(f"document.getElementById('title').textContent === {json.dumps(ALIAS)}", 10)
        assert browser.js("document.getElementById('notice').hidden")
