"""Request parsing shared by the server's dialects: fields, sampling, grammars, errors.

* :class:`ApiError`: a refused request, rendered in the dialect of its route by the transport;
* typed field access (numbers, booleans, stop strings, ``logit_bias``, ``samplers``) and the
  sampling fields every dialect names alike (:func:`sampling_fields`, also for Ollama's
  ``options``);
* constrained output: ``grammar``, ``json_schema``, ``response_format`` (and Ollama's
  ``format``) become a GBNF grammar in :attr:`Sampling.grammar` via llama-cpp-python's
  JSON-schema converter, within :mod:`packer.runtime.grammar_limits`;
* the bodies of llama.cpp's and OpenAI's generation requests (:func:`parse_completion`,
  :func:`parse_openai_completion`, :func:`parse_chat`): one parser each, as llama-server's
  OpenAI routes take llama.cpp's own fields too.

The dialects (:mod:`packer.runtime.dialect_llama`, :mod:`packer.runtime.dialect_openai`,
:mod:`packer.runtime.dialect_ollama`, whose requests :mod:`packer.runtime.ollama_api` parses)
translate these into a :class:`packer.runtime.gen_core.GenRequest` and shape the answers.
Nothing here touches the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from packer.runtime import grammar_limits as limits

if TYPE_CHECKING:
    from packer.runtime.generate import PromptError, Sampling


class ApiError(Exception):
    """A request the server refuses; rendered in the dialect of the endpoint it came to."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        *,
        code: str | None = None,
        param: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.extra = extra or {}

    def body(self, openai: bool) -> dict[str, Any]:
        if openai:
            err: dict[str, Any] = {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        else:
            err = {"code": self.status, "message": self.message, "type": self.type}
        err.update(self.extra)
        return {"error": err}

    def ollama_body(self) -> dict[str, Any]:
        """Ollama's error shape: ``{"error": "message"}``."""
        return {"error": self.message}


def prompt_error(exc: PromptError) -> ApiError:
    """A prompt the model cannot take, as a 400 (llama.cpp's ``exceed_context_size_error`` when
    it is too long for the context)."""
    if exc.n_ctx is None:
        return ApiError(400, exc.message)
    return ApiError(
        400,
        exc.message,
        "exceed_context_size_error",
        code="context_length_exceeded",
        extra={"n_prompt_tokens": exc.n_prompt, "n_ctx": exc.n_ctx},
    )


# -- typed field access ---------------------------------------------------------------------


def bad_value(key: str, what: str, value: Any) -> ApiError:
    return ApiError(400, f"'{key}' must be {what}, got {value!r}"[:300], param=key)


def get_number(body: dict[str, Any], key: str, default: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise bad_value(key, "a number", v)
    return float(v)


INT32 = (-(2**31), 2**31 - 1)


def get_int(
    body: dict[str, Any], key: str, default: int, bounds: tuple[int, int] | None = INT32
) -> int:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad_value(key, "an integer", v)
    if bounds is not None and not bounds[0] <= v <= bounds[1]:
        raise bad_value(key, f"an integer from {bounds[0]} to {bounds[1]}", v)
    return v


def get_bool(body: dict[str, Any], key: str, default: bool) -> bool:
    v = body.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad_value(key, "true or false", v)
    return v


# llama.cpp's sampler names (and one-letter forms) -> ours; None: a sampler this runtime does not
# have, accepted in the list only while its strength parameter leaves it off (its default)
SAMPLER_NAMES: dict[str, str | None] = {
    "penalties": "penalties",
    "top_k": "top_k",
    "typ_p": "typ_p",
    "typical_p": "typ_p",
    "typical": "typ_p",
    "top_p": "top_p",
    "nucleus": "top_p",
    "min_p": "min_p",
    "temperature": "temperature",
    "temp": "temperature",
    "dry": None,
    "xtc": None,
    "top_n_sigma": None,
    "infill": None,
}
SAMPLER_CHARS = {
    "e": "penalties", "k": "top_k", "y": "typ_p", "p": "top_p", "m": "min_p", "t": "temperature",
    "d": "dry", "x": "xtc", "s": "top_n_sigma", "i": "infill",
}  # fmt: skip
# the strength parameters of the samplers this runtime lacks: set above "off", a 400
UNSUPPORTED_STRENGTHS = {"dry_multiplier": 0.0, "xtc_probability": 0.0, "top_n_sigma": -1.0}


def get_samplers(body: dict[str, Any], default: tuple[str, ...]) -> tuple[str, ...]:
    """llama.cpp's ``samplers``: a list of names or a string of letters, the order the samplers
    apply in. DRY, XTC and top-n-sigma are not in this runtime: asking for their effect (a
    ``dry_multiplier``/``xtc_probability``/``top_n_sigma`` that turns them on) is a 400, naming
    them in the list while they are off is fine."""
    for key, off in UNSUPPORTED_STRENGTHS.items():
        if get_number(body, key, off) > 0:  # 0 (and top_n_sigma's -1) leave them off
            raise ApiError(
                400,
                f"'{key}': this server has no {key.split('_')[0].upper()} sampler; leave "
                f"'{key}' out (or at {off:g})",
                param=key,
            )
    v = body.get("samplers")
    if v is None:
        return default
    if isinstance(v, str):
        unknown = sorted({c for c in v if c not in SAMPLER_CHARS})
        if unknown:
            raise bad_value("samplers", f"letters of {''.join(SAMPLER_CHARS)}", v)
        names = [SAMPLER_CHARS[c] for c in v]
    elif isinstance(v, list) and all(isinstance(x, str) for x in v):
        names = v
    else:
        raise bad_value("samplers", "a list of sampler names", v)
    out = []
    for name in names:
        if name not in SAMPLER_NAMES:
            known = ", ".join(k for k in SAMPLER_NAMES)
            raise ApiError(
                400, f"'samplers': unknown sampler {name!r}; known: {known}"[:300], param="samplers"
            )
        ours = SAMPLER_NAMES[name]
        if ours is not None:
            out.append(ours)
    return tuple(out)


LOGIT_BIAS_MAX = 1024  # entries of one request's logit_bias


def get_logit_bias(
    body: dict[str, Any], default: tuple[tuple[int, float], ...] = ()
) -> tuple[tuple[int, float], ...]:
    """``logit_bias`` as (token id, bias) pairs: OpenAI's ``{"id": bias}`` or llama.cpp's
    ``[[id, bias], ...]`` (``false`` = never that token). Token text instead of an id is a 400:
    ids come from ``/tokenize``. Ids beyond the vocabulary are refused when the sampler is
    made (the model is not known here)."""
    v = body.get("logit_bias")
    if v is None:
        return default
    if isinstance(v, dict):
        items: list[Any] = list(v.items())
    elif isinstance(v, list):
        items = v
    else:
        raise bad_value("logit_bias", "an object of token id -> bias, or [[id, bias], ...]", v)
    if len(items) > LOGIT_BIAS_MAX:
        raise ApiError(
            400,
            f"'logit_bias' has {len(items)} entries, over this server's limit of {LOGIT_BIAS_MAX}",
            param="logit_bias",
        )
    out: list[tuple[int, float]] = []
    for item in items:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise bad_value("logit_bias", "pairs of a token id and a bias", item)
        token, bias = item
        if isinstance(token, str) and token.strip().lstrip("-").isdigit():
            token = int(token)
        if isinstance(token, bool) or not isinstance(token, int):
            raise ApiError(
                400,
                f"'logit_bias': {token!r} is not a token id (get ids from /tokenize)"[:200],
                param="logit_bias",
            )
        if bias is False:
            bias = -math.inf
        elif isinstance(bias, bool) or not isinstance(bias, (int, float)) or math.isnan(bias):
            raise bad_value("logit_bias", "a number (or false: never this token)", bias)
        out.append((token, float(bias)))
    return tuple(out)


def get_stop(body: dict[str, Any], default: list[str]) -> list[str]:
    v = body.get("stop")
    if v is None:
        return list(default)
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise bad_value("stop", "a string or a list of strings", v)
    stops = [s for s in v if s]
    _within_limits(limits.check_stop, stops, "stop")
    return stops


def _within_limits(check: Any, value: Any, param: str) -> Any:
    """``check(value)`` from :mod:`packer.runtime.grammar_limits`; over a limit is a 400
    naming ``param``."""
    try:
        return check(value)
    except limits.LimitError as exc:
        raise ApiError(400, f"'{param}': {exc.message}", param=param) from None


def _refuse_unsupported(body: dict[str, Any], tools: bool = False) -> None:
    """Constraints the client relies on but this server does not apply: say so, don't ignore.
    ``tools``: the endpoint takes ``tools`` (OpenAI's chat), else they are refused."""
    if body.get("functions") or body.get("function_call"):
        raise ApiError(
            400,
            "the legacy 'functions' / 'function_call' fields are not supported: "
            "use 'tools' and 'tool_choice' on /v1/chat/completions",
            param="functions",
        )
    if not tools and body.get("tools"):
        raise ApiError(
            400,
            "tool calling is only supported on /v1/chat/completions (and Ollama's /api/chat)",
            param="tools",
        )
    n = get_int(body, "n", 1)
    if n != 1:
        raise ApiError(400, "only 'n': 1 is supported", param="n")


# -- constrained output ---------------------------------------------------------------------


def schema_grammar(schema: Any, param: str) -> str:
    """A JSON schema as a GBNF grammar (root rule "root"), or a 400 naming ``param``. Only local
    ``$ref``s (``#/...``) are followed: the converter would fetch remote ones over the network.
    Schemas and grammars over :mod:`packer.runtime.grammar_limits` are refused."""
    if not isinstance(schema, dict):
        raise bad_value(param, "a JSON schema object", schema)
    text = _within_limits(limits.schema_json, schema, param)
    if any(isinstance(ref, str) and not ref.startswith("#") for ref in _find_refs(schema)):
        raise ApiError(400, f"'{param}': only local '$ref's (#/...) are supported", param=param)
    from llama_cpp import llama_grammar

    try:
        grammar = str(llama_grammar.json_schema_to_gbnf(text))
    except RecursionError:
        raise ApiError(
            400, f"'{param}': the JSON schema is nested too deeply", param=param
        ) from None
    except Exception as exc:  # the converter asserts or trips over malformed schemas
        raise ApiError(
            400, f"'{param}' is not a JSON schema this server can follow: {exc}"[:300], param=param
        ) from None
    _within_limits(limits.check_gbnf, grammar, param)
    # the converter lets raw control characters into strings, which JSON forbids (json.loads
    # refuses them): keep them out, as llama.cpp's own converter does
    return grammar.replace(_LOOSE_CHAR, _STRICT_CHAR)


_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_STRICT_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


def _find_refs(node: Any) -> list[Any]:
    """Every ``$ref`` in a schema (its depth is already within the limits)."""
    if isinstance(node, dict):
        refs = [node["$ref"]] if "$ref" in node else []
        for v in node.values():
            refs += _find_refs(v)
        return refs
    if isinstance(node, list):
        return [r for v in node for r in _find_refs(v)]
    return []


def json_object_grammar() -> str:
    """Any JSON object (OpenAI's ``json_object``, Ollama's ``format: "json"``), with bounded
    whitespace so a small model cannot pad forever."""
    return schema_grammar({"type": "object"}, "response_format")


def _grammar_field(body: dict[str, Any]) -> str | None:
    g = body.get("grammar")
    if g is None or g == "":
        return None
    if not isinstance(g, str):
        raise bad_value("grammar", "a GBNF grammar (a string)", g)
    _within_limits(limits.check_gbnf, g, "grammar")
    return g


def llama_grammar_of(body: dict[str, Any]) -> str | None:
    """llama.cpp's ``grammar`` (GBNF) or ``json_schema`` (an object) fields."""
    schema = body.get("json_schema")
    if schema is not None and schema != {}:
        if _grammar_field(body) is not None:
            raise ApiError(400, "give either 'grammar' or 'json_schema', not both", param="grammar")
        return schema_grammar(schema, "json_schema")
    return _grammar_field(body)


def response_format_grammar(body: dict[str, Any]) -> str | None:
    """OpenAI's ``response_format``: text, ``json_object``, or ``json_schema`` with a schema."""
    fmt = body.get("response_format")
    if fmt is None:
        return llama_grammar_of(body)  # llama.cpp's own fields work on /v1 too
    if not isinstance(fmt, dict):
        raise bad_value("response_format", "an object with a 'type'", fmt)
    kind = fmt.get("type", "text")
    if kind == "text":
        return llama_grammar_of(body)
    if kind == "json_object":
        schema = fmt.get("schema")  # llama.cpp also takes a schema here
        return schema_grammar(schema, "response_format") if schema else json_object_grammar()
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            raise bad_value("response_format.json_schema", "an object with a 'schema'", spec)
        schema = spec.get("schema")
        if schema is None:
            return json_object_grammar()
        return schema_grammar(schema, "response_format")
    raise bad_value("response_format.type", "'text', 'json_object' or 'json_schema'", kind)


def _seed(seed: int) -> int:
    """llama.cpp seeds are 32-bit and 0xFFFFFFFF means random; OpenAI's may be any integer."""
    return -1 if seed < 0 else seed % 0xFFFFFFFF


def sampling_fields(src: dict[str, Any], defaults: Sampling, max_tokens: int) -> Sampling:
    """The sampling fields every dialect names alike (llama.cpp's request body, OpenAI's, which
    may carry llama.cpp's too, and Ollama's ``options``), validated, on top of ``defaults``."""
    temperature = get_number(src, "temperature", defaults.temperature)
    top_p = get_number(src, "top_p", defaults.top_p)
    if not 0.0 <= top_p <= 1.0:
        raise bad_value("top_p", "between 0 and 1", top_p)
    mirostat = get_int(src, "mirostat", defaults.mirostat)
    if mirostat not in (0, 1, 2):
        raise bad_value("mirostat", "0, 1 or 2", mirostat)
    return replace(
        defaults,
        max_tokens=max_tokens,
        temperature=max(temperature, 0.0),
        top_k=get_int(src, "top_k", defaults.top_k),
        top_p=top_p,
        min_p=get_number(src, "min_p", defaults.min_p),
        typical_p=get_number(src, "typical_p", defaults.typical_p),
        repeat_penalty=get_number(src, "repeat_penalty", defaults.repeat_penalty),
        repeat_last_n=get_int(src, "repeat_last_n", defaults.repeat_last_n, bounds=(-1, INT32[1])),
        logit_bias=get_logit_bias(src, defaults.logit_bias),
        samplers=get_samplers(src, defaults.samplers),
        presence_penalty=get_number(src, "presence_penalty", defaults.presence_penalty),
        frequency_penalty=get_number(src, "frequency_penalty", defaults.frequency_penalty),
        mirostat=mirostat,
        mirostat_tau=get_number(src, "mirostat_tau", defaults.mirostat_tau),
        mirostat_eta=get_number(src, "mirostat_eta", defaults.mirostat_eta),
        seed=_seed(get_int(src, "seed", defaults.seed, bounds=None)),
        ignore_eos=get_bool(src, "ignore_eos", defaults.ignore_eos),
        stop=get_stop(src, defaults.stop),
    )


# -- requests -------------------------------------------------------------------------------


@dataclass
class CompletionRequest:
    prompt: str | list[int | str]
    params: Sampling
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    logprobs: bool = False  # report log-probabilities (OpenAI); n_top alternatives per token
    n_top: int = 0


@dataclass
class ChatRequest:
    messages: list[dict[str, Any]]
    params: Sampling
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    n_top: int = 0
    reasoning: str | None = None  # llama.cpp's reasoning_format: deepseek | none | the server's


def _prompt(body: dict[str, Any], key: str = "prompt") -> str | list[int | str]:
    if key not in body or body[key] is None:
        raise ApiError(400, f"'{key}' is required", param=key)
    p = body[key]
    if isinstance(p, str):
        return p
    if isinstance(p, list) and all(
        isinstance(x, (int, str)) and not isinstance(x, bool) for x in p
    ):
        if len(p) == 1 and isinstance(p[0], str):
            return p[0]
        if p and all(isinstance(x, str) for x in p):
            raise ApiError(400, "only one prompt per request is supported", param=key)
        return list(p)
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], list):
        return _prompt({key: p[0]}, key)  # OpenAI's [[ids]]
    raise bad_value(key, "a string or a list of token ids", p)


