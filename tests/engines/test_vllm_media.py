"""Media through the vLLM engine: audio requests to a tiny random Qwen2-Audio and image requests to a tiny
random Idefics3 reach vLLM as `multi_modal_data` and give the tokens transformers' own processor + `generate`
give; media a model cannot take is refused naming the field. Two engines (vLLM's start is the slow part), each
module-scoped.

Why Idefics3 for images: vLLM 0.32's Qwen2-VL, LLaVA, Gemma 3 and Qwen2.5-Omni modules import transformers'
torchvision image processors at import time, and torchvision does not load in `.venv-vllm` on this CPU build.

Runs in vLLM's environment (`make test-vllm`); elsewhere the module is skipped.
"""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here: make test-vllm runs these in its own environment")

import soundfile  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from chatplex import ChatModel  # noqa: E402
from chatplex.engines.vllm.media import MediaInputs  # noqa: E402
from chatplex.errors import InvalidRequestError, UnsupportedFeatureError  # noqa: E402
from chatplex.media import MediaPolicy  # noqa: E402

# ChatML that writes Qwen2-Audio's placeholder for audio parts (real checkpoints ship their own).
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content is string %}{{ m.content }}{% else %}"
    "{% for p in m.content %}{% if p.type == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif p.type == 'text' %}{{ p.text }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MAX_TOKENS = 8
RATE = 16000
ASK = "What is this sound?"


def _build(path) -> None:
    from safetensors.torch import load_file, save_file
    from transformers import (
        AutoTokenizer, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor, WhisperFeatureExtractor,
    )

    from chatplex.models.embedded import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    tok.add_special_tokens({"additional_special_tokens": ["<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]})
    tok.chat_template = TEMPLATE
    config = Qwen2AudioConfig(
        # head_dim 64: vLLM's CPU attention has kernels for a few head sizes only (not 16).
        text_config=dict(
            model_type="qwen2", hidden_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            intermediate_size=128, vocab_size=len(tok), max_position_embeddings=2048, eos_token_id=2, bos_token_id=1,
        ),
        # 1500 positions = Whisper's 30 s window: vLLM's Qwen2-Audio expects 3000 mel frames per clip.
        audio_config=dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                          num_mel_bins=128, max_source_positions=1500),
        audio_token_index=tok.convert_tokens_to_ids("<|AUDIO|>"),
    )
    torch.manual_seed(0)
    model = Qwen2AudioForConditionalGeneration(config).eval()
    with torch.no_grad():  # sharpen attention and the projector so that the audio decides the tokens
        for layer in model.model.language_model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
        model.model.multi_modal_projector.linear.weight.mul_(20)
    model.save_pretrained(path)
    # transformers 5.19 (vLLM's pin) saves the decoder as language_model.model.model.*; the hub layout, which
    # vLLM and later transformers read, is language_model.model.*.
    weights = path / "model.safetensors"
    tensors = {k.replace("language_model.model.model.", "language_model.model."): v for k, v in load_file(weights).items()}
    save_file(tensors, weights, metadata={"format": "pt"})
    Qwen2AudioProcessor(WhisperFeatureExtractor(feature_size=128), tok, chat_template=TEMPLATE).save_pretrained(path)


IMAGE_TEMPLATE = TEMPLATE.replace("<|audio_bos|><|AUDIO|><|audio_eos|>", "<image>").replace("'audio'", "'image'")


def _build_idefics3(path) -> None:
    from transformers import AutoTokenizer, Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    from chatplex.models.embedded import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    specials = ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.chat_template = IMAGE_TEMPLATE
    config = Idefics3Config(
        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=2, pad_token_id=2,
        vision_config=dict(hidden_size=32, image_size=64, patch_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64),
        text_config=dict(model_type="llama", hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=128, vocab_size=len(tok), max_position_embeddings=2048,
                         eos_token_id=2, bos_token_id=1, pad_token_id=2),
    )
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config).eval()
    with torch.no_grad():  # sharpen attention and the connector so that the picture decides the tokens
        for layer in model.model.text_model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
        model.model.connector.modality_projection.proj.weight.mul_(20)
    model.save_pretrained(path)
    # One 64x64 tile per image: (64 / 16)^2 patches, merged 2x2 -> 4 image tokens.
    images = Idefics3ImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 64},
                                       do_image_splitting=False)
    Idefics3Processor(images, tok, image_seq_len=4, chat_template=IMAGE_TEMPLATE).save_pretrained(path)


