"""LLaMA-Factory users' configs, keys and command lines, run as they write them.

- every key of LLaMA-Factory's own inference parser (fixtures/llamafactory/infer_keys.json, exported from it) is
  used, ignored as training-only with a warning, or refused with a reason: none silently;
- its examples/inference YAMLs load and chat, pointed at tiny local models of their families;
- its command-line forms (`CONFIG.yaml key=value`, `--snake_case_key value`) through the real `chatplex` parser.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import yaml

from chatplex import ChatModel, llamafactory_keys
from chatplex.cli.main import _translated, build_parser
from chatplex.cli.options import model_args_from
from chatplex.config import GeneratingArguments, ModelArguments, args_from_dict
from chatplex.errors import ConfigError
from chatplex.media.image import load_image

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "llamafactory"
LF_KEYS = json.loads((FIXTURES / "infer_keys.json").read_text())["keys"]
CHATPLEX_KEYS = {f.name for cls in (ModelArguments, GeneratingArguments) for f in dataclasses.fields(cls)}
TRANSLATED = {*llamafactory_keys.MEDIA_KEYS, *llamafactory_keys.KT_KEYS, "use_kt", "stage"}


def test_every_llamafactory_key_has_one_meaning():
    assert len(LF_KEYS) == 224  # its HEAD (ff6d4d12): 0.9.5's 215 and 9 newer
    kinds = {"used": CHATPLEX_KEYS, "translated": TRANSLATED, "ignored": llamafactory_keys.TRAINING_ONLY,
             "refused": set(llamafactory_keys.REFUSED)}
    for key in LF_KEYS:
        homes = [kind for kind, keys in kinds.items() if key in keys]
        assert len(homes) == 1, (key, homes)
    counts = {kind: len(set(LF_KEYS) & keys) for kind, keys in kinds.items()}
    assert counts["used"] >= 30 and counts["refused"] <= 20, counts


@pytest.mark.parametrize("key", sorted(set(LF_KEYS) & llamafactory_keys.TRAINING_ONLY)[:12])
def test_training_keys_warn_and_change_nothing(key, caplog):
    with caplog.at_level(logging.WARNING):
        args = args_from_dict({key: "something", "template": "qwen3"})
    assert key in caplog.text and "training" in caplog.text
    assert args.model.template == "qwen3"


def test_refused_keys_say_why_and_defaults_pass():
    with pytest.raises(ConfigError, match="image_do_pan_and_scan: True is not supported: Gemma 3") as e:
        args_from_dict({"image_do_pan_and_scan": True})
    assert e.value.param == "image_do_pan_and_scan"
    with pytest.raises(ConfigError, match="crop_to_patches"):
        args_from_dict({"crop_to_patches": "true"})  # a command-line string means what YAML would
    args_from_dict({"quantization_bit": None, "double_quantization": True, "crop_to_patches": "false"})


def test_media_keys_size_images_as_llamafactory():
    from PIL import Image

    args = args_from_dict({"image_max_pixels": 64 * 64, "image_min_pixels": 32 * 32, "video_fps": 1.0,
                           "video_maxlen": 8, "media": {"max_images": 3}})
    media = args.model.media
    assert media == {"max_images": 3, "image_max_pixels": 4096, "image_min_pixels": 1024, "video_fps": 1.0,
                     "max_video_frames": 8}
    from chatplex.media import MediaPolicy

    policy = MediaPolicy.from_config(media)
    big = load_image(Image.new("RGB", (200, 100)), policy=policy)
    assert (big.width, big.height) == (90, 45)  # sqrt(4096 / 20000) of each side, as LLaMA-Factory resizes
    small = load_image(Image.new("RGB", (20, 10)), policy=policy)
    assert (small.width, small.height) == (45, 22)  # int(20 * 2.26), int(10 * 2.26)


def test_its_template_names_bring_its_media_defaults():
    """Under one of its template names, what its plugins do when the keys are not given (images within 768x768
    pixels, frames within 256x256, 2 frames a second up to 128, its frame picking); given keys still win; other
    templates keep chatplex's own (sent at their own size)."""
    from PIL import Image

    lf = args_from_dict({"template": "qwen2_vl", "video_maxlen": 8}).model.media_policy()
    assert (lf.image_max_pixels, lf.image_min_pixels, lf.video_max_pixels, lf.video_min_pixels) == (
        768 * 768, 32 * 32, 256 * 256, 16 * 16)
    assert (lf.video_fps, lf.max_video_frames, lf.video_pipeline) == (2.0, 8, "llamafactory")
    big = load_image(Image.new("RGB", (2000, 1000)), policy=lf)
    assert (big.width, big.height) == (1086, 543)  # int(2000 * sqrt(589824 / 2e6)), as LLaMA-Factory resizes
    own = args_from_dict({}).model.media_policy()
    assert (own.image_max_pixels, own.video_pipeline) == (None, "transformers")
    assert load_image(Image.new("RGB", (2000, 1000)), policy=own).size == (2000, 1000)
    assert args_from_dict({"use_audio_in_video": True}).model.media_policy().use_audio_in_video  # its key, honoured


