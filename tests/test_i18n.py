"""model.run in Spanish and English: the language choice, the catalogs, and what a student sees.

Fast: :mod:`packer.runtime.i18n` (locale variables, ``--lang``, ``PACKER_LANG``, a teacher's own
catalog in ``$PACKER_LOCALEDIR``, the web page's ``Accept-Language``), ``--help`` and argparse's
errors in Spanish in-process, and the checks that keep every catalog complete: each string the
runtime wraps in ``_()``/``ngettext()`` and each string of the web page has a translation with the
same placeholders, no fuzzy or duplicate entries, and ``packer.mo`` compiled from the ``.po``.
Slow: the real demo model.run under ``LANG=es_ES.UTF-8`` and friends.
"""

from __future__ import annotations

import argparse
import ast
import errno
import html
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from packer.runtime import i18n
from packer.runtime.cli import UsageError, choose_language, parse, requested_language

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "packer" / "runtime"
LOCALE = RUNTIME / "locale"
CATALOGS = sorted(LOCALE.glob("*/LC_MESSAGES/packer.po"))
WEB_PAGES = sorted((ROOT / "packer" / "templates").glob("*.html"))
LOCALE_VARS = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG", "PACKER_LANG", "PACKER_LOCALEDIR")


@pytest.fixture(autouse=True)
def _english_afterwards(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Each test starts from a bare locale and leaves the process speaking English again."""
    for var in LOCALE_VARS:
        monkeypatch.delenv(var, raising=False)
    yield
    monkeypatch.undo()
    i18n.setup("en")


# -- the choice -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "en"),
        ({"LANG": "C"}, "en"),
        ({"LANG": "POSIX"}, "en"),
        ({"LANG": "C.UTF-8"}, "en"),
        ({"LANG": "es_ES.UTF-8"}, "es"),
        ({"LANG": "es_MX"}, "es"),
        ({"LANG": "es_AR.UTF-8@euro"}, "es"),
        ({"LANG": "es"}, "es"),
        ({"LANG": "pt_BR.UTF-8"}, "en"),  # no Portuguese catalog: English
        ({"LANG": "en_US.UTF-8"}, "en"),
        # LC_ALL, then LC_MESSAGES, then LANG: the first one set is the locale, even one we lack
        ({"LC_ALL": "es_ES.UTF-8", "LANG": "C"}, "es"),
        ({"LC_ALL": "C", "LANG": "es_ES.UTF-8"}, "en"),
        ({"LC_ALL": "pt_BR.UTF-8", "LANG": "es_ES.UTF-8"}, "en"),
        ({"LC_MESSAGES": "es_CL.UTF-8", "LANG": "en_US.UTF-8"}, "es"),
        ({"LC_MESSAGES": "de_DE.UTF-8", "LANG": "es_ES.UTF-8"}, "en"),
        ({"LC_ALL": "", "LANG": "es_ES.UTF-8"}, "es"),  # set but empty counts as unset
        # LANGUAGE: a list of preferences, first one we have wins, over the locale's language
        ({"LANGUAGE": "es", "LANG": "en_US.UTF-8"}, "es"),
        ({"LANGUAGE": "pt_BR:pt:es", "LANG": "pt_BR.UTF-8"}, "es"),
        ({"LANGUAGE": "en:es", "LANG": "es_ES.UTF-8"}, "en"),
        ({"LANGUAGE": "pt_BR:fr", "LANG": "es_ES.UTF-8"}, "es"),  # none we have: the locale's
        ({"LANGUAGE": "es_ES:es", "LC_ALL": "C"}, "en"),  # as GNU gettext: ignored in C
        ({"LANGUAGE": "es"}, "en"),  # no locale at all is the C locale
        ({"LANG": "../../tmp/es"}, "en"),  # not a language: never a path into the catalogs
        ({"LANGUAGE": "../es:es", "LANG": "en_US.UTF-8"}, "es"),
    ],
)
def test_resolve_from_locale(env: dict[str, str], expected: str) -> None:
    assert i18n.resolve(None, env) == expected


def test_packer_lang_and_lang_flag_come_first() -> None:
    assert i18n.resolve(None, {"PACKER_LANG": "es", "LC_ALL": "C"}) == "es"
    assert i18n.resolve("en", {"PACKER_LANG": "es", "LANG": "es_ES.UTF-8"}) == "en"
    assert i18n.resolve("es_MX.UTF-8", {"LANG": "C"}) == "es"
    assert i18n.resolve("es-419", {}) == "es"
    with pytest.raises(i18n.LanguageError) as err:
        i18n.resolve(None, {"PACKER_LANG": "xx", "LANG": "es_ES.UTF-8"})
    assert str(err.value).startswith("PACKER_LANG=xx: no translation for this language")


@pytest.mark.parametrize("bad", ["xx", "pt_BR", "1", "../es", "es_ES/../../x"])
def test_unknown_lang_is_a_one_line_usage_error(bad: str) -> None:
    with pytest.raises(UsageError) as err:
        parse(["--lang", bad], [])
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"--lang {bad}: ")
    assert "en, es" in text, text  # what to use instead
    assert i18n.language() == "en"


def test_unknown_lang_is_said_in_the_locale_language(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANG", "es_ES.UTF-8")
    with pytest.raises(UsageError) as err:
        parse(["--lang=xx"], [])
    assert str(err.value).startswith("--lang xx: no hay traducción para este idioma: usa uno")
    monkeypatch.setenv("PACKER_LANG", "xx")  # the bad one is the environment's own
    with pytest.raises(UsageError) as err:
        parse([], [])
    assert str(err.value).startswith("PACKER_LANG=xx: no hay traducción")


def test_lang_flag_found_before_parsing() -> None:
    assert requested_language(["-p", "hola", "--lang", "es"]) == "es"
    assert requested_language(["--lang=es", "--lang", "en"]) == "en"  # the last one, as argparse
    assert requested_language(["--lang"]) is None  # argparse reports the missing value
    assert requested_language(["--", "--lang", "es"]) is None
    assert choose_language(["--lang", "en"], ["--lang", "es"]) == "en"  # command line over baked
    assert choose_language([], ["--lang", "es"]) == "es"
    assert parse([], ["--lang", "es"]).lang == "es"
    assert i18n.language() == "es"


def test_build_refuses_a_baked_unknown_language(tmp_path: Path) -> None:
    from conftest import smollm_gguf_path

    proc = subprocess.run(
        [sys.executable, "-m", "packer", "build", str(smollm_gguf_path()), "--args", "--lang xx"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)},
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        "packer: error: --args: --lang xx: no translation for this language: use one of en, es "
        "(or add a catalog in $PACKER_LOCALEDIR)\n"
    )
    assert list(tmp_path.iterdir()) == []


# -- a teacher's own catalog ------------------------------------------------------------------
def _teacher_catalog(folder: Path, lang: str, messages: dict[str, str]) -> Path:
    """Compile ``messages`` as a teacher would (here with Babel, as build/i18n.py does)."""
    catalog = Catalog(locale=lang, domain="packer")
    for msgid, msgstr in messages.items():
        catalog.add(msgid, msgstr)
    mo = folder / lang / "LC_MESSAGES" / "packer.mo"
    mo.parent.mkdir(parents=True)
    with open(mo, "wb") as f:
        write_mo(f, catalog)
    return mo


def test_teacher_catalog_in_packer_localedir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _teacher_catalog(
        tmp_path,
        "fr",
        {
            "usage: ": "utilisation : ",
            "options": "options",
            "show this help message and exit": "affiche cette aide et quitte",
            "generation": "génération",
        },
    )
    assert "fr" not in i18n.available()
    monkeypatch.setenv("PACKER_LOCALEDIR", str(tmp_path))
    assert i18n.available() == ["en", "es", "fr"]
    assert i18n.resolve(None, {"LANG": "fr_FR.UTF-8"}) == "fr"
    assert i18n.resolve(None, {"LANG": "es_ES.UTF-8"}) == "es"  # ours are still there
    monkeypatch.setenv("LANG", "fr_CA.UTF-8")
    with pytest.raises(SystemExit) as done:
        parse(["--help"], [])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("utilisation : model.run [-h]")
    assert "affiche cette aide et quitte" in out and "génération:" in out
    assert "generation:" not in out
    assert "answer TEXT once on stdout and exit" in out  # untranslated: English, not empty
    with pytest.raises(UsageError, match="use one of en, es, fr"):
        parse(["--lang", "de"], [])


@pytest.mark.skipif(not shutil.which("msgfmt"), reason="GNU gettext's msgfmt is not installed")
def test_teacher_catalog_compiled_with_msgfmt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's recipe: copy our .po, translate, ``msgfmt -o packer.mo``."""
    po = tmp_path / "it.po"
    text = CATALOGS[0].read_text(encoding="utf-8").replace("Language: es", "Language: it")
    po.write_text(text.replace('msgstr "uso: "', 'msgstr "uso (it): "'), encoding="utf-8")
    mo = tmp_path / "locale" / "it" / "LC_MESSAGES" / "packer.mo"
    mo.parent.mkdir(parents=True)
    subprocess.run(["msgfmt", "--check", "-o", str(mo), str(po)], check=True, timeout=60)
    monkeypatch.setenv("PACKER_LOCALEDIR", str(tmp_path / "locale"))
    assert i18n.setup(None, {"LANG": "it_IT.UTF-8"}) == "it"
    assert i18n._("usage: ") == "uso (it): " and i18n._("generation") == "generación"
    assert i18n.ngettext("expected %s argument", "expected %s arguments", 2) == (
        "se esperaban %s valores"
    )


def test_os_errors_in_the_chosen_language() -> None:
    err = PermissionError(errno.EACCES, "Permission denied", "/x")
    assert i18n.os_reason(err) == "permission denied"
    i18n.setup("es")
    assert i18n.os_reason(err) == "permiso denegado"
    assert i18n.os_reason(OSError(errno.ENOSPC, "No space left on device")) == (
        "no queda espacio en el dispositivo"
    )
    assert i18n.os_reason(OSError(errno.ECHILD, "No child processes")) == "No child processes"


def test_damaged_catalog_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mo = tmp_path / "fr" / "LC_MESSAGES" / "packer.mo"
    mo.parent.mkdir(parents=True)
    mo.write_bytes(b"not a catalog")
    monkeypatch.setenv("PACKER_LOCALEDIR", str(tmp_path))
    assert i18n.resolve(None, {"LANG": "fr_FR.UTF-8"}) == "en"


# -- the web page's language ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("requested", "accept", "expected"),
    [
        (None, "", "en"),
        (None, "es-ES,es;q=0.9,en;q=0.8", "es"),
        (None, "en-US,en;q=0.9,es;q=0.8", "en"),
        (None, "en;q=0.5, es;q=0.9", "es"),  # q-values, not the order, decide
        (None, "fr-FR,fr;q=0.9,es-MX;q=0.8,en;q=0.7", "es"),  # first one we have
        (None, "fr, de;q=0.5", "en"),
        (None, "es;q=0, en", "en"),  # q=0: not acceptable
        (None, "*;q=0.5, es;q=0.4", "es"),
        (None, "es;q=abc, en;q=0.1", "en"),  # a broken q counts as 0
        (None, "x" * 5000, "en"),
        ("es", "en-US", "es"),  # the page's own choice (?lang=) wins
        ("en", "es-ES", "en"),
        ("../../etc", "es", "es"),  # not a language tag: ignored
    ],
)
def test_web_catalog_language(requested: str | None, accept: str, expected: str) -> None:
    code, messages = i18n.web_catalog(requested, accept)
    assert code == expected
    if expected == "en":
        assert messages == {}  # the page's own text is English
    else:
        assert messages["options"] == "opciones" and "" not in messages
        assert all(isinstance(k, str) and v for k, v in messages.items())


