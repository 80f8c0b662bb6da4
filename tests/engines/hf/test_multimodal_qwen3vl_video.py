"""Qwen3-VL video through the HF engine equals transformers' Qwen3VLProcessor + `generate` on a tiny random model:
per-temporal-patch timestamps in the prompt, DeepStack rows for video tokens, a video next to an image, a mixed
batch. Needs torchvision (transformers' video processors): run by `make test` in .venv-media."""

from __future__ import annotations

import pytest
import torch

from tests.engines.hf.multimodal_testing import (
    chatml_template, color_clip, concurrent_tokens, engine_tokens, needs_torchvision, noise_image, tiny_chat_model,
    user, video_reference,
)
from tests.engines.hf.test_multimodal_qwen3vl import _build as build_images_only

pytestmark = [needs_torchvision, pytest.mark.video]

TEMPLATE = chatml_template(image="<|vision_start|><|image_pad|><|vision_end|>",
                           video="<|vision_start|><|video_pad|><|vision_end|>")
MAX_TOKENS = 8


def _processor(path):
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen3VLProcessor, Qwen3VLVideoProcessor

    return Qwen3VLProcessor(
        image_processor=AutoImageProcessor.from_pretrained(path), tokenizer=AutoTokenizer.from_pretrained(path),
        video_processor=Qwen3VLVideoProcessor(size={"shortest_edge": 32 * 32, "longest_edge": 64 * 96}),
        chat_template=TEMPLATE,
    )


def build_with_video(path) -> None:
    """The tiny Qwen3-VL with a video-aware chat template and its video processor saved beside it."""
    from transformers import AutoTokenizer

    build_images_only(path)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(path)
    _processor(path).video_processor.save_pretrained(path)


@pytest.fixture(scope="module")
def vl_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3vl-video")
    build_with_video(path)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two clips: 16 frames at 8 fps (2 s), and 30 frames at 10 fps (3 s: 6 sampled frames, 3 temporal patches)."""
    folder = tmp_path_factory.mktemp("q3clips")
    for seed, (count, fps) in enumerate([(16, 8), (30, 10)]):
        (folder / f"clip{seed}.mp4").write_bytes(color_clip(seed, count, fps))
    return [str(folder / f"clip{seed}.mp4") for seed in (0, 1)]


@pytest.fixture(scope="module")
def reference(vl_dir):
    from transformers import Qwen3VLForConditionalGeneration

    model = Qwen3VLForConditionalGeneration.from_pretrained(vl_dir, dtype=torch.float32).eval()
    return video_reference(model, _processor(vl_dir), MAX_TOKENS)


@pytest.fixture(scope="module")
def chat_model(vl_dir):
    with tiny_chat_model(vl_dir, max_num_batched_tokens=24, max_num_seqs=4) as model:
        yield model


def test_video_equals_generate_with_timestamps(chat_model, reference, clips) -> None:
    question = user([{"type": "video"}, {"type": "text", "text": "What?"}])
    for clip in clips:
        expected = reference(question, videos=[clip])
        assert engine_tokens(chat_model, user("<video>What?"), MAX_TOKENS, videos=[clip]) == expected
    assert expected != reference(question, videos=[clips[0]])
    # The prompt carries each temporal patch's mean frame time: frames at 0, 0.5, ... 2.5 s -> 0.25, 1.25, 2.25
    engine = chat_model.engine
    request = chat_model.build_request(user("<video>What?"), videos=[clips[1]])
    ids, _ = engine.multimodal.prepare(engine.prompts, request)
    text = engine.tokenizer.decode(ids)
    assert [t for t in ("<0.2 seconds>", "<1.2 seconds>", "<2.2 seconds>", "<3.2 seconds>") if t in text] == [
        "<0.2 seconds>", "<1.2 seconds>", "<2.2 seconds>"
    ]


async def test_video_next_to_an_image_and_a_mixed_batch(chat_model, reference, clips) -> None:
    image = noise_image((64, 48), 3)
    both = reference(user([{"type": "image"}, {"type": "video"}, {"type": "text", "text": "?"}]),
                     images=[image], videos=[clips[1]])
    assert engine_tokens(chat_model, user("<image><video>?"), MAX_TOKENS, images=[image], videos=[clips[1]]) == both
    cases = [("text only", {}), ("a video", {"videos": [clips[0]]}), ("an image", {"images": [image]})]
    alone = []
    for text, media in cases:
        parts = [{"type": k[:-1]} for k in ("images", "videos") for _ in media.get(k, [])]
        alone.append(reference(user([*parts, {"type": "text", "text": text}]), **media))
    assert await concurrent_tokens(chat_model, [(user(text), media) for text, media in cases], MAX_TOKENS) == alone
