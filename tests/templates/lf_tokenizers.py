"""Tokenizers for the LLaMA-Factory goldens: each template's family's special tokens on a base vocabulary.

No model hub here, so the families' own tokenizers cannot be had, except SmolLM2's (the embedded model), which
the `smollm`/`smollm2` formats use as it is. Every other format gets a base vocabulary (SmolLM2's byte-level BPE,
or for SentencePiece families the small Metaspace BPE in tests/fixtures/llamafactory/spm) with the family's BOS
and EOS and every token its format names (named-token slots, stop words, `<|...|>`-style markers) added as
special tokens. The same builder runs in LLaMA-Factory's environment (oracles/llamafactory/render_goldens.py) and
in the test suite, and each golden records the special tokens' ids so both sides can be seen to agree.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "llamafactory"

# (bos, eos) of the real family, by template name prefix (longest match wins); eos "<|endoftext|>" otherwise.
FAMILY_SPECIALS: dict[str, tuple[str | None, str]] = {
    "alpaca": ("<s>", "</s>"), "vicuna": ("<s>", "</s>"), "llama2": ("<s>", "</s>"), "llava": ("<s>", "</s>"),
    "mistral": ("<s>", "</s>"), "ministral": ("<s>", "</s>"), "pixtral": ("<s>", "</s>"), "zephyr": ("<s>", "</s>"),
    "solar": ("<s>", "</s>"), "openchat": ("<s>", "<|end_of_turn|>"), "breeze": ("<s>", "</s>"),
    "yi": ("<|startoftext|>", "<|im_end|>"), "xuanyuan": ("<s>", "</s>"), "intern": ("<s>", "<|im_end|>"),
    "llama3": ("<|begin_of_text|>", "<|eot_id|>"), "llava_next_llama3": ("<|begin_of_text|>", "<|eot_id|>"),
    "mllama": ("<|begin_of_text|>", "<|eot_id|>"), "llama4": ("<|begin_of_text|>", "<|eot|>"),
    "qwen": (None, "<|im_end|>"), "llava_next_qwen": (None, "<|im_end|>"), "chatml": (None, "<|im_end|>"),
    "mimo": (None, "<|im_end|>"), "moonlight": (None, "<|im_end|>"), "kimi": (None, "<|im_end|>"),
    "gemma": ("<bos>", "<eos>"), "paligemma": ("<bos>", "<eos>"),
    "phi": ("<s>", "<|endoftext|>"), "phi4": ("<|endoftext|>", "<|im_end|>"),
    "deepseek": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"), "deepseekcoder": ("<｜begin▁of▁sentence｜>", "<|EOT|>"),
    "cohere": ("<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>"), "granite": (None, "<|end_of_text|>"),
    "exaone": ("[BOS]", "[|endofturn|]"), "seed": ("<seed:bos>", "<seed:eos>"), "gpt_oss": ("<|startoftext|>", "<|return|>"),
    "hunyuan": ("<|startoftext|>", "<|eos|>"), "lfm2": ("<|startoftext|>", "<|im_end|>"),
    "minicpm": ("<s>", "<|im_end|>"), "cpm4": ("<s>", "<|im_end|>"), "ernie": ("<s>", "</s>"),
    "starchat": (None, "<|end|>"), "video_llava": ("<s>", "</s>"), "smollm": ("<|im_start|>", "<|im_end|>"),
}

# Families whose real tokenizer is SentencePiece: a word-boundary marker starts every separately encoded piece.
SENTENCEPIECE = ("alpaca", "vicuna", "llama2", "llava", "mistral", "ministral", "pixtral", "zephyr", "solar",
                 "openchat", "breeze", "yi", "xuanyuan", "gemma", "paligemma", "baichuan", "yuan", "video_llava")

MARKER = re.compile(r"<\|[^|<>\s]{1,40}\|>|<｜[^｜]{1,40}｜>|\[/?[A-Z_]{2,20}\]|<(?:start|end)_of_turn>")


def _by_prefix(name: str, table: dict[str, Any] | tuple[str, ...]) -> Any:
    keys = [k for k in table if name.startswith(k)]
    if not keys:
        return None
    best = max(keys, key=len)
    return table[best] if isinstance(table, dict) else best


def tokenizer_spec(name: str, fmt: dict[str, Any]) -> dict[str, Any]:
    """What tokenizer the goldens of format NAME (its formats.json entry) are rendered with."""
    if name in ("smollm", "smollm2"):
        return {"base": "smollm2", "bos": None, "eos": None, "specials": []}
    bos, eos = _by_prefix(name, FAMILY_SPECIALS) or (None, "<|endoftext|>")
    specials: set[str] = set(fmt["stop_words"])
    parts = [fmt[k] for k in ("prefix", "system", "user", "assistant", "observation", "function")]
    parts.append(fmt["tools"].get("slots", []))
    for slot in (s for part in parts for s in part):
        if isinstance(slot, dict) and "token" in slot:
            specials.add(slot["token"])
        elif isinstance(slot, str):
            specials.update(MARKER.findall(slot))
    media = fmt["mm_plugin"]
    specials.update(t for t in (media.get("image_token"), media.get("video_token"), media.get("audio_token")) if t)
    specials -= {bos, eos}
    base = "spm" if _by_prefix(name, SENTENCEPIECE) else "smollm2"
    return {"base": base, "bos": bos, "eos": eos, "specials": sorted(specials)}


def build_tokenizer(spec: dict[str, Any], smollm_dir: str) -> Any:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if spec["base"] == "smollm2":
        tokenizer = AutoTokenizer.from_pretrained(smollm_dir)
    else:
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(FIXTURES / "spm" / "tokenizer.json"), unk_token="<unk>")
    # One token at a time, in a fixed order, so that new ids are the same whatever the library version.
    for key in ("bos", "eos"):
        if spec[key] is not None:
            tokenizer.add_special_tokens({f"{key}_token": spec[key]})
    for token in spec["specials"]:
        tokenizer.add_tokens([token], special_tokens=True)
    if spec.get("named"):
        # Processors that read their tokens off the tokenizer (Qwen2.5-Omni's) need them named, as the family's
        # tokenizer names them; reloading with the names keeps the ids.
        import tempfile

        from transformers import AutoTokenizer

        with tempfile.TemporaryDirectory() as folder:
            tokenizer.save_pretrained(folder)
            tokenizer = AutoTokenizer.from_pretrained(folder, extra_special_tokens=spec["named"])
    return tokenizer


def special_ids(tokenizer: Any, spec: dict[str, Any]) -> dict[str, int]:
    tokens = [t for t in (spec["bos"], spec["eos"], *spec["specials"]) if t]
    return {t: tokenizer.convert_tokens_to_ids(t) for t in tokens}


# -- multimodal goldens (oracles/llamafactory/render_mm_goldens.py, tests/engines/hf/test_llamafactory_media.py) ----

def _format(name: str) -> dict[str, Any]:
    import json

    formats = json.loads((Path(__file__).resolve().parents[2] / "src/chatplex/templates/llamafactory/formats.json")
                         .read_text(encoding="utf-8"))
    return formats["templates"][name]


VL_SPECIALS = ["<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def vl_tokenizer_spec() -> dict[str, Any]:
    """Qwen-VL's special tokens on SmolLM2's vocabulary (the tiny Qwen2-VL of the media goldens)."""
    return {"base": "smollm2", "bos": None, "eos": "<|im_end|>", "specials": sorted(VL_SPECIALS)}


def llava_tokenizer_spec() -> dict[str, Any]:
    """LLaVA-1.5's family: the SentencePiece base with <s>, </s> and its <image> token (the llava format's spec)."""
    return tokenizer_spec("llava", _format("llava"))


def llava_next_tokenizer_spec() -> dict[str, Any]:
    """LLaVA-NeXT's family (Vicuna base): the llava_next format's spec with its <image> token."""
    return tokenizer_spec("llava_next", _format("llava_next"))


# LLaVA-NeXT's tiny test processors tile an image onto the best of these (height, width) grids of 28x28 tiles.
LLAVA_NEXT_PINPOINTS = [[28, 56], [56, 28], [56, 56]]

GEMMA3_IMAGE_TOKENS = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]


def gemma3_tokenizer_spec() -> dict[str, Any]:
    """Gemma 3's family: the gemma3 format's spec with its image tokens (begin, end, soft token)."""
    spec = tokenizer_spec("gemma3", _format("gemma3"))
    return {**spec, "specials": sorted({*spec["specials"], *GEMMA3_IMAGE_TOKENS})}


QWEN2_AUDIO_TOKENS = ["<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]


def qwen2_audio_tokenizer_spec() -> dict[str, Any]:
    """Qwen2-Audio's family: the qwen2_audio format's spec with the audio begin, end and pad tokens."""
    spec = tokenizer_spec("qwen2_audio", _format("qwen2_audio"))
    return {**spec, "specials": sorted({*spec["specials"], *QWEN2_AUDIO_TOKENS})}


def qwen2_omni_tokenizer_spec() -> dict[str, Any]:
    """Qwen2.5-Omni's family: the qwen2_omni format's spec with every media token of its plugin, named as
    Qwen2.5-Omni's tokenizer names them."""
    spec = tokenizer_spec("qwen2_omni", _format("qwen2_omni"))
    named = {k: v for k, v in _format("qwen2_omni")["mm_plugin"].items() if k.endswith("_token")}
    return {**spec, "specials": sorted({*spec["specials"], *named.values()}), "named": named}


