"""Qwen3-VL images through the HF engine equal transformers' Qwen3VLProcessor + `generate` on the same tiny random
model: DeepStack features reach the early decoder layers at the image positions of a flat batch, alone, across
prefill chunks and mixed with text requests."""

from __future__ import annotations

import functools
import pytest
import torch

from chatplex.errors import UnsupportedFeatureError
from tests.engines.hf.multimodal_testing import (
    HAS_TORCHVISION, assert_image_equals_generate, assert_mixed_image_batch_equals_alone, assert_refused,
    assert_still_serving, build_in, chatml_template, counting_calls, engine_tokens, expand_image_pads,
    generate_tokens, image_data_url, image_messages, noise_image, qwen3vl_config, save_all, tiny_chat_model,
    tiny_tokenizer, user,
)

SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
TEMPLATE = chatml_template(image="<|vision_start|><|image_pad|><|vision_end|>")
MAX_TOKENS = 8
CHUNK = 16


def _build(path) -> None:
    from transformers import Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = tiny_tokenizer(TEMPLATE, SPECIALS)
    ids = tok.convert_tokens_to_ids(SPECIALS)
    config = qwen3vl_config(len(tok), ids, eos=2, bos=1, layers=3)
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(config).eval()
    save_all(path, model, tok, Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2,
                                                        min_pixels=32 * 32, max_pixels=128 * 128))


@pytest.fixture(scope="module")
def vl_dir(tmp_path_factory):
    return build_in(tmp_path_factory, "qwen3vl", _build)


@pytest.fixture(scope="module")
def reference(vl_dir):
    """Greedy tokens from transformers: the image processor AutoImageProcessor picks (the PIL one, or with
    torchvision installed the torchvision one, whose resize differs), `<|image_pad|>` expanded to grid / merge^2
    copies (as Qwen3VLProcessor.replace_image_token does; that processor itself needs torchvision for its video
    half) + model.generate. `deepstack=False` switches DeepStack off, to show that it changes tokens."""
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen3VLForConditionalGeneration

    model = Qwen3VLForConditionalGeneration.from_pretrained(vl_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(vl_dir)
    processor = AutoImageProcessor.from_pretrained(vl_dir)
    image_id = model.config.image_token_id

    def run(messages, images, deepstack=True):
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        kwargs = {}
        if images:
            kwargs = dict(processor(images=images, return_tensors="pt"))
            text = expand_image_pads(text, kwargs["image_grid_thw"])
        ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
        decoder = model.model.language_model
        if not deepstack:
            decoder._deepstack_process = lambda hidden, mask, embeds: hidden
        try:
            return generate_tokens(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                           "mm_token_type_ids": (ids == image_id).int(), **kwargs}, MAX_TOKENS)
        finally:
            decoder.__dict__.pop("_deepstack_process", None)

    return run


@pytest.fixture(scope="module")
def chat_model(vl_dir):
    with tiny_chat_model(vl_dir, max_num_seqs=4, max_num_batched_tokens=CHUNK) as model:
        yield model


_tokens = functools.partial(engine_tokens, max_tokens=MAX_TOKENS)  # (chat_model, messages, **request kwargs)


def test_images_argument_equals_generate(chat_model, reference) -> None:
    image = noise_image((90, 70), 1)
    expected = assert_image_equals_generate(chat_model, reference, image, noise_image((90, 70), 2), MAX_TOKENS)
    # DeepStack changes the answer too (its rows must reach the decoder)
    assert reference(image_messages("What is this?"), [image], deepstack=False) != expected


def test_image_url_parts_in_chunks_encode_once(chat_model, reference) -> None:
    a, b = noise_image((60, 100), 3), noise_image((120, 50), 4)
    messages = user([
        {"type": "image_url", "image_url": {"url": image_data_url(a)}},
        {"type": "text", "text": "and " * 6},
        {"type": "image_url", "image_url": image_data_url(b)},
    ])
    expected = reference(user([{"type": "image"}, {"type": "text", "text": "and " * 6}, {"type": "image"}]), [a, b])
    with counting_calls(chat_model.engine.multimodal.model.model, "get_image_features") as calls:
        [r] = chat_model.chat(messages, do_sample=False, max_tokens=MAX_TOKENS, ignore_eos=True)
    assert r.token_ids == expected
    assert r.prompt_length > 2 * CHUNK
    assert calls == [1]


async def test_mixed_batch_equals_each_alone(chat_model, reference) -> None:
    await assert_mixed_image_batch_equals_alone(chat_model, reference, MAX_TOKENS)


def test_bad_media_names_the_part(chat_model) -> None:
    many = user([{"type": "image_url", "image_url": image_data_url(noise_image((40, 40), 9))}] * 17)
    assert_refused(chat_model, many, "more than 16 images", "messages[0].content[16]")
    if not HAS_TORCHVISION:  # with it, test_multimodal_qwen3vl_video.py sends real videos
        assert_refused(chat_model, user("x"), "videos: video input needs torchvision", None, UnsupportedFeatureError,
                       videos=["clip.mp4"])
    assert_still_serving(chat_model, MAX_TOKENS)
