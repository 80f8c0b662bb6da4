"""Qwen2-VL images through the HF engine equal transformers' own `generate` on the same tiny random model, alone
and in a batch mixed with text requests (per-request 3-D positions, vision encoded once at prefill)."""

from __future__ import annotations

import functools
import io

import pytest
import torch

from chatplex.errors import UnsupportedFeatureError
from tests.engines.hf.multimodal_testing import (
    CORRUPT_PNG, assert_image_equals_generate, assert_mixed_image_batch_equals_alone, assert_prefix_cache_keyed_by_image,
    assert_refused,
    assert_still_serving, build_in, chatml_template, counting_calls, data_url, engine_tokens, expand_image_pads,
    generate_tokens, image_data_url, noise_image, save_all, sharpen_attention, tiny_chat_model, tiny_tokenizer, user,
)

TEMPLATE = chatml_template(image="<|vision_start|><|image_pad|><|vision_end|>")
MAX_TOKENS = 10


def _build(path) -> None:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor

    specials = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok = tiny_tokenizer(TEMPLATE, specials)
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
    save_all(path, model, tok, Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=112 * 112))


@pytest.fixture(scope="module")
def vl_dir(tmp_path_factory):
    return build_in(tmp_path_factory, "qwen2vl", _build)


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
            kwargs = dict(processor(images=images, return_tensors="pt"))
            text = expand_image_pads(text, kwargs["image_grid_thw"])
        ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
        kwargs["mm_token_type_ids"] = (ids == image_id).int()
        return generate_tokens(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), **kwargs}, MAX_TOKENS)

    return run


@pytest.fixture(scope="module")
def chat_model(vl_dir):
    with tiny_chat_model(vl_dir, max_num_batched_tokens=64) as model:
        yield model


_tokens = functools.partial(engine_tokens, max_tokens=MAX_TOKENS)  # (chat_model, messages, **request kwargs)


def test_images_argument_equals_generate(chat_model, reference) -> None:
    image = noise_image((90, 70), 1)
    expected = assert_image_equals_generate(chat_model, reference, image, noise_image((90, 70), 2), MAX_TOKENS)
    # the same image through a placeholder agrees
    assert _tokens(chat_model, user("<image>What is this?"), images=[image]) == expected


def test_openai_image_url_parts_equal_generate(chat_model, reference) -> None:
    a, b = noise_image((60, 100), 3), noise_image((120, 50), 4)
    expected = reference(user([{"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"}]), [a, b])
    webp = io.BytesIO()
    b.save(webp, format="WEBP", lossless=True)  # lossless: the same pixels as the reference's
    messages = user([
        {"type": "image_url", "image_url": {"url": image_data_url(a)}},
        {"type": "text", "text": "and"},
        {"type": "image_url", "image_url": data_url("image/webp", webp.getvalue())},  # the plain-string form
    ])
    assert _tokens(chat_model, messages) == expected


def test_chunked_prefill_and_text_only_requests(chat_model, reference) -> None:
    # max_num_batched_tokens=64 splits a prompt of ~80 tokens (with 4x4 merged patches per image) into chunks
    image = noise_image((112, 112), 5)
    messages = user("x " * 55 + "<image> and more text")
    expected = reference(user([{"type": "text", "text": "x " * 55}, {"type": "image"},
                               {"type": "text", "text": " and more text"}]), [image])
    with counting_calls(chat_model.engine.multimodal.model.model, "get_image_features") as calls:
        assert _tokens(chat_model, messages, images=[image]) == expected
    assert calls == [1]  # the image tokens span two prefill chunks; the vision tower ran once
    text_expected = reference(user("Hello there"), [])
    assert _tokens(chat_model, user("Hello there")) == text_expected


async def test_mixed_batch_equals_each_alone(chat_model, reference) -> None:
    await assert_mixed_image_batch_equals_alone(chat_model, reference, MAX_TOKENS)


def test_prefix_cache_is_keyed_by_the_image(chat_model, reference) -> None:
    assert_prefix_cache_keyed_by_image(chat_model, reference, MAX_TOKENS)


def test_bad_media_names_the_part(chat_model) -> None:
    bad = user([{"type": "text", "text": "x"}, {"type": "image_url", "image_url": CORRUPT_PNG}])
    assert_refused(chat_model, bad, "not a readable image", "messages[0].content[1]")
    assert_refused(chat_model, user("x"), "audio", None, UnsupportedFeatureError, audios=[([0.0] * 160, 16000)])
    # A media token typed into the text would open embedding slots with no media behind them.
    url = image_data_url(noise_image((56, 56), 7))
    typed = user([{"type": "image_url", "image_url": url}, {"type": "text", "text": "and <|video_pad|> too"}])
    assert_refused(chat_model, typed, "keeps for media", "messages[0].content[1]")
    assert_refused(chat_model, user("<image>see <|image_pad|>"), "keeps for media", "messages[0].content[1]",
                   images=[noise_image((56, 56), 7)])
    # Qwen-VL's resize refuses an aspect ratio over 200: the processor's reason, naming the image it cannot take.
    thin = user([{"type": "image_url", "image_url": url}, {"type": "image_url", "image_url": image_data_url(
        noise_image((600, 2), 8))}, {"type": "text", "text": "x"}])
    assert_refused(chat_model, thin, "processor cannot take this image", "messages[0].content[1]")
    assert_still_serving(chat_model, MAX_TOKENS)


async def test_a_conversations_next_turn_finds_its_image_cached(chat_model, reference) -> None:
    """The cache key holds the image itself, not where the prompt puts it: turn 2 (turn 1, its reply, a new
    question) finds turn 1's blocks, image included, and still gives what `generate` gives on the whole prompt."""
    image = noise_image((112, 112), 51)
    [first] = chat_model.chat(user("<image>What is this?"), images=[image], do_sample=False, max_tokens=MAX_TOKENS,
                              ignore_eos=True)
    turn2 = [{"role": "user", "content": "<image>What is this?"}, {"role": "assistant", "content": first.response_text},
             {"role": "user", "content": "And its colour?"}]
    request = chat_model.build_request(turn2, images=[image], do_sample=False, max_tokens=MAX_TOKENS, ignore_eos=True)
    deltas = [d async for d in chat_model.agenerate(request)]
    expected = reference([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
                          turn2[1], turn2[2]], [image])
    assert [t for d in deltas for t in d.token_ids] == expected
    assert deltas[-1].cached_tokens >= (first.prompt_length - 1) // 16 * 16 > 0