MAX_N_PROBS = 20  # alternatives per token we report, at most (OpenAI's top_logprobs limit)


def parse_completion(body: dict[str, Any], defaults: Sampling) -> CompletionRequest:
    """llama.cpp's ``POST /completion``. Unknown fields (LangChain's ``n_keep``, ``tfs_z``,
    ``penalize_nl``, ``cache_prompt``...) are accepted and ignored."""
    _refuse_unsupported(body)
    n_predict = get_int(body, "n_predict", get_int(body, "max_tokens", defaults.max_tokens))
    params = sampling_fields(body, defaults, max(n_predict, -1))
    n_probs = get_int(body, "n_probs", 0, bounds=(0, MAX_N_PROBS))
    return CompletionRequest(
        prompt=_prompt(body),
        params=replace(params, grammar=llama_grammar_of(body), n_probs=n_probs),
        stream=get_bool(body, "stream", False),
    )


def _max_tokens_openai(body: dict[str, Any], defaults: Sampling) -> int:
    mt = get_int(body, "max_completion_tokens", get_int(body, "max_tokens", defaults.max_tokens))
    if mt == 0 or mt < -1:
        raise ApiError(400, f"'max_tokens' must be at least 1, got {mt}", param="max_tokens")
    return mt  # -1 (some clients send it): no limit


