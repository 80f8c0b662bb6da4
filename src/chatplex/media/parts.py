"""A request's media, from OpenAI content parts and the Python API's `images` / `videos` / `audios` arguments,
loaded in prompt order and rewritten as bare `{"type": "image" | "video" | "audio"}` parts for the template.

Python-API media pair with `<image>` / `<video>` / `<audio>` placeholders in user text (LLaMA-Factory's
convention); with no placeholders they go at the start of the first user message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from chatplex.errors import InvalidRequestError, UnsupportedFeatureError
from chatplex.media.audio import AudioClip, load_audio
from chatplex.media.image import load_image
from chatplex.media.policy import MediaPolicy
from chatplex.media.video import VideoClip, load_video
from chatplex.messages import TEXT_PART_TYPES
from chatplex.types import Message

PLACEHOLDERS = {"image": "<image>", "video": "<video>", "audio": "<audio>"}
ARGUMENT_FIELDS = {"image": "images", "video": "videos", "audio": "audios"}  # the Python API's argument per kind
PART_KINDS: dict[str | None, str] = {  # looked up with a part's raw type, which may be missing
    "image_url": "image",
    "image": "image",
    "input_audio": "audio",
    "audio_url": "audio",
    "audio": "audio",
    "video_url": "video",
    "video": "video",
}
_PLACEHOLDER_RE = re.compile("(<image>|<video>|<audio>)")


@dataclass
class RequestMedia:
    messages: list[Message]  # media parts replaced by {"type": "image"} / {"type": "video"} / {"type": "audio"}
    images: list[Any] = field(default_factory=list)  # RGB PIL images, in prompt order
    audios: list[AudioClip] = field(default_factory=list)
    videos: list[VideoClip] = field(default_factory=list)
    # The field that named each item, per kind, in prompt order: "messages[0].content[2]" or "audios[1]".
    params: dict[str, list[str]] = field(default_factory=lambda: {"image": [], "video": [], "audio": []})

    def __bool__(self) -> bool:
        return bool(self.images or self.audios or self.videos)


def media_items(request: Any) -> list[tuple[str, str]]:
    """(param, kind) of every media item a request names, without loading anything: its `images` / `videos` /
    `audios` arguments, then its media content parts in prompt order (kind "?" for an unknown non-text part).
    Engines use it to refuse media they cannot take, naming the field."""
    items = [(field, kind) for kind, field in ARGUMENT_FIELDS.items() if getattr(request, field, None)]
    for i, message in enumerate(getattr(request, "messages", None) or []):
        content = message.get("content")
        for j, part in enumerate(content if isinstance(content, list) else []):
            if isinstance(part, dict) and part.get("type") not in TEXT_PART_TYPES:
                items.append((f"messages[{i}].content[{j}]", PART_KINDS.get(part.get("type"), "?")))
    return items


def text_only_error(param: str, model_name: str) -> UnsupportedFeatureError:
    """The error for a media item (named by `param`) sent to a text-only model."""
    return UnsupportedFeatureError(
        f"{param}: {model_name} is a text-only model; it takes no images, video or audio.", param=param
    )


def _url_of(part: dict[str, Any], key: str, param: str) -> Any:
    value = part.get(key)
    if isinstance(value, dict):
        value = value.get("url")
    if not isinstance(value, str) or not value:
        raise InvalidRequestError(
            f"{param}: {key} needs a URL string (or an object with 'url').", param=f"{param}.{key}"
        )
    return value


def _input_audio(part: dict[str, Any], param: str) -> str:
    """OpenAI's {"input_audio": {"data": <base64>, "format": "wav" | "mp3"}} as a data URL."""
    spec = part.get("input_audio")
    if not isinstance(spec, dict) or not isinstance(spec.get("data"), str):
        raise InvalidRequestError(f"{param}: input_audio needs base64 'data'.", param=f"{param}.input_audio.data")
    fmt = spec.get("format", "wav")
    return f"data:audio/{fmt};base64,{spec['data']}"


