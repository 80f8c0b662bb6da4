"""Streaming detokenization: segments never hold half a character and join to tokenizer.decode."""

from __future__ import annotations

import pytest

from chatplex.engines.detokenizer import REPLACEMENT_CHAR, StreamingDetokenizer

HARD_STRINGS = [
    "Hello, world! The capital of France is Paris.",
    "北京是中国的首都。東京は日本の首都です。서울은 한국의 수도입니다.",
    "Emoji: 👩‍👩‍👧‍👦 🇫🇷 🚀✨ done",
    'def f(x):\n    return {"a": [1, 2.5, null], "b": "\\n"}\n\n\ttabbed',
    "lines\n\n\nwith   spaces  and\r\nCRLF",
    "mixed: naïve café – “quotes” — ellipsis… ½ ∑ √",
]


@pytest.mark.parametrize("text", HARD_STRINGS)
def test_segments_join_to_decode(smollm_tokenizer, text):
    ids = smollm_tokenizer.encode(text, add_special_tokens=False)
    detok = StreamingDetokenizer(smollm_tokenizer)
    segments = [detok.add_token(t) for t in ids]
    segments.append(detok.finalize())
    assert all(REPLACEMENT_CHAR not in s for s in segments)
    assert "".join(segments) == smollm_tokenizer.decode(ids, skip_special_tokens=True) == text


def test_multibyte_character_is_held_until_complete(smollm_tokenizer):
    # An emoji is several byte-level tokens; nothing may be emitted between them.
    ids = smollm_tokenizer.encode("🚀", add_special_tokens=False)
    assert len(ids) > 1
    detok = StreamingDetokenizer(smollm_tokenizer)
    out = [detok.add_token(t) for t in ids]
    assert out[:-1] == [""] * (len(ids) - 1) and out[-1] == "🚀"


def test_special_tokens_are_skipped_or_kept(smollm_tokenizer):
    ids = smollm_tokenizer.encode("Hi<|im_end|>", add_special_tokens=False)
    skip = StreamingDetokenizer(smollm_tokenizer)
    keep = StreamingDetokenizer(smollm_tokenizer, skip_special_tokens=False)
    assert "".join([skip.add_token(t) for t in ids] + [skip.finalize()]) == "Hi"
    assert "".join([keep.add_token(t) for t in ids] + [keep.finalize()]) == "Hi<|im_end|>"


def test_sentencepiece_style_tokenizer_keeps_leading_spaces(tiny_llama_sp_tokenizer):
    tok = tiny_llama_sp_tokenizer
    text = "hello world  again\nnew line"
    ids = tok.encode(text, add_special_tokens=False)
    detok = StreamingDetokenizer(tok)
    joined = "".join([detok.add_token(t) for t in ids] + [detok.finalize()])
    assert joined == tok.decode(ids, skip_special_tokens=True)


@pytest.fixture(scope="module")
def tiny_llama_sp_tokenizer():
    """A Metaspace (SentencePiece-style) tokenizer trained in memory, so no download is needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Metaspace()
    corpus = ["hello world again", "new line here", "hello again world"] * 20
    raw.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "<s>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
