"""``--chat-template-file``: a Jinja chat template of the user's, in place of the model's own.

:func:`read_template` reads and checks the file before anything loads (a one-line error when it
cannot be used); :func:`use_chat_template` makes a loaded ``llama_cpp.Llama`` format chats with
it, as llama-cpp-python does with a GGUF's own template, and only through its public members.
"""

from __future__ import annotations

from typing import Any

from jinja2 import TemplateSyntaxError

from packer.runtime.cli import UsageError
from packer.runtime.i18n import _, os_reason

FLAG = "--chat-template-file"
MAX_BYTES = 1 << 20  # templates are a few KB; a bigger file is the wrong file


def read_template(path: str) -> str:
    """The template in ``path``, checked to be UTF-8 text that Jinja can parse."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise UsageError(_("{flag} {path}: no such file").format(flag=FLAG, path=path)) from None
    except OSError as exc:
        raise UsageError(
            _("{flag} {path}: cannot read it ({reason})").format(
                flag=FLAG, path=path, reason=os_reason(exc)
            )
        ) from None
    if len(data) > MAX_BYTES:
        raise UsageError(
            _("{flag} {path}: over 1 MB, too large to be a chat template").format(
                flag=FLAG, path=path
            )
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(
            _("{flag} {path}: not text (UTF-8)").format(flag=FLAG, path=path)
        ) from None
    if not text.strip():
        raise UsageError(_("{flag} {path}: the file is empty").format(flag=FLAG, path=path))
    try:
        _syntax_checker().parse(text)
    except TemplateSyntaxError as exc:
        raise UsageError(
            _("{flag} {path}: not a Jinja template: line {line}: {reason}").format(
                flag=FLAG, path=path, line=exc.lineno, reason=exc.message
            )
        ) from None
    return text


def _syntax_checker() -> Any:
    """A Jinja environment that parses what llama-cpp-python's chat formatter parses:
    ``{% break %}``/``{% continue %}`` and Hugging Face's ``{% generation %}`` blocks included."""
    import jinja2
    import jinja2.ext

    class GenerationBlock(jinja2.ext.Extension):
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            parser.stream.skip()  # the tag's name
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    return jinja2.Environment(extensions=[jinja2.ext.loopcontrols, GenerationBlock])


def token_text(llm: Any, token: int) -> str:
    """The text of a special token (BOS, EOS) as a template writes it; "" for none (-1)."""
    if token < 0:
        return ""
    return bytes(llm.detokenize([token], special=True)).decode("utf-8", "replace")


def use_chat_template(llm: Any, template: str) -> None:
    """Make ``llm`` (a ``llama_cpp.Llama``) format chats with ``template``: its chat handler is
    built from it with the model's BOS and EOS, and its metadata says it is the model's
    template, so whatever reads ``tokenizer.chat_template`` (the engine's ``chat_template``,
    ``has_chat_template``, /props, /api/show) sees the one in use."""
    from llama_cpp import llama_chat_format

    bos, eos = llm.token_bos(), llm.token_eos()
    formatter = llama_chat_format.Jinja2ChatFormatter(
        template=template,
        bos_token=token_text(llm, bos),
        eos_token=token_text(llm, eos),
        stop_token_ids=[eos] if eos >= 0 else None,
    )
    llm.chat_handler = formatter.to_chat_handler()
    llm.metadata["tokenizer.chat_template"] = template