def noise_image(size: tuple[int, int], seed: int) -> Any:
    """An RGB image of uniform noise, `size` = (width, height), the same in every environment."""
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def noise_clip(seconds: float, seed: int) -> Any:
    """A mono 16 kHz clip of quiet noise, `seconds` long, the same in every environment (float32)."""
    import numpy as np

    return (np.random.default_rng(seed).standard_normal(int(seconds * AUDIO_RATE)) * 0.1).astype(np.float32)


def noise_video(spec: tuple[int, int, int, int], seed: int, sound: bool = False) -> bytes:
    """An MP4 (MPEG-4 part 2) of noise frames, `spec` = (width, height, frames, fps): the same frame count and
    duration in every environment (the pixels go through a lossy codec; the goldens hold token ids only). With
    `sound`, a QuickTime file with `soundtrack(spec, seed)` as 16-bit PCM beside the frames (lossless, so its length
    is exact)."""
    import io

    import av
    import numpy as np

    width, height, frames, fps = spec
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mov" if sound else "mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        audio = container.add_stream("pcm_s16le", rate=AUDIO_RATE, layout="mono") if sound else None
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
        if audio is not None:
            pcm = (soundtrack(spec, seed) * 32768).astype(np.int16)
            samples = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            samples.sample_rate = AUDIO_RATE
            container.mux(audio.encode(samples))
            container.mux(audio.encode())
    return buf.getvalue()


