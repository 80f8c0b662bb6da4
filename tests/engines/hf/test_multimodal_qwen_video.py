"""Qwen2-VL and Qwen2.5-VL video through the HF engine equal transformers' own processor + `generate` on the same
tiny random models: a video alone, a video next to an image, a mixed batch, chunked prefill. Videos are decoded
by chatplex (PyAV) and, for the reference, by transformers' own loader.

transformers' video processors need torchvision, which the main test environment lacks (see the README): these
tests run in `.venv-media` (`make test` runs them there); in the main environment only the clear error is tested.
"""

from __future__ import annotations

import functools
import pytest
import torch

from chatplex.errors import UnsupportedFeatureError
from tests.engines.hf.multimodal_testing import (
    HAS_TORCHVISION, assert_refused, assert_still_serving, batched_tokens, build_in, chatml_template, color_clip,
    counting_calls, data_url, engine_tokens, needs_torchvision, noise_image, save_all, sharpen_attention,
    tiny_chat_model, tiny_tokenizer, user, video_reference,
)

TEMPLATE = chatml_template(image="<|vision_start|><|image_pad|><|vision_end|>",
                           video="<|vision_start|><|video_pad|><|vision_end|>")
MAX_TOKENS = 8
FAMILIES = ["qwen2_vl", "qwen2_5_vl"]


def _build(path, family: str) -> None:
    import transformers
    from transformers import Qwen2VLImageProcessor

    specials = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok = tiny_tokenizer(TEMPLATE, specials)
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
    save_all(path, model, tok, Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=112 * 112))
    if HAS_TORCHVISION:
        from transformers import Qwen2VLVideoProcessor

        Qwen2VLVideoProcessor(min_pixels=28 * 28, max_pixels=56 * 84).save_pretrained(path)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def vl_dir(tmp_path_factory, family):
    return build_in(tmp_path_factory, family, _build, family)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two 2-second mp4 clips (16 frames at 8 fps) with different content."""
    folder = tmp_path_factory.mktemp("clips")
    for seed in (1, 2):
        (folder / f"clip{seed}.mp4").write_bytes(color_clip(seed))
    return [str(folder / f"clip{seed}.mp4") for seed in (1, 2)]


@pytest.fixture(scope="module")
def reference(vl_dir, family):
    """Greedy tokens from transformers: its video loader, the model's full processor, model.generate."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(vl_dir, dtype=torch.float32).eval()
    return video_reference(model, AutoProcessor.from_pretrained(vl_dir), MAX_TOKENS)


@pytest.fixture(scope="module")
def chat_model(vl_dir):
    with tiny_chat_model(vl_dir, max_num_batched_tokens=48) as model:
        yield model


_tokens = functools.partial(engine_tokens, max_tokens=MAX_TOKENS)  # (chat_model, messages, **request kwargs)


def _video_messages(text):
    return user([{"type": "video"}, {"type": "text", "text": text}])


@needs_torchvision
@pytest.mark.video
def test_video_argument_equals_generate(chat_model, reference, clips) -> None:
    expected = reference(_video_messages("What happens?"), videos=[clips[0]])
    assert len(expected) == MAX_TOKENS
    assert _tokens(chat_model, user("What happens?"), videos=[clips[0]]) == expected
    # the video changes the answer: the video path is live
    assert reference(_video_messages("What happens?"), videos=[clips[1]]) != expected
    assert _tokens(chat_model, user("<video>What happens?"), videos=[clips[0]]) == expected


@needs_torchvision
@pytest.mark.video
def test_video_url_part_next_to_an_image(chat_model, reference, clips) -> None:
    image = noise_image((70, 90), 3)
    expected = reference(user([{"type": "image"}, {"type": "text", "text": "then"}, {"type": "video"}]),
                         images=[image], videos=[clips[1]])
    # an image part with the picture itself, and the video as an OpenAI-style part in the same message
    messages = user([
        {"type": "image", "image": image}, {"type": "text", "text": "then"},
        {"type": "video_url", "video_url": {"url": data_url("video/mp4", open(clips[1], "rb").read())}},
    ])
    assert _tokens(chat_model, messages) == expected


@needs_torchvision
@pytest.mark.video
async def test_mixed_batch_equals_each_alone(chat_model, reference, clips) -> None:
    image = noise_image((80, 60), 4)
    cases = [
        ("A plain text request.", {}),
        ("A video.", {"videos": [clips[0]]}),
        ("An image.", {"images": [image]}),
        ("The other video, longer text.", {"videos": [clips[1]]}),
    ]
    alone = []
    for text, media in cases:
        parts = [{"type": "video"}] * len(media.get("videos", [])) + [{"type": "image"}] * len(media.get("images", []))
        alone.append(reference(user(parts + [{"type": "text", "text": text}]) if parts else user(text), **media))
    assert await batched_tokens(chat_model, [(user(text), media) for text, media in cases], MAX_TOKENS) == alone


@needs_torchvision
@pytest.mark.video
def test_bad_video_names_the_part(chat_model) -> None:
    bad = user([{"type": "text", "text": "x"}, {"type": "video_url", "video_url": "data:video/mp4;base64,AAAA"}])
    assert_refused(chat_model, bad, "not a readable video", "messages[0].content[1]")
    assert_still_serving(chat_model, MAX_TOKENS)


@pytest.mark.skipif(HAS_TORCHVISION, reason="checks the error given without torchvision")
def test_without_torchvision_video_is_a_clear_error(chat_model, clips) -> None:
    assert_refused(chat_model, user("x"), "torchvision", "videos", UnsupportedFeatureError, videos=[clips[0]])
    assert len(_tokens(chat_model, user("images still work"), images=[noise_image((56, 56), 1)])) == MAX_TOKENS


@needs_torchvision
@pytest.mark.video
def test_chunked_prefill_splits_the_video_and_encodes_it_once(chat_model, reference, clips) -> None:
    # max_num_batched_tokens=48: ~40 tokens of text put the video's tokens across the first chunk boundary
    prefix = "x " * 40
    expected = reference(user([{"type": "text", "text": prefix}, {"type": "video"}, {"type": "text", "text": "end"}]),
                         videos=[clips[0]])
    with counting_calls(chat_model.engine.multimodal.model.model, "get_video_features") as calls:
        got = _tokens(chat_model, user(prefix + "<video>end"), videos=[clips[0]])
    assert got == expected
    assert calls == [1]
    [response] = chat_model.chat(user(prefix + "<video>end"), videos=[clips[0]], max_tokens=1)
    assert response.prompt_length > 48  # the prompt really did take more than one chunk
