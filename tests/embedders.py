"""Tiny random-weight embedding checkpoints (sentence-transformers layout) for the tests.

Each folder looks like a sentence-transformers download: config.json and safetensors weights
of a ``BertModel`` or ``XLMRobertaModel``, a real tokenizer trained here on the multilingual
corpus of checkpoints.py (WordPiece for BERT, Unigram for XLM-R), ``modules.json`` with a
Pooling module (``1_Pooling/config.json``) and, optionally, a Normalize one.

:func:`reference_embeddings` is what sentence-transformers would compute, from transformers'
hidden states: the pooling the folder's config names, then unit length if it normalizes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from checkpoints import corpus

HIDDEN = 64
INTERMEDIATE = 128
LAYERS = 2
HEADS = 4
MAX_POSITIONS = 128

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
XLMR_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # fairseq's order; <mask> goes last

POOLING_MODES = ("mean", "cls", "lasttoken")


def write_pooling(folder: Path, mode: str, normalize: bool, dim: int = HIDDEN) -> None:
    """modules.json + 1_Pooling/config.json (+ 2_Normalize) as sentence-transformers saves them."""
    modules: list[dict[str, Any]] = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
        (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules, indent=2), encoding="utf-8")
    pooling = {
        "word_embedding_dimension": dim,
        "pooling_mode_cls_token": mode == "cls",
        "pooling_mode_mean_tokens": mode == "mean",
        "pooling_mode_max_tokens": mode == "max",
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": mode == "lasttoken",
        "include_prompt": True,
    }
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))


def train_wordpiece(folder: Path, vocab_size: int = 900) -> int:
    """An uncased BERT WordPiece tokenizer (tokenizer.json, vocab.txt, tokenizer_config.json)."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=BERT_SPECIALS, show_progress=False
    )
    tokenizer.train_from_iterator(corpus(), trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    (folder / "vocab.txt").write_text("".join(t + "\n" for t, _ in vocab), encoding="utf-8")
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": True,
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "mask_token": "[MASK]",
        "model_max_length": MAX_POSITIONS,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return tokenizer.get_vocab_size(with_added_tokens=True)


def nfkc_charsmap() -> bytes:
    """SentencePiece's compiled NFKC table (what XLM-R's tokenizer.json carries as its
    ``Precompiled`` normalizer), taken from a tiny model trained with ``nmt_nfkc``."""
    import io

    import sentencepiece as spm

    from packer.convert.spm_model import _fields

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()),
        model_writer=model,
        vocab_size=300,
        hard_vocab_limit=False,
        model_type="unigram",
        normalization_rule_name="nmt_nfkc",
        num_threads=1,
        minloglevel=2,
    )
    for number, value in _fields(model.getvalue()):
        if number == 3 and isinstance(value, bytes):  # NormalizerSpec
            for sub_number, sub_value in _fields(value):
                if sub_number == 2 and isinstance(sub_value, bytes):  # precompiled_charsmap
                    return sub_value
    raise AssertionError("sentencepiece wrote no precompiled_charsmap")


