"""Qwen2-VL and Qwen2.5-VL video through the HF engine equal transformers' own processor + `generate` on the same
tiny random models: a video alone, a video next to an image, a mixed batch, chunked prefill. Videos are decoded
by chatplex (PyAV) and, for the reference, by transformers' own loader.

transformers' video processors need torchvision, which the main test environment lacks (see the README): these
tests run in `.venv-media` (`make test` runs them there); in the main environment only the clear error is tested.
"""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest
import torch

from chatplex import ChatModel
from chatplex.errors import InvalidRequestError, UnsupportedFeatureError
from tests.engines.hf.multimodal_testing import (
    HAS_TORCHVISION, engine_tokens, generate_tokens, needs_torchvision, noise_image, sharpen_attention,
)
from tests.media.conftest import encode_mp4

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content is string %}{{ m.content }}{% else %}"
    "{% for p in m.content %}{% if p.type == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif p.type == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif p.type == 'text' %}{{ p.text }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MAX_TOKENS = 8
FAMILIES = ["qwen2_vl", "qwen2_5_vl"]


def _build(path, family: str) -> None:
    import transformers
    from transformers import AutoTokenizer, Qwen2VLImageProcessor

    from chatplex.models.embedded import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    specials = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.chat_template = TEMPLATE
    ids = tok.convert_tokens_to_ids(specials)
    text = dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
        vocab_size=len(tok), max_position_embeddings=4096, eos_token_id=2, bos_token_id=1,
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},  # sums to head_dim / 2
    )
    if family == "qwen2_vl":
        vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2)
        config_cls, model_cls = transformers.Qwen2VLConfig, transformers.Qwen2VLForConditionalGeneration
    else:
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1],
                      tokens_per_second=2)
        config_cls, model_cls = transformers.Qwen2_5_VLConfig, transformers.Qwen2_5_VLForConditionalGeneration
    config = config_cls(
        text_config=text, vision_config=vision,
        vision_start_token_id=ids[0], vision_end_token_id=ids[1], image_token_id=ids[2], video_token_id=ids[3],
    )
    torch.manual_seed(0)
    model = model_cls(config).eval()
    sharpen_attention(model.model.language_model)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=112 * 112).save_pretrained(path)
    if HAS_TORCHVISION:
        from transformers import Qwen2VLVideoProcessor

        Qwen2VLVideoProcessor(min_pixels=28 * 28, max_pixels=56 * 84).save_pretrained(path)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def vl_dir(tmp_path_factory, family):
    path = tmp_path_factory.mktemp(family)
    _build(path, family)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two 2-second mp4 clips (16 frames at 8 fps) with different content."""
    out = []
    for seed in (1, 2):
        rng = np.random.default_rng(seed)
        colors = [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(16)]
        path = tmp_path_factory.mktemp("clips") / f"clip{seed}.mp4"
        path.write_bytes(encode_mp4(colors, fps=8, size=(96, 64)))
        out.append(str(path))
    return out


@pytest.fixture(scope="module")
def reference(vl_dir, family):
    """Greedy tokens from transformers: its video loader, the model's full processor, model.generate."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.video_utils import load_video

    model = AutoModelForImageTextToText.from_pretrained(vl_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(vl_dir)

    def run(messages, images=(), videos=()):
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        kwargs = {}
        if videos:
            loaded = [load_video(v, backend="pyav", fps=2) for v in videos]
            kwargs = dict(videos=[v for v, _ in loaded], video_metadata=[m for _, m in loaded], do_sample_frames=False)
        inputs = processor(text=[text], images=list(images) or None, return_tensors="pt", **kwargs)
        return generate_tokens(model, inputs, MAX_TOKENS)

    return run


@pytest.fixture(scope="module")
def chat_model(vl_dir):
    model = ChatModel({"model_name_or_path": str(vl_dir), "infer_dtype": "float32", "max_num_batched_tokens": 48})
    yield model
    model.close()


def _tokens(chat_model, messages, **kw):
    return engine_tokens(chat_model, messages, MAX_TOKENS, **kw)


def _video_messages(text):
    return [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]


@needs_torchvision
@pytest.mark.video
def test_video_argument_equals_generate(chat_model, reference, clips) -> None:
    expected = reference(_video_messages("What happens?"), videos=[clips[0]])
    assert len(expected) == MAX_TOKENS
    assert _tokens(chat_model, [{"role": "user", "content": "What happens?"}], videos=[clips[0]]) == expected
    # the video changes the answer: the video path is live
    assert reference(_video_messages("What happens?"), videos=[clips[1]]) != expected
    assert _tokens(chat_model, [{"role": "user", "content": "<video>What happens?"}], videos=[clips[0]]) == expected


@needs_torchvision
@pytest.mark.video
def test_video_url_part_next_to_an_image(chat_model, reference, clips) -> None:
    image = noise_image((70, 90), 3)
    expected = reference(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "then"}, {"type": "video"}]}],
        images=[image], videos=[clips[1]],
    )
    url = "data:video/mp4;base64," + base64.b64encode(open(clips[1], "rb").read()).decode()
    messages = [{"role": "user", "content": [{"type": "text", "text": "<image>then"}]}]
    # images= pairs with the placeholder; the video comes as an OpenAI-style part in the same message
    messages = [{"role": "user", "content": [
        {"type": "image", "image": image}, {"type": "text", "text": "then"},
        {"type": "video_url", "video_url": {"url": url}},
    ]}]
    assert _tokens(chat_model, messages) == expected