def _stream_options(body: dict[str, Any]) -> bool:
    opts = body.get("stream_options")
    if opts is None:
        return False
    if not isinstance(opts, dict):
        raise bad_value("stream_options", "an object", opts)
    return get_bool(opts, "include_usage", False)


def parse_openai_completion(body: dict[str, Any], defaults: Sampling) -> CompletionRequest:
    """OpenAI's ``POST /v1/completions`` (legacy completions)."""
    _refuse_unsupported(body)
    params = sampling_fields(body, defaults, _max_tokens_openai(body, defaults))
    # legacy completions: ``logprobs`` is how many alternatives to list per token (0-5)
    raw = body.get("logprobs")
    want = raw is not None and raw is not False
    n_top = get_int(body, "logprobs", 0, bounds=(0, 5)) if want and raw is not True else 0
    return CompletionRequest(
        prompt=_prompt(body),
        params=replace(
            params, grammar=response_format_grammar(body), n_probs=max(n_top, 1) if want else 0
        ),
        stream=get_bool(body, "stream", False),
        include_usage=_stream_options(body),
        echo=get_bool(body, "echo", False),
        logprobs=want,
        n_top=n_top,
    )


_ROLES = {"system", "developer", "user", "assistant", "tool"}


def _message_text(content: Any, i: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif (
                isinstance(part, dict)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ):
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ApiError(
                    400,
                    f"messages[{i}]: content of type {kind!r} is not supported (text only)",
                    param="messages",
                )
        return "\n".join(texts)
    raise bad_value(f"messages[{i}].content", "a string or a list of text parts", content)


# the fields of a message kept besides role and content (tool calls and their results; checked
# by :func:`packer.runtime.tool_calls.messages_for_template`)
TOOL_MESSAGE_FIELDS = ("tool_calls", "tool_call_id", "name", "tool_name")


def tool_fields(m: dict[str, Any], i: int) -> dict[str, Any]:
    """A message's tool-calling fields that are set; ids and names must be strings."""
    out: dict[str, Any] = {}
    for key in TOOL_MESSAGE_FIELDS:
        v = m.get(key)
        if v is None:
            continue
        if key != "tool_calls" and not isinstance(v, str):
            raise bad_value(f"messages[{i}].{key}", "a string", v)
        out[key] = v
    return out


def parse_chat(body: dict[str, Any], defaults: Sampling) -> ChatRequest:
    """OpenAI's ``POST /v1/chat/completions``. Messages keep their tool-calling fields;
    ``tools`` and ``tool_choice`` are parsed by the dialect (:mod:`packer.runtime.tool_calls`)."""
    _refuse_unsupported(body, tools=True)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad_value("messages", "a non-empty list of {role, content} objects", msgs)
    messages: list[dict[str, Any]] = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise bad_value(f"messages[{i}]", "an object with 'role' and 'content'", m)
        role = m.get("role")
        if role not in _ROLES:
            raise bad_value(f"messages[{i}].role", f"one of {sorted(_ROLES)}", role)
        messages.append(
            {
                "role": "system" if role == "developer" else role,
                "content": _message_text(m.get("content"), i),
                **tool_fields(m, i),
            }
        )
    logprobs = get_bool(body, "logprobs", False)
    n_top = get_int(body, "top_logprobs", 0, bounds=(0, MAX_N_PROBS))
    if n_top and not logprobs:
        raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    params = sampling_fields(body, defaults, _max_tokens_openai(body, defaults))
    return ChatRequest(
        messages=messages,
        params=replace(
            params,
            grammar=response_format_grammar(body),
            n_probs=max(n_top, 1) if logprobs else 0,
        ),
        stream=get_bool(body, "stream", False),
        include_usage=_stream_options(body),
        logprobs=logprobs,
        n_top=n_top,
        reasoning=reasoning_format(body),
    )


# llama-server's per-request ``reasoning_format`` -> ours (the legacy and auto forms split too)
REASONING_FORMAT_FIELD = {
    "none": "none",
    "deepseek": "deepseek",
    "deepseek-legacy": "deepseek",
    "auto": "deepseek",
}


def reasoning_format(body: dict[str, Any]) -> str | None:
    """llama.cpp's ``reasoning_format`` field: where a ``<think>`` section goes (None: as the
    server's --reasoning-format says)."""
    v = body.get("reasoning_format")
    if v is None:
        return None
    if v not in REASONING_FORMAT_FIELD:
        raise bad_value("reasoning_format", f"one of {sorted(REASONING_FORMAT_FIELD)}", v)
    return REASONING_FORMAT_FIELD[v]


# -- embeddings -----------------------------------------------------------------------------


def embedding_inputs(body: dict[str, Any], key: str) -> tuple[list[str], bool]:
    """The texts of an embeddings request (a string or a list of strings) and whether a single
    string was given. Token-id inputs are refused."""
    v = body.get(key)
    if isinstance(v, str):
        return [v], True
    if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
        return list(v), False
    raise bad_value(key, "a string or a non-empty list of strings", v)