# -- Spanish --help and argparse errors, in-process -------------------------------------------
ENGLISH_HELP_WORDS = (
    "usage:",
    "options:",
    "show this help message",
    "default:",
    "what to do",
    "generation:",
    "resources:",
    "server:",
    " and exit",
    "Run the language model",
    "defaults baked into",
)


def test_help_is_entirely_spanish(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LANG", "es_ES.UTF-8")
    with pytest.raises(SystemExit) as done:
        parse(["--help"], ["--temp", "0", "--api-key", "s3cret"], prog="model.run")
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("uso: model.run [-h] [-p TEXTO]")
    for spanish in (
        "\nopciones:\n",
        "muestra esta ayuda y termina",
        "qué hacer (predeterminado: chat en la terminal):",
        "generación:",
        "recursos:",
        "servidor:",
        "(predeterminado: 64)",  # --max-queue: argparse's %(default)s in a translated help
        'model.run -p "¿Qué es un GGUF?"',
        "valores predeterminados incluidos en este archivo: --temp 0 --api-key REDACTED",
    ):
        assert spanish in out, spanish
    for english in ENGLISH_HELP_WORDS:
        assert english not in out, english
    assert "s3cret" not in out


def test_help_in_english_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["--help"], [])
    out = capsys.readouterr().out
    assert out.startswith("usage: model.run") and "show this help message and exit" in out