@needs_torchvision
@pytest.mark.video
async def test_mixed_batch_equals_each_alone(chat_model, reference, clips) -> None:
    image = noise_image((80, 60), 4)
    cases = [
        ({"role": "user", "content": "A plain text request."}, {}),
        ({"role": "user", "content": "A video."}, {"videos": [clips[0]]}),
        ({"role": "user", "content": "An image."}, {"images": [image]}),
        ({"role": "user", "content": "The other video, longer text."}, {"videos": [clips[1]]}),
    ]
    alone = []
    for message, media in cases:
        parts = [{"type": "video"}] * len(media.get("videos", [])) + [{"type": "image"}] * len(media.get("images", []))
        messages = [{"role": "user", "content": parts + [{"type": "text", "text": message["content"]}]}] if parts else [message]
        alone.append(reference(messages, **media))

    async def one(message, media):
        [r] = await chat_model.achat([message], do_sample=False, max_tokens=MAX_TOKENS, ignore_eos=True, **media)
        return r.token_ids

    assert await asyncio.gather(*(one(m, media) for m, media in cases)) == alone
    assert chat_model.stats().max_batch_size >= 2


@needs_torchvision
@pytest.mark.video
def test_bad_video_names_the_part(chat_model) -> None:
    bad = [{"role": "user", "content": [{"type": "text", "text": "x"},
                                        {"type": "video_url", "video_url": "data:video/mp4;base64,AAAA"}]}]
    with pytest.raises(InvalidRequestError, match="not a readable video") as info:
        chat_model.chat(bad, max_tokens=2)
    assert info.value.param == "messages[0].content[1]"
    assert len(_tokens(chat_model, [{"role": "user", "content": "still here"}])) == MAX_TOKENS


@pytest.mark.skipif(HAS_TORCHVISION, reason="checks the error given without torchvision")
def test_without_torchvision_video_is_a_clear_error(chat_model, clips) -> None:
    with pytest.raises(UnsupportedFeatureError, match="torchvision") as info:
        chat_model.chat([{"role": "user", "content": "x"}], videos=[clips[0]], max_tokens=2)
    assert info.value.param == "videos"
    assert len(_tokens(chat_model, [{"role": "user", "content": "images still work"}], images=[noise_image((56, 56), 1)])) == MAX_TOKENS


@needs_torchvision
@pytest.mark.video
def test_chunked_prefill_splits_the_video_and_encodes_it_once(chat_model, reference, clips) -> None:
    # max_num_batched_tokens=48: ~40 tokens of text put the video's tokens across the first chunk boundary
    prefix = "x " * 40
    expected = reference(
        [{"role": "user", "content": [{"type": "text", "text": prefix}, {"type": "video"}, {"type": "text", "text": "end"}]}],
        videos=[clips[0]],
    )
    vision = chat_model.engine.multimodal.model.model
    calls = []
    original = vision.get_video_features
    vision.get_video_features = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        got = _tokens(chat_model, [{"role": "user", "content": prefix + "<video>end"}], videos=[clips[0]])
    finally:
        del vision.get_video_features
    assert got == expected
    assert calls == [1]
    [response] = chat_model.chat([{"role": "user", "content": prefix + "<video>end"}], videos=[clips[0]], max_tokens=1)
    assert response.prompt_length > 48  # the prompt really did take more than one chunk