def train_unigram(folder: Path, vocab_size: int = 900) -> int:
    """An XLM-R style Unigram tokenizer.json (Metaspace, <s> $A </s>) + tokenizer_config.json."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.Sequence(
        [
            normalizers.Precompiled(nfkc_charsmap()),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="always"
    )
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=XLMR_SPECIALS,
        unk_token="<unk>",
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer)
    tokenizer.add_special_tokens(["<mask>"])
    bos, eos = tokenizer.token_to_id("<s>"), tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", bos), ("</s>", eos)],
    )
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "XLMRobertaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "cls_token": "<s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "mask_token": "<mask>",
        "model_max_length": MAX_POSITIONS - 2,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return tokenizer.get_vocab_size(with_added_tokens=True)


def _spread_weights(model: Any, seed: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.copy_(
                    1.0 + 0.1 * torch.randn(p.shape, generator=gen)
                    if "weight" in name
                    else 0.1 * torch.randn(p.shape, generator=gen)
                )
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=gen))


def make_bert(folder: Path, mode: str = "mean", normalize: bool = True) -> Path:
    """A tiny ``BertModel`` with a WordPiece tokenizer and sentence-transformers pooling."""
    import torch
    import transformers

    n_vocab = train_wordpiece(folder)
    config = transformers.BertConfig(
        vocab_size=n_vocab,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_POSITIONS,
        type_vocab_size=2,
        hidden_act="gelu",
    )
    torch.manual_seed(0)
    model = transformers.BertModel(config)
    _spread_weights(model, 1)
    model.save_pretrained(folder)
    write_pooling(folder, mode, normalize)
    return folder


def make_xlm_roberta(folder: Path, mode: str = "cls", normalize: bool = True) -> Path:
    """A tiny ``XLMRobertaModel`` (position ids from pad + 1) with a Unigram tokenizer."""
    import torch
    import transformers

    n_vocab = train_unigram(folder)
    config = transformers.XLMRobertaConfig(
        vocab_size=n_vocab,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_POSITIONS,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        hidden_act="gelu",
    )
    torch.manual_seed(0)
    model = transformers.XLMRobertaModel(config)
    _spread_weights(model, 2)
    model.save_pretrained(folder)
    write_pooling(folder, mode, normalize)
    return folder


def token_ids(folder: Path, text: str) -> list[int]:
    """The checkpoint's own tokens of ``text``, special tokens included (a SentencePiece
    ``tokenizer.model`` alone: BOS first, as its tokenizer_config.json asks)."""
    if (folder / "tokenizer.json").is_file():
        import transformers

        return list(transformers.AutoTokenizer.from_pretrained(folder)(text).input_ids)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    return [sp.bos_id(), *sp.encode(text)]


def reference_embeddings(folder: Path, texts: list[str]) -> list[list[float]]:
    """sentence-transformers' vectors, computed from transformers' last hidden states."""
    import torch
    import transformers
    from safetensors.torch import load_file

    nomic = json.loads((folder / "config.json").read_text()).get("model_type") == "nomic_bert"
    if nomic:
        model = nomic_bert_model(folder)
    else:
        model = transformers.AutoModel.from_pretrained(folder, dtype=torch.float32)
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    modules = json.loads((folder / "modules.json").read_text())
    normalize = any(m["type"].endswith(".Normalize") for m in modules)
    out = []
    with torch.no_grad():
        for text in texts:
            ids = token_ids(folder, text)
            hidden = model.eval()(input_ids=torch.tensor([ids])).last_hidden_state[0]
            if pooling["pooling_mode_cls_token"]:
                vec = hidden[0]
            elif pooling["pooling_mode_lasttoken"]:
                vec = hidden[-1]
            else:
                vec = hidden.mean(dim=0)
            for module in modules:  # Dense modules (bias-free, identity activation)
                if module["type"].endswith(".Dense"):
                    path = folder / module["path"] / "model.safetensors"
                    vec = load_file(str(path))["linear.weight"] @ vec
            if normalize:
                vec = torch.nn.functional.normalize(vec, dim=0)
            out.append(vec.tolist())
    return out


def write_dense(folder: Path, name: str, n_in: int, n_out: int, seed: int) -> None:
    """A sentence-transformers Dense module (bias-free, identity activation)."""
    import torch
    from safetensors.torch import save_file

    (folder / name).mkdir(exist_ok=True)
    config = {
        "in_features": n_in,
        "out_features": n_out,
        "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity",
    }
    (folder / name / "config.json").write_text(json.dumps(config, indent=2))
    gen = torch.Generator().manual_seed(seed)
    weight = 0.2 * torch.randn((n_out, n_in), generator=gen)
    save_file({"linear.weight": weight}, str(folder / name / "model.safetensors"))


def make_embeddinggemma(folder: Path, mode: str = "mean", normalize: bool = True) -> Path:
    """A tiny ``Gemma3TextModel`` (bidirectional) with mean pooling, two Dense modules and
    Normalize, as EmbeddingGemma's sentence-transformers pipeline."""
    import torch
    import transformers
    from checkpoints import train_spm_tokenizer

    n_vocab = train_spm_tokenizer(folder)
    config = transformers.Gemma3TextConfig(
        vocab_size=n_vocab,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        max_position_embeddings=MAX_POSITIONS,
        sliding_window=MAX_POSITIONS,  # wider than any test input
        layer_types=["sliding_attention", "full_attention"],
        use_bidirectional_attention=True,
        hidden_activation="gelu_pytorch_tanh",
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = transformers.Gemma3TextModel(config)
    _spread_weights(model, 3)
    model.save_pretrained(folder)
    modules: list[dict[str, Any]] = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
        {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"},
    ]
    if normalize:
        modules.append(
            {
                "idx": 4,
                "name": "4",
                "path": "4_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
    write_pooling(folder, mode, False)
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    write_dense(folder, "2_Dense", HIDDEN, 2 * HIDDEN, 4)
    write_dense(folder, "3_Dense", 2 * HIDDEN, HIDDEN, 5)
    return folder


NOMIC_CONFIG = {
    "architectures": ["NomicBertModel"],
    "model_type": "nomic_bert",
    "n_embd": HIDDEN,
    "n_head": HEADS,
    "n_layer": LAYERS,
    "n_inner": INTERMEDIATE,
    "n_positions": 8 * MAX_POSITIONS,
    "max_trained_positions": MAX_POSITIONS,
    "type_vocab_size": 2,
    "layer_norm_epsilon": 1e-12,
    "rotary_emb_base": 1000,
    "rotary_emb_fraction": 1.0,
    "rotary_emb_interleaved": False,
    "rotary_emb_scale_base": None,
    "rotary_scaling_factor": None,
    "activation_function": "swiglu",
    "qkv_proj_bias": False,
    "mlp_fc1_bias": False,
    "mlp_fc2_bias": False,
    "prenorm": False,
    "causal": False,
}


def make_nomic_bert(folder: Path, mode: str = "mean", normalize: bool = True) -> Path:
    """A tiny ``NomicBertModel`` checkpoint as the hub ships nomic-embed-text: its own
    (remote-code) config.json keys, tensors named ``encoder.layers.N.attn.Wqkv`` ...; weights
    drawn here (larger than transformers' init, so norms and biases matter)."""
    import torch
    from safetensors.torch import save_file

    n_vocab = train_wordpiece(folder)
    config = {**NOMIC_CONFIG, "vocab_size": n_vocab}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    gen = torch.Generator().manual_seed(6)
    d, ff = HIDDEN, INTERMEDIATE

    def rand(*shape: int, scale: float = 0.08) -> torch.Tensor:
        return scale * torch.randn(shape, generator=gen)

    tensors = {
        "embeddings.word_embeddings.weight": rand(n_vocab, d, scale=0.5),
        "embeddings.token_type_embeddings.weight": rand(2, d, scale=0.5),
        "emb_ln.weight": 1 + rand(d, scale=0.1),
        "emb_ln.bias": rand(d, scale=0.1),
    }
    for i in range(LAYERS):
        p = f"encoder.layers.{i}."
        tensors |= {
            p + "attn.Wqkv.weight": rand(3 * d, d, scale=0.2),
            p + "attn.out_proj.weight": rand(d, d, scale=0.2),
            p + "mlp.fc11.weight": rand(ff, d, scale=0.2),
            p + "mlp.fc12.weight": rand(ff, d, scale=0.2),
            p + "mlp.fc2.weight": rand(d, ff, scale=0.2),
            p + "norm1.weight": 1 + rand(d, scale=0.1),
            p + "norm1.bias": rand(d, scale=0.1),
            p + "norm2.weight": 1 + rand(d, scale=0.1),
            p + "norm2.bias": rand(d, scale=0.1),
        }
    save_file(tensors, str(folder / "model.safetensors"))
    write_pooling(folder, mode, normalize)
    return folder


def make_nomic_bert_transformers(folder: Path, mode: str = "mean", normalize: bool = True) -> Path:
    """The same model as :func:`make_nomic_bert`, loaded into transformers' own
    ``NomicBertModel`` and written by its ``save_pretrained``: transformers' config.json keys
    (``hidden_size``, ``rope_parameters`` ...), the hub's tensor names."""
    make_nomic_bert(folder, mode, normalize)
    model = nomic_bert_model(folder)
    (folder / "model.safetensors").unlink()
    model.save_pretrained(folder)
    return folder


def nomic_bert_model(folder: Path) -> Any:
    """transformers' ``NomicBertModel`` (>= 5) for a Nomic BERT folder. It reads the hub's
    tensor layout (its conversion mapping splits ``Wqkv`` and renames the rest) but not the
    hub's remote-code config keys (``n_embd`` ... are ignored and its defaults, those of
    nomic-embed-text v1.5, apply), so these are mapped to ``NomicBertConfig`` here."""
    import torch
    import transformers

    config = json.loads((folder / "config.json").read_text())
    if "n_embd" not in config:  # already transformers' own config
        return transformers.AutoModel.from_pretrained(folder, dtype=torch.float32)
    n_positions = config["n_positions"]
    native = transformers.NomicBertConfig(
        vocab_size=config["vocab_size"],
        hidden_size=config["n_embd"],
        num_hidden_layers=config["n_layer"],
        num_attention_heads=config["n_head"],
        intermediate_size=config["n_inner"],
        type_vocab_size=config["type_vocab_size"],
        layer_norm_eps=config["layer_norm_epsilon"],
        max_position_embeddings=min(n_positions, config.get("max_trained_positions", n_positions)),
        rope_parameters={"rope_type": "default", "rope_theta": float(config["rotary_emb_base"])},
        architectures=config["architectures"],
    )
    return transformers.AutoModel.from_pretrained(folder, config=native, dtype=torch.float32)
