"""LLaMA-Factory's multimodal formats put media tokens where its plugins put them: `template: qwen2_vl` on a tiny
Qwen2-VL, `qwen3_vl` on a tiny Qwen3-VL, `llava` on a tiny LLaVA, `llava_next` on a tiny LLaVA-NeXT, `gemma3` on a
tiny Gemma 3, `qwen2_audio` on a tiny Qwen2-Audio and `qwen2_omni` on a tiny Qwen2.5-Omni thinker give the prompt ids
LLaMA-Factory's plugin (Qwen2VLPlugin, Qwen3VLPlugin, LlavaPlugin, LlavaNextPlugin, Gemma3Plugin, Qwen2AudioPlugin,
Qwen2OmniPlugin) + encode_oneturn gave for the same images, audio clips, videos and (`use_audio_in_video`) videos
with sound (tests/fixtures/llamafactory/mm_goldens.json, rendered in LLaMA-Factory's environment by
oracles/llamafactory/render_mm_goldens.py with the same processors and tokenizers), and the requests generate.
LLaVA's tokenizer is SentencePiece-style: its ids are only equal because chatplex encodes the pieces one by one as
LLaMA-Factory does, after the family expanded the placeholders. Video processors (and so Qwen2.5-Omni's processor)
need torchvision: those cases run in .venv-media (`make test`).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
import torch

from chatplex import ChatModel
from tests.engines.hf.multimodal_testing import (
    image_data_url, input_audio_part, llava_config, needs_torchvision, omni_thinker_config, qwen2vl_config,
    qwen3vl_config, sharpen_attention,
)
from tests.templates.lf_tokenizers import (
    AUDIO_RATE, GEMMA3_IMAGE_TOKENS, LLAVA_NEXT_PINPOINTS, MEDIA_CONVERSATIONS, build_tokenizer, media_items,
)

GOLDENS = json.loads((Path(__file__).resolve().parents[2] / "fixtures" / "llamafactory" / "mm_goldens.json").read_text())
QWEN2VL = GOLDENS["families"]["qwen2_vl"]
QWEN3VL = GOLDENS["families"]["qwen3_vl"]
LLAVA = GOLDENS["families"]["llava"]
LLAVA_NEXT = GOLDENS["families"]["llava_next"]
GEMMA3 = GOLDENS["families"]["gemma3"]
QWEN2AUDIO = GOLDENS["families"]["qwen2_audio"]
QWEN2OMNI = GOLDENS["families"]["qwen2_omni"]


@pytest.fixture(scope="module")
def qwen2vl_dir(tmp_path_factory, smollm_dir) -> str:
    """A tiny random Qwen2-VL with the goldens' tokenizer and image processor."""
    from transformers import Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor

    tok = build_tokenizer(QWEN2VL["tokenizer"], smollm_dir)
    ids = tok.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"])
    config = qwen2vl_config(len(tok), ids, tok.eos_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("qwen2vl-lf")
    Qwen2VLForConditionalGeneration(config).save_pretrained(path)
    tok.save_pretrained(path)
    Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=112 * 112).save_pretrained(path)
    _save_video_processor("Qwen2VLVideoProcessor", path)
    return str(path)


def _save_video_processor(name: str, path) -> None:
    """The goldens' video processor (transformers' defaults), where torchvision is there to build one; without it
    the model takes images only and the video cases are skipped."""
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        import transformers

        getattr(transformers, name)().save_pretrained(path)


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory, smollm_dir) -> str:
    """A tiny random LLaVA with the goldens' tokenizer and image processor (28x28: 16 image tokens)."""
    import transformers

    tok = build_tokenizer(LLAVA["tokenizer"], smollm_dir)
    config = llava_config(LLAVA["vocab_size"], tok.convert_tokens_to_ids("<image>"), tok.eos_token_id, tok.bos_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("llava-lf")
    transformers.LlavaForConditionalGeneration(config).save_pretrained(path)
    tok.save_pretrained(path)
    transformers.CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def llavanext_dir(tmp_path_factory, smollm_dir) -> str:
    """A tiny random LLaVA-NeXT with the goldens' tokenizer and image processor (28x28 tiles on 3 grids)."""
    import transformers

    tok = build_tokenizer(LLAVA_NEXT["tokenizer"], smollm_dir)
    config = llava_config(LLAVA_NEXT["vocab_size"], tok.convert_tokens_to_ids("<image>"), tok.eos_token_id,
                          tok.bos_token_id, LLAVA_NEXT_PINPOINTS)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("llavanext-lf")
    transformers.LlavaNextForConditionalGeneration(config).save_pretrained(path)
    tok.save_pretrained(path)
    transformers.LlavaNextImageProcessorPil(image_grid_pinpoints=LLAVA_NEXT_PINPOINTS, size={"shortest_edge": 28},
                                            crop_size={"height": 28, "width": 28}).save_pretrained(path)
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


@pytest.fixture(scope="module")
def qwen3vl_dir(tmp_path_factory, smollm_dir) -> str:
    """A tiny random Qwen3-VL with the goldens' tokenizer and image processor (32-pixel merged patches)."""
    from transformers import Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = build_tokenizer(QWEN3VL["tokenizer"], smollm_dir)
    ids = tok.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"])
    config = qwen3vl_config(len(tok), ids, tok.eos_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("qwen3vl-lf")
    Qwen3VLForConditionalGeneration(config).save_pretrained(path)
    tok.save_pretrained(path)
    Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2, min_pixels=32 * 32,
                             max_pixels=128 * 128).save_pretrained(path)
    _save_video_processor("Qwen3VLVideoProcessor", path)
    return str(path)


@pytest.fixture(scope="module")
def qwen2audio_dir(tmp_path_factory, smollm_dir) -> str:
    """A tiny random Qwen2-Audio with the goldens' tokenizer and feature extractor (2 s windows)."""
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, WhisperFeatureExtractor

    tok = build_tokenizer(QWEN2AUDIO["tokenizer"], smollm_dir)
    config = Qwen2AudioConfig(
        text_config=dict(model_type="qwen2", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, vocab_size=len(tok),
                         max_position_embeddings=2048, eos_token_id=tok.eos_token_id),
        audio_config=dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                          num_mel_bins=128, max_source_positions=100),
        audio_token_index=tok.convert_tokens_to_ids("<|AUDIO|>"),
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("qwen2audio-lf")
    Qwen2AudioForConditionalGeneration(config).save_pretrained(path)
    tok.save_pretrained(path)
    WhisperFeatureExtractor(feature_size=128, chunk_length=2).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def qwen2omni_dir(tmp_path_factory, smollm_dir) -> str:
    """A tiny random Qwen2.5-Omni thinker with the goldens' tokenizer (its media tokens named) and processor."""
    from transformers import (
        Qwen2_5OmniProcessor, Qwen2_5OmniThinkerForConditionalGeneration,
        Qwen2VLImageProcessor, Qwen2VLVideoProcessor, WhisperFeatureExtractor,
    )

    tok = build_tokenizer(QWEN2OMNI["tokenizer"], smollm_dir)
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in QWEN2OMNI["tokenizer"]["named"].items()}
    config = omni_thinker_config(len(tok), ids, tok.eos_token_id)
    torch.manual_seed(0)
    model = Qwen2_5OmniThinkerForConditionalGeneration(config).eval()
    sharpen_attention(model.model.language_model)
    path = tmp_path_factory.mktemp("qwen2omni-lf")
    model.save_pretrained(path)
    Qwen2_5OmniProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=112 * 112),
                         video_processor=Qwen2VLVideoProcessor(min_pixels=28 * 28, max_pixels=56 * 84),
                         feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tok).save_pretrained(path)
    return str(path)