@pytest.mark.parametrize(
    ("argv", "spanish"),
    [
        (["--ctx-size", "abc"], "opción -c/--ctx-size: 'abc' no es un número entero"),
        (["--temp", "x"], "opción --temp: 'x' no es un número"),
        (["--ctx-size"], "opción -c/--ctx-size: falta el valor"),
        (["--nope"], "argumentos no reconocidos: --nope"),
        (["--gpu", "metal"], "opción --gpu: valor no válido: 'metal' (elige entre 'auto', "),
        (["--server=1"], "opción --server: esta opción no lleva valor (se ignoró '1')"),
        (["-ngl", "some"], "se esperaba un número de capas o 'auto', no 'some'"),
    ],
)
def test_argparse_errors_in_spanish_one_line(
    argv: list[str],
    spanish: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LANG", "es_ES.UTF-8")
    with pytest.raises(SystemExit) as done:
        parse(argv, [])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("model.run: error: "), err
    assert spanish in err and err.rstrip().endswith("(--help muestra las opciones)"), err


def test_usage_errors_of_model_run_in_spanish(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANG", "es_ES.UTF-8")
    with pytest.raises(UsageError, match="^--api-key está vacía: indica la clave"):
        parse(["--api-key", " "], [])


def test_prompt_error_english_for_clients_translated_for_the_terminal() -> None:
    from types import SimpleNamespace

    from packer.runtime.generate import PromptError, check_context

    engine = SimpleNamespace(n_ctx=8)
    i18n.setup("es")
    with pytest.raises(PromptError) as err:
        check_context(engine, 9)  # type: ignore[arg-type]
    assert err.value.message.startswith("the prompt is 9 tokens but the context is 8 tokens")
    assert str(err.value).startswith("la instrucción ocupa 9 tokens, pero el contexto es de 8")


def _runtime(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "packer.runtime", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env},
    )


def test_model_run_errors_are_spanish_lines(tmp_path: Path) -> None:
    """main.py's own ``error:`` lines (unfrozen runtime, no model needed)."""
    es = {"LANG": "es_ES.UTF-8"}
    missing = _runtime("--gguf", str(tmp_path / "nope.gguf"), env=es)
    assert missing.returncode == 1
    assert (
        missing.stderr
        == f"python -m packer.runtime: error: no existe el archivo GGUF {tmp_path / 'nope.gguf'}\n"
    )
    assert _runtime("--gguf", str(tmp_path / "nope.gguf"), env={}).stderr.startswith(
        "python -m packer.runtime: error: no such GGUF file: "
    )
    bad = _runtime("--lang", "xx", env=es)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "error: --lang xx: no hay traducción para este idioma" in bad.stderr
    nothing = _runtime("--lang", "es", env={"LANG": "C"})
    assert nothing.returncode == 1
    assert "error: este entorno de ejecución no lleva ningún modelo" in nothing.stderr


# -- the catalogs: complete, consistent, compiled ---------------------------------------------
def _scope_binds(func: ast.AST, name: str) -> bool:
    """Whether ``name`` is assigned in ``func``'s own scope (not in nested functions,
    lambdas or comprehensions, which have their own)."""
    nested = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
    comprehensions = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
    todo = list(ast.iter_child_nodes(func))
    while todo:
        node = todo.pop()
        if isinstance(node, nested + comprehensions):
            continue
        if isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Store):
            return True
        if isinstance(node, ast.alias) and (node.asname or node.name) == name:
            return True
        todo.extend(ast.iter_child_nodes(node))
    return False


