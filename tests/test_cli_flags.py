"""The flags people paste from llamafile and llama-server, and llama-server's LLAMA_ARG_*
variables: accepted with their meaning, or as harmless no-ops; a bad value is one clear line.
No model is loaded here (tests/test_cli_flags_e2e.py runs a real model.run)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from packer.runtime import api_key, desktop, llama_env
from packer.runtime.chat_template import read_template
from packer.runtime.cli import UsageError, build_parser, parse
from packer.runtime.main import check_gguf, server_features
from packer.runtime.payload import BundleError

ROOT = Path(__file__).resolve().parents[1]


def args_of(
    *argv: str, baked: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> argparse.Namespace:
    return parse(list(argv), list(baked), environ=env or {})


def run_runtime(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The unfrozen runtime's real entry point, with no model attached."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA_", "PACKER_"))}
    environ.update(env or {}, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "packer.runtime", *argv],
        capture_output=True,
        text=True,
        env=environ,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


# -- the bug: LangChain's llamafile recipe ----------------------------------------------------


def test_langchain_llamafile_recipe_parses() -> None:
    args = args_of("--server", "--nobrowser", "--embedding")
    assert args.server and args.nobrowser and args.embedding


def test_langchain_llamafile_recipe_is_not_a_usage_error() -> None:
    """`./model.run --server --nobrowser --embedding` exited 2 (unknown flag --embedding): now it
    gets as far as looking for its model (none here: exit 1, and no word about flags)."""
    done = run_runtime("--server", "--nobrowser", "--embedding")
    assert done.returncode == 1, done.stderr
    assert "no model attached" in done.stderr
    assert "unrecognized" not in done.stderr


# -- each flag ------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--embedding", "--embeddings"])
def test_embedding_is_accepted(flag: str) -> None:
    assert args_of(flag).embedding is True


@pytest.mark.parametrize("flag", ["--jinja", "--log-disable"])
def test_noops_are_accepted(flag: str) -> None:
    args_of(flag)


@pytest.mark.parametrize("flag", ["-v", "--verbose", "--log-verbose"])
def test_verbose(flag: str) -> None:
    assert args_of(flag).verbose is True
    assert args_of().verbose is False


def test_nobrowser() -> None:
    assert args_of("--nobrowser").nobrowser is True
    opener = desktop.browser_opener(
        desktop_start=False, server=True, nobrowser=True, environ={"DISPLAY": ":0", "PATH": ""}
    )
    assert opener is None


@pytest.mark.parametrize("flag", ["-sys", "--system-prompt", "--system"])
def test_system_prompt(flag: str) -> None:
    args = args_of(flag, "Answer in French.")
    assert args.system == "Answer in French."
    assert server_features(args).system_prompt == "Answer in French."


def test_chat_template_file_flag() -> None:
    assert args_of("--chat-template-file", "t.jinja").chat_template_file == "t.jinja"


@pytest.mark.parametrize("flag", ["-m", "--model"])
def test_model_flag(flag: str) -> None:
    assert args_of(flag, "other.gguf").model == "other.gguf"


def test_metrics_and_reasoning_format() -> None:
    features = server_features(args_of())
    assert features.metrics is False and features.reasoning_format == "deepseek"
    assert features.system_prompt is None
    args = args_of("--metrics", "--reasoning-format", "none")
    assert server_features(args).metrics is True
    assert server_features(args).reasoning_format == "none"
    assert args_of("--reasoning-format", "auto").reasoning_format == "deepseek"  # llama-server's


def test_bad_reasoning_format(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        args_of("--reasoning-format", "deepseek-legacy")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--reasoning-format" in err and "deepseek" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "dest", "value"),
    [
        (["--predict", "7"], "n_predict", 7),
        (["-s", "42"], "seed", 42),
        (["--n-gpu-layers", "99"], "gpu_layers", 99),
    ],
)
def test_llama_cpp_aliases(argv: list[str], dest: str, value: object) -> None:
    assert getattr(args_of(*argv), dest) == value


def test_sys_is_not_taken_for_seed() -> None:
    args = args_of("-sys", "be brief", "-s", "3")
    assert args.system == "be brief" and args.seed == 3


# -- --cli, --chat and --server --------------------------------------------------------------


def test_cli_and_chat_are_terminal_modes() -> None:
    assert args_of("--cli").cli is True
    assert args_of("--chat").chat is True
    assert args_of("--cli", "-p", "hi").prompt == "hi"


@pytest.mark.parametrize("mode", ["--cli", "--chat"])
def test_typed_terminal_mode_beats_baked_server(mode: str) -> None:
    args = args_of(mode, baked=("--server",))
    assert args.server is False


@pytest.mark.parametrize("mode", ["--cli", "--chat"])
def test_typed_server_beats_baked_terminal_mode(mode: str) -> None:
    args = args_of("--server", baked=(mode,))
    assert args.server is True and not args.cli and not args.chat


@pytest.mark.parametrize("mode", ["--cli", "--chat"])
def test_server_and_terminal_mode_typed_together(mode: str) -> None:
    with pytest.raises(UsageError, match=f"--server and {mode}"):
        args_of("--server", mode)


def test_chat_takes_p_as_system_prompt() -> None:
    args = args_of("--chat", "-p", "You are a pirate.")
    assert args.system == "You are a pirate." and args.prompt is None
    with pytest.raises(UsageError, match="pass only one"):
        args_of("--chat", "-p", "a", "-sys", "b")
    # --chat baked in, -p typed: the user asked for one answer
    args = args_of("-p", "question", baked=("--chat",))
    assert args.prompt == "question" and not args.chat


def _is_desktop_start(args: argparse.Namespace) -> bool:
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        return desktop.is_desktop_start(args, stdin_fd=fd, stdout_fd=fd)
    finally:
        os.close(fd)


def test_terminal_modes_are_no_double_click() -> None:
    assert _is_desktop_start(args_of()) is True
    assert _is_desktop_start(args_of("--cli")) is False
    assert _is_desktop_start(args_of("--chat")) is False


# -- LLAMA_ARG_* variables ------------------------------------------------------------------

ENV_CASES = [
    ("LLAMA_ARG_CTX_SIZE", "8192", "ctx_size", 8192),
    ("LLAMA_ARG_N_PREDICT", "64", "n_predict", 64),
    ("LLAMA_ARG_THREADS", "3", "threads", 3),
    ("LLAMA_ARG_THREADS_BATCH", "4", "threads_batch", 4),
    ("LLAMA_ARG_CACHE_RAM", "512", "cache_ram", 512),
    ("LLAMA_ARG_CACHE_RAM", "-1", "cache_ram", -1),
    ("LLAMA_ARG_N_GPU_LAYERS", "12", "gpu_layers", 12),
    ("LLAMA_ARG_N_GPU_LAYERS", "auto", "gpu_layers", "auto"),
    ("LLAMA_ARG_FLASH_ATTN", "off", "flash_attn", "off"),
    ("LLAMA_ARG_FLASH_ATTN", "1", "flash_attn", "on"),
    ("LLAMA_ARG_FLASH_ATTN", "disabled", "flash_attn", "off"),
    ("LLAMA_ARG_FLASH_ATTN", "auto", "flash_attn", "auto"),
    ("LLAMA_ARG_N_PARALLEL", "2", "parallel", 2),
    ("LLAMA_ARG_HOST", "0.0.0.0", "host", "0.0.0.0"),
    ("LLAMA_ARG_PORT", "8081", "port", 8081),
    ("LLAMA_ARG_ALIAS", "my-model", "alias", "my-model"),
    ("LLAMA_ARG_ENDPOINT_METRICS", "1", "metrics", True),
    ("LLAMA_ARG_ENDPOINT_METRICS", "TRUE", "metrics", True),
    ("LLAMA_ARG_ENDPOINT_METRICS", "enabled", "metrics", True),
    ("LLAMA_ARG_ENDPOINT_METRICS", "off", "metrics", False),
    ("LLAMA_ARG_EMBEDDINGS", "true", "embedding", True),
    ("LLAMA_ARG_JINJA", "on", "jinja", True),
    ("LLAMA_ARG_CHAT_TEMPLATE_FILE", "/t.jinja", "chat_template_file", "/t.jinja"),
    ("LLAMA_ARG_THINK", "none", "reasoning_format", "none"),
    ("LLAMA_ARG_THINK", "auto", "reasoning_format", "deepseek"),
    ("LLAMA_ARG_TEMPERATURE", "0.1", "temp", 0.1),
    ("LLAMA_ARG_TOP_K", "5", "top_k", 5),
    ("LLAMA_ARG_TOP_P", "0.5", "top_p", 0.5),
    ("LLAMA_ARG_MIN_P", "0.2", "min_p", 0.2),
    ("LLAMA_ARG_REPEAT_PENALTY", "1.3", "repeat_penalty", 1.3),
    ("LLAMA_ARG_NO_WEBUI", "1", "no_webui", True),
    ("LLAMA_ARG_WEBUI", "false", "no_webui", True),
    ("LLAMA_ARG_WEBUI", "true", "no_webui", False),
    ("LLAMA_ARG_UI", "0", "no_webui", True),
]


@pytest.mark.parametrize(("var", "raw", "dest", "value"), ENV_CASES)
def test_llama_arg_variable(var: str, raw: str, dest: str, value: object) -> None:
    assert getattr(args_of(env={var: raw}), dest) == value


def test_every_variable_names_a_real_flag() -> None:
    flags = {s for a in build_parser()._actions for s in a.option_strings}
    assert {v.flag for v in llama_env.VARIABLES} <= flags
    assert {v.var for v in llama_env.VARIABLES} == {case[0] for case in ENV_CASES}


def test_command_line_wins_over_variable() -> None:
    env = {"LLAMA_ARG_PORT": "8081", "LLAMA_ARG_FLASH_ATTN": "on", "LLAMA_ARG_THINK": "none"}
    args = args_of("--port", "9000", "-fa", "off", "--reasoning-format", "deepseek", env=env)
    assert (args.port, args.flash_attn, args.reasoning_format) == (9000, "off", "deepseek")


def test_variable_wins_over_baked_default() -> None:
    args = args_of(baked=("--port", "7000", "-c", "2048"), env={"LLAMA_ARG_PORT": "7001"})
    assert args.port == 7001 and args.ctx_size == 2048


def test_variable_turns_a_baked_switch_off() -> None:
    assert args_of(baked=("--metrics",), env={"LLAMA_ARG_ENDPOINT_METRICS": "0"}).metrics is False


@pytest.mark.parametrize(
    ("var", "raw", "words"),
    [
        ("LLAMA_ARG_CTX_SIZE", "big", ["$LLAMA_ARG_CTX_SIZE", "--ctx-size", "'big'"]),
        ("LLAMA_ARG_PORT", "", ["$LLAMA_ARG_PORT", "--port"]),
        ("LLAMA_ARG_TEMPERATURE", "hot", ["$LLAMA_ARG_TEMPERATURE", "not a number"]),
        ("LLAMA_ARG_N_GPU_LAYERS", "-2", ["$LLAMA_ARG_N_GPU_LAYERS", "0 or more"]),
        ("LLAMA_ARG_ENDPOINT_METRICS", "yes please", ["$LLAMA_ARG_ENDPOINT_METRICS", "true"]),
        ("LLAMA_ARG_EMBEDDINGS", "2", ["$LLAMA_ARG_EMBEDDINGS", "yes/no"]),
        ("LLAMA_ARG_FLASH_ATTN", "fast", ["$LLAMA_ARG_FLASH_ATTN", "auto, on, off"]),
        ("LLAMA_ARG_THINK", "deepseek-legacy", ["$LLAMA_ARG_THINK", "deepseek, none"]),
    ],
)
def test_bad_variable_is_one_line_naming_it(var: str, raw: str, words: list[str]) -> None:
    with pytest.raises(UsageError) as exc:
        args_of(env={var: raw})
    message = str(exc.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_bad_variable_through_the_entry_point() -> None:
    done = run_runtime("--server", env={"LLAMA_ARG_CTX_SIZE": "lots"})
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "$LLAMA_ARG_CTX_SIZE" in done.stderr, done.stderr


def test_help_works_with_a_bad_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        args_of("--help", env={"LLAMA_ARG_PORT": "x"})
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--embedding", "--jinja", "-sys", "--chat-template-file", "--cli", "--chat",
                 "--metrics", "--reasoning-format", "-m FILE.gguf", "LLAMA_ARG_"):  # fmt: skip
        assert flag in out, flag


# -- the API key's variables ------------------------------------------------------------------


def _key(argv: list[str], env: dict[str, str]) -> str | None:
    return api_key.resolve(args_of(*argv), argv, env)


def test_llama_api_key(tmp_path: Path) -> None:
    assert _key([], {"LLAMA_API_KEY": "k1"}) == "k1"
    assert _key([], {"LLAMA_API_KEY": "k1", "PACKER_API_KEY": "k0"}) == "k0"
    assert _key(["--api-key", "k2"], {"LLAMA_API_KEY": "k1"}) == "k2"
    keyfile = tmp_path / "key"
    keyfile.write_text("k3\n")
    assert _key([], {"LLAMA_ARG_API_KEY_FILE": str(keyfile)}) == "k3"
    with pytest.raises(UsageError, match=r"\$LLAMA_API_KEY is only spaces"):
        _key([], {"LLAMA_API_KEY": "  "})
    with pytest.raises(UsageError, match=r"^\$LLAMA_ARG_API_KEY_FILE: .*no such file"):
        _key([], {"LLAMA_ARG_API_KEY_FILE": str(tmp_path / "nope")})


# -- --chat-template-file --------------------------------------------------------------------

TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"


def test_read_template(tmp_path: Path) -> None:
    path = tmp_path / "t.jinja"
    path.write_text(TEMPLATE)
    assert read_template(str(path)) == TEMPLATE


def test_template_with_hugging_face_tags(tmp_path: Path) -> None:
    """What llama-cpp-python's formatter parses: {% generation %} blocks, {% break %}."""
    path = tmp_path / "t.jinja"
    text = (
        "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}"
        "{% if loop.index > 3 %}{% break %}{% endif %}{% endfor %}"
    )
    path.write_text(text)
    assert read_template(str(path)) == text


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "no such file"),
        (b"", "empty"),
        (b"\xff\xfe\x00bad", "not text"),
        (b"{% for m in messages %}\n{{ m.content }", "line 2"),
        (b"x" * ((1 << 20) + 1), "too large"),
    ],
)
def test_bad_template_file(tmp_path: Path, content: bytes | None, words: str) -> None:
    path = tmp_path / "t.jinja"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UsageError) as exc:
        read_template(str(path))
    assert str(exc.value).startswith(f"--chat-template-file {path}: ")
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_unreadable_template_through_the_entry_point(tmp_path: Path) -> None:
    done = run_runtime("--chat-template-file", str(tmp_path / "nope.jinja"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "no such file" in done.stderr, done.stderr


# -- -m FILE.gguf ----------------------------------------------------------------------------


def test_check_gguf(tmp_path: Path) -> None:
    good = tmp_path / "a.gguf"
    good.write_bytes(b"GGUF\x03\x00\x00\x00")
    check_gguf(good)
    cases = {
        tmp_path / "missing.gguf": "no such file",
        tmp_path: "a folder",
        tmp_path / "model.run": "a program",
        tmp_path / "notes.txt": "not a GGUF file",
    }
    (tmp_path / "model.run").write_bytes(b"\x7fELF\x02\x01")
    (tmp_path / "notes.txt").write_text("hello")
    for path, words in cases.items():
        with pytest.raises(BundleError, match=words) as exc:
            check_gguf(path)
        assert str(exc.value).startswith(f"-m {path}: ")


def test_missing_model_through_the_entry_point(tmp_path: Path) -> None:
    done = run_runtime("-m", str(tmp_path / "other.gguf"), "-p", "hi")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "no such file" in done.stderr, done.stderr


def test_model_with_extract_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF\x03\x00\x00\x00")
    done = run_runtime("-m", str(other), "--extract", str(tmp_path / "out.gguf"))
    assert done.returncode == 2 and "--extract" in done.stderr, done.stderr


@pytest.mark.parametrize(("given", "seen"), [(None, "1"), ("3", "3")])
def test_openblas_gets_one_thread_unless_told(given: str | None, seen: str) -> None:
    """numpy's OpenBLAS threads spun a core while the model loaded: the runtime sets
    OPENBLAS_NUM_THREADS=1 before anything imports numpy, unless the user set it."""
    code = (
        "import os, sys; from packer.runtime import main as m; "
        "m.run = lambda argv: print(os.environ.get('OPENBLAS_NUM_THREADS'), "
        "'numpy' in sys.modules) or 0; m.main([])"
    )
    environ = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    environ["PYTHONPATH"] = str(ROOT)
    if given is not None:
        environ["OPENBLAS_NUM_THREADS"] = given
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [seen, "False"]
