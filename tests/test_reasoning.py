"""A reasoning model's thinking split from its answer while it streams, without a model."""

from __future__ import annotations

import random

import pytest

from packer.runtime.reasoning import (
    ANSWER,
    COMMAND_R7B,
    HARMONY,
    MAGISTRAL,
    SEED_OSS,
    THINK,
    THINK_TAGS,
    HarmonySplitter,
    Markers,
    ReasoningSplitter,
    TagSplitter,
    markers_for,
    opens_reasoning,
)
from packer.runtime.scheduler import single_token_ids

# the part of each family's chat template that names it (shortened real templates)
QWEN3 = (
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if reasoning_content %}{{- '<think>\\n' + reasoning_content + '\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)
DEEPSEEK_R1 = (
    "{% if add_generation_prompt %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
    "{%- set content = content.split('</think>')[-1] %}<｜tool▁calls▁begin｜>"
)
MAGISTRAL_T = "{%- if message.role == 'assistant' %}[THINK]{{ thinking }}[/THINK]{%- endif %}"
COMMAND_R7B_T = (
    "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|START_THINKING|>{{ tool_plan }}"
    "<|END_THINKING|><|START_ACTION|>[...]<|END_ACTION|><|END_OF_TURN_TOKEN|>"
)
GPT_OSS_T = (
    "{{- '<|start|>assistant<|channel|>analysis<|message|>' + message.thinking + '<|end|>' }}"
    "{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}"
)
SEED_OSS_T = "{{ '<seed:think>' + message.reasoning_content + '</seed:think>' }}"
CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>{% endfor %}"


@pytest.mark.parametrize(
    ("template", "markers"),
    [
        (QWEN3, THINK_TAGS),
        (DEEPSEEK_R1, THINK_TAGS),
        (MAGISTRAL_T, MAGISTRAL),
        (COMMAND_R7B_T, COMMAND_R7B),
        (GPT_OSS_T, HARMONY),
        (SEED_OSS_T, SEED_OSS),
        (CHATML, THINK_TAGS),  # like llama-server: <think> is looked for in any answer
        ("", THINK_TAGS),
    ],
)
def test_the_family_comes_from_the_template(template: str, markers: Markers) -> None:
    assert markers_for(template) is markers


def test_prompt_opened_sections() -> None:
    assert opens_reasoning("<|im_start|>assistant\n<think>\n")
    assert not opens_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # thinking off
    assert not opens_reasoning("<|im_start|>assistant\n")
    assert opens_reasoning("<|CHATBOT_TOKEN|><|START_THINKING|>", COMMAND_R7B)
    assert not opens_reasoning("<|CHATBOT_TOKEN|><|START_THINKING|>", THINK_TAGS)
    assert opens_reasoning("<|start|>assistant<|channel|>analysis<|message|>", HARMONY)
    assert not opens_reasoning("<|end|><|start|>assistant", HARMONY)


def _split(template: str, tail: str, pieces: list[str]) -> tuple[str, str]:
    """The whole reasoning and content, checking on the way that what was sent is never taken
    back: every step's output is a prefix of the final text (no marker shown, then hidden)."""
    s = ReasoningSplitter(template, tail)
    reasoning = content = ""
    steps: list[tuple[str, str]] = []
    for piece in pieces:
        r, c = s.feed(piece)
        reasoning, content = reasoning + r, content + c
        steps.append((reasoning, content))
    r, c = s.finish()
    reasoning, content = reasoning + r, content + c
    for r_so_far, c_so_far in steps:
        assert reasoning.startswith(r_so_far) and content.startswith(c_so_far)
    return reasoning, content


def _chunkings(text: str) -> list[list[str]]:
    """The text whole, in pieces of 1..7 characters and in random pieces."""
    out = [[text]]
    out += [[text[i : i + n] for i in range(0, len(text), n)] for n in range(1, 8)]
    rng = random.Random(16)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(text)), min(5, len(text) - 1)))
        out.append([text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)])
    return out


