"""The licence and model card travel with the model (issue #15, item 4).

``packer build`` finds them (a local folder's own files, the files next to a GGUF and its
``general.license``, the hub repo's files, downloaded and verified like the rest), says in one
line what the licence asks, stores id, texts and card in the manifest; ``model.run --license``
prints them. Fast: the packing runs with the ``fake_stub`` and the loopback hub
(``tests/hubserver.py``); the runtime side unfrozen (``python -m packer.runtime --bundle``).
The real model.run: ``test_license_of_a_real_model_run`` (slow).
"""

from __future__ import annotations

import codecs
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import smollm_gguf_path

from packer import licence
from packer.build import plan
from packer.errors import SourceError
from packer.runtime import i18n
from packer.runtime.licence import show
from packer.runtime.manifest import LicenseFile, Manifest
from packer.runtime.payload import read_bundle
from packer.source import resolve

sys.path.insert(0, str(Path(__file__).resolve().parent))

import test_hub  # noqa: E402
from hubserver import FakeHub  # noqa: E402

hub = test_hub.hub  # a fake hub and a private HF cache per test
tiny_ggufs = test_hub.tiny_ggufs
run_cli = test_hub.run_cli
downloads = test_hub.downloads
ROOT = Path(__file__).resolve().parents[1]

LLAMA_CARD = """\
---
license: llama3.2
language:
- en
- es
pipeline_tag: text-generation
---
# Tiny Llama

A tiny model card. Señales de tráfico: ¡atención! 😀
"""
LLAMA_LICENSE = (
    "LLAMA 3.2 COMMUNITY LICENSE AGREEMENT\nLlama 3.2 Version Release Date: September 25, 2024\n"
)
USE_POLICY = "# Llama 3.2 Acceptable Use Policy\nDo not use it to harm people.\n"


def _with_licence(folder: Path) -> Path:
    (folder / "LICENSE").write_text(LLAMA_LICENSE, encoding="utf-8")
    (folder / "USE_POLICY.md").write_text(USE_POLICY, encoding="utf-8")
    (folder / "README.md").write_text(LLAMA_CARD, encoding="utf-8")
    return folder


def _licence_lines(err: str) -> list[str]:
    """The build's licence line(s), and any warning about the licence texts."""
    return [
        line
        for line in err.splitlines()
        if line.startswith("packer: licence:") or line.startswith("packer: warning:")
    ]


# ------------------------------------------------------------------------------ names and terms


@pytest.mark.parametrize(
    "name",
    [
        "LICENSE",
        "LICENSE.txt",
        "LICENSE.md",
        "license",
        "LICENCE",
        "LICENSE-MODEL",
        "LICENSE_CODE.txt",
        "NOTICE",
        "NOTICE.txt",
        "COPYING",
        "USE_POLICY.md",
        "ACCEPTABLE_USE_POLICY.md",
        "PROHIBITED_USE_POLICY.md",
    ],
)
def test_licence_file_names(name: str) -> None:
    assert licence.is_licence_file(name)


@pytest.mark.parametrize(
    "name",
    [
        "LICENSE.pdf",
        "docs/LICENSE",
        "README.md",
        "LICENSES_OF_DATASETS/x",
        "MY_LICENSE",
        "model.safetensors",
    ],
)
def test_not_licence_file_names(name: str) -> None:
    assert not licence.is_licence_file(name)


def test_doc_names_order_and_card() -> None:
    names = ["config.json", "README.md", "USE_POLICY.md", "NOTICE", "LICENSE.txt", "sub/README.md"]
    assert licence.doc_names(names) == ["LICENSE.txt", "NOTICE", "USE_POLICY.md", "README.md"]


