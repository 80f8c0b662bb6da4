"""LLaMA-Factory's multimodal formats put media tokens where its plugins put them: `template: qwen2_vl` on a tiny
Qwen2-VL, `template: llava` on a tiny LLaVA and `template: gemma3` on a tiny Gemma 3 give the prompt ids LLaMA-Factory's Qwen2VLPlugin / LlavaPlugin / Gemma3Plugin +
encode_oneturn gave for the same images (tests/fixtures/llamafactory/mm_goldens.json, rendered in
LLaMA-Factory's environment by oracles/llamafactory/render_mm_goldens.py with the same processors and
tokenizers), and the requests generate. LLaVA's tokenizer is SentencePiece-style: its ids are only equal because
chatplex encodes the pieces one by one as LLaMA-Factory does, after the family expanded the placeholders.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from chatplex import ChatModel
from tests.engines.hf.multimodal_testing import image_data_url
from tests.templates.lf_tokenizers import GEMMA3_IMAGE_TOKENS, MEDIA_CONVERSATIONS, build_tokenizer, noise_image

GOLDENS = json.loads((Path(__file__).resolve().parents[2] / "fixtures" / "llamafactory" / "mm_goldens.json").read_text())
QWEN2VL = GOLDENS["families"]["qwen2_vl"]
LLAVA = GOLDENS["families"]["llava"]
GEMMA3 = GOLDENS["families"]["gemma3"]


@pytest.fixture(scope="module")
def qwen2vl_dir(tmp_path_factory, smollm_dir) -> str:
    """A tiny random Qwen2-VL with the goldens' tokenizer and image processor."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor

    tok = build_tokenizer(QWEN2VL["tokenizer"], smollm_dir)
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
def llava_dir(tmp_path_factory, smollm_dir) -> str:
    """A tiny random LLaVA with the goldens' tokenizer and image processor (28x28: 16 image tokens)."""
    import transformers

    tok = build_tokenizer(LLAVA["tokenizer"], smollm_dir)
    config = transformers.LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=28, patch_size=7),
        text_config=dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, vocab_size=LLAVA["vocab_size"],
                         max_position_embeddings=2048, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id),
        image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("llava-lf")
    transformers.LlavaForConditionalGeneration(config).save_pretrained(path)
    tok.save_pretrained(path)
    transformers.CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def gemma3_dir(tmp_path_factory, smollm_dir) -> str:
    """A tiny random Gemma 3 with the goldens' tokenizer and image processor (16 soft tokens per image)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil

    tok = build_tokenizer(GEMMA3["tokenizer"], smollm_dir)
    ids = tok.convert_tokens_to_ids(GEMMA3_IMAGE_TOKENS)
    config = Gemma3Config(
        text_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, intermediate_size=128, vocab_size=GEMMA3["vocab_size"],
                         max_position_embeddings=2048, sliding_window=8,
                         layer_types=["sliding_attention", "full_attention"], eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.bos_token_id, pad_token_id=tok.eos_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=28, patch_size=7),
        mm_tokens_per_image=16, boi_token_index=ids[0], eoi_token_index=ids[1], image_token_index=ids[2],
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gemma3-lf")
    Gemma3ForConditionalGeneration(config).save_pretrained(path)
    tok.save_pretrained(path)
    Gemma3ImageProcessorPil(size={"height": 28, "width": 28}).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module", params=["qwen2_vl", "llava", "gemma3"])
def family_model(request):
    path = request.getfixturevalue(f"{request.param.replace('_', '')}_dir")
    with ChatModel({"model_name_or_path": path, "template": request.param, "infer_dtype": "float32"}) as m:
        yield request.param, m


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


@pytest.mark.parametrize("key", sorted(QWEN2VL["cases"]))
def test_media_tokens_where_llamafactory_puts_them(family_model, key):
    template, model = family_model
    request = model.build_request(_messages(key), max_new_tokens=2)
    prompt_ids, _ = model.engine.multimodal.prepare(model.engine.prompts, request)
    assert prompt_ids == GOLDENS["families"][template]["cases"][key]
    [reply] = model.chat(_messages(key), max_new_tokens=2, do_sample=False)
    assert reply.prompt_length == len(prompt_ids) and reply.response_length >= 1


def test_llamafactory_qwen2_5vl_example_chats_with_an_image(qwen2vl_dir):
    """Its examples/inference/qwen2_5vl.yaml as written, the model path pointed at the tiny Qwen2-VL (the same
    processor and token scheme as Qwen2.5-VL)."""
    import yaml

    raw = yaml.safe_load((Path(__file__).resolve().parents[2] / "fixtures" / "llamafactory" / "examples" /
                          "qwen2_5vl.yaml").read_text())
    with ChatModel({**raw, "model_name_or_path": qwen2vl_dir, "infer_dtype": "float32"}) as model:
        [reply] = model.chat(_messages("one_image"), max_new_tokens=3, do_sample=False)
    assert reply.prompt_length == len(QWEN2VL["cases"]["one_image"]) and reply.response_length >= 1
