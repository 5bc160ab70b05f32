"""Models named by alias or hub id, downloaded with the real huggingface_hub client from a
loopback fake hub (tests/hubserver.py): no internet, an isolated HF cache per test."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from huggingface_hub import constants

from packer import cli as cli_mod
from packer import hub as hub_mod
from packer.build import BuildPlan, plan
from packer.errors import OutputError, SourceError, UnsupportedModelError, UsageError
from packer.quants import parse_quant
from packer.runtime.payload import read_bundle
from packer.source import Source, hub_ref, hub_target, resolve

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hubserver import FakeHub  # noqa: E402

TINYLLAMA = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A fake hub on loopback; huggingface_hub pointed at it with a fresh, private cache.

    huggingface_hub reads HF_ENDPOINT/HF_HOME/HF_HUB_OFFLINE into ``constants`` at import time,
    so the constants are patched as well as the environment.
    """
    with FakeHub() as fake:
        hf_home = tmp_path / "hf-home"
        for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        monkeypatch.setenv("HF_HOME", str(hf_home))
        monkeypatch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))
        monkeypatch.setenv("PACKER_CACHE", str(tmp_path / "packer-cache"))
        patches: dict[str, Any] = {
            "ENDPOINT": fake.endpoint,
            "HUGGINGFACE_CO_URL_TEMPLATE": fake.endpoint
            + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_HOME": str(hf_home),
            "HF_HUB_CACHE": str(hf_home / "hub"),
            "HF_TOKEN_PATH": str(hf_home / "token"),
            "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
            "HF_HUB_OFFLINE": False,
            "HF_HUB_DISABLE_TELEMETRY": True,
            # small reads so that a dropped connection leaves a partial file to resume from
            "DOWNLOAD_CHUNK_SIZE": 1024,
        }
        for name, value in patches.items():
            monkeypatch.setattr(constants, name, value)
        yield fake