class _Loader:
    def __init__(self, policy: MediaPolicy, audio_rate: int | None) -> None:
        self.policy, self.audio_rate = policy, audio_rate
        self.images: list[Any] = []
        self.audios: list[AudioClip] = []
        self.videos: list[VideoClip] = []
        self.params: dict[str, list[str]] = {"image": [], "video": [], "audio": []}

    def add(self, kind: str, source: Any, param: str, trusted: bool) -> dict[str, str]:
        if kind == "image":
            if len(self.images) >= self.policy.max_images:
                raise InvalidRequestError(
                    f"{param}: more than {self.policy.max_images} images in one request.", param=param
                )
            self.images.append(load_image(source, param, self.policy, trusted=trusted))
        elif kind == "video":
            if len(self.videos) >= self.policy.max_videos:
                raise InvalidRequestError(
                    f"{param}: more than {self.policy.max_videos} videos in one request.", param=param
                )
            self.videos.append(
                load_video(
                    source,
                    param,
                    self.policy,
                    trusted=trusted,
                    audio_rate=self.policy.audio_sampling_rate or self.audio_rate,
                )
            )
        else:
            if len(self.audios) >= self.policy.max_audios:
                raise InvalidRequestError(
                    f"{param}: more than {self.policy.max_audios} audios in one request.", param=param
                )
            self.audios.append(
                load_audio(
                    source,
                    param,
                    self.policy,
                    target_rate=self.policy.audio_sampling_rate or self.audio_rate,
                    trusted=trusted,
                )
            )
        self.params[kind].append(param)
        return {"type": kind}

    def part(self, part: dict[str, Any], param: str) -> dict[str, Any]:
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text"):
            return part
        if kind == "image_url":
            return self.add("image", _url_of(part, "image_url", param), param, trusted=False)
        if kind == "image":  # transformers' own part shape: {"type": "image", "image" | "url" | "path": ...}
            source = part.get("image", part.get("url", part.get("path")))
            return self.add("image", source, param, trusted=False)
        if kind == "input_audio":
            return self.add("audio", _input_audio(part, param), param, trusted=False)
        if kind == "audio_url":
            return self.add("audio", _url_of(part, "audio_url", param), param, trusted=False)
        if kind in ("audio",):
            return self.add("audio", part.get("audio", part.get("url", part.get("path"))), param, trusted=False)
        if kind == "video_url":
            return self.add("video", _url_of(part, "video_url", param), param, trusted=False)
        if kind == "video":
            return self.add("video", part.get("video", part.get("url", part.get("path"))), param, trusted=False)
        raise InvalidRequestError(f"{param}: unknown content part type {kind!r}.", param=f"{param}.type")


def _split_placeholders(text: str) -> list[dict[str, Any]]:
    parts = []
    for piece in _PLACEHOLDER_RE.split(text):
        if piece in PLACEHOLDERS.values():
            parts.append({"type": piece[1:-1]})
        elif piece:
            parts.append({"type": "text", "text": piece})
    return parts


def _attach_arguments(messages: list[Message], arguments: dict[str, list[Any]], loader: _Loader) -> list[Message]:
    """Turn placeholders (or, lacking any, the first user message's start) into parts for `images` / `videos` /
    `audios`."""
    queues = {kind: list(enumerate(items)) for kind, items in arguments.items()}
    out: list[Message] = []
    found = False
    for msg in messages:
        content = msg.get("content")
        if msg.get("role") == "user" and isinstance(content, str) and _PLACEHOLDER_RE.search(content):
            found = True
            parts = []
            for part in _split_placeholders(content):
                if part["type"] in queues:
                    kind = part["type"]
                    if not queues[kind]:
                        raise InvalidRequestError(
                            f"{kind}s: the messages have more {PLACEHOLDERS[kind]} placeholders than {kind}s given.",
                            param=f"{kind}s",
                        )
                    i, source = queues[kind].pop(0)
                    part = loader.add(kind, source, f"{kind}s[{i}]", trusted=True)
                parts.append(part)
            msg = {**msg, "content": parts}
        out.append(msg)
    leftover = [(k, i, s) for k in PLACEHOLDERS for i, s in queues[k]]
    if leftover and found:
        kind, i, _ = leftover[0]
        raise InvalidRequestError(
            f"{kind}s[{i}]: more {kind}s than {PLACEHOLDERS[kind]} placeholders.", param=f"{kind}s[{i}]"
        )
    if leftover:
        first = next((j for j, m in enumerate(out) if m.get("role") == "user"), None)
        if first is None:
            raise InvalidRequestError("messages: media needs a user message to go in.", param="messages")
        head = [loader.add(k, s, f"{k}s[{i}]", trusted=True) for k, i, s in leftover]
        content = out[first]["content"]
        rest = content if isinstance(content, list) else [{"type": "text", "text": content}]
        out[first] = {**out[first], "content": head + rest}
    return out


def collect_media(
    messages: list[Message],
    images: list[Any] | None = None,
    audios: list[Any] | None = None,
    policy: MediaPolicy | None = None,
    *,
    audio_rate: int | None = None,
    videos: list[Any] | None = None,
) -> RequestMedia:
    """Load every image, video and audio of a request (from content parts, or from the `images` / `videos` /
    `audios` arguments) and return the messages with bare media parts; the media lists are in prompt order."""
    loader = _Loader(policy or MediaPolicy(), audio_rate)
    out: list[Message] = []
    for i, msg in enumerate(messages):
        content = msg.get("content")
        if isinstance(content, list):
            msg = {**msg, "content": [loader.part(p, f"messages[{i}].content[{j}]") for j, p in enumerate(content)]}
        out.append(msg)
    if images or audios or videos:
        if loader.images or loader.audios or loader.videos:
            # Two sources would leave the order of media in the prompt ambiguous.
            raise InvalidRequestError(
                "images: give media either as content parts or as images=/videos=/audios= arguments, not both.",
                param="images",
            )
        arguments = {"image": list(images or []), "video": list(videos or []), "audio": list(audios or [])}
        out = _attach_arguments(out, arguments, loader)
    return RequestMedia(out, loader.images, loader.audios, loader.videos, loader.params)
