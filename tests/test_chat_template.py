"""--chat-template-file: a user's Jinja template formats the chat in place of the model's own,
with the model's BOS/EOS (packer.runtime.chat_template; the tokenizer of the small real model,
no weights loaded). The file's checks are in tests/test_cli_flags.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import smollm_gguf_path

from packer.runtime.chat_template import token_text, use_chat_template
from packer.runtime.engine import Engine
from packer.runtime.generate import chat_tokens

llama_cpp = pytest.importorskip("llama_cpp")

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)


@pytest.fixture(scope="module")
def llm():  # type: ignore[no-untyped-def]
    model = llama_cpp.Llama(str(smollm_gguf_path()), vocab_only=True, verbose=False)
    yield model
    model.close()


def test_template_file_formats_the_chat(llm) -> None:  # type: ignore[no-untyped-def]
    own = llm.metadata["tokenizer.chat_template"]
    assert "[assistant]" not in own
    use_chat_template(llm, TEMPLATE)
    assert llm.metadata["tokenizer.chat_template"] == TEMPLATE  # what /props etc. report
    # the engine's own prompt-building accessors over this vocabulary-only model
    engine = SimpleNamespace(llm=llm, has_chat_template=True)
    engine.chat_handler = lambda: Engine.chat_handler(engine)  # type: ignore[arg-type]
    engine.add_bos = lambda: Engine.add_bos(engine)  # type: ignore[arg-type]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    tokens, stop = chat_tokens(engine, messages, ["END"])
    text = bytes(llm.detokenize(tokens, special=True)).decode()
    bos = token_text(llm, llm.token_bos())
    assert bos and text == f"{bos}[system] Be brief.\n[user] Hi\n[assistant]", text
    assert "END" in stop and token_text(llm, llm.token_eos()) in stop


def test_token_text_of_no_token(llm) -> None:  # type: ignore[no-untyped-def]
    assert token_text(llm, -1) == ""
