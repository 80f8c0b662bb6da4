"""OpenAI-style messages as the turns of a LLaMA-Factory format: (turns, system, tools).

As LLaMA-Factory's API server splits a request: a leading system message becomes the system text, the rest must
alternate user (or tool result) and assistant (or tool calls), starting and ending with the user; a tool result is
an `observation` turn and an assistant's tool calls a `function` turn holding `[{"name", "arguments"}]` JSON. Media
parts become what LLaMA-Factory's multimodal plugin writes for them (`media_strings`). Where the API differs from
LLaMA-Factory's training data, the data wins (a fine-tune learnt that): the arguments stay an object, where
LLaMA-Factory's API would encode the client's JSON string a second time; and results of parallel calls, which its
API refuses, join in one observation turn, one result per line."""

from __future__ import annotations

import json
import os
from typing import Any

from chatplex.errors import InvalidRequestError
from chatplex.templates.llamafactory.format import MediaTokens

# LLaMA-Factory reads its placeholders from the environment, defaulting to these.
PLACEHOLDERS = {
    "image": os.environ.get("IMAGE_PLACEHOLDER", "<image>"),
    "video": os.environ.get("VIDEO_PLACEHOLDER", "<video>"),
    "audio": os.environ.get("AUDIO_PLACEHOLDER", "<audio>"),
}
GEMMA3_BOI = "<start_of_image>"  # Gemma 3's begin-of-image token (its processor's boi_token)
QWEN2_AUDIO_BOS, QWEN2_AUDIO_EOS = "<|audio_bos|>", "<|audio_eos|>"  # Qwen2AudioProcessor's audio_bos/eos_token
_MEDIA_KIND = {
    "image_url": "image",
    "image": "image",
    "video_url": "video",
    "video": "video",
    "input_audio": "audio",
    "audio_url": "audio",
    "audio": "audio",
}


def media_strings(media: MediaTokens | None) -> dict[str, str]:
    """What a media part becomes in a turn: for the plugins whose families chatplex's engine runs, the text
    LLaMA-Factory's plugin writes for one item before expansion, which the engine's family then expands as the
    plugin does (Qwen2-VL / Qwen3-VL / Qwen2.5-Omni: the vision begin and end tokens around the image or video
    token; Qwen2-Audio / Qwen2.5-Omni: the audio begin and end tokens around the audio token; Gemma 3: its
    begin-of-image token); else LLaMA-Factory's placeholders (LLaVA's `<image>` is its own token)."""
    if media is None:
        return PLACEHOLDERS
    tokens = media.tokens
    if media.plugin in ("Qwen2VLPlugin", "Qwen3VLPlugin", "Qwen2OmniPlugin"):
        bos, eos = tokens["vision_bos_token"], tokens["vision_eos_token"]
        out = {
            **PLACEHOLDERS,
            "image": f"{bos}{tokens['image_token']}{eos}",
            "video": f"{bos}{tokens['video_token']}{eos}",
        }
        if media.plugin == "Qwen2OmniPlugin":
            out["audio"] = f"{tokens['audio_bos_token']}{tokens['audio_token']}{tokens['audio_eos_token']}"
        return out
    if media.plugin == "Qwen2AudioPlugin":
        # its plugin takes the begin and end tokens from Qwen2AudioProcessor, whose are these
        return {**PLACEHOLDERS, "audio": f"{QWEN2_AUDIO_BOS}{tokens['audio_token']}{QWEN2_AUDIO_EOS}"}
    if media.plugin == "Gemma3Plugin":
        # its plugin writes the processor's full image sequence, which Gemma 3's family makes of the begin token
        return {**PLACEHOLDERS, "image": GEMMA3_BOI}
    return PLACEHOLDERS


def _text(content: Any, media: dict[str, str]) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    out = []
    for part in content:
        kind = part.get("type")
        out.append(media[_MEDIA_KIND[kind]] if kind in _MEDIA_KIND else str(part.get("text", "")))
    return "".join(out)


def _calls_json(calls: list[dict[str, Any]]) -> str:
    return json.dumps(
        [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in calls], ensure_ascii=False
    )


def _tools_json(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """The function definitions, with the fields LLaMA-Factory's API keeps, in its order."""
    if not tools:
        return None
    out = []
    for tool in tools:
        fn = tool.get("function", tool)
        out.append({k: fn[k] for k in ("name", "description", "parameters") if k in fn})
    return out


def to_turns(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    *,
    template: str,
    add_generation_prompt: bool = True,
    media: MediaTokens | None = None,
) -> tuple[list[dict[str, str]], str | None, list[dict[str, Any]] | None]:
    """Normalised messages (chatplex.messages) as LLaMA-Factory turns. With `add_generation_prompt` false the
    conversation may end with the assistant (a whole conversation, as scoring encodes it)."""
    strings = media_strings(media)
    system = None
    rest = list(messages)
    if rest and rest[0]["role"] == "system":
        system = _text(rest.pop(0).get("content"), strings)
    turns: list[dict[str, str]] = []
    offset = len(messages) - len(rest)
    for i, message in enumerate(rest):
        role = message["role"]
        if role == "tool" and turns and turns[-1]["role"] == "observation":
            turns[-1]["content"] += "\n" + _text(message.get("content"), strings)
            continue
        expect_user = len(turns) % 2 == 0
        if role == "system":
            raise InvalidRequestError(
                f"messages[{i + offset}]: the LLaMA-Factory template {template!r} takes a system message only "
                "as the first message.",
                param=f"messages[{i + offset}].role",
            )
        if expect_user != (role in ("user", "tool")):
            want = "user or tool" if expect_user else "assistant"
            raise InvalidRequestError(
                f"messages[{i + offset}]: the LLaMA-Factory template {template!r} needs turns that alternate user "
                f"and assistant (u/a/u/a/u...); expected {want}, got {role}.",
                param=f"messages[{i + offset}].role",
            )
        if role == "assistant" and message.get("tool_calls"):
            turns.append({"role": "function", "content": _calls_json(message["tool_calls"])})
        else:
            lf_role = {"user": "user", "tool": "observation", "assistant": "assistant"}[role]
            turns.append({"role": lf_role, "content": _text(message.get("content"), strings)})
    if add_generation_prompt and len(turns) % 2 == 0:
        raise InvalidRequestError(
            f"messages: the LLaMA-Factory template {template!r} generates a reply to a user or tool turn; "
            "the conversation ends with the assistant.",
            param="messages",
        )
    return turns, system, _tools_json(tools)