def _calls(node: ast.AST) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(node)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Name)
        and n.func.id in ("_", "ngettext")
    ]


def runtime_messages() -> dict[str | tuple[str, str], str]:
    """Every ``_("...")`` / ``ngettext("...", "...", n)`` of packer/runtime, with where it is."""
    found: dict[str | tuple[str, str], str] = {}
    for path in sorted(RUNTIME.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for call in _calls(tree):
            strings = [a.value for a in call.args if isinstance(a, ast.Constant)]
            key = strings[0] if call.func.id == "_" else (strings[0], strings[1])  # type: ignore[attr-defined]
            found.setdefault(key, f"{path.relative_to(ROOT)}:{call.lineno}")
    return found


def argparse_sources() -> list[Path]:
    """This Python's argparse.py, and the one of the Python that freezes the runtime (in the
    Debian 11 build root) where that root was made on this machine."""
    roots = Path.home() / ".cache" / "packer" / "roots"
    return [Path(argparse.__file__), *roots.glob("build-*/opt/python/lib/python3*/argparse.py")]


def argparse_messages() -> set[str | tuple[str, str]]:
    """argparse's own translatable words (Python 3.11, as frozen)."""
    calls = [c for src in argparse_sources() for c in _calls(ast.parse(src.read_text()))]
    out: set[str | tuple[str, str]] = set()
    for call in calls:
        strings = [a.value for a in call.args if isinstance(a, ast.Constant)]
        if call.func.id == "_" and len(strings) == 1 and isinstance(strings[0], str):  # type: ignore[attr-defined]
            out.add(strings[0])
        elif len(strings) >= 2:
            out.add((strings[0], strings[1]))
    return out


_JS_CALL = re.compile(r"""\bt\(\s*("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')\s*[,)]""")
_ATTRIBUTE = re.compile(r"""\bdata-i18n(?:-[a-z]+)?\s*=\s*("[^"]*"|'[^']*')""")


def web_strings(text: str) -> set[str]:
    """The page's translatable strings: ``t("English text")`` calls in its script and
    ``data-i18n="English text"`` (or ``data-i18n-placeholder=...``) attributes."""
    out = set()
    for m in _JS_CALL.finditer(text):
        literal = m.group(1)
        if literal.startswith("'"):  # as a JSON string: the escapes are JavaScript's too
            literal = '"' + literal[1:-1].replace('\\"', '"').replace('"', '\\"') + '"'
            literal = literal.replace("\\'", "'")
        out.add(json.loads(literal))
    for m in _ATTRIBUTE.finditer(text):
        out.add(html.unescape(m.group(1)[1:-1]))
    return {s for s in out if s.strip()}


def test_web_strings_are_found() -> None:
    page = """<button data-i18n="New chat">New chat</button>
    <input data-i18n-placeholder='Type a message &amp; press Enter'>
    <script>
      show(t("Copied!")); label = t('It\\'s {n} tokens', {n: 3}); el.createElement("p");
      x = t("Say \\"hi\\"\\n");
    </script>"""
    assert web_strings(page) == {
        "New chat",
        "Type a message & press Enter",
        "Copied!",
        "It's {n} tokens",
        'Say "hi"\n',
    }


_PLACEHOLDER = re.compile(
    r"\{\{|\}\}|\{[^{}]*\}|%%|%(?:\([^)]*\))?[-#0 +]*\d*(?:\.\d+)?[sdrifxXeEgGc]"
)


def placeholders(text: str) -> list[str]:
    """``{name}``, ``{value!r}``, ``%(name)s``, ``%s``, ``%%`` as a sorted list."""
    return sorted(p for p in _PLACEHOLDER.findall(text) if p not in ("{{", "}}"))


def _entries(po: Path) -> list[tuple[str, str]]:
    """(msgctxt, msgid) of every entry, duplicates included, obsolete (#~) ones left out."""
    out, ctx, current, field = [], "", None, None
    for line in po.read_text(encoding="utf-8").splitlines() + [""]:
        line = line.strip()
        if line.startswith("#"):
            continue
        m = re.match(r'^(msgctxt|msgid|msgid_plural|msgstr(?:\[\d+\])?)\s+(".*")$', line)
        if m:
            field = m.group(1)
            if field == "msgctxt":
                ctx = json.loads(m.group(2))
            elif field == "msgid":
                current = json.loads(m.group(2))
            continue
        if line.startswith('"') and field == "msgid" and current is not None:
            current += json.loads(line)
            continue
        if line.startswith('"'):
            continue
        if current is not None and field and field.startswith("msgstr"):
            out.append((ctx, current))
            ctx, current, field = "", None, None
    return out


@pytest.fixture(params=CATALOGS, ids=lambda p: p.parts[-3])
def catalog(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    with open(request.param, "rb") as f:
        return read_po(f, abort_invalid=True)


def test_there_is_a_spanish_catalog() -> None:
    assert LOCALE / "es" / "LC_MESSAGES" / "packer.po" in CATALOGS


def test_every_runtime_string_is_translated(catalog) -> None:  # type: ignore[no-untyped-def]
    wanted = runtime_messages()
    assert "%(prog)s: error: %(message)s\n" in wanted and len(wanted) > 100, len(wanted)
    missing = []
    for msgid, where in wanted.items():
        message = catalog.get(msgid)
        strings = message.string if message else None
        forms = strings if isinstance(strings, (tuple, list)) else [strings]
        if not message or not all(forms):
            missing.append(f"{where}: {msgid!r}")
    assert not missing, f"{len(missing)} without a {catalog.locale} translation:\n" + "\n".join(
        missing
    )


def test_every_argparse_string_is_translated(catalog) -> None:  # type: ignore[no-untyped-def]
    wanted = argparse_messages()
    assert "usage: " in wanted and "show this help message and exit" in wanted, wanted
    missing = [m for m in wanted if not (catalog.get(m) and catalog.get(m).string)]
    assert not missing, missing


@pytest.mark.parametrize("page", WEB_PAGES, ids=lambda p: p.name)
def test_every_web_page_string_is_translated(catalog, page: Path) -> None:  # type: ignore[no-untyped-def]
    missing = [
        s for s in web_strings(page.read_text()) if not (catalog.get(s) and catalog.get(s).string)
    ]
    assert not missing, f"{page.name}: {len(missing)} without a translation: {sorted(missing)}"


def test_runtime_calls_pass_one_literal() -> None:
    """``_()`` takes the English text itself (no f-string, no variable: a catalog could not hold
    it), and a function that calls ``_()`` never binds ``_`` (``for _ in``, ``_, x =``), which
    would make the call fail."""
    problems = []
    for path in sorted(RUNTIME.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for call in _calls(tree):
            want = 1 if call.func.id == "_" else 2  # type: ignore[attr-defined]
            literal = all(
                isinstance(a, ast.Constant) and isinstance(a.value, str) for a in call.args[:want]
            )
            if not literal or len(call.args) != (1 if want == 1 else 3):
                problems.append(f"{path.relative_to(ROOT)}:{call.lineno}: not a literal message")
        for func in ast.walk(tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                own = [c for c in _calls(func) if c.func.id == "_"]  # type: ignore[attr-defined]
                if own and _scope_binds(func, "_"):
                    problems.append(f"{path.relative_to(ROOT)}:{func.lineno}: {func.name} binds _")
    assert not problems, "\n".join(problems)


def test_placeholders_match(catalog) -> None:  # type: ignore[no-untyped-def]
    wrong = []
    for message in catalog:
        if not message.id:
            continue
        ids = message.id if isinstance(message.id, (tuple, list)) else (message.id,)
        strings = message.string if isinstance(message.string, (tuple, list)) else (message.string,)
        for text in strings:
            if text and placeholders(text) != placeholders(ids[-1]):
                wrong.append(f"line {message.lineno}: {ids[0]!r} -> {text!r}")
    assert not wrong, "\n".join(wrong)


def test_no_fuzzy_no_duplicates_no_empty(catalog) -> None:  # type: ignore[no-untyped-def]
    fuzzy = [m.id for m in catalog if m.id and m.fuzzy]
    assert not fuzzy, f"fuzzy entries (left out of packer.mo): {fuzzy}"
    assert catalog.fuzzy is False, "the header is marked fuzzy"
    po = next(p for p in CATALOGS if p.parts[-3] == str(catalog.locale))
    twice = [k for k, n in Counter(_entries(po)).items() if n > 1]
    assert not twice, f"duplicate msgids in {po.name}: {twice}"
    empty = [
        m.id
        for m in catalog
        if m.id and not all(m.string if isinstance(m.string, (tuple, list)) else [m.string])
    ]
    assert not empty, f"untranslated entries: {empty}"


def test_placeholder_pattern() -> None:
    assert placeholders("%(prog)s: error: %(message)s\n") == ["%(message)s", "%(prog)s"]
    assert placeholders("{value!r} is {n} of {total:.1f}, 100%% sure, %s") == [
        "%%",
        "%s",
        "{n}",
        "{total:.1f}",
        "{value!r}",
    ]
    assert placeholders("{{literal}}") == []


def test_mo_files_are_current() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "build" / "i18n.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


def test_check_catches_a_stale_mo(tmp_path: Path) -> None:
    """build/i18n.py --check compares bytes: a .po edited after compiling is caught."""
    sys.path.insert(0, str(ROOT / "build"))
    try:
        import i18n as build_i18n  # build/i18n.py
    finally:
        sys.path.pop(0)
    po = CATALOGS[0]
    edited = tmp_path / "packer.po"
    edited.write_text(po.read_text(encoding="utf-8") + '\nmsgid "x-new"\nmsgstr "y"\n', "utf-8")
    assert build_i18n.compile_po(po) == po.with_suffix(".mo").read_bytes()
    assert build_i18n.compile_po(edited) != po.with_suffix(".mo").read_bytes()


# -- end to end: the real model.run -----------------------------------------------------------
@pytest.mark.slow
def test_model_run_speaks_the_locale(demo_run: Path, tmp_path: Path) -> None:
    from test_e2e import run_clean

    home = tmp_path / "home"
    home.mkdir()
    base = {"HOME": str(home)}
    es = {**base, "LANG": "es_ES.UTF-8"}

    helptext = run_clean(demo_run, "--help", cwd=tmp_path, env=es)
    assert helptext.returncode == 0, helptext.stderr
    out = helptext.stdout
    assert out.startswith(f"uso: {demo_run.name} [-h]") and "\nopciones:\n" in out, out[:400]
    assert "muestra esta ayuda y termina" in out and "generación:" in out
    for english in ENGLISH_HELP_WORDS:
        assert english not in out, english

    english = run_clean(demo_run, "--ctx-size", "abc", cwd=tmp_path, env=base)
    spanish = run_clean(demo_run, "--ctx-size", "abc", cwd=tmp_path, env=es)
    assert spanish.returncode == english.returncode == 2
    assert spanish.stdout == "" and spanish.stderr.count("\n") == 1, spanish.stderr
    assert spanish.stderr == (
        f"{demo_run.name}: error: opción -c/--ctx-size: 'abc' no es un número entero "
        "(--help muestra las opciones)\n"
    )

    target = tmp_path / "missing" / "model.gguf"
    english = run_clean(demo_run, "--extract", str(target), cwd=tmp_path, env=base)
    spanish = run_clean(demo_run, "--extract", str(target), cwd=tmp_path, env=es)
    assert spanish.returncode == english.returncode != 0
    assert spanish.stderr == (
        f"{demo_run.name}: error: no se puede escribir {target}: no existe la carpeta "
        f"{target.parent}\n"
    )
    assert not target.parent.exists()
    assert not (home / ".cache" / "packer" / "models").exists()  # refused before unpacking

    unknown = run_clean(demo_run, "--lang", "xx", cwd=tmp_path, env=base)
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1, unknown.stderr
    assert unknown.stderr.startswith(f"{demo_run.name}: error: --lang xx: no translation")

    french = run_clean(demo_run, "--help", cwd=tmp_path, env={**base, "LANG": "fr_FR.UTF-8"})
    assert french.returncode == 0 and french.stdout.startswith("usage: ")

    forced = run_clean(demo_run, "--lang", "es", "--help", cwd=tmp_path, env={**base, "LANG": "C"})
    assert forced.returncode == 0 and forced.stdout.startswith("uso: "), forced.stderr
    bare = run_clean(demo_run, "--help", cwd=tmp_path, env={"PACKER_LANG": "es"})
    assert bare.returncode == 0 and "muestra esta ayuda y termina" in bare.stdout
