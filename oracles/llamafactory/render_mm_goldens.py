"""Goldens for LLaMA-Factory's multimodal formats: where its plugin puts the media tokens, in prompt ids.

Runs in LLaMA-Factory's environment (`make lf-goldens`). For qwen2_vl (Qwen2VLPlugin), with a tiny Qwen2-VL
processor (the image processor chatplex's tests use, on the family tokenizer of tests/templates/lf_tokenizers.py
with Qwen-VL's vision tokens) patched with LLaMA-Factory's default media arguments as its loader does: each
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

from lf_tokenizers import build_tokenizer, media_conversations, noise_image, vl_tokenizer_spec  # noqa: E402
from llamafactory.data import template as lf_template  # noqa: E402
from llamafactory.hparams import DataArguments, ModelArguments  # noqa: E402
from llamafactory.model.patcher import patch_processor  # noqa: E402


def main(smollm_dir: str, out: Path, source: str | None = None) -> None:
    from importlib.metadata import version

    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    spec = vl_tokenizer_spec()
    tokenizer = build_tokenizer(spec, smollm_dir)
    template = lf_template.get_template_and_fix_tokenizer(tokenizer, DataArguments(template="qwen2_vl"))
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=112 * 112),
                                 tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor())
    patch_processor(processor, tokenizer, ModelArguments(model_name_or_path=smollm_dir))
    cases = {}
    for key, (turns, system, sizes) in media_conversations().items():
        images = [noise_image(size, seed) for seed, size in enumerate(sizes)]
        turns = template.mm_plugin.process_messages([dict(t) for t in turns], images, [], [], processor)
        prompt_ids, _ = template.encode_oneturn(tokenizer, turns + [{"role": "assistant", "content": ""}], system)
        cases[key] = prompt_ids
    data = {"llamafactory": source or version("llamafactory"), "template": "qwen2_vl", "tokenizer": spec,
            "cases": cases}
    out.write_text(json.dumps(data) + "\n", encoding="utf-8")
    print(f"{len(cases)} conversations -> {out}")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
