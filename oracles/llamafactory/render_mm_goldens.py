"""Goldens for LLaMA-Factory's multimodal formats: where its plugin puts the media tokens, in prompt ids.

Runs in LLaMA-Factory's environment (`make lf-goldens`). For qwen2_vl (Qwen2VLPlugin), llava (LlavaPlugin) and gemma3 (Gemma3Plugin),
with the processors of chatplex's tiny test models of those families (on family tokenizers from
tests/templates/lf_tokenizers.py), patched with LLaMA-Factory's default media arguments as its loader does: each
conversation's images go through the plugin's `process_messages` and the template's `encode_oneturn` with an empty
reply, as its ChatModel does. Output: tests/fixtures/llamafactory/mm_goldens.json, checked by
tests/engines/hf/test_llamafactory_media.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "templates"))

from lf_tokenizers import (  # noqa: E402
    GEMMA3_IMAGE_TOKENS, build_tokenizer, gemma3_tokenizer_spec, llava_tokenizer_spec, media_conversations, noise_image,
    vl_tokenizer_spec,
)
from llamafactory.data import template as lf_template  # noqa: E402
from llamafactory.hparams import DataArguments, ModelArguments  # noqa: E402
from llamafactory.model.patcher import patch_processor  # noqa: E402


def qwen2_vl_processor(tokenizer):
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=112 * 112),
                            tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor())


def llava_processor(tokenizer):
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=7,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1)


def gemma3_processor(tokenizer):
    from transformers import Gemma3ImageProcessor, Gemma3Processor

    # Gemma's own tokenizer names its image tokens; the family tokenizer here is given them as Gemma's has them.
    for name, token in zip(("boi", "eoi", "image"), GEMMA3_IMAGE_TOKENS, strict=True):
        setattr(tokenizer, f"{name}_token", token)
        setattr(tokenizer, f"{name}_token_id", tokenizer.convert_tokens_to_ids(token))
    return Gemma3Processor(image_processor=Gemma3ImageProcessor(size={"height": 28, "width": 28}), tokenizer=tokenizer,
                           image_seq_length=16)


# template -> (its tokenizer spec, its processor): the processors of chatplex's tiny test models of the family
FAMILIES = {"qwen2_vl": (lambda: vl_tokenizer_spec(), qwen2_vl_processor),
            "llava": (lambda: llava_tokenizer_spec(), llava_processor),
            "gemma3": (lambda: gemma3_tokenizer_spec(), gemma3_processor)}


def main(smollm_dir: str, out: Path, source: str | None = None) -> None:
    from importlib.metadata import version

    families = {}
    for name, (spec_of, processor_of) in FAMILIES.items():
        spec = spec_of()
        tokenizer = build_tokenizer(spec, smollm_dir)
        template = lf_template.get_template_and_fix_tokenizer(tokenizer, DataArguments(template=name))
        processor = processor_of(tokenizer)
        patch_processor(processor, tokenizer, ModelArguments(model_name_or_path=smollm_dir))
        cases = {}
        for key, (turns, system, sizes) in media_conversations().items():
            images = [noise_image(size, seed) for seed, size in enumerate(sizes)]
            turns = template.mm_plugin.process_messages([dict(t) for t in turns], images, [], [], processor)
            prompt_ids, _ = template.encode_oneturn(tokenizer, turns + [{"role": "assistant", "content": ""}], system)
            cases[key] = prompt_ids
        families[name] = {"tokenizer": spec, "vocab_size": len(tokenizer), "cases": cases}
    data = {"llamafactory": source or version("llamafactory"), "families": families}
    out.write_text(json.dumps(data) + "\n", encoding="utf-8")
    print(f"{len(families)} formats x {len(media_conversations())} conversations -> {out}")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