# (template, prompt tail, generated text, reasoning, content)
CASES = [
    pytest.param(
        QWEN3,
        "<|im_start|>assistant\n",
        "<think>\nLet me see: 2+2.\n</think>\n\nIt is 4.",
        "Let me see: 2+2.",
        "It is 4.",
        id="think",
    ),
    pytest.param(
        QWEN3,
        "<|im_start|>assistant\n<think>\n",
        "Hmm, two plus two.\n</think>\n\nFour.",
        "Hmm, two plus two.",
        "Four.",
        id="think-opened-by-the-prompt",
    ),
    pytest.param(
        DEEPSEEK_R1,
        "<｜Assistant｜><think>\n",
        "Okay, the user greets me.\n\nI answer.\n</think>\n\nHello! How can I help?",
        "Okay, the user greets me.\n\nI answer.",
        "Hello! How can I help?",
        id="deepseek-r1-opened",
    ),
    pytest.param(
        QWEN3,
        "<|im_start|>assistant\n<think>\n\n</think>\n\n",
        "Four, no thinking.",
        "",
        "Four, no thinking.",
        id="thinking-turned-off",
    ),
    pytest.param(
        MAGISTRAL_T,
        "[/INST]",
        "[THINK]The user wants a number.[/THINK]\n42",
        "The user wants a number.",
        "42",
        id="magistral",
    ),
    pytest.param(
        COMMAND_R7B_T,
        "<|CHATBOT_TOKEN|>",
        "<|START_THINKING|>I will greet.<|END_THINKING|><|START_RESPONSE|>Hi there!"
        "<|END_RESPONSE|>",
        "I will greet.",
        "Hi there!",
        id="command-r7b",
    ),
    pytest.param(
        COMMAND_R7B_T,
        "<|CHATBOT_TOKEN|>",
        '<|START_THINKING|>Call the tool.<|END_THINKING|><|START_ACTION|>[{"tool_name": "f"}]'
        "<|END_ACTION|>",
        "Call the tool.",
        '<|START_ACTION|>[{"tool_name": "f"}]<|END_ACTION|>',  # for the tool-call parser
        id="command-r7b-action",
    ),
    pytest.param(
        COMMAND_R7B_T,
        "<|CHATBOT_TOKEN|>",
        "<|START_RESPONSE|>No plan needed.<|END_RESPONSE|>",
        "",
        "No plan needed.",
        id="command-r7b-no-thinking",
    ),
    pytest.param(
        SEED_OSS_T,
        "<seed:bos>assistant\n",
        "<seed:think>Short.</seed:think>Long answer.",
        "Short.",
        "Long answer.",
        id="seed-oss",
    ),
    pytest.param(
        GPT_OSS_T,
        "<|start|>assistant",
        "<|channel|>analysis<|message|>User asks 2+2. Answer 4.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>2 + 2 = 4.",
        "User asks 2+2. Answer 4.",
        "2 + 2 = 4.",
        id="gpt-oss",
    ),
    pytest.param(
        GPT_OSS_T,
        "<|start|>assistant",
        "<|channel|>final<|message|>Straight to it.<|return|>",
        "",
        "Straight to it.",
        id="gpt-oss-final-only",
    ),
    pytest.param(
        GPT_OSS_T,
        "<|start|>assistant",
        "<|channel|>analysis<|message|>JSON wanted.<|end|>"
        '<|start|>assistant<|channel|>final <|constrain|>json<|message|>{"a": 1}',
        "JSON wanted.",
        '{"a": 1}',
        id="gpt-oss-constrained-final",
    ),
    pytest.param(
        GPT_OSS_T,
        "<|start|>assistant",
        "<|channel|>analysis<|message|>Need the weather.<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
        '<|message|>{"city": "Paris"}<|call|>',
        "Need the weather.",
        "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
        '<|message|>{"city": "Paris"}<|call|>',  # whole, for the tool-call parser
        id="gpt-oss-tool-call",
    ),
    pytest.param(
        GPT_OSS_T,
        "<|start|>assistant<|channel|>analysis<|message|>",
        "Already thinking.<|end|><|start|>assistant<|channel|>final<|message|>Done.",
        "Already thinking.",
        "Done.",
        id="gpt-oss-opened-by-the-prompt",
    ),
    pytest.param(
        GPT_OSS_T,
        "<|start|>assistant",
        "analysisThe special tokens were not rendered.",
        "",
        "analysisThe special tokens were not rendered.",
        id="gpt-oss-not-harmony",
    ),
]


@pytest.mark.parametrize(("template", "tail", "text", "reasoning", "content"), CASES)
def test_families_split_in_any_pieces(
    template: str, tail: str, text: str, reasoning: str, content: str
) -> None:
    for pieces in _chunkings(text):
        assert _split(template, tail, pieces) == (reasoning, content), pieces


def test_a_tag_only_counts_at_the_start_of_the_answer() -> None:
    text = "Use <think> to start and </think> to end."
    for pieces in _chunkings(text):
        assert _split(QWEN3, "", pieces) == ("", text)
    assert _split(MAGISTRAL_T, "", ["Write [THINK] here"]) == ("", "Write [THINK] here")
    # after a thinking section, the answer may talk about the tags freely
    assert _split(QWEN3, "", ["<think>a</think>b <think>c</think>"]) == ("a", "b <think>c</think>")


def test_an_answer_without_thinking_is_untouched() -> None:
    assert _split(QWEN3, "", ["  Hello", " world\n"]) == ("", "  Hello world\n")
    assert _split(QWEN3, "", ["<thi", "s> is not a tag"]) == ("", "<this> is not a tag")
    assert _split(QWEN3, "", ["<thi"]) == ("", "<thi")  # ended on what looked like a tag
    assert _split(QWEN3, "", ["\n\n"]) == ("", "")  # whitespace only, held, then nothing


