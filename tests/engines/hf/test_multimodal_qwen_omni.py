"""Qwen2.5-Omni's thinker through the HF engine equals transformers' own `Qwen2_5OmniProcessor` + `generate` on a
tiny random thinker: image, video and audio in one prompt, audio alone, a mixed batch with text requests, and
chunked prefill. The processor needs torchvision (its video processor): run by `make test` in .venv-media."""

from __future__ import annotations

import functools
import numpy as np
import pytest
import torch

from tests.engines.hf.multimodal_testing import (
    assert_refused, assert_still_serving, batched_tokens, build_in, chatml_template, color_clip, data_url,
    engine_tokens, generate_tokens, needs_torchvision, noise_image, omni_thinker_config, save_all, sharpen_attention,
    tiny_chat_model, tiny_tokenizer, user,
)
from tests.engines.hf.test_multimodal_qwen2audio import _clip, _wav

pytestmark = [needs_torchvision, pytest.mark.video]

NAMES = dict(
    image_token="<|IMAGE|>", video_token="<|VIDEO|>", audio_token="<|AUDIO|>", vision_bos_token="<|vision_bos|>",
    vision_eos_token="<|vision_eos|>", audio_bos_token="<|audio_bos|>", audio_eos_token="<|audio_eos|>",
)
TEMPLATE = chatml_template(image="<|vision_bos|><|IMAGE|><|vision_eos|>", video="<|vision_bos|><|VIDEO|><|vision_eos|>",
                           audio="<|audio_bos|><|AUDIO|><|audio_eos|>")
MAX_TOKENS = 8


def _processor(tok):
    from transformers import Qwen2_5OmniProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor, WhisperFeatureExtractor

    return Qwen2_5OmniProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=112 * 112),
        video_processor=Qwen2VLVideoProcessor(min_pixels=28 * 28, max_pixels=56 * 84),
        feature_extractor=WhisperFeatureExtractor(feature_size=128),
        tokenizer=tok, chat_template=TEMPLATE,
    )


def _build(path) -> None:
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    tok = tiny_tokenizer(TEMPLATE, extra_special_tokens=NAMES)
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in NAMES.items()}
    config = omni_thinker_config(len(tok), ids, eos=2, bos=1)
    torch.manual_seed(0)
    model = Qwen2_5OmniThinkerForConditionalGeneration(config).eval()
    sharpen_attention(model.model.language_model)
    with torch.no_grad():
        # Random convolutions leave the audio's content far below the encoder's sinusoidal positions: scale it up
        # so that different clips give different answers.
        model.model.audio_tower.conv1.weight.mul_(30)
        model.model.audio_tower.conv2.weight.mul_(30)
    save_all(path, model, tok, _processor(tok))


@pytest.fixture(scope="module")
def omni_dir(tmp_path_factory):
    return build_in(tmp_path_factory, "omni", _build)


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("omni-clip") / "clip.mp4"
    path.write_bytes(color_clip(5))
    return str(path)


@pytest.fixture(scope="module")
def reference(omni_dir):
    """Greedy tokens from transformers: its video loader, Qwen2_5OmniProcessor and the thinker's generate."""
    from transformers import AutoTokenizer, Qwen2_5OmniThinkerForConditionalGeneration
    from transformers.video_utils import load_video

    model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(omni_dir, dtype=torch.float32).eval()
    processor = _processor(AutoTokenizer.from_pretrained(omni_dir))

    def run(messages, images=(), videos=(), audios=()):
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        kwargs = {}
        if videos:
            kwargs = dict(videos=[load_video(v, backend="pyav", fps=2)[0] for v in videos], do_sample_frames=False)
        if audios:
            kwargs.update(audio=list(audios), sampling_rate=16000)
        inputs = processor(text=[text], images=list(images) or None, return_tensors="pt", **kwargs)
        return generate_tokens(model, inputs, MAX_TOKENS)

    return run


@pytest.fixture(scope="module")
def chat_model(omni_dir):
    with tiny_chat_model(omni_dir, max_num_batched_tokens=40) as model:
        yield model


_tokens = functools.partial(engine_tokens, max_tokens=MAX_TOKENS)  # (chat_model, messages, **request kwargs)


def test_image_video_and_audio_in_one_prompt_equal_generate(chat_model, reference, clip_path) -> None:
    image, audio = noise_image((70, 56), 1), _clip(1.0, 1)
    parts = [{"type": "image"}, {"type": "text", "text": "and"}, {"type": "video"}, {"type": "audio"},
             {"type": "text", "text": "what?"}]
    expected = reference(user(parts), images=[image], videos=[clip_path], audios=[audio])
    assert len(expected) == MAX_TOKENS
    messages = user([
        {"type": "image", "image": image}, {"type": "text", "text": "and"},
        {"type": "video_url", "video_url": {"url": data_url("video/mp4", open(clip_path, "rb").read())}},
        {"type": "audio_url", "audio_url": {"url": data_url("audio/wav", _wav(audio))}},
        {"type": "text", "text": "what?"},
    ])
    assert _tokens(chat_model, messages) == expected


def test_audio_alone_equals_generate_and_changes_the_answer(chat_model, reference) -> None:
    parts = user([{"type": "audio"}, {"type": "text", "text": "Transcribe."}])
    expected = reference(parts, audios=[_clip(1.5, 2)])
    assert reference(parts, audios=[_clip(1.5, 3)]) != expected
    assert _tokens(chat_model, user("<audio>Transcribe."), audios=[(_clip(1.5, 2), 16000)]) == expected