def test_kt_keys_go_to_the_ktransformers_backend():
    raw = yaml.safe_load((FIXTURES / "examples" / "deepseek3_kt.yaml").read_text())
    args = args_from_dict(raw)
    assert args.model.infer_backend == "ktransformers"
    assert args.model.sglang_config == {"kt_optimize_rule": raw["kt_optimize_rule"], "kt_cpuinfer": 32,
                                        "chunked_prefill_size": 8192}
    with pytest.raises(ConfigError, match="use_kt: true runs on the KTransformers backend"):
        args_from_dict({"use_kt": True, "infer_backend": "vllm"})


def test_template_names_are_checked_before_loading():
    with pytest.raises(ConfigError, match="Closest: qwen3_nothink") as e:
        ChatModel({"template": "qwen3_nothnk"})  # raised by the argument check: no weights are read
    assert e.value.param == "template"
    with pytest.raises(ConfigError, match="tool_format: 'qwen4' is not a LLaMA-Factory tool format"):
        from chatplex.templates import load_llamafactory

        load_llamafactory("qwen3", tool_format="qwen4")


def test_rope_scaling_is_llamafactorys(tiny_model_dir):
    from chatplex.engines.hf.loader import scaled_rope_config

    path = tiny_model_dir("llama")
    config = scaled_rope_config(args_from_dict({"model_name_or_path": path, "rope_scaling": "yarn"}).model, path, None)
    assert config.max_position_embeddings == 1024
    params = config.rope_parameters
    assert (params["rope_type"], params["factor"], params["original_max_position_embeddings"]) == ("yarn", 2.0, 512)
    assert params["rope_theta"]  # kept
    with pytest.raises(ConfigError, match="rope_scaling: 'ntk'"):
        args_from_dict({"rope_scaling": "ntk"})
    with pytest.raises(ConfigError, match="infer_backend huggingface only"):
        args_from_dict({"rope_scaling": "linear", "infer_backend": "vllm"})


# -- the command line ---------------------------------------------------------------------------------------------


def _model_args(argv: list[str]) -> dict:
    parser = build_parser()
    return model_args_from(parser.parse_args(_translated(parser, argv)))


def test_llamafactory_command_lines(tmp_path):
    cfg = tmp_path / "qwen3.yaml"
    cfg.write_text((FIXTURES / "examples" / "qwen3.yaml").read_text())
    # LLaMA-Factory's README line (`api` is an alias of `serve`)
    args = _model_args(["api", str(cfg), "infer_backend=vllm", "vllm_enforce_eager=true"])
    assert args["template"] == "qwen3_nothink" and args["infer_backend"] == "vllm"
    assert args["vllm_enforce_eager"] == "true"
    args = _model_args(["chat", "--model_name_or_path", "/m", "--template", "llama3", "--do_sample", "false",
                        "--trust_remote_code"])
    assert args == {"model_name_or_path": "/m", "template": "llama3", "do_sample": "false", "trust_remote_code": "true"}
    parsed = args_from_dict(args | {"model_name_or_path": None})
    assert parsed.generating.do_sample is False and parsed.model.trust_remote_code is True
    # chatplex's own flags still mean what they meant, beside the LLaMA-Factory forms
    args = _model_args(["serve", "--lora-modules", "a=/x", "b=/y", "--max-loras", "3", "top_k=5"])
    assert args["lora_modules"] == ["a=/x", "b=/y"] and args["max_loras"] == 3 and args["top_k"] == "5"
    with pytest.raises(ConfigError, match="Unknown argument 'not_a_key'"):
        args_from_dict(_model_args(["chat", "--not_a_key", "1"]))
    # after chatplex's own global options, with their values
    args = _model_args(["--log-level", "info", "serve", "--engine-process", "true", "--do_sample", "false"])
    assert args["engine_process"] == "true" and args["do_sample"] == "false"