# video processors (and so the omni processor) need torchvision: .venv-media runs those (marked video)
_VIDEO = [needs_torchvision, pytest.mark.video]
CASE_PARAMS = [pytest.param(name, key, marks=_VIDEO if name.startswith("qwen2_omni") or "video" in key else ())
               for name, family in GOLDENS["families"].items() for key in family["cases"]]


def _wav(clip) -> bytes:
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, clip, AUDIO_RATE, format="WAV", subtype="FLOAT")  # float: the decoded samples are exact
    return buf.getvalue()


def _mp4_data_url(data: bytes) -> str:
    return "data:video/mp4;base64," + base64.b64encode(data).decode()


def _messages(key: str) -> list[dict]:
    """The golden conversation as OpenAI messages: its images as PNG data URLs, its audio clips as input_audio
    WAVs, its videos as MP4 data URLs, made from the same specs and seeds."""
    messages, media = MEDIA_CONVERSATIONS[key]
    images, audios, videos = (iter(items) for items in media_items(media))
    parts = {"image": lambda: {"type": "image_url", "image_url": {"url": image_data_url(next(images))}},
             "audio": lambda: input_audio_part(_wav(next(audios))),
             "video": lambda: {"type": "video_url", "video_url": {"url": _mp4_data_url(next(videos))}}}
    out = []
    for m in messages:
        content = m["content"]
        if not isinstance(content, str):
            content = [parts[p["type"]]() if p["type"] in parts else p for p in content]
        out.append({"role": m["role"], "content": content})
    return out


@pytest.fixture(scope="module")
def family_models(request):
    """One chat model per family, opened when a case first needs it and closed with the module."""
    models: dict[str, ChatModel] = {}
    yield lambda name: models.get(name) or models.setdefault(name, _open(request, name))
    for model in models.values():
        model.close()


def _open(request, name: str) -> ChatModel:
    """The family's tiny model under its template, with the arguments its goldens were rendered with
    (`use_audio_in_video`)."""
    family = GOLDENS["families"][name]
    template = family.get("template", name)
    path = request.getfixturevalue(f"{template.replace('_', '')}_dir")
    return ChatModel({"model_name_or_path": path, "template": template, "infer_dtype": "float32", **family.get("args", {})})


@pytest.mark.parametrize(("template", "key"), CASE_PARAMS)
def test_media_tokens_where_llamafactory_puts_them(family_models, template, key):
    model = family_models(template)
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


def test_llamafactory_qwen3vl_example_chats_with_an_image(qwen3vl_dir):
    """Its examples/inference/qwen3vl.yaml (`template: qwen3_vl_nothink`) as written, the model path pointed at the
    tiny Qwen3-VL: the image prompt is the one LLaMA-Factory's Qwen3VLPlugin gives (its qwen3_vl golden; the two
    names render a generation prompt alike, thinking being on by default), and the model answers."""
    import yaml

    raw = yaml.safe_load((Path(__file__).resolve().parents[2] / "fixtures" / "llamafactory" / "examples" /
                          "qwen3vl.yaml").read_text())
    with ChatModel({**raw, "model_name_or_path": qwen3vl_dir, "infer_dtype": "float32"}) as model:
        request = model.build_request(_messages("one_image"), max_new_tokens=3)
        prompt_ids, _ = model.engine.multimodal.prepare(model.engine.prompts, request)
        [reply] = model.chat(_messages("one_image"), max_new_tokens=3, do_sample=False)
    assert prompt_ids == QWEN3VL["cases"]["one_image"]
    assert reply.prompt_length == len(prompt_ids) and reply.response_length >= 1
