"""--api-key-file and $PACKER_API_KEY as alternatives to --api-key (packer.runtime.api_key)."""

from __future__ import annotations

from pathlib import Path

import pytest

from packer.runtime.api_key import resolve
from packer.runtime.cli import UsageError, parse


def key(argv: list[str], baked: list[str] = [], env: dict[str, str] | None = None) -> str | None:  # noqa: B006
    return resolve(parse(argv, baked), argv, env or {})


@pytest.fixture
def keyfile(tmp_path: Path) -> Path:
    f = tmp_path / "key.txt"
    f.write_bytes(b"  s3cret-key \r\nsecond line ignored\n")
    return f


def test_sources_and_precedence(keyfile: Path) -> None:
    assert key([]) is None
    assert key(["--api-key", "abc"]) == "abc"
    assert key(["--api-key-file", str(keyfile)]) == "s3cret-key"  # first line, CRLF, spaces
    assert key([f"--api-key-file={keyfile}"]) == "s3cret-key"
    assert key([], env={"PACKER_API_KEY": "from-env"}) == "from-env"
    assert key([], env={"PACKER_API_KEY": ""}) is None  # empty: unset
    # the command line beats the environment, which beats the baked defaults
    assert key(["--api-key", "cli"], env={"PACKER_API_KEY": "env"}) == "cli"
    assert key(["--api-key-file", str(keyfile)], env={"PACKER_API_KEY": "env"}) == "s3cret-key"
    assert key([], ["--api-key", "baked"], env={"PACKER_API_KEY": "env"}) == "env"
    assert key([], ["--api-key", "baked"]) == "baked"  # a key baked into the file keeps working
    assert key([], ["--api-key-file", str(keyfile)]) == "s3cret-key"
    assert key(["--api-key-file", str(keyfile)], ["--api-key", "baked"]) == "s3cret-key"


def test_bad_key_sources_are_one_line_errors(tmp_path: Path, keyfile: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n   \nkey on the second line\n")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00\n")
    huge = tmp_path / "huge"
    huge.write_text("x" * 10000)
    cases = {
        ("--api-key", "a", "--api-key-file", str(keyfile)): "pass only one",
        ("--api-key-file", str(tmp_path / "nope")): "no such file",
        ("--api-key-file", str(tmp_path)): "cannot read it",
        ("--api-key-file", str(empty)): "first line is empty",
        ("--api-key-file", str(binary)): "not text",
        ("--api-key-file", str(huge)): "too long",
    }
    for argv, expected in cases.items():
        with pytest.raises(UsageError) as err:
            key(list(argv))
        assert expected in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UsageError, match="only spaces"):
        key([], env={"PACKER_API_KEY": "   "})
