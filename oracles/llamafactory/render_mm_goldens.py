"""Goldens for LLaMA-Factory's multimodal formats: where its plugin puts the media tokens, in prompt ids.

Runs in LLaMA-Factory's environment (`make lf-goldens`). For qwen2_vl (Qwen2VLPlugin), qwen3_vl (Qwen3VLPlugin), llava (LlavaPlugin), llava_next (LlavaNextPlugin),
gemma3 (Gemma3Plugin), qwen2_audio (Qwen2AudioPlugin) and qwen2_omni (Qwen2OmniPlugin), with the processors of chatplex's tiny test models of those families (on family tokenizers from
tests/templates/lf_tokenizers.py), patched with LLaMA-Factory's default media arguments as its loader does: each
conversation's images, audio clips and videos (MP4 files) go through the plugin's `process_messages` and the template's `encode_oneturn` with an empty
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
    GEMMA3_IMAGE_TOKENS, LLAVA_NEXT_PINPOINTS, build_tokenizer, conversations_with, gemma3_tokenizer_spec,
    llava_next_tokenizer_spec, llava_tokenizer_spec, media_conversations, media_items, qwen2_audio_tokenizer_spec, qwen2_omni_tokenizer_spec, soundtrack,
    vl_tokenizer_spec,
)
from llamafactory.data import template as lf_template  # noqa: E402
from llamafactory.hparams import DataArguments, ModelArguments  # noqa: E402
from llamafactory.model.patcher import patch_processor  # noqa: E402


def qwen2_vl_processor(tokenizer):
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=112 * 112),
                            tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor())


def qwen3_vl_processor(tokenizer):
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, min_pixels=32 * 32,
                                            max_pixels=128 * 128)
    return Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen3VLVideoProcessor())


def qwen2_audio_processor(tokenizer):
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    # 2 s windows, as the tiny Qwen2-Audio's 100 encoder positions take
    return Qwen2AudioProcessor(WhisperFeatureExtractor(feature_size=128, chunk_length=2), tokenizer)


def qwen2_omni_processor(tokenizer):
    from transformers import Qwen2_5OmniProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor, WhisperFeatureExtractor

    return Qwen2_5OmniProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=112 * 112),
                                video_processor=Qwen2VLVideoProcessor(min_pixels=28 * 28, max_pixels=56 * 84),
                                feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tokenizer)


def llava_processor(tokenizer):
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=7,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1)


def llava_next_processor(tokenizer):
    from transformers import LlavaNextImageProcessor, LlavaNextProcessor

    image_processor = LlavaNextImageProcessor(image_grid_pinpoints=LLAVA_NEXT_PINPOINTS, size={"shortest_edge": 28},
                                              crop_size={"height": 28, "width": 28})
    return LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=7,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1)


def gemma3_processor(tokenizer):
    from transformers import Gemma3ImageProcessor, Gemma3Processor

    # Gemma's own tokenizer names its image tokens; the family tokenizer here is given them as Gemma's has them.
    for name, token in zip(("boi", "eoi", "image"), GEMMA3_IMAGE_TOKENS, strict=True):
        setattr(tokenizer, f"{name}_token", token)
        setattr(tokenizer, f"{name}_token_id", tokenizer.convert_tokens_to_ids(token))
    return Gemma3Processor(image_processor=Gemma3ImageProcessor(size={"height": 28, "width": 28}), tokenizer=tokenizer,
                           image_seq_length=16)


# template -> (its tokenizer spec, its processor, the media it takes): the processors of chatplex's tiny test models
# of the family
FAMILIES = {"qwen2_vl": (vl_tokenizer_spec, qwen2_vl_processor, {"image", "video"}),
            "qwen3_vl": (vl_tokenizer_spec, qwen3_vl_processor, {"image", "video"}),
            "llava": (llava_tokenizer_spec, llava_processor, {"image"}),
            "llava_next": (llava_next_tokenizer_spec, llava_next_processor, {"image"}),
            "gemma3": (gemma3_tokenizer_spec, gemma3_processor, {"image"}),
            "qwen2_audio": (qwen2_audio_tokenizer_spec, qwen2_audio_processor, {"audio"}),
            "qwen2_omni": (qwen2_omni_tokenizer_spec, qwen2_omni_processor, {"image", "audio", "video"}),
            # its use_audio_in_video: each video's sound given as the audio after it (`<video><audio>`, as its
            # plugin requires), placed with the frames
            "qwen2_omni+use_audio_in_video": (qwen2_omni_tokenizer_spec, qwen2_omni_processor, {"sound_video"})}


def main(smollm_dir: str, out: Path, source: str | None = None) -> None:
    from importlib.metadata import version

    import tempfile

    families = {}
    conversations = media_conversations()
    work = tempfile.mkdtemp()
    for name, (spec_of, processor_of, kinds) in FAMILIES.items():
        spec = spec_of()
        tokenizer = build_tokenizer(spec, smollm_dir)
        template_name, _, flag = name.partition("+")
        template = lf_template.get_template_and_fix_tokenizer(tokenizer, DataArguments(template=template_name))
        processor = processor_of(tokenizer)
        args = {flag: True} if flag else {}
        patch_processor(processor, tokenizer, ModelArguments(model_name_or_path=smollm_dir, **args))
        cases = {}
        for key in conversations_with(kinds):
            turns, system, media = conversations[key]
            images, audios, videos = media_items(media)
            if flag == "use_audio_in_video":  # each video's sound, as the audio that follows it
                audios = [soundtrack(arg, seed) for seed, (_, arg) in enumerate(media)]
                turns = [{**t, "content": t["content"].replace("<video>", "<video><audio>")} for t in turns]
            paths = []
            for i, data in enumerate(videos):  # as its users give videos: files, which its plugins open with PyAV
                paths.append(str(Path(work) / f"{key}_{i}.mp4"))
                Path(paths[-1]).write_bytes(data)
            turns = template.mm_plugin.process_messages([dict(t) for t in turns], images, paths, audios, processor)
            prompt_ids, _ = template.encode_oneturn(tokenizer, turns + [{"role": "assistant", "content": ""}], system)
            cases[key] = prompt_ids
        families[name] = {"tokenizer": spec, "vocab_size": len(tokenizer), "template": template_name, "args": args,
                          "cases": cases}
    data = {"llamafactory": source or version("llamafactory"), "families": families}
    out.write_text(json.dumps(data) + "\n", encoding="utf-8")
    print(f"{len(families)} formats, {sum(len(f['cases']) for f in families.values())} conversations -> {out}")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
