"""Embedding models: tiny random sentence-transformers checkpoints (tests/embedders.py)
converted to GGUF and embedded by llama.cpp, against transformers with the folder's pooling
(Nomic BERT too: transformers >= 5's own ``NomicBertModel``, for both the hub's remote-code
config.json and the one transformers' ``save_pretrained`` writes).

Per architecture and pooling: cosine >= 0.999 on English and Spanish sentences, the same
tokens as the checkpoint's tokenizer, and the same similarity ranking as the reference
(random weights make no real retrieval; the ranking must still be the reference's). Bad
pooling configs fail with one line and leave nothing behind.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from embedders import (  # noqa: E402
    make_bert,
    make_embeddinggemma,
    make_nomic_bert,
    make_nomic_bert_transformers,
    make_xlm_roberta,
    reference_embeddings,
    token_ids,
    write_pooling,
)

from packer.convert import SUPPORTED_ARCHITECTURES, convert_checkpoint  # noqa: E402
from packer.convert.pooling import NORMALIZE_KEY  # noqa: E402
from packer.errors import UnsupportedModelError  # noqa: E402

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "We packed the model into a single executable file that runs offline.",
    "¿Qué es la cuantización? Es reducir la precisión de los pesos del modelo.",
    "Mañana vamos a la montaña con mi compañero; la canción está en español.",
    "Corazón, pingüino, camión, árbol, también, lápiz, fútbol, jamás.",
]
QUERY = "¿Qué es la cuantización del modelo?"
MIN_COSINE = 0.999

# name -> (maker, pooling mode, normalize, expected GGUF pooling type)
CASES = {
    "bert-mean": (make_bert, "mean", True, gguf.PoolingType.MEAN),
    "bert-cls": (make_bert, "cls", False, gguf.PoolingType.CLS),
    "xlmr-cls": (make_xlm_roberta, "cls", True, gguf.PoolingType.CLS),
    "xlmr-mean": (make_xlm_roberta, "mean", True, gguf.PoolingType.MEAN),
    "gemma-mean": (make_embeddinggemma, "mean", True, gguf.PoolingType.MEAN),
    "nomic-mean": (make_nomic_bert, "mean", True, gguf.PoolingType.MEAN),
    "nomic-transformers": (make_nomic_bert_transformers, "mean", True, gguf.PoolingType.MEAN),
}
ARCH = {"bert": "bert", "xlmr": "bert", "gemma": "gemma-embedding", "nomic": "nomic-bert"}
VOCAB = {"bert": "bert", "xlmr": "t5", "gemma": "llama", "nomic": "bert"}


@pytest.fixture(scope="session")
def embed_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("embedders")
    out: dict[str, Path] = {}
    made: dict[str, Path] = {}
    for name, (maker, mode, normalize, _) in CASES.items():
        base = maker.__name__
        if base not in made:
            made[base] = maker(root / base, mode, normalize)
            out[name] = made[base]
        else:  # same weights and tokenizer, another pooling
            folder = root / name
            shutil.copytree(made[base], folder)
            write_pooling(folder, mode, normalize)
            out[name] = folder
    return out


@pytest.fixture(scope="session")
def embed_gguf(
    embed_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    root = tmp_path_factory.mktemp("embedders-gguf")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            out = root / f"{name}.gguf"
            convert_checkpoint(embed_checkpoints[name], out, outtype="f32")
            cache[name] = out
        return cache[name]

    return get


def llama_embeddings(path: Path, texts: list[str]) -> list[np.ndarray]:
    """Pooled as the GGUF says, not normalized by llama-cpp-python."""
    llm = llama_cpp.Llama(
        model_path=str(path), embedding=True, n_ctx=128, n_batch=128, n_ubatch=128, verbose=False
    )
    try:
        return [np.array(llm.embed(t, normalize=False)) for t in texts]
    finally:
        llm.close()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_registered() -> None:
    assert {"BertModel", "XLMRobertaModel", "Gemma3TextModel", "NomicBertModel"} <= set(
        SUPPORTED_ARCHITECTURES
    )


@pytest.mark.parametrize("name", list(CASES))
def test_vectors_match_reference(
    name: str, embed_checkpoints: dict[str, Path], embed_gguf: Callable[[str], Path]
) -> None:
    folder = embed_checkpoints[name]
    expected = [np.array(v) for v in reference_embeddings(folder, SENTENCES)]
    got = llama_embeddings(embed_gguf(name), SENTENCES)
    normalize = CASES[name][2]
    for text, exp, act in zip(SENTENCES, expected, got, strict=True):
        cos = cosine(exp, act)
        print(f"{name}: cosine {cos:.6f} for {text[:30]!r}")
        assert cos >= MIN_COSINE, (name, text, cos)
        if not normalize:  # raw pooled vectors: the length is the model's too
            assert np.linalg.norm(act) == pytest.approx(np.linalg.norm(exp), rel=1e-3)


@pytest.mark.parametrize("name", ["bert-mean", "xlmr-cls", "gemma-mean", "nomic-mean"])
def test_ranking_matches_reference(
    name: str, embed_checkpoints: dict[str, Path], embed_gguf: Callable[[str], Path]
) -> None:
    folder = embed_checkpoints[name]
    ref = [np.array(v) for v in reference_embeddings(folder, [QUERY, *SENTENCES])]
    got = llama_embeddings(embed_gguf(name), [QUERY, *SENTENCES])
    ref_order = np.argsort([-cosine(ref[0], d) for d in ref[1:]])
    got_order = np.argsort([-cosine(got[0], d) for d in got[1:]])
    assert list(got_order) == list(ref_order)


@pytest.mark.parametrize("name", ["bert-mean", "xlmr-cls", "gemma-mean"])
def test_tokens_match(
    name: str, embed_checkpoints: dict[str, Path], embed_gguf: Callable[[str], Path]
) -> None:
    folder = embed_checkpoints[name]
    llm = llama_cpp.Llama(model_path=str(embed_gguf(name)), vocab_only=True, verbose=False)
    try:
        # repeated spaces, and NFKC's business: a ligature, full-width letters, a circled 1
        for text in [*SENTENCES, QUERY, "Hello   world!  ¡Hola!", "ﬁn Ｈｏｌａ ① caf\u00e9"]:
            expected = token_ids(folder, text)
            assert llm.tokenize(text.encode(), add_bos=True, special=False) == expected, text
    finally:
        llm.close()


@pytest.mark.parametrize("name", list(CASES))
def test_metadata(name: str, embed_gguf: Callable[[str], Path]) -> None:
    reader = gguf.GGUFReader(embed_gguf(name))

    def value(key: str) -> object:
        field = reader.get_field(key)
        assert field is not None, key
        return field.contents()

    family = name.split("-")[0]
    arch = ARCH[family]
    assert value("general.architecture") == arch
    assert value(f"{arch}.pooling_type") == int(CASES[name][3])
    assert value(NORMALIZE_KEY) is CASES[name][2]
    assert value(f"{arch}.attention.causal") is False
    assert value("tokenizer.ggml.model") == VOCAB[family]
    names = {t.name for t in reader.tensors}
    if family == "gemma":  # the two Dense modules, 64 -> 128 -> 64
        assert {"dense_2.weight", "dense_3.weight"} <= names
        assert value(f"{arch}.dense_2_feat_out") == value(f"{arch}.dense_3_feat_in") == 128
        return
    if family == "nomic":  # rotary positions; the context is the trained one
        assert "position_embd.weight" not in names and "blk.0.attn_qkv.weight" in names
        assert value("nomic-bert.context_length") == 128
        return
    assert "position_embd.weight" in names and not any("pooler" in n for n in names)
    if family == "xlmr":  # the 2 rows before position 0 are dropped
        assert value("bert.context_length") == 126


def _expect_one_line(folder: Path, out: Path, *needles: str) -> None:
    with pytest.raises(UnsupportedModelError) as info:
        convert_checkpoint(folder, out)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_unknown_pooling_is_refused(embed_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "max"
    shutil.copytree(embed_checkpoints["bert-mean"], folder)
    write_pooling(folder, "max", True)
    (tmp_path / "out").mkdir()
    _expect_one_line(folder, tmp_path / "out" / "m.gguf", "unknown pooling", "max")


def test_dense_module_is_refused(embed_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "dense"
    shutil.copytree(embed_checkpoints["bert-mean"], folder)
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "x.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "out").mkdir()
    _expect_one_line(folder, tmp_path / "out" / "m.gguf", "Dense", "not supported")


def test_no_modules_json_assumes_mean(
    embed_checkpoints: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "plain"
    shutil.copytree(embed_checkpoints["bert-cls"], folder)
    (folder / "modules.json").unlink()
    shutil.rmtree(folder / "1_Pooling")
    out = tmp_path / "plain.gguf"
    convert_checkpoint(folder, out, outtype="f32")
    assert "assuming mean pooling" in caplog.text
    reader = gguf.GGUFReader(out)
    assert reader.get_field("bert.pooling_type").contents() == int(gguf.PoolingType.MEAN)


def test_dense_with_bias_is_refused(embed_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "gemma-bias"
    shutil.copytree(embed_checkpoints["gemma-mean"], folder)
    config = json.loads((folder / "2_Dense" / "config.json").read_text())
    (folder / "2_Dense" / "config.json").write_text(json.dumps({**config, "bias": True}))
    (tmp_path / "out").mkdir()
    _expect_one_line(folder, tmp_path / "out" / "m.gguf", "Dense", "bias")


def test_causal_gemma3_text_model_is_refused(
    embed_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "gemma-causal"
    shutil.copytree(embed_checkpoints["gemma-mean"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(
        json.dumps({**config, "use_bidirectional_attention": False})
    )
    (tmp_path / "out").mkdir()
    _expect_one_line(folder, tmp_path / "out" / "m.gguf", "use_bidirectional_attention")


def test_prenorm_nomic_bert_is_refused(embed_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "nomic-prenorm"
    shutil.copytree(embed_checkpoints["nomic-mean"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "prenorm": True}))
    (tmp_path / "out").mkdir()
    _expect_one_line(folder, tmp_path / "out" / "m.gguf", "prenorm", "nomic-bert")


def test_transformers_nomic_bert_other_activation_is_refused(
    embed_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "nomic-gelu"
    shutil.copytree(embed_checkpoints["nomic-transformers"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu"}))
    (tmp_path / "out").mkdir()
    _expect_one_line(folder, tmp_path / "out" / "m.gguf", "hidden_act", "nomic-bert")
