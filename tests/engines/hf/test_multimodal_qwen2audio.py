"""Qwen2-Audio through the HF engine equals transformers' own processor + `generate` on the same tiny random
model: `audios=` with a WAV file, an OpenAI `input_audio` part, a batch mixed with text requests (1-D positions,
audio tower once at prefill), and a corrupt clip named by its part."""

from __future__ import annotations

import functools
import io

import numpy as np
import pytest
import soundfile
import torch

from chatplex.errors import UnsupportedFeatureError
from tests.engines.hf.multimodal_testing import (
    CORRUPT_PNG, assert_refused, assert_still_serving, batched_tokens, build_in, chatml_template, counting_calls,
    data_url, engine_tokens, generate_tokens, input_audio_part, save_all, sharpen_attention, tiny_chat_model,
    tiny_tokenizer, user,
)

TEMPLATE = chatml_template(audio="<|audio_bos|><|AUDIO|><|audio_eos|>")
MAX_TOKENS = 10
RATE = 16000


def _build(path) -> None:
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, WhisperFeatureExtractor

    tok = tiny_tokenizer(TEMPLATE, ["<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"])
    config = Qwen2AudioConfig(
        text_config=dict(
            model_type="qwen2", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=len(tok), max_position_embeddings=2048, eos_token_id=2, bos_token_id=1,
        ),
        # 100 positions = 200 mel frames = 2 s windows (real checkpoints: 1500 = 30 s)
        audio_config=dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                          num_mel_bins=128, max_source_positions=100),
        audio_token_index=tok.convert_tokens_to_ids("<|AUDIO|>"),
    )
    torch.manual_seed(0)
    model = Qwen2AudioForConditionalGeneration(config).eval()
    sharpen_attention(model.model.language_model)
    with torch.no_grad():  # and the projector, so that the audio decides the tokens
        model.model.multi_modal_projector.linear.weight.mul_(20)
    save_all(path, model, tok, WhisperFeatureExtractor(feature_size=128, chunk_length=2))


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    return build_in(tmp_path_factory, "qwen2audio", _build)


@pytest.fixture(scope="module")
def reference(audio_dir):
    """Greedy tokens from transformers' own Qwen2AudioProcessor (features + `<|AUDIO|>` expansion) and generate."""
    from transformers import AutoTokenizer, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor, WhisperFeatureExtractor

    model = Qwen2AudioForConditionalGeneration.from_pretrained(audio_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(audio_dir)
    processor = Qwen2AudioProcessor(WhisperFeatureExtractor.from_pretrained(audio_dir), tok, chat_template=TEMPLATE)

    def run(messages, audios):
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if audios:
            inputs = processor(text=text, audio=audios, sampling_rate=RATE, return_tensors="pt")
        else:
            inputs = tok(text, return_tensors="pt", add_special_tokens=False)
        return generate_tokens(model, inputs, MAX_TOKENS)

    return run


@pytest.fixture(scope="module")
def chat_model(audio_dir):
    with tiny_chat_model(audio_dir, max_num_batched_tokens=32) as model:
        yield model


def _clip(seconds: float, seed: int) -> np.ndarray:
    """A tone plus noise: audio the encoder tells apart from another seed's."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.5 * np.sin(2 * np.pi * (200 + 100 * seed) * t) + 0.1 * rng.standard_normal(t.size)).astype(np.float32)


def _wav(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, array, RATE, format="WAV", subtype="FLOAT")  # float: the decoded samples are exact
    return buf.getvalue()


_tokens = functools.partial(engine_tokens, max_tokens=MAX_TOKENS)  # (chat_model, messages, **request kwargs)


def _audio_messages(text):
    return user([{"type": "audio"}, {"type": "text", "text": text}])


def test_audios_argument_with_wav_equals_generate(chat_model, reference, tmp_path) -> None:
    clip = _clip(1.0, 1)
    path = tmp_path / "clip.wav"
    path.write_bytes(_wav(clip))
    expected = reference(_audio_messages("What is this?"), [clip])
    assert len(expected) == MAX_TOKENS
    # the audio changes the answer (the audio path is live)
    assert reference(_audio_messages("What is this?"), [_clip(1.0, 2)]) != expected
    assert _tokens(chat_model, user("What is this?"), audios=[str(path)]) == expected
    assert _tokens(chat_model, user("<audio>What is this?"), audios=[(clip, RATE)]) == expected


def test_input_audio_part_equals_generate(chat_model, reference) -> None:
    a, b = _clip(0.7, 3), _clip(1.5, 4)
    expected = reference(user([{"type": "audio"}, {"type": "text", "text": "then"}, {"type": "audio"}]), [a, b])
    messages = user([
        input_audio_part(_wav(a)),
        {"type": "text", "text": "then"},
        {"type": "audio_url", "audio_url": {"url": data_url("audio/wav", _wav(b))}},
    ])
    assert _tokens(chat_model, messages) == expected


def test_chunked_prefill_runs_the_audio_tower_once(chat_model, reference) -> None:
    # 1.2 s -> 30 audio tokens; max_num_batched_tokens=32 splits them over two prefill chunks
    clip = _clip(1.2, 5)
    expected = reference(_audio_messages("x " * 10), [clip])
    with counting_calls(chat_model.engine.multimodal.model.model.audio_tower, "forward") as calls:
        assert _tokens(chat_model, user("<audio>" + "x " * 10), audios=[(clip, RATE)]) == expected
    assert calls == [1]


async def test_mixed_batch_equals_each_alone(chat_model, reference) -> None:
    cases = [
        ("Hi, a text request.", None),
        ("First clip", [_clip(0.5, 6)]),
        ("Another", [_clip(1.8, 7)]),
        ("Text again, longer this time.", None),
    ]
    alone = [reference(_audio_messages(text) if clips else user(text), clips or []) for text, clips in cases]
    requests = [(user(text), {"audios": [(x, RATE) for x in clips] if clips else None}) for text, clips in cases]
    assert await batched_tokens(chat_model, requests, MAX_TOKENS) == alone


def test_bad_audio_names_the_part(chat_model) -> None:
    bad = user([{"type": "text", "text": "x"}, input_audio_part(b"RIFF\x00\x00not a wav at all")])
    assert_refused(chat_model, bad, "not a readable audio", "messages[0].content[1]")
    assert_refused(chat_model, user("x"), "at most 2 s", "audios[1]", audios=[(_clip(0.5, 8), RATE), (_clip(2.5, 8), RATE)])
    long_part = user([{"type": "text", "text": "x"}, input_audio_part(_wav(_clip(2.5, 8)))])
    assert_refused(chat_model, long_part, r"messages\[0\]\.content\[1\]: .*at most 2 s", "messages[0].content[1]")
    assert_refused(chat_model, user("x"), "images", None, UnsupportedFeatureError, images=[CORRUPT_PNG])
    assert_still_serving(chat_model, MAX_TOKENS)


def test_feature_extractor_sized_to_the_encoder_without_a_preprocessor_config(audio_dir, tmp_path) -> None:
    from transformers import AutoTokenizer, Qwen2AudioForConditionalGeneration

    from chatplex.engines.hf.multimodal.qwen2_audio import AudioLanguage

    model = Qwen2AudioForConditionalGeneration.from_pretrained(audio_dir, dtype=torch.float32)
    helper = AudioLanguage.load(model, AutoTokenizer.from_pretrained(audio_dir), str(tmp_path))  # tmp_path: no config
    fe = helper.feature_extractor
    assert (fe.feature_size, fe.sampling_rate, fe.n_samples, fe.nb_max_frames) == (128, RATE, 2 * RATE, 200)
    assert helper.max_seconds == 2