def soundtrack(spec: tuple[int, int, int, int], seed: int) -> Any:
    """The sound of `noise_video(spec, seed, sound=True)` as its decoder gives it back: a tone (its pitch set by the
    seed, so that encoders tell seeds apart) over quiet noise, as long as the video, at 16 kHz, in 16-bit steps
    (float32)."""
    import numpy as np

    _, _, frames, fps = spec
    noise = noise_clip(frames / fps, seed + 100)
    clip = 0.5 * np.sin(2 * np.pi * (200 + 100 * seed) * np.arange(noise.size) / AUDIO_RATE) + noise
    return (np.round(np.clip(clip, -1, 32767 / 32768) * 32768) / 32768).astype(np.float32)


AUDIO_RATE = 16000
_I, _A, _V = {"type": "image"}, {"type": "audio"}, {"type": "video"}

# name -> (messages with {"type": "image"} / {"type": "audio"} / {"type": "video"} parts in order, the media in that
# order: ("image", (width, height)), ("audio", seconds) or ("video", (width, height, frames, fps)); media i is made
# with seed i): the conversations of the media goldens. The videos' frame counts are not multiples of their rates,
# so LLaMA-Factory's frame sampling (spread from first to last frame; an odd count padded) shows in the timestamps.
MEDIA_CONVERSATIONS: dict[str, tuple[list[dict[str, Any]], list[tuple[str, Any]]]] = {
    "one_image": ([{"role": "user", "content": [_I, {"type": "text", "text": "Describe."}]}], [("image", (64, 48))]),
    "system_two_images": ([{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": [{"type": "text", "text": "Compare "}, _I,
                                                        {"type": "text", "text": " and "}, _I]}],
                          [("image", (56, 56)), ("image", (112, 84))]),
    "image_then_text": ([{"role": "user", "content": [_I, {"type": "text", "text": "What is it?"}]},
                         {"role": "assistant", "content": "Noise."},
                         {"role": "user", "content": "Are you sure?"}], [("image", (80, 40))]),
    "one_audio": ([{"role": "user", "content": [_A, {"type": "text", "text": "What do you hear?"}]}],
                  [("audio", 0.7)]),
    "system_two_audios": ([{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": [{"type": "text", "text": "Compare "}, _A,
                                                        {"type": "text", "text": " and "}, _A]}],
                          [("audio", 1.3), ("audio", 0.4)]),
    "audio_then_text": ([{"role": "user", "content": [_A, {"type": "text", "text": "Transcribe."}]},
                         {"role": "assistant", "content": "Static."},
                         {"role": "user", "content": "Louder?"}], [("audio", 1.0)]),
    "image_and_audio": ([{"role": "user", "content": [_I, {"type": "text", "text": "Match the picture "}, _A]}],
                        [("image", (70, 56)), ("audio", 0.9)]),
    "one_video": ([{"role": "user", "content": [_V, {"type": "text", "text": "What happens?"}]}],
                  [("video", (64, 48, 30, 10))]),
    "system_video_odd_frames": ([{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": [{"type": "text", "text": "Summarise "}, _V]}],
                                [("video", (56, 42, 25, 10))]),
    # videos with sound, for use_audio_in_video: the soundtrack is placed with the frames
    "sound_video": ([{"role": "user", "content": [_V, {"type": "text", "text": "What do you hear and see?"}]}],
                    [("sound_video", (64, 48, 30, 10))]),
    "system_sound_video_odd_frames": ([{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": [{"type": "text", "text": "Summarise "}, _V]}],
                                      [("sound_video", (56, 42, 25, 10))]),
}


def media_items(media: list[tuple[str, Any]]) -> tuple[list[Any], list[Any], list[bytes]]:
    """The images, audio clips and videos (MP4 bytes) of a media conversation, made from their specs and seeds."""
    images = [noise_image(arg, seed) for seed, (kind, arg) in enumerate(media) if kind == "image"]
    audios = [noise_clip(arg, seed) for seed, (kind, arg) in enumerate(media) if kind == "audio"]
    videos = [noise_video(arg, seed, sound=kind == "sound_video") for seed, (kind, arg) in enumerate(media)
              if kind in ("video", "sound_video")]
    return images, audios, videos


def conversations_with(kinds: set[str]) -> list[str]:
    """The media conversations whose media are all of these kinds."""
    return [key for key, (_, media) in MEDIA_CONVERSATIONS.items() if {kind for kind, _ in media} <= kinds]


def media_conversations() -> dict[str, tuple[list[dict[str, str]], str | None, list[tuple[str, Any]]]]:
    """The media conversations in LLaMA-Factory's form: (turns with `<image>` / `<audio>` / `<video>` placeholders,
    system, media)."""
    out = {}
    for key, (messages, media) in MEDIA_CONVERSATIONS.items():
        system = messages[0]["content"] if messages[0]["role"] == "system" else None
        turns = []
        for m in messages[1:] if system is not None else messages:
            content = m["content"] if isinstance(m["content"], str) else "".join(
                f"<{p['type']}>" if p["type"] in ("image", "audio", "video") else p["text"] for p in m["content"])
            turns.append({"role": m["role"], "content": content})
        out[key] = (turns, system, media)
    return out


def tiny_family_lm(template: str, smollm_dir: str, path: Any) -> None:
    """A tiny random-weight Llama with the template family's tokenizer (its golden's spec and vocabulary size), saved
    at `path`. Its weights come from a NumPy generator seeded by the template's name, parameter by parameter in name
    order, so LLaMA-Factory's environment and chatplex's build the same model whatever their torch and transformers
    versions: the two sides of the differential on families SmolLM2 cannot stand in for."""
    import json
    import zlib

    import numpy as np
    import torch
    import transformers

    golden = json.loads((FIXTURES / "goldens" / f"{template}.json").read_text(encoding="utf-8"))
    tokenizer = build_tokenizer(golden["tokenizer"], smollm_dir)
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=golden["vocab_size"], max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config)
    rng = np.random.default_rng(zlib.crc32(template.encode()))
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            values = np.ones(param.shape) if name.endswith("norm.weight") else rng.standard_normal(param.shape) * 0.2
            param.copy_(torch.from_numpy(values.astype(np.float32)))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