# -- its examples, run ------------------------------------------------------------------------------------------

TEXT_EXAMPLES = {  # YAML -> the architecture of its model
    "qwen3.yaml": ("Qwen3Config", "Qwen3ForCausalLM"), "qwen3_full_sft.yaml": ("Qwen3Config", "Qwen3ForCausalLM"),
    "qwen3_lora_sft.yaml": ("Qwen3Config", "Qwen3ForCausalLM"), "llama3.yaml": ("LlamaConfig", "LlamaForCausalLM"),
    "llama3_full_sft.yaml": ("LlamaConfig", "LlamaForCausalLM"),
    "llama3_lora_sft.yaml": ("LlamaConfig", "LlamaForCausalLM"),
}


def _tiny_family_model(tmp_path: Path, template: str, classes: tuple[str, str], smollm_dir: str) -> str:
    """A tiny random-weight model of the architecture, with the template family's tokenizer (the goldens' one)."""
    import torch
    import transformers

    from tests.templates.lf_tokenizers import build_tokenizer

    golden = json.loads((FIXTURES / "goldens" / f"{template}.json").read_text())
    tokenizer = build_tokenizer(golden["tokenizer"], smollm_dir)
    config = getattr(transformers, classes[0])(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=golden["vocab_size"], max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    path = tmp_path / template
    getattr(transformers, classes[1])(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("example", sorted(TEXT_EXAMPLES))
def test_text_examples_chat(example, tmp_path, smollm_dir):
    raw = yaml.safe_load((FIXTURES / "examples" / example).read_text())
    raw["model_name_or_path"] = _tiny_family_model(tmp_path, raw["template"], TEXT_EXAMPLES[example], smollm_dir)
    raw.pop("adapter_name_or_path", None)  # LoRA on a tiny model: tests/engines/hf/test_lora.py
    with ChatModel({**raw, "infer_dtype": "float32"}) as model:
        assert model.engine.template.lf is not None and model.engine.template.name == raw["template"]
        prompt = model.render_prompt([{"role": "user", "content": "Hi"}])
        reply = model.chat([{"role": "user", "content": "Hi"}], do_sample=False, max_new_tokens=4)[0]
    expected = {"qwen3_nothink": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
                "llama3": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                          "<|start_header_id|>assistant<|end_header_id|>\n\n"}[raw["template"]]
    assert prompt == expected
    assert reply.response_length > 0


@pytest.mark.parametrize("example", ["qwen3vl.yaml", "qwen2_5vl.yaml", "mossvl.yaml", "deepseek3_kt.yaml",
                                     "deepseek2_lora_sft_kt.yaml", "deepseek3_lora_sft_kt.yaml",
                                     "qwen3moe_lora_sft_kt.yaml"])
def test_other_examples_load(example):
    """Vision and KTransformers examples: their arguments and templates are accepted as written (their models
    cannot run here; the vision families run in tests/engines/hf/test_multimodal_*)."""
    raw = yaml.safe_load((FIXTURES / "examples" / example).read_text())
    raw.pop("adapter_name_or_path", None)  # saves/... is the user's own training output
    args = args_from_dict(raw)
    assert args.model.template == raw["template"]


def test_a_template_the_model_has_no_tokens_for_is_a_clear_error(tiny_model_dir):
    """LLaMA-Factory's llama3 format on a model whose vocabulary lacks <|eot_id|> (SmolLM2's): the format adds the
    token to the tokenizer, but the model never learnt it; the request fails by name, not inside the embedding."""
    from chatplex.errors import InvalidRequestError

    with ChatModel({"model_name_or_path": tiny_model_dir("llama"), "infer_dtype": "float32", "template": "llama3"}) as m:
        with pytest.raises(InvalidRequestError, match=r"writes <\|eot_id\|>, which this model's vocabulary"):
            m.chat([{"role": "user", "content": "Hi"}], max_new_tokens=2)
        # the engine is unharmed: a raw prompt in tokens the model has still generates
        request = m.build_request(prompt="Hi", max_new_tokens=2)
        assert list(m.generate(request))
