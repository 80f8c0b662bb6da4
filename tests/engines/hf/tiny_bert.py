"""Tiny random-weight BERT checkpoints (the real architecture, a 100-word WordPiece vocabulary) laid out as
sentence-transformers saves them, and the reference computations the embedding / rerank tests compare against:
transformers' own forward, pooled and scored here by hand, independent of chatplex."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

WORDS = (
    "the quick brown fox jumps over lazy dog hello there world what is a cat paris capital of france berlin "
    "germany city river"
).split()
TEXTS = ["hello there", "the quick brown fox jumps over the lazy dog", "a cat", "what is the capital of france"]
MODES = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "last": "pooling_mode_lasttoken"}


def _tokenizer(path: Path):
    from transformers import BertTokenizerFast

    letters = list("abcdefghijklmnopqrstuvwxyz")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *letters, *("##" + c for c in letters), *".,?!"]
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(str(path / "vocab.txt"), model_max_length=128)
    tok.save_pretrained(path)
    return tok


def _config(**kw):
    from transformers import BertConfig

    sizes = {"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64}  # vLLM-cpu: give heads of 32+
    return BertConfig(vocab_size=100, num_hidden_layers=2, max_position_embeddings=128, **{**sizes, **kw})


def embedding_model(path: Path, mode: str = "mean", normalize: bool = True, **config) -> str:
    """A sentence-transformers folder: BertModel + 1_Pooling (`mode`) [+ 2_Normalize]."""
    from transformers import BertModel

    torch.manual_seed(0)
    _tokenizer(path)
    bert_config = _config(**config)
    BertModel(bert_config).save_pretrained(path)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (path / "modules.json").write_text(json.dumps(modules))
    os.makedirs(path / "1_Pooling", exist_ok=True)
    flags = {flag: flag == MODES[mode] for flag in MODES.values()}
    pooling_config = {"word_embedding_dimension": bert_config.hidden_size, **flags}
    (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
    return str(path)


def cross_encoder(path: Path, **config) -> str:
    """A BertForSequenceClassification with one label (weights spread wide so documents' scores differ)."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(1)
    _tokenizer(path)
    config = {"num_labels": 1, "initializer_range": 0.5, **config}
    BertForSequenceClassification(_config(**config)).save_pretrained(path)
    return str(path)


def reference_embeddings(path: str, texts: list[str], mode: str, normalize: bool = True) -> torch.Tensor:
    """transformers' forward on each text alone, pooled by hand."""
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            hidden = model(**tok(text, return_tensors="pt")).last_hidden_state[0]
            out.append({"cls": hidden[0], "mean": hidden.mean(0), "last": hidden[-1]}[mode])
    vectors = torch.stack(out)
    return torch.nn.functional.normalize(vectors, dim=-1) if normalize else vectors


def reference_scores(path: str, query: str, documents: list[str]) -> list[float]:
    """transformers' forward on each (query, document) tokenizer pair, then a sigmoid."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return [torch.sigmoid(model(**tok(query, doc, return_tensors="pt")).logits[0, 0]).item() for doc in documents]