@pytest.fixture(scope="session")
def tiny_ggufs(tiny_llama_bpe: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """An F16 GGUF of the tiny checkpoint and its real Q8_0 quantization."""
    from packer.convert import convert_checkpoint
    from packer.quantize import quantize

    folder = tmp_path_factory.mktemp("ggufs")
    f16 = folder / "tiny.F16.gguf"
    convert_checkpoint(tiny_llama_bpe, f16, outtype="f16")
    q8 = quantize(f16, folder / "tiny.Q8_0.gguf", parse_quant("Q8_0"))
    return {"tiny.F16.gguf": f16.read_bytes(), "tiny.Q8_0.gguf": q8.read_bytes()}


@click.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def _main(args: tuple[str, ...]) -> None:
    sys.argv = ["packer", *args]
    cli_mod.main()


def run_cli(*args: str, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(_main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def downloads(hub: FakeHub) -> list[str]:
    """Files actually transferred: GETs of resolve URLs (small files) and of the CDN (LFS)."""
    got = []
    for r in hub.find("GET"):
        if "/resolve/" in r.path:
            got.append(r.path.split("/resolve/", 1)[1].split("/", 1)[1])
        elif r.origin == "cdn":
            got.append("cdn:" + r.path.rsplit("/", 1)[-1][:8])
    return got


def with_extras(folder: Path) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    files["README.md"] = b"# tiny\n"
    files["pytorch_model.bin"] = b"pickle, never downloaded"
    files["original/consolidated.pth"] = b"pickle too"
    files["onnx/model.onnx"] = b"not needed"
    return files


# ------------------------------------------------------------------------------ aliases


def test_aliases_cover_the_advertised_models() -> None:
    table = hub_mod.aliases()
    for name in [
        "TinyLlama",
        "SmolLM2-135M",
        "SmolLM2-135M-Instruct",
        "SmolLM2-360M-Instruct",
        "SmolLM2-1.7B-Instruct",
        "Qwen2.5-0.5B-Instruct",
        "Qwen2.5-1.5B-Instruct",
        "Llama-3.2-1B-Instruct",
        "Llama-3.2-3B-Instruct",
        "Phi-3.5-mini-instruct",
        "Mistral-7B-Instruct",
        "Gemma-2-2b-it",
        "SmolLM3-3B",
        "OLMo-2-1B-Instruct",
        "granite-3.3-2b-instruct",
    ]:
        alias = table[name.lower()]
        assert "/" in alias.repo and alias.params_b > 0 and alias.note
    assert hub_mod.lookup_alias("tinyllama").repo == TINYLLAMA  # type: ignore[union-attr]
    assert hub_ref("TINYLLAMA@v2").revision == "v2"
    assert hub_ref("smollm2-360m-instruct").repo_id == "HuggingFaceTB/SmolLM2-360M-Instruct"


def test_unknown_alias_suggests_the_closest() -> None:
    with pytest.raises(SourceError, match="did you mean TinyLlama") as err:
        resolve("TinyLama")
    assert "packer models" in str(err.value) and "\n" not in str(err.value)


def test_missing_local_path_is_not_taken_for_a_hub_id(tmp_path: Path, tiny_llama_bpe: Path) -> None:
    with pytest.raises(UsageError, match="--revision only applies to hub models"):
        resolve(str(tiny_llama_bpe), revision="v1")
    with pytest.raises(SourceError, match="no such folder or .gguf file"):
        resolve(str(tmp_path / "nope"))
    with pytest.raises(SourceError, match="no such folder or .gguf file"):
        resolve("model.Q4_K_M.gguf")


def test_alias_downloads_only_what_the_converter_needs(hub: FakeHub, tiny_llama_bpe: Path) -> None:
    from packer.convert import inspect_checkpoint

    sha = hub.add_repo(TINYLLAMA, with_extras(tiny_llama_bpe))
    src = resolve("tinyllama")
    assert src.kind == "checkpoint" and src.repo_id == TINYLLAMA and src.commit == sha
    assert src.name == "TinyLlama-1.1B-Chat-v1.0"
    assert src.path.name == "TinyLlama-1.1B-Chat-v1.0"  # so the GGUF's general.name is right
    got = downloads(hub)
    assert "config.json" in got and "tokenizer.json" in got
    assert not [f for f in got if f.endswith((".bin", ".pth", ".onnx"))], got
    assert "README.md" in got  # the model card travels with the model (packer.licence)
    assert sorted(p.name for p in src.path.iterdir()) == sorted(
        [p.name for p in tiny_llama_bpe.iterdir() if p.is_file()] + ["README.md"]
    )
    assert src.docs == (src.path / "README.md",)
    info = inspect_checkpoint(src.path)
    assert info.architecture == "LlamaForCausalLM"
    # shared cache: the files sit in the HF cache under snapshots/<commit>
    assert (Path(constants.HF_HUB_CACHE) / "models--TinyLlama--TinyLlama-1.1B-Chat-v1.0").is_dir()

    before = len(hub.requests)
    again = resolve("TinyLlama")
    assert again.commit == sha
    assert not [r for r in hub.requests[before:] if r.method == "GET" and r.origin == "cdn"]


def test_sharded_checkpoint_uses_the_index(hub: FakeHub, tiny_llama_bpe_sharded: Path) -> None:
    files = {p.name: p.read_bytes() for p in tiny_llama_bpe_sharded.iterdir() if p.is_file()}
    files["consolidated.safetensors"] = b"mistral-format copy, not needed"
    hub.add_repo("org/sharded", files)
    src = resolve("org/sharded")
    names = sorted(p.name for p in src.path.iterdir())
    assert "consolidated.safetensors" not in names
    assert "model.safetensors.index.json" in names
    assert sum(n.endswith(".safetensors") for n in names) >= 2


# ------------------------------------------------------------------------------ revisions


def test_revision_pinning(hub: FakeHub, tiny_llama_bpe: Path) -> None:
    base = {p.name: p.read_bytes() for p in tiny_llama_bpe.iterdir() if p.is_file()}
    old = hub.add_repo(
        "org/tiny", {**base, "generation_config.json": b'{"temperature": 0.1}'}, revision="v1"
    )
    new = hub.add_repo("org/tiny", {**base, "generation_config.json": b'{"temperature": 0.9}'})
    assert old != new

    latest = resolve("org/tiny")
    pinned = resolve("org/tiny@v1")
    by_option = resolve("org/tiny", revision="v1")
    by_commit = resolve(f"org/tiny@{old}")
    assert latest.commit == new and latest.revision is None
    assert pinned.commit == old == by_option.commit == by_commit.commit
    assert pinned.revision == "v1"
    assert b"0.9" in (latest.path / "generation_config.json").read_bytes()
    assert b"0.1" in (pinned.path / "generation_config.json").read_bytes()
    assert "@v1" in pinned.display and old[:10] in pinned.display
    assert resolve("https://huggingface.co/org/tiny/tree/v1").commit == old
    assert resolve("hf.co/org/tiny@v1").commit == old

    with pytest.raises(UsageError, match="--revision"):
        resolve("org/tiny@v1", revision="main")
    with pytest.raises(SourceError, match="has no revision 'v9'"):
        resolve("org/tiny@v9")


# ------------------------------------------------------------------------------ GGUF repos


def test_gguf_quant_names() -> None:
    q = hub_mod.gguf_quant_of
    assert q("tiny.Q8_0.gguf") == "Q8_0"
    assert q("Llama-3.2-1B-Instruct-Q4_K_M.gguf") == "Q4_K_M"
    assert q("model-bf16.gguf") == "BF16"
    assert q("model.fp16.gguf") == "F16"
    assert q("model.Q4_0_4_4.gguf") is None
    assert q("big-Q5_K_S-00001-of-00003.gguf") == "Q5_K_S"


def test_gguf_repo_picks_the_asked_quant(hub: FakeHub, tiny_ggufs: dict[str, bytes]) -> None:
    extras = {"README.md": b"# ggufs\n", "mmproj-tiny-f16.gguf": b"vision projector"}
    hub.add_repo("org/tiny-GGUF", {**tiny_ggufs, **extras})
    src = resolve("org/tiny-GGUF", quant="q8_0")
    assert src.kind == "gguf" and src.path.name == "tiny.Q8_0.gguf"
    assert src.gguf_type == "Q8_0" and src.name == "tiny" and src.n_params
    assert src.path.read_bytes() == tiny_ggufs["tiny.Q8_0.gguf"]
    assert len([f for f in downloads(hub) if f.startswith("cdn:")]) == 1  # not the F16 one
    # the vision projector's "f16" does not count as the model's F16
    assert resolve("org/tiny-GGUF", quant="F16").path.name == "tiny.F16.gguf"

    with pytest.raises(UsageError) as err:
        resolve("org/tiny-GGUF", quant="Q4_K_M")
    assert "has no Q4_K_M GGUF file; it offers F16, Q8_0" in str(err.value)


def test_gguf_repo_split_files_refused(hub: FakeHub) -> None:
    hub.add_repo(
        "org/big-GGUF",
        {"big-Q8_0-00001-of-00002.gguf": b"GGUF1", "big-Q8_0-00002-of-00002.gguf": b"GGUF2"},
    )
    with pytest.raises(UnsupportedModelError, match="split into parts"):
        resolve("org/big-GGUF", quant="Q8_0")
    assert not [f for f in downloads(hub) if f.startswith("cdn:")]


def test_convert_refuses_gguf_repo_before_downloading(
    hub: FakeHub, tiny_ggufs: dict[str, bytes]
) -> None:
    hub.add_repo("org/tiny-GGUF", tiny_ggufs)
    with pytest.raises(UsageError, match="nothing to convert"):
        resolve("org/tiny-GGUF", need_checkpoint=True)
    assert not [f for f in downloads(hub) if f.startswith("cdn:")]


# ------------------------------------------------------------------------------ pasted names


@pytest.mark.parametrize(
    ("spec", "repo", "revision", "quant", "filename"),
    [
        # as before
        ("org/name", "org/name", None, None, None),
        ("org/name@v1", "org/name", "v1", None, None),
        ("org/name@refs/pr/1", "org/name", "refs/pr/1", None, None),
        ("TinyLlama", TINYLLAMA, None, None, None),
        ("tinyllama@v2", TINYLLAMA, "v2", None, None),
        # llama.cpp's -hf org/name:QUANT
        ("org/name-GGUF:Q4_K_M", "org/name-GGUF", None, "Q4_K_M", None),
        ("org/name-GGUF:q4_k_m", "org/name-GGUF", None, "Q4_K_M", None),
        ("org/name-GGUF:fp16", "org/name-GGUF", None, "F16", None),
        ("org/name-GGUF:UD-Q4_K_XL", "org/name-GGUF", None, "UD-Q4_K_XL", None),
        ("org/name-GGUF:latest", "org/name-GGUF", None, None, None),
        ("org/name-GGUF@v1:Q8_0", "org/name-GGUF", "v1", "Q8_0", None),
        ("org/name-GGUF:Q8_0@v1", "org/name-GGUF", "v1", "Q8_0", None),
        ("TinyLlama:Q8_0", TINYLLAMA, None, "Q8_0", None),
        # Ollama's hf.co/org/name:QUANT
        ("hf.co/org/name-GGUF", "org/name-GGUF", None, None, None),
        ("hf.co/org/name-GGUF:Q4_K_M", "org/name-GGUF", None, "Q4_K_M", None),
        ("HF.CO/org/name-GGUF:latest", "org/name-GGUF", None, None, None),
        ("hf.co/org/name@v1", "org/name", "v1", None, None),
        # model page URLs
        ("https://huggingface.co/org/name", "org/name", None, None, None),
        ("http://huggingface.co/org/name/", "org/name", None, None, None),
        ("huggingface.co/org/name", "org/name", None, None, None),
        ("https://www.huggingface.co/org/name?library=transformers", "org/name", None, None, None),
        ("https://hf.co/org/name-GGUF:Q8_0", "org/name-GGUF", None, "Q8_0", None),
        ("https://huggingface.co/org/name/tree/main", "org/name", "main", None, None),
        ("https://huggingface.co/org/name/tree/v1/onnx", "org/name", "v1", None, None),
        ("https://huggingface.co/org/name/tree/refs%2Fpr%2F3", "org/name", "refs/pr/3", None, None),
        (
            "https://huggingface.co/org/name-GGUF/blob/main/name.Q8_0.gguf",
            "org/name-GGUF",
            "main",
            None,
            "name.Q8_0.gguf",
        ),
        (
            "https://huggingface.co/org/name-GGUF/resolve/v1/q8/name.Q8_0.gguf?download=true",
            "org/name-GGUF",
            "v1",
            None,
            "q8/name.Q8_0.gguf",
        ),
        (
            "https://huggingface.co/org/name/blob/main/config.json",
            "org/name",
            "main",
            None,
            "config.json",
        ),
    ],
)
def test_pasted_names_parse(
    spec: str, repo: str, revision: str | None, quant: str | None, filename: str | None
) -> None:
    target = hub_target(spec)
    assert target.ref == hub_mod.HubRef(repo, revision)
    assert target.quant == quant
    assert target.filename == filename
    assert hub_ref(spec) == target.ref


def test_pasted_url_of_the_endpoint_host() -> None:
    """An HF_ENDPOINT mirror's own URLs name models too (here huggingface.co's default)."""
    named = hub_mod.split_name(f"{hub_mod.endpoint()}/org/name/tree/v2")
    assert named == hub_mod.HubName("org/name", "v2", url=True)


@pytest.mark.parametrize(
    ("spec", "error", "says"),
    [
        ("https://huggingface.co/datasets/org/data", SourceError, "is a Hugging Face dataset"),
        ("https://huggingface.co/spaces/org/app", SourceError, "is a Hugging Face Space"),
        ("https://github.com/org/name", SourceError, "is not a Hugging Face model URL"),
        ("hf.co/name-GGUF", SourceError, "names no model: write hf.co/ORG/NAME[:QUANT]"),
        ("https://huggingface.co/org/name/discussions/3", SourceError, "not a model page"),
        ("org/name-GGUF:", UsageError, "nothing follows the ':'"),
        ("org/name-GGUF:Q4_K_M:Q8_0", UsageError, "e.g. org/name-GGUF:Q4_K_M"),
        ("hf.co/org/name/tree/v1@v2", UsageError, "names two revisions"),
        ("hf.co/org/name/blob/main/a.Q8_0.gguf:Q4_K_M", UsageError, "a file and a quant"),
        ("TinyLama:Q4_K_M", SourceError, "did you mean TinyLlama"),
        ("./models/x:Q4_K_M", SourceError, "no such folder or .gguf file"),
        ("a/b/c:Q4_K_M", SourceError, "no such folder or .gguf file"),
    ],
)
def test_pasted_name_errors(spec: str, error: type[Exception], says: str) -> None:
    with pytest.raises(error) as err:
        hub_target(spec)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_pasted_revision_conflicts_with_the_option() -> None:
    assert hub_ref("hf.co/org/name", revision="v1") == hub_mod.HubRef("org/name", "v1")
    with pytest.raises(UsageError, match="--revision says 'v2'"):
        hub_ref("https://huggingface.co/org/name/tree/v1", revision="v2")


def test_existing_path_with_a_colon_is_a_path(
    tmp_path: Path,
    tiny_llama_bpe: Path,
    tiny_ggufs: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path / "org:Q4_K_M"
    shutil.copytree(tiny_llama_bpe, folder)
    src = resolve(str(folder))
    assert src.kind == "checkpoint" and src.repo_id is None and src.path == folder
    gguf = tmp_path / "tiny:Q8_0.gguf"
    gguf.write_bytes(tiny_ggufs["tiny.Q8_0.gguf"])
    assert resolve(str(gguf)).gguf_type == "Q8_0"
    monkeypatch.chdir(tmp_path)  # a relative "org:Q4_K_M" is the folder too
    assert resolve("org:Q4_K_M").path == folder


@pytest.fixture
def tagged_repo(hub: FakeHub, tiny_ggufs: dict[str, bytes]) -> dict[str, bytes]:
    """A GGUF repo as people publish them: several quants, a projector, one quant split."""
    q8 = tiny_ggufs["tiny.Q8_0.gguf"]
    files = {
        **tiny_ggufs,
        "tiny-Q4_K_M.gguf": q8,  # stand-ins: the tests look at which file is picked
        "tiny-UD-Q4_K_XL.gguf": q8,
        "Q2_K/tiny-Q2_K-00001-of-00002.gguf": b"GGUF part 1",
        "Q2_K/tiny-Q2_K-00002-of-00002.gguf": b"GGUF part 2",
        "mmproj-tiny-Q4_K_M.gguf": b"vision projector",
        "README.md": b"# tiny GGUF\n",
    }
    hub.add_repo("org/tiny-GGUF", files)
    return files


def cdn_gets(hub: FakeHub) -> int:
    return len([f for f in downloads(hub) if f.startswith("cdn:")])


def test_quant_tag_picks_the_gguf(hub: FakeHub, tagged_repo: dict[str, bytes]) -> None:
    src = resolve("org/tiny-GGUF:Q4_K_M")
    assert src.kind == "gguf" and src.path.name == "tiny-Q4_K_M.gguf"  # not the projector
    assert src.repo_id == "org/tiny-GGUF" and src.spec == "org/tiny-GGUF:Q4_K_M"
    assert src.name == "tiny" and src.revision is None
    assert cdn_gets(hub) == 1
    assert resolve("org/tiny-GGUF:q8_0").path.name == "tiny.Q8_0.gguf"
    assert resolve("org/tiny-GGUF:fp16").path.name == "tiny.F16.gguf"
    assert resolve("org/tiny-GGUF:ud-q4_k_xl").path.name == "tiny-UD-Q4_K_XL.gguf"
    # the tag and --quant may both be given when they agree; "keep" packs the tagged file
    assert resolve("org/tiny-GGUF:Q8_0", quant="q8_0").path.name == "tiny.Q8_0.gguf"
    assert resolve("org/tiny-GGUF:Q8_0", quant="keep").path.name == "tiny.Q8_0.gguf"


def test_hub_urls_resolve_like_ids(hub: FakeHub, tagged_repo: dict[str, bytes]) -> None:
    src = resolve("hf.co/org/tiny-GGUF:Q8_0")
    assert src.path.name == "tiny.Q8_0.gguf" and src.repo_id == "org/tiny-GGUF"
    assert src.spec == "hf.co/org/tiny-GGUF:Q8_0"
    assert resolve("https://huggingface.co/org/tiny-GGUF:q4_k_m").path.name == "tiny-Q4_K_M.gguf"
    page = resolve("https://huggingface.co/org/tiny-GGUF/blob/main/tiny.F16.gguf")
    assert page.path.name == "tiny.F16.gguf" and page.revision == "main"
    assert page.gguf_type == "F16"
    mirror = resolve(f"{hub.endpoint}/org/tiny-GGUF/resolve/main/tiny.Q8_0.gguf?download=true")
    assert mirror.path.name == "tiny.Q8_0.gguf"
    with pytest.raises(UsageError, match="has no GGUF model file nope.gguf"):
        resolve("https://huggingface.co/org/tiny-GGUF/blob/main/nope.gguf")
    with pytest.raises(SourceError) as err:
        resolve("hf.co/org/missing:Q4_K_M")
    assert "no model org/missing on" in str(err.value) and "local" not in str(err.value)


def test_quant_tag_the_repo_lacks(hub: FakeHub, tagged_repo: dict[str, bytes]) -> None:
    with pytest.raises(UsageError) as err:
        resolve("hf.co/org/tiny-GGUF:Q5_K_S")
    msg = str(err.value)
    assert "org/tiny-GGUF has no Q5_K_S GGUF file; it offers F16, Q8_0, Q4_K_M, Q2_K" in msg
    assert "tiny-UD-Q4_K_XL.gguf" in msg and "after the ':'" in msg and "\n" not in msg
    with pytest.raises(UsageError, match="a branch or tag goes after '@'"):
        resolve("org/tiny-GGUF:main")
    with pytest.raises(UnsupportedModelError, match="split into parts"):
        resolve("org/tiny-GGUF:Q2_K")
    assert cdn_gets(hub) == 0


def test_quant_tag_and_option_must_agree(hub: FakeHub, tagged_repo: dict[str, bytes]) -> None:
    with pytest.raises(UsageError) as err:
        resolve("hf.co/org/tiny-GGUF:Q8_0", quant="q4_k_m")
    msg = str(err.value)
    assert "asks for Q8_0 but --quant says Q4_K_M: give one of them" in msg and "\n" not in msg
    with pytest.raises(UsageError, match="names a GGUF file"):
        resolve("org/tiny-GGUF:Q8_0", need_checkpoint=True)  # packer convert
    assert hub.requests == [], "refused before asking the hub"


def test_quant_tag_on_a_checkpoint_repo(
    hub: FakeHub, tiny_llama_bpe: Path, tiny_ggufs: dict[str, bytes]
) -> None:
    hub.add_repo("org/tiny", tiny_llama_bpe)
    with pytest.raises(UsageError) as err:
        resolve("hf.co/org/tiny:Q4_K_M")
    msg = str(err.value)
    assert "org/tiny is a safetensors checkpoint, not a GGUF repo" in msg
    assert "--quant Q4_K_M" in msg and "\n" not in msg
    with pytest.raises(UsageError, match="':UD-Q4_K_XL' picks a GGUF file"):
        resolve("org/tiny:UD-Q4_K_XL")
    assert downloads(hub) == [], "refused before the download"
    # with --quant saying the same, the checkpoint is quantized to it
    assert resolve("org/tiny:Q4_K_M", quant="Q4_K_M").kind == "checkpoint"

    # a repo with both: the tag asks for its GGUF, no tag for the checkpoint
    both = {p.name: p.read_bytes() for p in tiny_llama_bpe.iterdir() if p.is_file()}
    hub.add_repo("org/both", {**both, "gguf/tiny.Q8_0.gguf": tiny_ggufs["tiny.Q8_0.gguf"]})
    assert resolve("org/both:Q8_0").path.name == "tiny.Q8_0.gguf"
    assert resolve("org/both").kind == "checkpoint"


def test_quant_tag_offline(
    hub: FakeHub, tagged_repo: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    online = resolve("org/tiny-GGUF:Q8_0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    before = len(hub.requests)
    offline = resolve("hf.co/org/tiny-GGUF:q8_0")
    assert offline.path == online.path and len(hub.requests) == before
    with pytest.raises(UsageError, match="offers Q8_0"):
        resolve("hf.co/org/tiny-GGUF:Q4_K_M")


# ------------------------------------------------------------------------------ errors


def test_gated_repo(hub: FakeHub, tiny_llama_bpe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add_repo("meta/gated", tiny_llama_bpe, gated=True, tokens=("hf_good",))
    with pytest.raises(SourceError) as err:  # 401: no token at all
        resolve("meta/gated")
    msg = str(err.value)
    assert "gated" in msg and "accept its licence" in msg and "HF_TOKEN" in msg and "--token" in msg
    assert f"{hub.endpoint}/meta/gated" in msg
    with pytest.raises(SourceError, match="is gated"):  # 403: a token without access
        resolve("meta/gated", token="hf_bad")
    assert not [f for f in downloads(hub) if f.startswith("cdn:")], "no weights before access"

    assert resolve("meta/gated", token="hf_good").kind == "checkpoint"
    monkeypatch.setenv("HF_TOKEN", "hf_good")
    assert resolve("meta/gated").kind == "checkpoint"
    sent = {r.headers.get("authorization") or r.headers.get("Authorization") for r in hub.requests}
    assert "Bearer hf_good" in sent


def test_unknown_repo_404(hub: FakeHub) -> None:
    with pytest.raises(SourceError) as err:
        resolve("org/does-not-exist")
    assert f"no model org/does-not-exist on {hub.endpoint}" in str(err.value)
    assert "HF_TOKEN" in str(err.value)


def test_pickle_only_repo_refused(hub: FakeHub, tiny_llama_bpe: Path) -> None:
    hub.add_repo(
        "org/old",
        {
            "config.json": (tiny_llama_bpe / "config.json").read_bytes(),
            "pytorch_model.bin": b"\x80\x04pickle",
            "tokenizer.json": (tiny_llama_bpe / "tokenizer.json").read_bytes(),
        },
    )
    with pytest.raises(UnsupportedModelError, match="does not unpickle"):
        resolve("org/old")
    assert downloads(hub) == []


def test_unsupported_architecture_refused_before_the_weights(
    hub: FakeHub, tiny_llama_bpe: Path
) -> None:
    files = {p.name: p.read_bytes() for p in tiny_llama_bpe.iterdir() if p.is_file()}
    config = json.loads(files["config.json"])
    config["architectures"] = ["MambaForCausalLM"]
    files["config.json"] = json.dumps(config).encode()
    hub.add_repo("org/mamba", files)
    with pytest.raises(UnsupportedModelError, match="MambaForCausalLM"):
        resolve("org/mamba")
    assert downloads(hub) == ["config.json"]


def test_not_enough_disk(
    hub: FakeHub, tiny_llama_bpe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_repo("org/tiny", tiny_llama_bpe)
    real = shutil.disk_usage
    monkeypatch.setattr(
        shutil,
        "disk_usage",
        lambda p: real(p)._replace(free=1000),  # type: ignore[attr-defined]
    )
    with pytest.raises(OutputError) as err:
        resolve("org/tiny")
    msg = str(err.value)
    assert "not enough disk space to download org/tiny" in msg and "1 kB free" in msg
    assert "HF_HOME" in msg
    assert not [f for f in downloads(hub) if f.startswith("cdn:")], "refused before the weights"


def test_interrupted_download_resumes_with_range(hub: FakeHub, tiny_llama_bpe: Path) -> None:
    hub.add_repo("org/tiny", tiny_llama_bpe)
    hub.drop_once.add("model.safetensors")
    src = resolve("org/tiny")
    weights = (tiny_llama_bpe / "model.safetensors").read_bytes()
    assert (src.path / "model.safetensors").read_bytes() == weights
    gets = [r for r in hub.find("GET") if r.origin == "cdn"]
    assert len(gets) == 2, gets
    first, second = gets
    assert "range" not in {k.lower() for k in first.headers}
    rng = {k.lower(): v for k, v in second.headers.items()}["range"]
    start = int(rng.removeprefix("bytes=").split("-")[0])
    assert 0 < start < len(weights)
    assert not hub.drop_once  # the drop did happen


def test_failed_download_keeps_finished_files(hub: FakeHub, tiny_llama_bpe: Path) -> None:
    hub.add_repo("org/tiny", tiny_llama_bpe)
    hub.fail_once.add("model.safetensors")
    with pytest.raises(SourceError, match="answered 500"):
        resolve("org/tiny")
    before = len(hub.requests)
    src = resolve("org/tiny")  # the second run fetches only what is missing
    fetched = [r.path for r in hub.requests[before:] if r.method == "GET" and "/api/" not in r.path]
    assert len(fetched) == 1 and fetched[0].startswith("/cdn/"), fetched
    assert (src.path / "model.safetensors").read_bytes() == (
        tiny_llama_bpe / "model.safetensors"
    ).read_bytes()


def test_offline_mode_uses_the_cache(
    hub: FakeHub,
    tiny_llama_bpe: Path,
    tiny_ggufs: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub.add_repo("org/tiny", tiny_llama_bpe)
    hub.add_repo("org/tiny-GGUF", tiny_ggufs)
    online = resolve("org/tiny")
    resolve("org/tiny-GGUF", quant="Q8_0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    before = len(hub.requests)
    offline = resolve("org/tiny")
    assert offline.commit == online.commit and (offline.path / "config.json").is_file()
    assert resolve("org/tiny-GGUF", quant="q8_0").gguf_type == "Q8_0"
    assert len(hub.requests) == before, "offline mode must not touch the network"
    with pytest.raises(UsageError, match="offers Q8_0"):  # only the cached file is on offer
        resolve("org/tiny-GGUF", quant="F16")
    with pytest.raises(SourceError, match="HF_HUB_OFFLINE"):
        resolve("org/never-downloaded")


def test_no_network(hub: FakeHub, tiny_llama_bpe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add_repo("org/tiny", tiny_llama_bpe)
    resolve("org/tiny")
    dead = "http://127.0.0.1:9"  # discard port: connection refused
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", dead + "/{repo_id}/resolve/{revision}/{filename}"
    )
    with pytest.raises(SourceError) as err:
        resolve("org/tiny")
    assert f"cannot reach {dead}" in str(err.value)
    assert "cached copy of org/tiny exists" in str(err.value) and "HF_HUB_OFFLINE=1" in str(
        err.value
    )
    with pytest.raises(SourceError) as err:
        resolve("org/other")
    assert "not in the cache" in str(err.value)


# ------------------------------------------------------------------------------ plan + CLI


def test_plan_line_and_fat32_warning(tmp_path: Path, tiny_llama_bpe: Path) -> None:
    p = plan(str(tiny_llama_bpe), "Q8_0", tmp_path / "x.run")
    line = p.describe()
    assert "quant Q8_0" in line and "file" in line and "RAM to run (4096-token context)" in line
    assert p.kv_bytes_per_token and p.warnings == []

    src = Source("checkpoint", tiny_llama_bpe, "big", "big", repo_id="org/big", revision="v1")
    big = BuildPlan(src, parse_quant("F16"), tmp_path / "big.run", n_params=7_000_000_000)
    assert big.warnings and "FAT32" in big.warnings[0]
    assert "source org/big@v1 (checkpoint)" in big.describe()
    assert "7.00B parameters" in big.describe()


def test_imatrix_quant_refused_before_download(
    hub: FakeHub, tiny_llama_bpe: Path, tmp_path: Path
) -> None:
    hub.add_repo("org/tiny", tiny_llama_bpe)
    with pytest.raises(UsageError, match="importance matrix"):
        plan("org/tiny", "IQ2_XS", tmp_path / "x.run")
    assert hub.requests == []


def test_cli_build_from_hub(
    hub: FakeHub,
    tiny_llama_bpe: Path,
    fake_stub: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sha = hub.add_repo("org/tiny", tiny_llama_bpe)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out, err = run_cli(
        "build", "org/tiny", "--quant", "Q8_0", cwd=out_dir, monkeypatch=monkeypatch
    )
    assert code == 0, err
    produced = out_dir / "tiny.Q8_0.run"
    assert out.strip() == str(produced)
    assert sorted(p.name for p in out_dir.iterdir()) == [produced.name]
    plan_line = next(line for line in err.splitlines() if "source org/tiny" in line)
    assert sha[:10] in plan_line and "RAM" in plan_line and "quant Q8_0" in plan_line
    assert "HTTP Request" not in err  # the HTTP client's chatter stays hidden
    manifest = read_bundle(produced).manifest
    assert manifest.source == "org/tiny" and manifest.source_commit == sha
    assert manifest.quant == "Q8_0" and manifest.name == "tiny"


def test_cli_build_gguf_repo_and_errors(
    hub: FakeHub,
    tiny_ggufs: dict[str, bytes],
    fake_stub: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub.add_repo("org/tiny-GGUF", tiny_ggufs)
    code, out, err = run_cli(
        "build", "org/tiny-GGUF", "--quant", "q8_0", cwd=tmp_path, monkeypatch=monkeypatch
    )
    assert code == 0, err
    assert Path(out.strip()).name == "tiny.Q8_0.run"
    assert read_bundle(Path(out.strip())).manifest.gguf_size == len(tiny_ggufs["tiny.Q8_0.gguf"])

    code, _, err = run_cli(
        "build", "org/tiny-GGUF", "--quant", "Q4_K_M", cwd=tmp_path, monkeypatch=monkeypatch
    )
    assert code == 2 and "offers F16, Q8_0" in err and err.count("\n") == 1, err
    code, _, err = run_cli("build", "org/missing", cwd=tmp_path, monkeypatch=monkeypatch)
    assert code == 3 and "no model org/missing" in err and err.count("\n") == 1, err
    code, _, err = run_cli("build", "tinylama", cwd=tmp_path, monkeypatch=monkeypatch)
    assert code == 3 and "did you mean TinyLlama" in err


def test_cli_build_pasted_names(
    hub: FakeHub,
    tiny_llama_bpe: Path,
    tiny_ggufs: dict[str, bytes],
    fake_stub: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub.add_repo("org/tiny-GGUF", tiny_ggufs)
    hub.add_repo("org/tiny", tiny_llama_bpe)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out, err = run_cli(
        "build", "hf.co/org/tiny-GGUF:q8_0", cwd=out_dir, monkeypatch=monkeypatch
    )
    assert code == 0, err
    produced = Path(out.strip())
    assert produced.name == "tiny.Q8_0.run"
    manifest = read_bundle(produced).manifest
    assert manifest.source == "hf.co/org/tiny-GGUF:q8_0"
    assert manifest.source_repo == "org/tiny-GGUF" and manifest.quant == "Q8_0"
    produced.unlink()

    for args, says in [
        (
            ["https://huggingface.co/org/tiny-GGUF:Q8_0", "--quant", "F16"],
            "asks for Q8_0 but --quant says F16",
        ),
        (["hf.co/org/tiny-GGUF:Q4_K_M"], "has no Q4_K_M GGUF file; it offers F16, Q8_0"),
        (["hf.co/org/tiny:Q8_0"], "give `org/tiny --quant Q8_0` instead of `:Q8_0`"),
        (["org/tiny-GGUF:"], "nothing follows the ':'"),
    ]:
        code, _, err = run_cli("build", *args, cwd=out_dir, monkeypatch=monkeypatch)
        assert code == 2 and says in err and err.count("\n") == 1, err
    code, _, err = run_cli(
        "build", "https://huggingface.co/datasets/org/x", cwd=out_dir, monkeypatch=monkeypatch
    )
    assert code == 3 and "not a model" in err and err.count("\n") == 1, err
    assert list(out_dir.iterdir()) == [], "nothing left behind"

    code, out, _ = run_cli("build", "--help", cwd=out_dir, monkeypatch=monkeypatch)
    assert code == 0
    assert "packer build hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M" in out
    assert "https://huggingface.co/" in out and ":QUANT" in out


def test_cli_revision_and_token_options(
    hub: FakeHub, tiny_llama_bpe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = {p.name: p.read_bytes() for p in tiny_llama_bpe.iterdir() if p.is_file()}
    v1 = hub.add_repo(
        "meta/gated",
        {**base, "generation_config.json": b'{"temperature": 0.1}'},
        revision="v1",
        gated=True,
        tokens=("hf_good",),
    )
    hub.add_repo("meta/gated", {**base, "generation_config.json": b'{"temperature": 0.9}'})
    out = tmp_path / "m.gguf"
    code, _, err = run_cli(
        "convert", "meta/gated", "-o", str(out), cwd=tmp_path, monkeypatch=monkeypatch
    )
    assert code == 3 and "is gated" in err and not out.exists()
    code, stdout, err = run_cli(
        "convert",
        "meta/gated",
        "-o",
        str(out),
        "--revision",
        "v1",
        "--token",
        "hf_good",
        cwd=tmp_path,
        monkeypatch=monkeypatch,
    )
    assert code == 0, err
    assert stdout.strip() == str(out) and out.stat().st_size > 0
    storage = Path(constants.HF_HUB_CACHE) / "models--meta--gated"
    assert (storage / "refs" / "v1").read_text() == v1
    assert b"0.1" in (storage / "snapshots" / v1 / "generation_config.json").read_bytes()


def test_cli_models_and_quants(
    hub: FakeHub, tiny_llama_bpe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run_cli("models", cwd=tmp_path, monkeypatch=monkeypatch)
    assert code == 0
    line = next(row for row in out.splitlines() if row.startswith("TinyLlama "))
    assert TINYLLAMA in line and "1.1B" in line and "~782 MB" in line
    gemma = next(row for row in out.splitlines() if row.startswith("Gemma-2-2b-it "))
    assert "[gated" in gemma and "google/gemma-2-2b-it" in gemma

    code, out, err = run_cli("quants", "TinyLlama", cwd=tmp_path, monkeypatch=monkeypatch)
    assert code == 0 and "1.10B parameters" in err
    q8 = next(line for line in out.splitlines() if "Q8_0" in line)
    assert "~ 1.17 GB" in q8

    hub.add_repo("org/tiny", tiny_llama_bpe, params=2_000_000_000)
    code, out, err = run_cli("quants", "org/tiny", cwd=tmp_path, monkeypatch=monkeypatch)
    assert code == 0, err
    assert "~ 2.12 GB" in next(line for line in out.splitlines() if "Q8_0" in line)
    code, out, err = run_cli(
        "quants", "https://huggingface.co/org/tiny", cwd=tmp_path, monkeypatch=monkeypatch
    )
    assert code == 0 and "~ 2.12 GB" in out, err
    code, _, err = run_cli("quants", "TinyLlama:Q8_0", cwd=tmp_path, monkeypatch=monkeypatch)
    assert code == 0 and "alias table" in err
    assert not [r for r in hub.requests if "/resolve/" in r.path], "metadata only"

    code, out, err = run_cli("quants", str(tiny_llama_bpe), cwd=tmp_path, monkeypatch=monkeypatch)
    assert code == 0 and "counted in the safetensors headers" in err


def test_progress_bars_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from huggingface_hub.utils import are_progress_bars_disabled

    if are_progress_bars_disabled():
        pytest.skip("HF_HUB_DISABLE_PROGRESS_BARS is set here")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with hub_mod._quiet_client():
        assert are_progress_bars_disabled()
    assert not are_progress_bars_disabled()
    monkeypatch.setattr(sys, "stderr", Terminal())
    with hub_mod._quiet_client():
        assert not are_progress_bars_disabled()
