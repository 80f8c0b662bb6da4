"""LLaVA images through the HF engine equal transformers' own LlavaProcessor + `generate` on the same tiny random
model: alone, in a batch mixed with text requests, and across prefill chunks (vision tower once per request)."""

from __future__ import annotations

import functools
import pytest
import torch

from chatplex.errors import UnsupportedFeatureError
from tests.engines.hf.multimodal_testing import (
    CORRUPT_PNG, assert_image_equals_generate, assert_mixed_image_batch_equals_alone, assert_refused,
    assert_still_serving, build_in, chatml_template, counting_calls, engine_tokens, generate_tokens, image_data_url,
    image_messages, noise_image, save_all, tiny_chat_model, tiny_tokenizer, user,
)

TEMPLATE = chatml_template(image="<image>\n")  # LLaVA's `<image>` for image parts
MAX_TOKENS = 8
IMAGE_TOKENS = 16  # 28x28 pixels in 7x7 patches, CLS dropped ("default" strategy)
CHUNK = 24  # prefill tokens per step: image prompts run in several chunks


# LLaVA-NeXT tiles an image onto the best of these (height, width) grids of 28x28 tiles, by its size.
PINPOINTS = [[28, 56], [56, 28], [56, 56]]


def _build(path, kind: str = "llava") -> None:
    import transformers

    tok = tiny_tokenizer(TEMPLATE, ["<image>"])
    next_ = kind == "llava_next"
    config_class = transformers.LlavaNextConfig if next_ else transformers.LlavaConfig
    config = config_class(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=28, patch_size=7),
        text_config=dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, vocab_size=len(tok),
                         max_position_embeddings=2048, eos_token_id=2, bos_token_id=1),
        image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
        vision_feature_select_strategy="default", **({"image_grid_pinpoints": PINPOINTS} if next_ else {}),
    )
    torch.manual_seed(0)
    model_class = getattr(transformers, ("LlavaNext" if next_ else "Llava") + "ForConditionalGeneration")
    model = model_class(config).eval()
    with torch.no_grad():  # loud image features, so that the picture decides the tokens
        model.model.multi_modal_projector.linear_2.weight.mul_(20)
    sizes = dict(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    if next_:
        image_processor = transformers.LlavaNextImageProcessorPil(image_grid_pinpoints=PINPOINTS, **sizes)
    else:
        image_processor = transformers.CLIPImageProcessorPil(**sizes)
    save_all(path, model, tok, image_processor)


@pytest.fixture(scope="module", params=["llava", "llava_next"])
def llava_dir(request, tmp_path_factory):
    return build_in(tmp_path_factory, request.param, _build, request.param)


@pytest.fixture(scope="module")
def reference(llava_dir):
    """Greedy tokens from transformers: its own processor (LlavaProcessor / LlavaNextProcessor: `<image>` expansion,
    tiling) + model.generate. `run.prompt_len` gives the processor's prompt length."""
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    next_ = AutoConfig.from_pretrained(llava_dir).model_type == "llava_next"
    model_class = getattr(transformers, ("LlavaNext" if next_ else "Llava") + "ForConditionalGeneration")
    model = model_class.from_pretrained(llava_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(llava_dir)
    image_processor = (transformers.LlavaNextImageProcessorPil if next_ else transformers.CLIPImageProcessorPil)
    processor = (transformers.LlavaNextProcessor if next_ else transformers.LlavaProcessor)(
        image_processor=image_processor.from_pretrained(llava_dir), tokenizer=tok, patch_size=7,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )

    def inputs(messages, images):
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return processor(text=text, images=images or None, return_tensors="pt", add_special_tokens=False)

    def run(messages, images):
        return generate_tokens(model, inputs(messages, images), MAX_TOKENS)

    run.prompt_len = lambda messages, images: inputs(messages, images)["input_ids"].shape[1]
    return run


@pytest.fixture(scope="module")
def chat_model(llava_dir):
    with tiny_chat_model(llava_dir, max_num_seqs=4, max_num_batched_tokens=CHUNK) as model:
        yield model


_tokens = functools.partial(engine_tokens, max_tokens=MAX_TOKENS)  # (chat_model, messages, **request kwargs)


def test_images_argument_equals_generate(chat_model, reference) -> None:
    image = noise_image((90, 70), 1)
    assert_image_equals_generate(chat_model, reference, image, noise_image((90, 70), 2), MAX_TOKENS)
    [r] = chat_model.chat(user("<image>What is this?"), images=[image], max_tokens=1)
    assert r.prompt_length == reference.prompt_len(image_messages("What is this?"), [image])
    # LLaVA: 16 tokens per image; LLaVA-NeXT: the count follows the image's size
    images = [noise_image((120, 30), 8), noise_image((30, 120), 8), noise_image((90, 90), 8)]  # wide, tall, square
    lengths = [chat_model.chat(user("Hi"), images=[im], max_tokens=1)[0].prompt_length for im in images]
    assert lengths == [reference.prompt_len(image_messages("Hi"), [im]) for im in images]
    anyres = chat_model.engine.multimodal.model.config.model_type == "llava_next"
    assert len(set(lengths)) == (3 if anyres else 1), lengths


def test_image_url_parts_and_chunked_prefill(chat_model, reference) -> None:
    # the prompt (two images of 16 tokens) runs in several chunks of CHUNK tokens, splitting an image
    a, b = noise_image((60, 100), 3), noise_image((120, 50), 4)
    expected = reference(user([{"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"}]), [a, b])
    messages = user([
        {"type": "image_url", "image_url": {"url": image_data_url(a)}},
        {"type": "text", "text": "and"},
        {"type": "image_url", "image_url": image_data_url(b)},
    ])
    with counting_calls(chat_model.engine.multimodal.model.model, "get_image_features") as calls:
        [r] = chat_model.chat(messages, do_sample=False, max_tokens=MAX_TOKENS, ignore_eos=True)
    assert r.token_ids == expected
    assert r.prompt_length > CHUNK  # (the second image straddles the first chunk boundary)
    assert calls == [1]


async def test_mixed_batch_equals_each_alone(chat_model, reference) -> None:
    await assert_mixed_image_batch_equals_alone(chat_model, reference, MAX_TOKENS)


def test_bad_media_names_the_part(chat_model) -> None:
    bad = user([{"type": "text", "text": "x"}, {"type": "image_url", "image_url": CORRUPT_PNG}])
    assert_refused(chat_model, bad, "not a readable image", "messages[0].content[1]")
    many = user([{"type": "image_url", "image_url": image_data_url(noise_image((8, 8), 9))}] * 17)
    assert_refused(chat_model, many, "more than 16 images", "messages[0].content[16]")
    assert_refused(chat_model, user("x"), "audios: llava(_next)? takes images only", None, UnsupportedFeatureError,
                   audios=[([0.0] * 160, 16000)])
    assert_still_serving(chat_model, MAX_TOKENS)
