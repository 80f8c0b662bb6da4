"""Gemma 3 images through the HF engine equal transformers' own Gemma3Processor + `generate` on the same tiny random
model, including the bidirectional attention among one image's soft tokens (with a sliding window shorter than an
image), across prefill chunks smaller than an image, and in batches mixed with text requests."""

from __future__ import annotations

import functools
import pytest
import torch

from chatplex.errors import UnsupportedFeatureError
from tests.engines.hf.multimodal_testing import (
    CORRUPT_PNG, assert_image_equals_generate, assert_mixed_image_batch_equals_alone, assert_prefix_cache_keyed_by_image,
    assert_refused,
    assert_still_serving, build_in, chatml_template, counting_calls, engine_tokens, generate_tokens, image_data_url,
    image_messages, noise_image, save_all, tiny_chat_model, tiny_tokenizer, user,
)

SPECIALS = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
TEMPLATE = chatml_template(image="<start_of_image>")  # as Gemma's own template writes image parts
MAX_TOKENS = 8
IMAGE_TOKENS = 16  # mm_tokens_per_image
CHUNK = 12  # prefill tokens per step: smaller than one image


def _build(path) -> None:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil

    tok = tiny_tokenizer(TEMPLATE, SPECIALS)
    ids = tok.convert_tokens_to_ids(SPECIALS)
    config = Gemma3Config(
        text_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, intermediate_size=128, vocab_size=len(tok), max_position_embeddings=2048,
                         sliding_window=8, layer_types=["sliding_attention", "full_attention"], eos_token_id=2,
                         bos_token_id=1, pad_token_id=2),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=28, patch_size=7),
        mm_tokens_per_image=IMAGE_TOKENS, boi_token_index=ids[0], eoi_token_index=ids[1], image_token_index=ids[2],
    )
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        # The projector starts at zero; random and loud, the picture decides the tokens. Sharper attention
        # (q/k norms scale queries and keys) makes a wrong mask change them too.
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, 1.0)
        for layer in model.model.language_model.layers:
            layer.self_attn.q_norm.weight.fill_(3.0)
            layer.self_attn.k_norm.weight.fill_(3.0)
    save_all(path, model, tok, Gemma3ImageProcessorPil(size={"height": 28, "width": 28}))


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    return build_in(tmp_path_factory, "gemma3", _build)


@pytest.fixture(scope="module")
def hf_model(gemma_dir):
    from transformers import Gemma3ForConditionalGeneration

    return Gemma3ForConditionalGeneration.from_pretrained(gemma_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def reference(gemma_dir, hf_model):
    """Greedy tokens from transformers: Gemma3Processor (its own image expansion and token_type_ids, which turn
    on the bidirectional image mask) + model.generate. `causal=True` drops token_type_ids."""
    from transformers import AutoTokenizer, Gemma3ImageProcessorPil, Gemma3Processor

    tok = AutoTokenizer.from_pretrained(
        gemma_dir, extra_special_tokens=dict(zip(("boi_token", "eoi_token", "image_token"), SPECIALS))
    )
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil.from_pretrained(gemma_dir), tokenizer=tok,
        image_seq_length=IMAGE_TOKENS,
    )

    def run(messages, images, causal=False):
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = processor(text=text, images=images or None, return_tensors="pt", add_special_tokens=False)
        if causal:
            inputs.pop("token_type_ids")
        return generate_tokens(hf_model, inputs, MAX_TOKENS)

    return run


@pytest.fixture(scope="module")
def chat_model(gemma_dir):
    with tiny_chat_model(gemma_dir, max_num_seqs=4, max_num_batched_tokens=CHUNK) as model:
        yield model


_tokens = functools.partial(engine_tokens, max_tokens=MAX_TOKENS)  # (chat_model, messages, **request kwargs)


