"""LLaMA-Factory's multimodal formats put media tokens where its plugins put them: `template: qwen2_vl` on a tiny
Qwen2-VL gives the prompt ids LLaMA-Factory's Qwen2VLPlugin + encode_oneturn gave for the same images
(tests/fixtures/llamafactory/mm_goldens.json, rendered in LLaMA-Factory's environment by
oracles/llamafactory/render_mm_goldens.py with the same processor and tokenizer), and the request generates.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from chatplex import ChatModel
from tests.engines.hf.multimodal_testing import image_data_url
from tests.templates.lf_tokenizers import MEDIA_CONVERSATIONS, build_tokenizer, noise_image

GOLDENS = json.loads((Path(__file__).resolve().parents[2] / "fixtures" / "llamafactory" / "mm_goldens.json").read_text())


@pytest.fixture(scope="module")
def qwen2vl_dir(tmp_path_factory, smollm_dir) -> str:
    """A tiny random Qwen2-VL with the goldens' tokenizer and image processor."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor

    tok = build_tokenizer(GOLDENS["tokenizer"], smollm_dir)
    ids = tok.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"])
    config = Qwen2VLConfig(
        text_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=len(tok), max_position_embeddings=2048,
                         eos_token_id=tok.eos_token_id, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        vision_start_token_id=ids[0], vision_end_token_id=ids[1], image_token_id=ids[2], video_token_id=ids[3],
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("qwen2vl-lf")
    Qwen2VLForConditionalGeneration(config).save_pretrained(path)
    tok.save_pretrained(path)
    Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=112 * 112).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def qwen2vl_lf(qwen2vl_dir):
    with ChatModel({"model_name_or_path": qwen2vl_dir, "template": GOLDENS["template"], "infer_dtype": "float32"}) as m:
        yield m


def _messages(key: str) -> list[dict]:
    """The golden conversation as OpenAI messages: its i-th image part is noise image i, as a PNG data URL."""
    messages, sizes = MEDIA_CONVERSATIONS[key]
    urls = iter(image_data_url(noise_image(size, seed)) for seed, size in enumerate(sizes))
    out = []
    for m in messages:
        content = m["content"]
        if not isinstance(content, str):
            content = [p if p["type"] == "text" else {"type": "image_url", "image_url": {"url": next(urls)}}
                       for p in content]
        out.append({"role": m["role"], "content": content})
    return out


@pytest.mark.parametrize("key", sorted(GOLDENS["cases"]))
def test_media_tokens_where_llamafactory_puts_them(qwen2vl_lf, key):
    request = qwen2vl_lf.build_request(_messages(key), max_new_tokens=2)
    prompt_ids, _ = qwen2vl_lf.engine.multimodal.prepare(qwen2vl_lf.engine.prompts, request)
    assert prompt_ids == GOLDENS["cases"][key]
    [reply] = qwen2vl_lf.chat(_messages(key), max_new_tokens=2, do_sample=False)
    assert reply.prompt_length == len(prompt_ids) and reply.response_length >= 1


def test_llamafactory_qwen2_5vl_example_chats_with_an_image(qwen2vl_dir):
    """Its examples/inference/qwen2_5vl.yaml as written, the model path pointed at the tiny Qwen2-VL (the same
    processor and token scheme as Qwen2.5-VL)."""
    import yaml

    raw = yaml.safe_load((Path(__file__).resolve().parents[2] / "fixtures" / "llamafactory" / "examples" /
                          "qwen2_5vl.yaml").read_text())
    with ChatModel({**raw, "model_name_or_path": qwen2vl_dir, "infer_dtype": "float32"}) as model:
        [reply] = model.chat(_messages("one_image"), max_new_tokens=3, do_sample=False)
    assert reply.prompt_length == len(GOLDENS["cases"]["one_image"]) and reply.response_length >= 1
