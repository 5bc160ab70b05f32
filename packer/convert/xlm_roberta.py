"""XLM-RoBERTa encoders (``XLMRobertaModel``: bge-m3, multilingual-e5) -> GGUF ``bert``.

BERT's layout (see bert.py) with two differences: the vocabulary is XLM-R's SentencePiece
Unigram (written as llama.cpp's ``t5``/UGM vocabulary, from tokenizer.json), and positions
count from ``pad_token_id + 1`` as in fairseq's RoBERTa: the first rows of the position
table are never used, so they are dropped and the context shrinks by as many.
"""

from __future__ import annotations

import gguf

from packer.convert.base import register
from packer.convert.bert import BertConverter
from packer.convert.vocab import MODEL_UGM
from packer.errors import UnsupportedModelError


@register
class XLMRobertaConverter(BertConverter):
    hf_architectures = ("XLMRobertaModel",)
    gguf_arch = gguf.MODEL_ARCH.BERT
    family = "XLM-RoBERTa"
    default_pooling = gguf.PoolingType.CLS  # bge-m3's; e5 ships its modules.json (mean)

    def read_family_hparams(self) -> None:
        self.position_offset = self.cfg_int("pad_token_id", default=1, minimum=0) + 1

    def load_vocab(self):  # type: ignore[no-untyped-def]
        if self.tokenizer is not None and self.tokenizer.model != MODEL_UGM:
            raise UnsupportedModelError(
                f"{self.tokenizer.file}: XLM-RoBERTa needs its Unigram tokenizer.json "
                f"(found a {self.tokenizer.model!r} tokenizer)"
            )
        return super().load_vocab()