def test_input_embeddings_are_what_the_model_embeds(hf_model) -> None:
    # Gemma 3 scales token embeddings by sqrt(hidden): the splice must start from the same scaled values.
    ids = torch.tensor([[5, 17, 300, 2]])
    seen = {}
    hook = hf_model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    try:
        with torch.inference_mode():
            hf_model(input_ids=ids)
    finally:
        hook.remove()
    with torch.inference_mode():
        assert torch.equal(hf_model.get_input_embeddings()(ids), seen["embeds"])


def test_images_argument_equals_generate(chat_model, reference) -> None:
    image = noise_image((50, 40), 11)  # a picture on which the causal-only mask changes 6 of the 8 tokens
    # chunks of CHUNK tokens split the image: its tokens still see each other both ways
    expected = assert_image_equals_generate(chat_model, reference, image, noise_image((50, 40), 2), MAX_TOKENS)
    # a causal-only mask over the image changes the answer too (the bidirectional mask is live)
    assert reference(image_messages("What is this?"), [image], causal=True) != expected
    [r] = chat_model.chat(user("<image>What is this?"), images=[image], max_tokens=1)
    [text_only] = chat_model.chat(user("What is this?"), max_tokens=1)
    assert r.prompt_length > text_only.prompt_length + IMAGE_TOKENS + 2  # + boi, eoi and the blank lines


def test_image_url_parts_in_chunks_encode_once(chat_model, reference) -> None:
    a, b = noise_image((60, 100), 3), noise_image((120, 50), 4)
    expected = reference(user([{"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"}]), [a, b])
    messages = user([
        {"type": "image_url", "image_url": {"url": image_data_url(a)}},
        {"type": "text", "text": "and"},
        {"type": "image_url", "image_url": image_data_url(b)},
    ])
    with counting_calls(chat_model.engine.multimodal.model.model, "get_image_features") as calls:
        assert _tokens(chat_model, messages) == expected
    assert calls == [1]


async def test_mixed_batch_equals_each_alone(chat_model, reference) -> None:
    await assert_mixed_image_batch_equals_alone(chat_model, reference, MAX_TOKENS)


def test_prefix_cache_is_keyed_by_the_image(chat_model, reference) -> None:
    assert_prefix_cache_keyed_by_image(chat_model, reference, MAX_TOKENS)


async def test_a_cached_prefix_stops_before_the_image(chat_model) -> None:
    """An image's tokens see each other both ways, so they are computed together (a chunk starting inside one moves
    back to its start): a cached prefix ending inside the image would have that chunk write into shared blocks."""
    image = noise_image((50, 40), 41)
    messages = user("Some words ahead of the picture, enough to fill a few blocks of the cache. <image>Describe.")
    request = chat_model.build_request(messages, images=[image], do_sample=False, max_tokens=2)
    prompt_ids, _ = chat_model.engine.multimodal.prepare(chat_model.engine.prompts, request)
    image_start = prompt_ids.index(chat_model.engine.multimodal.image_token_id)
    cached = []
    for _ in range(2):
        request = chat_model.build_request(messages, images=[image], do_sample=False, max_tokens=2)
        cached.append([d async for d in chat_model.agenerate(request)][-1].cached_tokens)
    assert cached[0] == 0 and 0 < cached[1] <= image_start < len(prompt_ids) - 16


def test_bad_media_names_the_part(chat_model) -> None:
    url = image_data_url(noise_image((8, 8), 9))
    many = user([{"type": "text", "text": "x"}] + [{"type": "image_url", "image_url": url}] * 17)
    assert_refused(chat_model, many, "more than 16 images", "messages[0].content[17]")
    bad = user([{"type": "image_url", "image_url": CORRUPT_PNG}])
    assert_refused(chat_model, bad, "not a readable image", "messages[0].content[0]")
    typed = user([{"type": "image_url", "image_url": url}, {"type": "text", "text": "<image_soft_token>"}])
    assert_refused(chat_model, typed, "keeps for media", "messages[0].content[1]")
    assert_refused(chat_model, user("x"), "videos: gemma3 takes images only", None, UnsupportedFeatureError,
                   videos=["clip.mp4"])
    assert_still_serving(chat_model, MAX_TOKENS)