@pytest.mark.parametrize(
    ("licence_id", "name", "pass_on", "restricts"),
    [
        ("apache-2.0", None, True, False),
        ("MIT", None, True, False),
        ("llama3.2", None, True, True),
        ("llama2", None, True, True),
        ("gemma", None, True, True),
        ("cc-by-4.0", None, True, False),
        ("cc-by-nc-sa-4.0", None, True, True),
        ("cc-by-nd-4.0", None, True, True),
        ("creativeml-openrail-m", None, True, True),
        ("other", "qwen", True, True),
        ("cc0-1.0", None, False, False),
    ],
)
def test_known_terms(licence_id: str, name: str | None, pass_on: bool, restricts: bool) -> None:
    lic = licence.Licence(license=licence_id, license_name=name)
    terms = lic.terms
    assert terms is not None and terms.title
    assert (terms.pass_on is not None) == pass_on
    assert (terms.restricts is not None) == restricts


def test_unknown_and_other_licences_are_read_me() -> None:
    for lic in (
        licence.Licence(license="other", files=(LicenseFile("LICENSE", "terms"),), where="x"),
        licence.Licence(license="other", license_name="acme-model-licence", where="x"),
        licence.Licence(license="some-new-id", where="x"),
    ):
        assert lic.terms is None
        line = lic.notice()
        assert "packer does not know this licence" in line and "before sharing" in line, line
        assert "\n" not in line


# ------------------------------------------------------------------------------ local sources


