"""Qwen3-VL images through the HF engine equal transformers' Qwen3VLProcessor + `generate` on the same tiny random
model: DeepStack features reach the early decoder layers at the image positions of a flat batch, alone, across
prefill chunks and mixed with text requests."""

from __future__ import annotations

import asyncio

import pytest
import torch

from chatplex import ChatModel
from chatplex.errors import InvalidRequestError, UnsupportedFeatureError
from tests.engines.hf.multimodal_testing import HAS_TORCHVISION
from tests.engines.hf.test_multimodal_llava import _data_url, _noise

SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content is string %}{{ m.content }}{% else %}"
    "{% for p in m.content %}{% if p.type == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif p.type == 'text' %}{{ p.text }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MAX_TOKENS = 8
CHUNK = 16


def _build(path) -> None:
    from transformers import AutoTokenizer, Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from chatplex.models.embedded import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    tok.add_special_tokens({"additional_special_tokens": SPECIALS})
    tok.chat_template = TEMPLATE
    ids = tok.convert_tokens_to_ids(SPECIALS)
    config = Qwen3VLConfig(
        text_config=dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, intermediate_size=128, vocab_size=len(tok), max_position_embeddings=2048,
                         eos_token_id=2, bos_token_id=1,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                                          "mrope_interleaved": True}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64, num_position_embeddings=64,
                           deepstack_visual_indexes=[0, 1]),
        vision_start_token_id=ids[0], vision_end_token_id=ids[1], image_token_id=ids[2], video_token_id=ids[3],
    )
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(config).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2, min_pixels=32 * 32,
                             max_pixels=128 * 128).save_pretrained(path)


@pytest.fixture(scope="module")
def vl_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3vl")
    _build(path)
    return path


@pytest.fixture(scope="module")
def reference(vl_dir):
    """Greedy tokens from transformers: the image processor, `<|image_pad|>` expanded to grid / merge^2 copies (as
    Qwen3VLProcessor.replace_image_token does; that processor itself needs torchvision for its video half, which
    this venv lacks) + model.generate. `deepstack=False` switches DeepStack off, to show that it changes tokens."""
    from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    model = Qwen3VLForConditionalGeneration.from_pretrained(vl_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(vl_dir)
    processor = Qwen2VLImageProcessorPil.from_pretrained(vl_dir)
    image_id = model.config.image_token_id

    def run(messages, images, deepstack=True):
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        kwargs = {}
        if images:
            kwargs = dict(processor(images=images, return_tensors="pt"))
            for n in (kwargs["image_grid_thw"].prod(-1) // 4).tolist():
                text = text.replace("<|image_pad|>", "<|IMG|>" * n, 1)
            text = text.replace("<|IMG|>", "<|image_pad|>")
        ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
        decoder = model.model.language_model
        if not deepstack:
            decoder._deepstack_process = lambda hidden, mask, embeds: hidden
        try:
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     mm_token_type_ids=(ids == image_id).int(), max_new_tokens=MAX_TOKENS, **kwargs)
        finally:
            decoder.__dict__.pop("_deepstack_process", None)
        return out[0, ids.shape[1]:].tolist()

    return run


@pytest.fixture(scope="module")
def chat_model(vl_dir):
    model = ChatModel({"model_name_or_path": str(vl_dir), "infer_dtype": "float32", "max_num_seqs": 4,
                       "max_num_batched_tokens": CHUNK})
    yield model
    model.close()


def _tokens(chat_model, messages, **kw):
    [response] = chat_model.chat(messages, do_sample=False, max_tokens=MAX_TOKENS, ignore_eos=True, **kw)
    return response.token_ids


def _image_messages(text="Describe."):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def test_images_argument_equals_generate(chat_model, reference) -> None:
    image = _noise((90, 70), 1)
    expected = reference(_image_messages("What is this?"), [image])
    assert len(expected) == MAX_TOKENS
    assert _tokens(chat_model, [{"role": "user", "content": "What is this?"}], images=[image]) == expected
    # the picture changes the answer, and so does DeepStack (its rows must reach the decoder)
    assert reference(_image_messages("What is this?"), [_noise((90, 70), 2)]) != expected
    assert reference(_image_messages("What is this?"), [image], deepstack=False) != expected


def test_image_url_parts_in_chunks_encode_once(chat_model, reference) -> None:
    a, b = _noise((60, 100), 3), _noise((120, 50), 4)
    vision = chat_model.engine.multimodal.model.model
    calls = []
    original = vision.get_image_features
    vision.get_image_features = lambda *args, **kw: calls.append(1) or original(*args, **kw)
    try:
        messages = [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": _data_url(a)}},
            {"type": "text", "text": "and " * 6},
            {"type": "image_url", "image_url": _data_url(b)},
        ]}]
        expected = reference([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and " * 6},
                                                           {"type": "image"}]}], [a, b])
        [r] = chat_model.chat(messages, do_sample=False, max_tokens=MAX_TOKENS, ignore_eos=True)
        assert r.token_ids == expected
        assert r.prompt_length > 2 * CHUNK
    finally:
        del vision.get_image_features
    assert calls == [1]


async def test_mixed_batch_equals_each_alone(chat_model, reference) -> None:
    cases = [
        ([{"role": "user", "content": "Hi, a text request."}], None),
        ([{"role": "user", "content": "First image"}], [_noise((80, 80), 6)]),
        ([{"role": "user", "content": "Another"}], [_noise((50, 110), 7)]),
        ([{"role": "user", "content": "Text again, longer this time."}], None),
    ]
    alone = [reference(_image_messages(m[0]["content"]) if imgs else m, imgs or []) for m, imgs in cases]

    async def one(messages, images):
        [r] = await chat_model.achat(messages, images=images, do_sample=False, max_tokens=MAX_TOKENS, ignore_eos=True)
        return r.token_ids

    assert await asyncio.gather(*(one(m, i) for m, i in cases)) == alone
    assert chat_model.stats().max_batch_size >= 2


def test_bad_media_names_the_part(chat_model) -> None:
    url = _data_url(_noise((40, 40), 9))
    many = [{"role": "user", "content": [{"type": "image_url", "image_url": url}] * 17}]
    with pytest.raises(InvalidRequestError, match="more than 16 images") as info:
        chat_model.chat(many, max_tokens=2)
    assert info.value.param == "messages[0].content[16]"
    if not HAS_TORCHVISION:  # with it, test_multimodal_qwen3vl_video.py sends real videos
        with pytest.raises(UnsupportedFeatureError, match="videos: video input needs torchvision"):
            chat_model.chat([{"role": "user", "content": "x"}], videos=["clip.mp4"], max_tokens=2)
    assert len(_tokens(chat_model, [{"role": "user", "content": "still here"}])) == MAX_TOKENS