def _tone(freq: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _wav_b64(clip: np.ndarray) -> str:
    buf = io.BytesIO()
    soundfile.write(buf, clip, RATE, format="WAV", subtype="FLOAT")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen2audio-vllm")
    _build(path)
    return path


@pytest.fixture(scope="module")
def reference(audio_dir):
    """Greedy tokens and prompt length from transformers' Qwen2AudioProcessor (features + `<|AUDIO|>` expansion)
    and generate."""
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    model = Qwen2AudioForConditionalGeneration.from_pretrained(audio_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(audio_dir)

    def run(messages, audios):
        text = processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if audios:
            inputs = processor(text=text, audio=audios, sampling_rate=RATE, return_tensors="pt")
        else:
            inputs = processor.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_TOKENS, min_new_tokens=MAX_TOKENS)
        return out[0, inputs["input_ids"].shape[1]:].tolist(), inputs["input_ids"].shape[1]

    return run


@pytest.fixture(scope="module")
def vllm_audio(audio_dir):
    model = ChatModel({
        "infer_backend": "vllm", "model_name_or_path": str(audio_dir), "infer_dtype": "float32", "vllm_maxlen": 1024,
        "vllm_enforce_eager": True,
    })
    yield model
    model.close()


@pytest.fixture(scope="module")
def image_reference(tmp_path_factory):
    """(model dir, run): greedy tokens and prompt length from transformers' Idefics3Processor + generate."""
    from transformers import AutoProcessor, Idefics3ForConditionalGeneration

    path = tmp_path_factory.mktemp("idefics3-vllm")
    _build_idefics3(path)
    model = Idefics3ForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(path)

    def run(messages, images):
        text = processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = processor(text=text, images=[images], return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_TOKENS, min_new_tokens=MAX_TOKENS)
        return out[0, inputs["input_ids"].shape[1]:].tolist(), inputs["input_ids"].shape[1]

    return path, run


@pytest.fixture(scope="module")
def vllm_image(image_reference):
    model = ChatModel({
        "infer_backend": "vllm", "model_name_or_path": str(image_reference[0]), "infer_dtype": "float32",
        "vllm_maxlen": 1024, "vllm_enforce_eager": True,
    })
    yield model
    model.close()


def _picture(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 40, 3), dtype=np.uint8))


def _png_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_vllm_image_argument_and_part_equal_transformers(vllm_image, image_reference):
    run = image_reference[1]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}]
    want, want_prompt = run(messages, [_picture(1)])
    other, _ = run(messages, [_picture(2)])
    assert other != want  # the picture decides the tokens
    got, prompt = asyncio.run(_run(vllm_image, [{"role": "user", "content": "What is in the picture?"}],
                                   images=[_picture(1)]))
    assert (got, prompt) == (want, want_prompt)  # usage counts the image's expanded tokens
    parts = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _png_data_url(_picture(2))}},
                                          {"type": "text", "text": "What is in the picture?"}]}]
    assert asyncio.run(_run(vllm_image, parts))[0] == other


def test_vllm_image_model_refuses_audio(vllm_image):
    with pytest.raises(UnsupportedFeatureError, match="takes image through vLLM, not audio") as e:
        vllm_image.chat([{"role": "user", "content": ASK}], audios=[(_tone(440), RATE)], max_new_tokens=2)
    assert e.value.param == "audios"


async def _run(model: ChatModel, messages, **kwargs) -> tuple[list[int], int]:
    request = model.build_request(messages, do_sample=False, max_new_tokens=MAX_TOKENS, ignore_eos=True, **kwargs)
    tokens: list[int] = []
    prompt = 0
    async for delta in model.agenerate(request):
        tokens += delta.token_ids
        prompt = delta.prompt_tokens
    return tokens, prompt


def _audio_message(text: str = ASK):
    return [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": text}]}]


def test_vllm_audio_argument_equals_transformers(vllm_audio, reference):
    clip = _tone(440)
    want, want_prompt = reference(_audio_message(), [clip])
    got, prompt = asyncio.run(_run(vllm_audio, [{"role": "user", "content": ASK}], audios=[(clip, RATE)]))
    assert got == want
    assert prompt == want_prompt  # usage counts the audio's expanded tokens, as the model saw them


def test_vllm_input_audio_part_equals_transformers_and_audio_decides(vllm_audio, reference):
    clip = _tone(1200, seconds=2.0)
    want, _ = reference(_audio_message(), [clip])
    messages = [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": _wav_b64(clip), "format": "wav"}},
        {"type": "text", "text": ASK},
    ]}]
    got, _ = asyncio.run(_run(vllm_audio, messages))
    assert got == want
    other, _ = reference(_audio_message(), [_tone(440)])
    assert other != want  # a test that cannot pass by ignoring the audio


