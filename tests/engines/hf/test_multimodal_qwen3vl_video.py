"""Qwen3-VL video through the HF engine equals transformers' Qwen3VLProcessor + `generate` on a tiny random model:
per-temporal-patch timestamps in the prompt, DeepStack rows for video tokens, a video next to an image, a mixed
batch. Needs torchvision (transformers' video processors): run by `make test` in .venv-media."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from chatplex import ChatModel
from tests.engines.hf.multimodal_testing import engine_tokens, generate_tokens, needs_torchvision, noise_image
from tests.engines.hf.test_multimodal_qwen3vl import _build as build_images_only
from tests.media.conftest import encode_mp4

pytestmark = [needs_torchvision, pytest.mark.video]

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content is string %}{{ m.content }}{% else %}"
    "{% for p in m.content %}{% if p.type == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif p.type == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif p.type == 'text' %}{{ p.text }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MAX_TOKENS = 8


def _processor(path):
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen3VLProcessor, Qwen3VLVideoProcessor

    return Qwen3VLProcessor(
        image_processor=AutoImageProcessor.from_pretrained(path), tokenizer=AutoTokenizer.from_pretrained(path),
        video_processor=Qwen3VLVideoProcessor(size={"shortest_edge": 32 * 32, "longest_edge": 64 * 96}),
        chat_template=TEMPLATE,
    )


@pytest.fixture(scope="module")
def vl_dir(tmp_path_factory):
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("qwen3vl-video")
    build_images_only(path)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(path)
    _processor(path).video_processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two clips: 16 frames at 8 fps (2 s), and 30 frames at 10 fps (3 s: 6 sampled frames, 3 temporal patches)."""
    out = []
    for seed, (count, fps) in enumerate([(16, 8), (30, 10)]):
        rng = np.random.default_rng(seed)
        path = tmp_path_factory.mktemp("q3clips") / f"clip{seed}.mp4"
        path.write_bytes(encode_mp4([tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(count)], fps,
                                    (96, 64)))
        out.append(str(path))
    return out


@pytest.fixture(scope="module")
def reference(vl_dir):
    from transformers import Qwen3VLForConditionalGeneration
    from transformers.video_utils import load_video

    model = Qwen3VLForConditionalGeneration.from_pretrained(vl_dir, dtype=torch.float32).eval()
    processor = _processor(vl_dir)

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
    model = ChatModel({"model_name_or_path": str(vl_dir), "infer_dtype": "float32", "max_num_batched_tokens": 24,
                       "max_num_seqs": 4})
    yield model
    model.close()


def test_video_equals_generate_with_timestamps(chat_model, reference, clips) -> None:
    for clip in clips:
        expected = reference([{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What?"}]}],
                             videos=[clip])
        assert engine_tokens(chat_model, [{"role": "user", "content": "<video>What?"}], MAX_TOKENS,
                             videos=[clip]) == expected
    assert expected != reference([{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What?"}]}],
                                 videos=[clips[0]])
    # The prompt carries each temporal patch's mean frame time: frames at 0, 0.5, ... 2.5 s -> 0.25, 1.25, 2.25
    engine = chat_model.engine
    request = chat_model.build_request([{"role": "user", "content": "<video>What?"}], videos=[clips[1]])
    ids, _ = engine.multimodal.prepare(engine.prompts, request)
    text = engine.tokenizer.decode(ids)
    assert [t for t in ("<0.2 seconds>", "<1.2 seconds>", "<2.2 seconds>", "<3.2 seconds>") if t in text] == [
        "<0.2 seconds>", "<1.2 seconds>", "<2.2 seconds>"
    ]


async def test_video_next_to_an_image_and_a_mixed_batch(chat_model, reference, clips) -> None:
    image = noise_image((64, 48), 3)
    both = reference([{"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "?"}]}],
                     images=[image], videos=[clips[1]])
    assert engine_tokens(chat_model, [{"role": "user", "content": "<image><video>?"}], MAX_TOKENS,
                         images=[image], videos=[clips[1]]) == both
    cases = [("text only", {}), ("a video", {"videos": [clips[0]]}), ("an image", {"images": [image]})]
    alone = []
    for text, media in cases:
        parts = [{"type": k[:-1]} for k in ("images", "videos") for _ in media.get(k, [])]
        alone.append(reference([{"role": "user", "content": [*parts, {"type": "text", "text": text}]}], **media))

    async def one(text, media):
        [r] = await chat_model.achat([{"role": "user", "content": text}], do_sample=False, max_tokens=MAX_TOKENS,
                                     ignore_eos=True, **media)
        return r.token_ids

    assert await asyncio.gather(*(one(t, m) for t, m in cases)) == alone