def test_whitespace_around_the_thinking_is_trimmed_like_llama_server() -> None:
    text = "  \n<think>\n\n  First.\n\nSecond.  \n\n</think>\n\n \nThe answer.\n"
    assert _split(QWEN3, "", [text]) == ("First.\n\nSecond.", "The answer.\n")
    # the inner whitespace is sent once more text follows, not before
    s = ReasoningSplitter(QWEN3, "")
    assert s.feed("<think>\nOne.\n\n") == ("One.", "")
    assert s.feed("Two.\n") == ("\n\nTwo.", "")
    assert s.feed("</think>\n\nAnswer.") == ("", "Answer.")


def test_a_section_never_closed_is_all_reasoning() -> None:
    assert _split(QWEN3, "", ["<think>still ", "thinking </th"]) == ("still thinking </th", "")
    assert _split(QWEN3, "<think>\n", ["no end\n"]) == ("no end", "")


def test_an_empty_section() -> None:
    s = ReasoningSplitter(QWEN3, "")
    assert s.feed("<think>\n\n</think>\n\nHi") == ("", "Hi")
    assert s.thought and s.finish() == ("", "")
    assert not ReasoningSplitter(QWEN3, "").thought


def test_consecutive_sections_are_one_reasoning() -> None:
    text = "<think>First.</think>\n<think>Second.</think>\n\nAnswer."
    for pieces in _chunkings(text):
        assert _split(QWEN3, "", pieces) == ("First.Second.", "Answer.")


def test_held_text_is_only_a_possible_marker() -> None:
    s = ReasoningSplitter(QWEN3, "")
    assert s.feed("<think>Plan a") == ("Plan a", "")
    assert s.feed(" b </") == (" b", "")  # " </" may be "</think>"
    assert s.feed("div> c") == (" </div> c", "")
    assert s.feed("</think>Ans") == ("", "Ans")
    assert s.feed("wer <") == ("", "wer <")  # in the answer nothing is held back
    assert s.finish() == ("", "")


def test_the_preserved_markers_name_each_family() -> None:
    assert THINK_TAGS.preserved == ("<think>", "</think>")
    assert "[THINK]" in MAGISTRAL.preserved and "<|END_THINKING|>" in COMMAND_R7B.preserved
    assert {"<|channel|>", "<|message|>", "<|end|>", "<|start|>"} <= set(HARMONY.preserved)


def test_preserved_token_ids_are_the_single_token_markers() -> None:
    vocab = {"[THINK]": [7], "[/THINK]": [8], "<think>": [1, 2, 3]}
    assert single_token_ids(MAGISTRAL.preserved, lambda text: vocab[text]) == {7, 8}
    assert single_token_ids(THINK_TAGS.preserved, lambda text: vocab.get(text, [])) == frozenset()


def test_the_raw_splitters_keep_the_thinking_as_written() -> None:
    t = TagSplitter(MAGISTRAL)
    assert t.feed("[THINK]\nhm\n[/THINK]\n\nOK") == [(THINK, "\nhm\n"), (ANSWER, "OK")]
    h = HarmonySplitter()
    parts = h.feed("<|channel|>analysis<|message|> hm <|end|><|start|>assistant")
    parts += h.feed("<|channel|>final<|message|>OK") + h.flush()
    assert parts == [(THINK, " hm "), (ANSWER, "OK")] and h.thought


def test_gpt_oss_preamble_and_unknown_header() -> None:
    text = (
        "<|channel|>commentary<|message|>Let me check.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Checked."
    )
    assert _split(GPT_OSS_T, "<|start|>assistant", [text]) == ("", "Let me check.Checked.")
    # a header that never ends is text
    long = "<|channel|>" + "x" * 300
    assert _split(GPT_OSS_T, "<|start|>assistant", [long]) == ("", long)
    # a message may begin with its channel, without <|start|>
    text = "<|channel|>analysis<|message|>a<|end|><|channel|>final<|message|>b"
    for pieces in _chunkings(text):
        assert _split(GPT_OSS_T, "<|start|>assistant", pieces) == ("a", "b")
    # something else after a message: the rest is answer
    text = "<|channel|>final<|message|>Hi<|end|> trailing words"
    assert _split(GPT_OSS_T, "<|start|>assistant", [text]) == ("", "Hitrailing words")


def test_random_text_never_loses_characters() -> None:
    """Without markers at the start, every character reaches the content, in any pieces."""
    rng = random.Random(7)
    alphabet = "ab <>/think\n[]|_"
    for _ in range(300):
        text = "x" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        for pieces in _chunkings(text)[:4]:
            assert _split(QWEN3, "", pieces) == ("", text)


def test_random_thinking_round_trips() -> None:
    """Whatever the thinking and answer (without the markers), they come back apart."""
    rng = random.Random(11)
    alphabet = "ab <>/\n[]|"
    for _ in range(200):
        thought = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        answer = "y" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        if "</think>" in thought:
            continue
        text = f"<think>{thought}</think>\n{answer}"
        for pieces in _chunkings(text)[:6]:
            assert _split(QWEN3, "", pieces) == (thought.strip(), answer)