def test_vllm_llamafactory_format_with_audio_equals_the_hf_engine(audio_dir):
    """LLaMA-Factory's `qwen2_audio` format on the vLLM engine: the prompt is its format encoded piece by piece with
    its plugin's `<|audio_bos|><|AUDIO|><|audio_eos|>` once per clip, which vLLM expands; the same expanded prompt
    length and tokens as chatplex's Hugging Face engine, whose ids under that name equal LLaMA-Factory's own
    (tests/engines/hf/test_llamafactory_media.py)."""
    args = {"model_name_or_path": str(audio_dir), "template": "qwen2_audio", "infer_dtype": "float32"}
    messages = [{"role": "system", "content": "Listen."}, {"role": "user", "content": "<audio>" + ASK}]
    clip = _tone(700, seconds=1.5)
    with ChatModel(args) as hf:
        want = asyncio.run(_run(hf, messages, audios=[(clip, RATE)]))
    with ChatModel({**args, "infer_backend": "vllm", "vllm_maxlen": 1024, "vllm_enforce_eager": True}) as vllm:
        assert asyncio.run(_run(vllm, messages, audios=[(clip, RATE)])) == want


def test_vllm_mixed_batch_equals_each_alone(vllm_audio, reference):
    clips = [_tone(300), _tone(2000, seconds=0.5)]
    text_only = [{"role": "user", "content": "Say something."}]
    wants = [reference(_audio_message(), [clips[0]])[0], reference(text_only, [])[0],
             reference(_audio_message(), [clips[1]])[0]]

    async def batch():
        return await asyncio.gather(
            _run(vllm_audio, [{"role": "user", "content": ASK}], audios=[(clips[0], RATE)]),
            _run(vllm_audio, text_only),
            _run(vllm_audio, [{"role": "user", "content": ASK}], audios=[(clips[1], RATE)]),
        )

    assert [tokens for tokens, _ in asyncio.run(batch())] == wants


def test_vllm_refuses_media_the_model_cannot_take(vllm_audio):
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    with pytest.raises(UnsupportedFeatureError, match="takes audio through vLLM, not image") as e:
        vllm_audio.chat([{"role": "user", "content": "What is this?"}], images=[image], max_new_tokens=2)
    assert e.value.param == "images"
    parts = [{"role": "user", "content": [{"type": "text", "text": "Look:"},
                                          {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]
    with pytest.raises(UnsupportedFeatureError) as e:
        vllm_audio.chat(parts, max_new_tokens=2)
    assert e.value.param == "messages[0].content[1]"
    with pytest.raises(UnsupportedFeatureError, match="video") as e:
        vllm_audio.chat([{"role": "user", "content": "Watch."}], videos=["clip.mp4"], max_new_tokens=2)
    assert e.value.param == "videos"


def test_vllm_bad_audio_names_the_part_and_engine_keeps_serving(vllm_audio, reference):
    messages = [{"role": "user", "content": [
        {"type": "text", "text": ASK},
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"not a wav file").decode(), "format": "wav"}},
    ]}]
    with pytest.raises(InvalidRequestError) as e:
        vllm_audio.chat(messages, max_new_tokens=2)
    assert e.value.param.startswith("messages[0].content[1]")
    too_many = [(_tone(440, 0.2), RATE)] * 9  # MediaPolicy's default max_audios is 8
    with pytest.raises(InvalidRequestError, match="more than 8 audios"):
        vllm_audio.chat([{"role": "user", "content": ASK}], audios=too_many, max_new_tokens=2)
    clip = _tone(440)
    got, _ = asyncio.run(_run(vllm_audio, [{"role": "user", "content": ASK}], audios=[(clip, RATE)]))
    assert got == reference(_audio_message(), [clip])[0]


def test_vllm_text_only_model_refuses_media_naming_the_field():
    """What a text-only model's engine says (vLLM gives it no multimodal processor); no engine needed."""
    inputs = MediaInputs(None, MediaPolicy(), "SmolLM2")
    from chatplex.config import load_args
    from chatplex.sampling import build_sampling_params
    from chatplex.media import media_items
    from chatplex.types import GenerationRequest

    sampling = build_sampling_params({}, load_args({}).generating.as_request_defaults())
    request = GenerationRequest(sampling=sampling, messages=[{"role": "user", "content": "hi"}], audios=[b"x"])
    with pytest.raises(UnsupportedFeatureError, match="text-only") as e:
        inputs.check(media_items(request))
    assert e.value.param == "audios"
    parts = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]
    with pytest.raises(UnsupportedFeatureError) as e:
        inputs.check(media_items(GenerationRequest(sampling=sampling, messages=parts)))
    assert e.value.param == "messages[0].content[0]"
