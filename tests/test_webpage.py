"""The web chat page (templates/chat.html) in a real headless Chromium against a real model.

The server is the unfrozen runtime, ``python -m packer.runtime --gguf SmolLM2 --server``, and
once the real demo model.run; the page's features on scripted answers (Markdown, storage,
language, sharing, no outside requests) are in ``test_webpage_features.py``. The browser:
``tests/chromium.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from chromium import CHROMIUM, Browser
from conftest import free_port, smollm_gguf_path

ROOT = Path(__file__).resolve().parents[1]
ALIAS = "smollm2-web"
KEY = "web-key"
REPORT_SHOT = Path("/work/notes/webpage.png")
MAX_TOKENS = 40

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or sys.platform != "linux",
        reason="needs Debian's chromium (apt-get install chromium) on Linux",
    ),
]


# -- fixtures -----------------------------------------------------------------------------


def _serve(tmp: Path, *extra: str, exe: Path | None = None) -> Iterator[str]:
    """The unfrozen runtime on SmolLM2 (or ``exe``, a model.run, with an empty environment)."""
    port = free_port()
    log = (tmp / f"server-{port}.log").open("w")
    flags = ["--server", "--port", str(port), "-c", "1024", "-t", "2", *extra]
    if exe is None:
        command = [sys.executable, "-m", "packer.runtime", "--gguf", str(smollm_gguf_path())]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
    else:
        home = tmp / f"home-{port}"
        home.mkdir()
        command, env = ["env", "-i", f"HOME={home}", str(exe)], None
    proc = subprocess.Popen(
        command + flags,
        cwd=ROOT if exe is None else tmp,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp / f"server-{port}.log").read_text()
            try:
                if requests.get(url + "/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the server did not start in 120 s"
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
    # the answer as the model wrote it (the page shows it rendered as Markdown)
    return b.js("[...document.querySelectorAll('.msg.assistant')].at(-1).answer")


# -- tests --------------------------------------------------------------------------------


def test_chat_streams_the_greedy_answer(page: Browser, url: str, tmp: Path) -> None:
    system = "You are a patient teacher. Answer briefly."
    question = "¿Qué es la cuantización?"
    page.type("#system", system)
    answer = send_and_wait(page, question)
    expected = api_answer(
        url, [{"role": "system", "content": system}, {"role": "user", "content": question}]
    )
    assert answer.strip() and answer == expected
    # the question round-trips as typed, non-ASCII included
    assert page.js("document.querySelector('.msg.user').textContent") == question
    # ...and is kept in the browser (a reload shows it again)
    assert page.js("JSON.parse(localStorage.getItem('packer.chat'))[1].content") == expected
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
    assert answer2 == expected2
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
    page.js(f"addAnswer({json.dumps(evil)}, {{}})")
    el = "[...document.querySelectorAll('.msg.assistant')].at(-1)"
    assert page.js(f"{el}.querySelectorAll('img, b').length") == 0
    assert page.js(f"{el}.querySelector('pre').textContent") == "<b>bold</b>\n"
    assert 'hi <img src=x onerror="window.pwned=1">' in page.js(f"{el}.textContent")
    assert page.js("window.pwned === undefined")
    # an answer still waiting for its first token shows "…"
    page.js("addAnswer('')")
    assert page.js(f"getComputedStyle({el}.querySelector('.body'), '::after').content") == '"…"'


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
        const buttons = [...document.querySelectorAll("button")].filter((b) => b.offsetParent)
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


def test_demo_model_run_page_in_spanish(browser: Browser, demo_run: Path, tmp: Path) -> None:
    """The real model.run (frozen runtime): its page, the vendored Markdown library and the
    Spanish catalog come from inside the file; the manifest's quant and size are shown."""
    for url in _serve(tmp, "--nobrowser", exe=demo_run):
        info = requests.get(
            url + "/packer/page.json", headers={"Accept-Language": "es-ES,es"}, timeout=10
        ).json()
        assert info["lang"] == "es" and info["messages"]["New chat"] == "Nuevo chat"
        assert info["quant"] == "Q5_K_M" and info["size"] > 50_000_000
        assert info["urls"] == [] and info["qr_svg"] is None  # loopback: nothing to share
        browser.viewport(1280, 800)
        browser.languages("es-ES,es;q=0.9")
        browser.open(url + "/")
        browser.js(
            f"localStorage.clear(); localStorage.setItem('packer.max_tokens', '{MAX_TOKENS}')"
        )
        browser.js("localStorage.setItem('packer.temperature', '0')")
        browser.open(url + "/")
        browser.wait("!document.documentElement.classList.contains('loading')", 10, "page.json")
        assert browser.js("typeof window.markdownit") == "function"
        assert browser.js("document.getElementById('title').textContent") == info["model"]
        assert "Q5_K_M" in browser.js("document.getElementById('meta').textContent")
        assert browser.js("document.getElementById('clear').textContent") == "Nuevo chat"
        question = "¿Qué es la cuantización?"
        answer = send_and_wait(browser, question)
        assert answer.strip()
        assert answer == api_answer(url, [{"role": "user", "content": question}])
        assert browser.js("document.querySelector('.msg.assistant .body').textContent.trim()")
        if info["license"]["files"] or info["license"]["model_card"]:
            browser.click("#license")
            browser.wait("document.querySelectorAll('#license-body h3').length > 0", 10)
            browser.screenshot(tmp / "demo-license-es.png")
            browser.click("#license-dialog .close")
        browser.screenshot(tmp / "demo-es.png")
