"""Qwen2-VL images through the HF engine equal transformers' own `generate` on the same tiny random model, alone
and in a batch mixed with text requests (per-request 3-D positions, vision encoded once at prefill)."""

from __future__ import annotations

import asyncio
import base64
import io

import pytest
import torch
from PIL import Image

from chatplex import ChatModel
from chatplex.errors import InvalidRequestError, UnsupportedFeatureError
from tests.engines.hf.multimodal_testing import engine_tokens, generate_tokens, noise_image, sharpen_attention

# ChatML that writes Qwen2-VL's image placeholder for image parts (real checkpoints ship their own).
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content is string %}{{ m.content }}{% else %}"
    "{% for p in m.content %}{% if p.type == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif p.type == 'text' %}{{ p.text }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MAX_TOKENS = 10


def _build(path) -> None:
    from transformers import AutoTokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor

    from chatplex.models.embedded import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    specials = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.chat_template = TEMPLATE
    ids = tok.convert_tokens_to_ids(specials)
    config = Qwen2VLConfig(
        text_config=dict(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
            vocab_size=len(tok), max_position_embeddings=2048, eos_token_id=2, bos_token_id=1,
            rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},  # sums to head_dim / 2
        ),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        vision_start_token_id=ids[0], vision_end_token_id=ids[1], image_token_id=ids[2], video_token_id=ids[3],
    )
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config).eval()
    sharpen_attention(model.model.language_model)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=112 * 112).save_pretrained(path)


@pytest.fixture(scope="module")
def vl_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen2vl")
    _build(path)
    return path


@pytest.fixture(scope="module")
def reference(vl_dir):
    """Greedy tokens from transformers' generate: image processor + placeholder expansion + model.generate."""
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    model = AutoModelForImageTextToText.from_pretrained(vl_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(vl_dir)
    processor = AutoImageProcessor.from_pretrained(vl_dir)
    image_id = model.config.image_token_id

    def run(messages, images):
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        kwargs = {}
        if images:
            px = processor(images=images, return_tensors="pt")
            for n in (px["image_grid_thw"].prod(-1) // 4).tolist():
                text = text.replace("<|image_pad|>", "<|IMG|>" * n, 1)
            text = text.replace("<|IMG|>", "<|image_pad|>")
            kwargs = dict(px)
        ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
        kwargs["mm_token_type_ids"] = (ids == image_id).int()
        return generate_tokens(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), **kwargs}, MAX_TOKENS)

    return run


@pytest.fixture(scope="module")
def chat_model(vl_dir):
    model = ChatModel({"model_name_or_path": str(vl_dir), "infer_dtype": "float32", "max_num_batched_tokens": 64})
    yield model
    model.close()


def _image(size, color) -> Image.Image:
    return Image.new("RGB", size, color)


def _data_url(image: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode()}"


def _tokens(chat_model, messages, **kw):
    return engine_tokens(chat_model, messages, MAX_TOKENS, **kw)


def _image_messages(text="Describe."):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def test_images_argument_equals_generate(chat_model, reference) -> None:
    image = noise_image((90, 70), 1)
    expected = reference(_image_messages("What is this?"), [image])
    assert len(expected) == MAX_TOKENS
    assert _tokens(chat_model, [{"role": "user", "content": "What is this?"}], images=[image]) == expected
    # the image changes the answer (the vision path is live), and the same image through a placeholder agrees
    assert reference(_image_messages("What is this?"), [noise_image((90, 70), 2)]) != expected
    assert _tokens(chat_model, [{"role": "user", "content": "<image>What is this?"}], images=[image]) == expected


def test_openai_image_url_parts_equal_generate(chat_model, reference) -> None:
    a, b = noise_image((60, 100), 3), noise_image((120, 50), 4)
    expected = reference(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"}]}], [a, b]
    )
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": _data_url(a)}},
        {"type": "text", "text": "and"},
        {"type": "image_url", "image_url": _data_url(b, "WEBP")},  # plain-string form; lossless webp below
    ]}]
    buf = io.BytesIO()
    b.save(buf, format="WEBP", lossless=True)
    messages[0]["content"][2]["image_url"] = "data:image/webp;base64," + base64.b64encode(buf.getvalue()).decode()
    assert _tokens(chat_model, messages) == expected


def test_chunked_prefill_and_text_only_requests(chat_model, reference) -> None:
    # max_num_batched_tokens=64 splits a prompt of ~80 tokens (with 4x4 merged patches per image) into chunks
    image = noise_image((112, 112), 5)
    vision = chat_model.engine.multimodal.model.model
    calls = []
    original = vision.get_image_features
    vision.get_image_features = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        messages = [{"role": "user", "content": "x " * 55 + "<image> and more text"}]
        expected = reference(
            [{"role": "user", "content": [{"type": "text", "text": "x " * 55}, {"type": "image"},
                                          {"type": "text", "text": " and more text"}]}], [image])
        assert _tokens(chat_model, messages, images=[image]) == expected
    finally:
        del vision.get_image_features
    assert calls == [1]  # the image tokens span two prefill chunks; the vision tower ran once
    text_expected = reference([{"role": "user", "content": "Hello there"}], [])
    assert _tokens(chat_model, [{"role": "user", "content": "Hello there"}]) == text_expected


async def test_mixed_batch_equals_each_alone(chat_model, reference) -> None:
    cases = [
        ([{"role": "user", "content": "Hi, a text request."}], None),
        ([{"role": "user", "content": "First image"}], [noise_image((80, 80), 6)]),
        ([{"role": "user", "content": "Another"}], [noise_image((50, 110), 7)]),
        ([{"role": "user", "content": "Text again, longer this time."}], None),
    ]
    alone = [
        reference(_image_messages(m[0]["content"]) if imgs else m, imgs or []) for m, imgs in cases
    ]

    async def one(messages, images):
        [r] = await chat_model.achat(messages, images=images, do_sample=False, max_tokens=MAX_TOKENS, ignore_eos=True)
        return r.token_ids

    together = await asyncio.gather(*(one(m, i) for m, i in cases))
    assert together == alone
    assert chat_model.stats().max_batch_size >= 2


def test_bad_media_names_the_part(chat_model) -> None:
    bad = [{"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": "data:image/png;base64,AAAA"}]}]
    with pytest.raises(InvalidRequestError, match="not a readable image") as info:
        chat_model.chat(bad, max_tokens=2)
    assert info.value.param == "messages[0].content[1]"
    with pytest.raises(UnsupportedFeatureError, match="audio"):
        chat_model.chat([{"role": "user", "content": "x"}], audios=[([0.0] * 160, 16000)], max_tokens=2)
    # the engine keeps serving
    assert len(_tokens(chat_model, [{"role": "user", "content": "still here"}])) == MAX_TOKENS
