"""Limits and allowed sources for media in one request."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from chatplex.errors import ConfigError

VIDEO_PIPELINES = ("transformers", "llamafactory")


@dataclass(frozen=True)
class MediaPolicy:
    """What a request may carry and where its media may come from.

    Remote URLs are fetched only when `allow_remote`, and never from private, loopback or link-local addresses
    unless `allow_private_addresses` (for tests and trusted networks). Local paths named inside messages are
    read only under `local_root` (None: refused); paths given directly to the Python API (`images=`) are the
    caller's own and are always read.
    """

    max_images: int = 16
    max_audios: int = 8
    max_videos: int = 4
    max_video_frames: int = 32  # frames kept per video after sampling (each costs as much as an image)
    video_fps: float = 2.0  # frames sampled per second of video (Qwen-VL's and LLaMA-Factory's default)
    max_item_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 50_000_000  # PIL's own bomb limit is ~89M; decoding a 50 MP image is already costly
    max_audio_seconds: float = 600.0
    allow_remote: bool = True
    allow_private_addresses: bool = False
    fetch_timeout_s: float = 10.0
    max_redirects: int = 3
    local_root: str | None = None
    # LLaMA-Factory's image and video sizing (its image_max_pixels... keys): an image or frame outside the bounds is
    # scaled, keeping its aspect ratio, to just within them. None: sent at its own size.
    image_max_pixels: int | None = None
    image_min_pixels: int | None = None
    video_max_pixels: int | None = None
    video_min_pixels: int | None = None
    audio_sampling_rate: int | None = None  # audio is resampled to this rate (None: the model's processor's)
    # Whose video handling requests follow: "transformers" (frames picked as its video loader picks them,
    # `video_fps` per second of the frame count; sized as the model's processor sizes them) or "llamafactory" (as
    # its Qwen-VL plugins do: `video_fps` per second of the stream's duration spread from the first frame to the
    # last, an odd count padded with the last frame, sized by the video processor's own config), so a model it
    # fine-tuned sees the frames it trained on. LLaMA-Factory's template names set the latter.
    video_pipeline: str = "transformers"
    # Read each video's soundtrack too (LLaMA-Factory's and Qwen2.5-Omni's use_audio_in_video): the family places
    # it with the video's frames, interleaved in 2-second chunks. A video without sound is then refused.
    use_audio_in_video: bool = False

    @classmethod
    def from_config(cls, values: dict | None) -> MediaPolicy:
        """The `media:` argument (a dict of these fields) -> a policy; unknown keys name the valid ones."""
        valid = [f.name for f in fields(cls)]
        for key in values or {}:
            if key not in valid:
                raise ConfigError(f"media.{key}: unknown; valid keys: {', '.join(valid)}.", param=f"media.{key}")
        return cls(**(values or {}))

    def __post_init__(self) -> None:
        for name in ("max_images", "max_audios", "max_videos", "max_item_bytes", "max_image_pixels", "max_redirects"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name}: must be a non-negative integer, got {value!r}.", param=name)
        if not isinstance(self.max_video_frames, int) or self.max_video_frames < 1:
            raise ConfigError(
                f"max_video_frames: must be a positive integer, got {self.max_video_frames!r}.",
                param="max_video_frames",
            )
        for name in ("max_audio_seconds", "fetch_timeout_s", "video_fps"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: must be positive.", param=name)
        for name in (
            "image_max_pixels",
            "image_min_pixels",
            "video_max_pixels",
            "video_min_pixels",
            "audio_sampling_rate",
        ):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"{name}: must be a positive integer, got {value!r}.", param=name)
        if not isinstance(self.use_audio_in_video, bool):
            raise ConfigError(
                f"use_audio_in_video: true or false, got {self.use_audio_in_video!r}.", param="use_audio_in_video"
            )
        if self.video_pipeline not in VIDEO_PIPELINES:
            raise ConfigError(
                f"video_pipeline: one of {', '.join(VIDEO_PIPELINES)}, got {self.video_pipeline!r}.",
                param="video_pipeline",
            )
        if self.local_root is not None:
            object.__setattr__(self, "local_root", os.path.realpath(os.path.expanduser(self.local_root)))