def test_local_checkpoint_licence_goes_into_the_manifest(
    tiny_llama_bpe: Path,
    copy_checkpoint,  # type: ignore[no-untyped-def]
    fake_stub: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ckpt = _with_licence(copy_checkpoint(tiny_llama_bpe))
    (ckpt / "LICENSE.pdf").write_bytes(b"%PDF-1.4 \0 not carried")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out, err = run_cli(
        "build", str(ckpt), "--quant", "Q8_0", cwd=out_dir, monkeypatch=monkeypatch
    )
    assert code == 0, err
    lines = _licence_lines(err)
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(
        "packer: licence: llama3.2 (Llama 3.2 Community License): requires passing on"
    ), line
    assert "restricts use: Meta's acceptable use policy" in line
    assert "carried in the file: LICENSE, USE_POLICY.md, model card" in line
    assert "model.run --license" in line
    m = read_bundle(Path(out.strip())).manifest
    assert m.license == "llama3.2" and m.license_name is None and m.license_link is None
    assert m.license_files == (
        LicenseFile("LICENSE", LLAMA_LICENSE),
        LicenseFile("USE_POLICY.md", USE_POLICY),
    )
    assert m.model_card == LLAMA_CARD  # in full, metadata and all


def test_checkpoint_without_licence_says_so(
    tiny_llama_bpe: Path, fake_stub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run_cli(
        "build", str(tiny_llama_bpe), "--quant", "Q8_0", cwd=tmp_path, monkeypatch=monkeypatch
    )
    assert code == 0, err
    lines = _licence_lines(err)
    assert len(lines) == 1, err
    assert lines[0] == (
        f"packer: licence: none found in the folder {tiny_llama_bpe} (no model card, no LICENSE file): "
        "check the model's terms before sharing the file"
    )
    assert "warning" not in err
    m = read_bundle(Path(out.strip())).manifest
    assert (m.license, m.license_files, m.model_card) == (None, (), None)


def test_card_without_licence_id(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# A model\nNo metadata here.\n")
    lic = licence.collect(tmp_path, where="the folder m")
    assert lic.license is None and lic.model_card == "# A model\nNo metadata here.\n"
    assert lic.notice() == (
        "licence: none found in the folder m (the model card has no licence id, no LICENSE "
        "file): check the model's terms before sharing the file; carried in the file: model "
        "card (model.run --license prints it)"
    )


def test_licence_file_without_id(tmp_path: Path) -> None:
    (tmp_path / "LICENSE").write_text("All rights reserved.\n")
    lic = licence.collect(tmp_path, where="the folder m")
    assert lic.license is None and lic.files == (LicenseFile("LICENSE", "All rights reserved.\n"),)
    line = lic.notice()
    assert line.startswith(
        "licence: no licence id in the model card or metadata, LICENSE found: read it"
    )


def test_other_licence_name_and_link(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text(
        "---\nlicense: other\nlicense_name: qwen\nlicense_link: https://example.org/qwen/LICENSE\n---\n# Q\n"
    )
    lic = licence.collect(tmp_path, where="the folder q")
    assert (lic.license, lic.license_name, lic.license_link) == (
        "other",
        "qwen",
        "https://example.org/qwen/LICENSE",
    )
    line = lic.notice()
    assert line.startswith("licence: qwen (Qwen License): requires passing on a copy"), line
    assert (
        "no licence text found in the folder q, only its id (https://example.org/qwen/LICENSE)"
        in line
    )


def test_license_list_and_bad_yaml(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("---\nlicense:\n- apache-2.0\n- mit\n---\n")
    lic = licence.collect(tmp_path)
    assert lic.license == "apache-2.0, mit"
    assert lic.terms is not None and lic.terms.title == "Apache License 2.0 and MIT License"
    (tmp_path / "README.md").write_text("---\nlicense: [apache-2.0\n---\n# broken\n")
    lic = licence.collect(tmp_path)
    assert lic.license is None and lic.model_card is not None
    assert lic.notes == (
        "the model card's metadata is not valid YAML (line 2): its licence id is ignored",
    )


def test_gguf_licence_from_its_metadata_and_files_next_to_it(tmp_path: Path) -> None:
    gguf = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.symlink_to(smollm_gguf_path())
    src = resolve(str(gguf))
    lic = licence.for_source(src)
    assert lic.license == "apache-2.0"  # the GGUF's general.license
    assert lic.files == () and lic.model_card is None
    assert "no licence text found in SmolLM2-135M-Instruct.Q4_1.gguf or next to it" in lic.notice()
    # files next to it are carried; the GGUF's own metadata wins over a card's
    (tmp_path / "LICENSE").write_text("Apache License\nVersion 2.0, January 2004\n")
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# SmolLM2\n")
    lic = licence.for_source(src)
    assert lic.license == "apache-2.0"
    assert [f.name for f in lic.files] == [
        "LICENSE"
    ] and lic.model_card == "---\nlicense: mit\n---\n# SmolLM2\n"


# ------------------------------------------------------------------------------ text and caps


def test_not_utf8_is_replaced_and_binary_left_out(tmp_path: Path) -> None:
    (tmp_path / "LICENSE").write_bytes(codecs.BOM_UTF8 + "Copyright © 2024 ACME\n".encode())
    (tmp_path / "NOTICE").write_bytes("Café Müller\n".encode("latin-1"))
    (tmp_path / "COPYING").write_bytes(b"\x7fELF\0\0binary")
    lic = licence.collect(tmp_path)
    by_name = {f.name: f.text for f in lic.files}
    assert by_name == {"LICENSE": "Copyright © 2024 ACME\n", "NOTICE": "Caf\ufffd M\ufffdller\n"}
    assert lic.notes == (
        "COPYING is not a text file (it has NUL bytes); not carried",
        "NOTICE is not valid UTF-8: its undecodable bytes were replaced with U+FFFD",
    )


def test_caps(tmp_path: Path) -> None:
    line = "All work and no play makes Jack a dull boy. ñ\n"  # 47 bytes, 46 characters
    card = "---\nlicense: mit\n---\n" + line * (licence.MAX_MODEL_CARD // len(line) + 100)
    (tmp_path / "README.md").write_text(card)
    big = line * (licence.MAX_LICENCE_FILE // len(line) + 10)
    bigs = ["LICENSE", "LICENSE-A", "LICENSE-B", "LICENSE-C", "LICENSE-D"]
    for name in bigs:
        (tmp_path / name).write_text(big)
    notices = [f"NOTICE-{i:02d}" for i in range(licence.MAX_FILES)]
    for name in notices:
        (tmp_path / name).write_text("notice\n")
    lic = licence.collect(tmp_path)
    assert lic.license == "mit"  # the metadata at the top survives the cut
    assert lic.model_card is not None
    card_bytes = len(lic.model_card.encode())
    assert licence.MAX_MODEL_CARD - len(line) <= card_bytes <= licence.MAX_MODEL_CARD + 200
    assert lic.model_card.endswith(
        "[... cut by packer: the full README.md is 135 KiB; read it where the model comes from]\n"
    )
    kept = lic.model_card[: lic.model_card.index("[... cut by packer")]
    assert card.startswith(kept) and kept.endswith(line)  # cut at a line end, nothing lost before
    # 128 KiB each: four fill the 512 KiB of licence texts; twelve files at most
    assert [f.name for f in lic.files] == bigs[:4]
    for f in lic.files:
        assert (
            licence.MAX_LICENCE_FILE - 1024  # the last: what the total leaves
            <= len(f.text.encode())
            <= licence.MAX_LICENCE_FILE + 200
        )
        assert big.startswith(f.text[: f.text.index("[... cut by packer")])
    assert lic.notes == (
        "more than 12 licence files: NOTICE-07, NOTICE-08, NOTICE-09, NOTICE-10, NOTICE-11 not carried",
        *[
            f"{name} is 131 KiB: only its first 128 KiB are carried in the file"
            for name in bigs[:4]
        ],
        "README.md is 135 KiB: only its first 128 KiB are carried in the file",
        "the licence texts fill 512 KiB: LICENSE-D, " + ", ".join(notices[:7]) + " not carried",
    )


def test_cut_is_a_warning_line_of_the_build(
    tiny_llama_bpe: Path,
    copy_checkpoint,  # type: ignore[no-untyped-def]
    fake_stub: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ckpt = copy_checkpoint(tiny_llama_bpe)
    (ckpt / "README.md").write_text(
        "---\nlicense: apache-2.0\n---\n" + "x" * 100 + "\n" * 2 + "y\n" * 100_000
    )
    p = plan(str(ckpt), "Q8_0", tmp_path / "m.run")
    assert p.warnings == ["README.md is 195 KiB: only its first 128 KiB are carried in the file"]


# ------------------------------------------------------------------------------ hub sources


def _tiny_repo(folder: Path) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    files["LICENSE"] = LLAMA_LICENSE.encode()
    files["USE_POLICY.md"] = USE_POLICY.encode()
    files["README.md"] = LLAMA_CARD.encode()
    files["LICENSE.pdf"] = b"%PDF binary"
    files["original/LICENSE"] = b"a copy in a subfolder, not downloaded"
    return files


def test_hub_build_downloads_and_carries_licence(
    hub: FakeHub,
    tiny_llama_bpe: Path,
    fake_stub: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub.add_repo("org/tiny", _tiny_repo(tiny_llama_bpe))
    code, out, err = run_cli(
        "build", "org/tiny", "--quant", "Q8_0", cwd=tmp_path, monkeypatch=monkeypatch
    )
    assert code == 0, err
    got = downloads(hub)
    assert {"LICENSE", "USE_POLICY.md", "README.md"} <= set(got), got
    assert "LICENSE.pdf" not in got and "original/LICENSE" not in got
    assert got.index("README.md") < got.index(next(f for f in got if f.startswith("cdn:"))), (
        "the small files come before the weights"
    )
    line = _licence_lines(err)
    assert len(line) == 1, err
    assert line[0].startswith("packer: licence: llama3.2 (Llama 3.2 Community License)"), err
    m = read_bundle(Path(out.strip())).manifest
    assert m.license == "llama3.2" and m.model_card == LLAMA_CARD
    assert [f.name for f in m.license_files] == ["LICENSE", "USE_POLICY.md"]

    # offline, from the cache: the same texts
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    src = resolve("org/tiny")
    lic = licence.for_source(src)
    assert lic.license == "llama3.2" and [f.name for f in lic.files] == ["LICENSE", "USE_POLICY.md"]


def test_hub_damaged_licence_is_caught(hub: FakeHub, tiny_llama_bpe: Path) -> None:
    hub.add_repo("org/tiny", _tiny_repo(tiny_llama_bpe))
    hub.corrupt.add("LICENSE")
    with pytest.raises(SourceError) as err:
        resolve("org/tiny")
    msg = str(err.value)
    assert msg.startswith("LICENSE of org/tiny is damaged: its git blob id is"), msg
    assert "\n" not in msg
    assert not [f for f in downloads(hub) if f.startswith("cdn:")], "refused before the weights"
    hub.corrupt.clear()
    src = resolve("org/tiny")  # the damaged copy left the cache: downloaded again, right
    assert licence.for_source(src).files[0] == LicenseFile("LICENSE", LLAMA_LICENSE)


def test_hub_gguf_repo_licence_from_its_top_folder(
    hub: FakeHub, tiny_ggufs: dict[str, bytes]
) -> None:
    files = {
        "Q8_0/tiny.Q8_0.gguf": tiny_ggufs["tiny.Q8_0.gguf"],
        "README.md": b"---\nlicense: gemma\nlicense_link: https://ai.google.dev/gemma/terms\n---\n# GGUF\n",
        "NOTICE": b"Gemma is provided under and subject to the Gemma Terms of Use\n",
    }
    hub.add_repo("org/tiny-GGUF", files)
    src = resolve("org/tiny-GGUF:Q8_0")
    assert src.kind == "gguf" and src.path.parent.name == "Q8_0"
    got = downloads(hub)
    assert got[:2] == ["NOTICE", "README.md"] and got[2].startswith("cdn:"), got
    lic = licence.for_source(src)
    assert lic.license == "gemma" and lic.license_link == "https://ai.google.dev/gemma/terms"
    assert lic.files == (LicenseFile("NOTICE", files["NOTICE"].decode()),)
    line = lic.notice()
    assert line.startswith("licence: gemma (Gemma Terms of Use): requires passing on"), line
    assert "restricts use: Google's Gemma prohibited use policy" in line


# ------------------------------------------------------------------------------ model.run --license


def _manifest(**fields: object) -> Manifest:
    return Manifest(gguf_size=1, gguf_sha256="0" * 64, **fields)  # type: ignore[arg-type]


def test_show_prints_everything_in_order() -> None:
    m = _manifest(
        license="llama3.2",
        license_files=(
            LicenseFile("LICENSE", LLAMA_LICENSE),
            LicenseFile("USE_POLICY.md", USE_POLICY),
        ),
        model_card=LLAMA_CARD,
    )
    out, err = io.StringIO(), io.StringIO()
    i18n.setup("en")
    assert show(m, "m.run", out, err) == 0
    assert err.getvalue() == ""
    assert out.getvalue() == (
        "==== Licence: llama3.2 ====\n"
        "\n==== Licence text: LICENSE ====\n"
        + LLAMA_LICENSE
        + "\n==== Licence text: USE_POLICY.md ====\n"
        + USE_POLICY
        + "\n==== Model card ====\n"
        + LLAMA_CARD
    )


def test_show_only_an_id_and_nothing() -> None:
    i18n.setup("en")
    out, err = io.StringIO(), io.StringIO()
    m = _manifest(license="other", license_name="acme", license_link="https://acme.example/terms")
    assert show(m, "m.run", out, err) == 0
    assert out.getvalue().splitlines() == [
        "==== Licence: other (acme) ====",
        "Terms: https://acme.example/terms",
        "This file carries no licence text, only its name: read the terms where the model comes "
        "from before sharing it.",
    ]
    out, err = io.StringIO(), io.StringIO()
    assert show(_manifest(), "old.run", out, err) == 1
    assert out.getvalue() == ""
    assert err.getvalue() == (
        "old.run carries no licence and no model card: check the model's terms before sharing it\n"
    )


def test_show_in_spanish() -> None:
    try:
        i18n.setup("es")
        out, err = io.StringIO(), io.StringIO()
        m = _manifest(
            license="apache-2.0",
            license_files=(LicenseFile("LICENSE", "Apache\n"),),
            model_card="# Card\n",
        )
        assert show(m, "m.run", out, err) == 0
        assert out.getvalue().splitlines()[:5] == [
            "==== Licencia: apache-2.0 ====",
            "",
            "==== Texto de la licencia: LICENSE ====",
            "Apache",
            "",
        ]
        assert "==== Ficha del modelo ====\n# Card\n" in out.getvalue()
        assert show(_manifest(), "viejo.run", out, err) == 1
        assert err.getvalue().startswith("viejo.run no incluye licencia ni ficha del modelo")
    finally:
        i18n.setup("en")


def _runtime(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The runtime unfrozen, as model.run runs it, with a clean environment."""
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "packer.runtime", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_license_flag_on_a_built_file(
    tiny_llama_bpe: Path,
    copy_checkpoint,  # type: ignore[no-untyped-def]
    fake_stub: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ckpt = _with_licence(copy_checkpoint(tiny_llama_bpe))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out, err = run_cli(
        "build", str(ckpt), "--quant", "Q8_0", cwd=out_dir, monkeypatch=monkeypatch
    )
    assert code == 0, err
    built = Path(out.strip())
    proc = _runtime("--bundle", str(built), "--license")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.startswith("==== Licence: llama3.2 ====\n")
    assert LLAMA_LICENSE in proc.stdout and USE_POLICY in proc.stdout and LLAMA_CARD in proc.stdout
    es = _runtime("--bundle", str(built), "--license", env={"LANG": "es_ES.UTF-8"})
    assert es.returncode == 0, es.stderr
    assert "==== Licencia: llama3.2 ====" in es.stdout and "==== Ficha del modelo ====" in es.stdout
    assert "==== Texto de la licencia: USE_POLICY.md ====" in es.stdout
    assert "Señales de tráfico: ¡atención! 😀" in es.stdout

    bare = tmp_path / "bare"  # a file built from a checkpoint without any licence
    bare.mkdir()
    code, out, err = run_cli(
        "build", str(tiny_llama_bpe), "--quant", "Q8_0", cwd=bare, monkeypatch=monkeypatch
    )
    assert code == 0, err
    none = _runtime("--bundle", out.strip(), "--license")
    assert none.returncode == 1 and none.stdout == ""
    assert none.stderr.strip().endswith(
        "carries no licence and no model card: check the model's terms before sharing it"
    )
    assert none.stderr.count("\n") == 1


# ------------------------------------------------------------------------------ the real thing


@pytest.mark.slow
def test_license_of_a_real_model_run(demo_checkpoint: Path, tmp_path: Path) -> None:
    """A real model.run from the demo checkpoint plus a LICENSE and a model card: `--license`
    prints them with an empty environment, and in Spanish with LANG=es_ES.UTF-8."""
    ckpt = tmp_path / "SmolLM2-135M-Instruct"
    ckpt.mkdir()
    for f in demo_checkpoint.iterdir():
        (ckpt / f.name).symlink_to(f)
    apache = "                                 Apache License\n                           Version 2.0, January 2004\n"
    (ckpt / "LICENSE").write_text(apache)
    card = "---\nlicense: apache-2.0\nlanguage: [en]\n---\n# SmolLM2\n\nSmolLM2 is a family of compact language models.\n"
    (ckpt / "README.md").write_text(card)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "packer", "build", str(ckpt), "--quant", "Q5_K_M"],
        cwd=out_dir,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr
    lines = _licence_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        "packer: licence: apache-2.0 (Apache License 2.0): requires passing on a copy of the "
        "licence and its NOTICE file with every copy; carried in the file: LICENSE, model card"
    ), proc.stderr
    exe = Path(proc.stdout.strip())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(*env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["env", "-i", *env, str(exe), "--license"],
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=300,
        )

    en = run()
    assert en.returncode == 0, en.stderr
    assert en.stdout == (
        "==== Licence: apache-2.0 ====\n"
        "\n==== Licence text: LICENSE ====\n" + apache + "\n==== Model card ====\n" + card
    )
    es = run("LANG=es_ES.UTF-8")
    assert es.returncode == 0, es.stderr
    assert es.stdout == (
        "==== Licencia: apache-2.0 ====\n"
        "\n==== Texto de la licencia: LICENSE ====\n"
        + apache
        + "\n==== Ficha del modelo ====\n"
        + card
    )