async def test_mixed_batch_equals_each_alone(chat_model, reference, clip_path) -> None:
    cases = [
        ("Only text here.", {}),
        ("Hear this.", {"audios": [_clip(0.8, 4)]}),
        ("See this.", {"images": [noise_image((84, 56), 5)]}),
        ("Watch and hear.", {"videos": [clip_path], "audios": [_clip(0.6, 6)]}),
    ]
    alone = []
    for text, media in cases:
        parts = [{"type": k[:-1]} for k in ("images", "videos", "audios") for _ in media.get(k, [])]
        alone.append(reference(user([*parts, {"type": "text", "text": text}]), **media))
    requests = [(user(text), {**media, "audios": [(a, 16000) for a in media.get("audios", [])] or None})
                for text, media in cases]
    assert await batched_tokens(chat_model, requests, MAX_TOKENS) == alone


def test_use_audio_in_video_equals_generate_and_hears_the_soundtrack(omni_dir, tmp_path) -> None:
    """`use_audio_in_video: true`: the video's own sound, read from the file, interleaved with its frames as
    Qwen2_5OmniProcessor's load_audio_from_video lays them out, with the thinker's use_audio_in_video positions:
    the same tokens as transformers, and the same first-token log-probability, which another soundtrack under the
    same frames moves (the video's 420 tokens outweigh the sound's 75 in the greedy tokens of a random model)."""
    from transformers import AutoTokenizer, Qwen2_5OmniThinkerForConditionalGeneration
    from transformers.video_utils import load_video

    from tests.templates.lf_tokenizers import noise_video, soundtrack

    spec, question = (64, 48, 30, 10), "What do you hear?"
    path = tmp_path / "sound.mov"
    path.write_bytes(noise_video(spec, 0, sound=True))
    thinker = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(omni_dir, dtype=torch.float32).eval()
    processor = _processor(AutoTokenizer.from_pretrained(omni_dir))
    text = processor.apply_chat_template(user([{"type": "video"}, {"type": "text", "text": question}]),
                                         tokenize=False, add_generation_prompt=True)

    def reference(track: np.ndarray) -> tuple[list[int], float]:
        """transformers' tokens and first-token log-probability, the sound handed over decoded (as vLLM does)."""
        inputs = processor(text=[text], videos=[load_video(str(path), backend="pyav", fps=2)[0]],
                           do_sample_frames=False, audio=[track], sampling_rate=16000, load_audio_from_video=True,
                           audio_from_video_indices=[0], return_tensors="pt")
        with torch.inference_mode():
            out = thinker.generate(**inputs, use_audio_in_video=True, do_sample=False, max_new_tokens=MAX_TOKENS,
                                   output_logits=True, return_dict_in_generate=True)
        tokens = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
        return tokens, float(torch.log_softmax(out.logits[0][0], -1)[tokens[0]])

    expected, logprob = reference(soundtrack(spec, 0))
    _, other_logprob = reference(soundtrack(spec, 5))
    assert abs(other_logprob - logprob) > 1e-3
    messages = user([{"type": "video_url", "video_url": {"url": data_url("video/quicktime", path.read_bytes())}},
                     {"type": "text", "text": question}])
    with tiny_chat_model(omni_dir, use_audio_in_video=True) as model:
        assert _tokens(model, messages) == expected
        [first] = model.chat(messages, max_tokens=1, temperature=0, logprobs=True)
        assert first.logprobs[0].logprob == pytest.approx(logprob, abs=1e-4)
        silent = user([{"type": "video_url", "video_url": {"url": data_url("video/mp4", noise_video(spec, 0))}}])
        assert_refused(model, silent, "no audio track", "messages[0].content[0]")
        assert_still_serving(model, MAX_TOKENS)


def test_too_long_audio_names_the_argument(chat_model) -> None:
    assert_refused(chat_model, user("x"), "at most 30 s", "audios[0]", audios=[(np.zeros(16000 * 31, np.float32), 16000)])
    assert_still_serving(chat_model, MAX_TOKENS)


def test_whole_omni_checkpoint_loads_its_thinker(omni_dir, reference, tmp_path) -> None:
    """A whole Qwen2.5-Omni checkpoint (model_type qwen2_5_omni, weights under `thinker.`) serves text from its
    thinker alone, with the same answers as the thinker checkpoint."""
    from transformers import (
        AutoTokenizer, Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration, Qwen2_5OmniThinkerForConditionalGeneration,
    )

    thinker = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(omni_dir)
    whole = Qwen2_5OmniForConditionalGeneration(
        Qwen2_5OmniConfig(thinker_config=thinker.config.to_dict(), enable_audio_output=False)
    )
    whole.thinker.load_state_dict(thinker.state_dict())
    tok = AutoTokenizer.from_pretrained(omni_dir)
    save_all(tmp_path, whole, tok, _processor(tok))
    audio = _clip(1.0, 7)
    expected = reference(user([{"type": "audio"}, {"type": "text", "text": "Hm?"}]), audios=[audio])
    with tiny_chat_model(tmp_path) as model:
        assert type(model.engine.multimodal.model).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration"
        assert _tokens(model, user("<audio>Hm?"), audios=[(audio, 16000)]) == expected
