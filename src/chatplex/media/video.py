"""Videos: a container (bytes from any source) decoded with PyAV, or a list of frames, into sampled RGB frames.

Frames are sampled uniformly at `video_fps` (at most `max_video_frames`, spread over the whole clip), the way
transformers' own video loader samples (`default_sample_indices_fn`), so a request and a direct processor call on
the same file see the same frames; under a LLaMA-Factory template name (policy `video_pipeline: llamafactory`), the
way its plugins sample, so a model it fine-tuned sees the frames it trained on. Only the sampled frames are
converted to pixels; the rest are decoded and dropped. A list of frames is taken as already sampled at `video_fps`
(LLaMA-Factory's convention)."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from chatplex.errors import InvalidRequestError
from chatplex.media.audio import AudioClip, check_clip
from chatplex.media.image import fit_pixels, load_image
from chatplex.media.policy import MediaPolicy
from chatplex.media.sources import load_source


@dataclass
class VideoClip:
    frames: np.ndarray  # [frames, height, width, 3] uint8 RGB
    fps: float  # frames per second of `frames` as sampled (what time positions are computed from)
    # Where the frames came from in a decoded file: each one's index there and the file's own frame rate (None for
    # frames given as a list, which are taken as frames 0, 1, ... at `fps`). Processors that print timestamps
    # (Qwen3-VL) read these as transformers' VideoMetadata.
    source_indices: list[int] | None = None
    source_fps: float | None = None
    soundtrack: AudioClip | None = None  # its audio track, read when the policy's use_audio_in_video is on

    @property
    def seconds(self) -> float:
        return len(self.frames) / self.fps

    @property
    def indices(self) -> list[int]:
        """Each frame's index in its source clip."""
        return self.source_indices if self.source_indices is not None else list(range(len(self.frames)))

    @property
    def index_fps(self) -> float:
        """The frame rate `indices` count in."""
        return self.source_fps if self.source_fps is not None else self.fps

    def padded_to(self, multiple: int) -> VideoClip:
        """The clip with its last frame repeated up to a multiple of `multiple` frames (LLaMA-Factory's Qwen-VL
        plugins make the count even so); `fps` stays the sampling rate."""
        extra = -len(self.frames) % multiple
        if not extra:
            return self
        frames = np.concatenate([self.frames, np.repeat(self.frames[-1:], extra, axis=0)])
        indices = self.indices + [self.indices[-1]] * extra
        return replace(self, frames=frames, source_indices=indices, source_fps=self.index_fps)

    @property
    def frame_times(self) -> list[float]:
        """Each frame's time in the clip, in seconds."""
        return [i / self.index_fps for i in self.indices]


def sample_indices(total: int, native_fps: float, target_fps: float, max_frames: int) -> np.ndarray:
    """Uniform frame indices: `target_fps` frames per second of the clip, at most `max_frames`, at least one."""
    count = max(1, int(total / native_fps * target_fps)) if native_fps > 0 else total
    count = min(count, max_frames, total)
    return np.arange(count, dtype=int) * total // count


def llamafactory_indices(total: int, seconds: float | None, target_fps: float, max_frames: int) -> np.ndarray:
    """LLaMA-Factory's frames: `target_fps` per second of the stream's duration (at least one, at most
    `max_frames` and the frame count), spread evenly from the first frame to the last."""
    count = max(1, math.floor(seconds * target_fps)) if seconds else total
    count = min(total, max_frames, count)
    return np.linspace(0, total - 1, count).astype(np.int32)


def _check_frame(width: int, height: int, param: str, policy: MediaPolicy) -> None:
    if width * height > policy.max_image_pixels:
        raise InvalidRequestError(
            f"{param}: video frames are {width}x{height}, more than {policy.max_image_pixels} pixels.", param=param
        )


def _fitted(frames: list[np.ndarray], policy: MediaPolicy) -> list[np.ndarray]:
    """Frames scaled into the policy's video pixel bounds (LLaMA-Factory's video_max_pixels / video_min_pixels)."""
    if policy.video_max_pixels is None and policy.video_min_pixels is None:
        return frames
    from PIL import Image

    return [
        np.asarray(fit_pixels(Image.fromarray(f), policy.video_max_pixels, policy.video_min_pixels)) for f in frames
    ]


def decode_soundtrack(data: bytes, param: str, policy: MediaPolicy, rate: int | None) -> AudioClip:
    """The video's first audio track, mono float32 at `rate` (None: its own), converted by FFmpeg's resampler."""
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:  # what av infers for a BytesIO anyway
            if not container.streams.audio:
                raise InvalidRequestError(
                    f"{param}: the video has no audio track, and use_audio_in_video reads each video's soundtrack; "
                    "send a video with sound, or turn use_audio_in_video off.",
                    param=param,
                )
            stream = container.streams.audio[0]
            rate = rate or stream.rate
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            chunks = [
                out.to_ndarray().reshape(-1) for frame in container.decode(stream) for out in resampler.resample(frame)
            ]
            chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]  # what it still holds
    except InvalidRequestError:
        raise
    except Exception as e:  # noqa: BLE001 - PyAV's FFmpegError tree, plus ValueError/OSError on odd input
        raise InvalidRequestError(
            f"{param}: its audio track is not readable ({type(e).__name__}: {e}).", param=param
        ) from None
    array = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    check_clip(array, rate, param, policy)
    return AudioClip(np.ascontiguousarray(array), rate)


def decode_video(data: bytes, param: str, policy: MediaPolicy) -> VideoClip:
    try:
        import av
    except ImportError:
        raise InvalidRequestError(
            f"{param}: decoding video files needs PyAV (pip install 'chatplex[video]'); or send a list of frames.",
            param=param,
        ) from None
    try:
        with av.open(io.BytesIO(data), mode="r") as container:  # what av infers for a BytesIO anyway
            if not container.streams.video:
                raise InvalidRequestError(f"{param}: the file has no video stream.", param=param)
            stream = container.streams.video[0]
            _check_frame(stream.width, stream.height, param, policy)
            native_fps = float(stream.average_rate or 0)
            seconds = None
            if stream.duration:
                assert stream.time_base is not None  # a demuxed stream always has one
                seconds = float(stream.duration * stream.time_base)
            total = stream.frames
            if not total and seconds and native_fps:  # containers without a frame count (webm, some mkv)
                total = int(seconds * native_fps)
            if not total:
                raise InvalidRequestError(f"{param}: the video has no frames.", param=param)
            if policy.video_pipeline == "llamafactory":
                wanted = llamafactory_indices(total, seconds, policy.video_fps, policy.max_video_frames)
            else:
                wanted = sample_indices(total, native_fps, policy.video_fps, policy.max_video_frames)
            keep, last = set(wanted.tolist()), int(wanted[-1])
            frames = []
            for i, frame in enumerate(container.decode(stream)):
                if i > last:
                    break
                if i in keep:
                    frames.append(frame.to_ndarray(format="rgb24"))
    except InvalidRequestError:
        raise
    except Exception as e:  # noqa: BLE001 - PyAV raises its own FFmpegError tree, plus ValueError/OSError on odd input
        raise InvalidRequestError(f"{param}: not a readable video ({type(e).__name__}: {e}).", param=param) from None
    if not frames:
        raise InvalidRequestError(f"{param}: the video has no decodable frames.", param=param)
    frames = _fitted(frames, policy)
    sampled_fps = len(frames) / total * native_fps if native_fps else policy.video_fps
    if not native_fps:
        return VideoClip(np.stack(frames), sampled_fps)
    return VideoClip(np.stack(frames), sampled_fps, [int(i) for i in wanted[: len(frames)]], native_fps)


def _frames(source: list | tuple, param: str, policy: MediaPolicy, trusted: bool) -> VideoClip:
    if not source:
        raise InvalidRequestError(f"{param}: a video given as frames needs at least one frame.", param=param)
    if len(source) > policy.max_video_frames:
        raise InvalidRequestError(
            f"{param}: {len(source)} frames, more than max_video_frames ({policy.max_video_frames}).", param=param
        )
    frames = []
    for i, frame in enumerate(source):
        if isinstance(frame, np.ndarray):
            if frame.ndim != 3 or frame.shape[-1] != 3:
                raise InvalidRequestError(f"{param}[{i}]: a frame array must be [height, width, 3].", param=param)
            _check_frame(frame.shape[1], frame.shape[0], f"{param}[{i}]", policy)
            frames.append(frame.astype(np.uint8, copy=False))
        else:
            # frames are sized by the video bounds below, not the image ones
            unsized = replace(policy, image_max_pixels=None, image_min_pixels=None)
            frames.append(np.asarray(load_image(frame, f"{param}[{i}]", unsized, trusted=trusted)))
    frames = _fitted(frames, policy)
    if len({f.shape for f in frames}) > 1:
        raise InvalidRequestError(f"{param}: all frames of a video must have the same size.", param=param)
    return VideoClip(np.stack(frames), policy.video_fps)


def load_video(
    source: Any,
    param: str = "video",
    policy: MediaPolicy | None = None,
    *,
    trusted: bool = True,
    audio_rate: int | None = None,
) -> VideoClip:
    """A `VideoClip` from a list of frames (PIL images, arrays, paths), bytes, a data URL, an http(s) URL or a
    path; a dict `{"frames": [...], "fps": 4}` gives frames with their own rate. Under `use_audio_in_video`, a
    video file's soundtrack comes with it (resampled to `audio_rate`); frames alone have none, and are refused."""
    policy = policy or MediaPolicy()
    if (
        policy.use_audio_in_video
        and not isinstance(source, VideoClip)
        and (isinstance(source, (list, tuple)) or (isinstance(source, dict) and "frames" in source))
    ):
        raise InvalidRequestError(
            f"{param}: a video given as frames has no soundtrack, which use_audio_in_video reads; send the video file.",
            param=param,
        )
    if isinstance(source, VideoClip):
        return source
    if isinstance(source, dict) and "frames" in source:
        clip = _frames(source["frames"], param, policy, trusted)
        fps = source.get("fps", policy.video_fps)
        if not isinstance(fps, (int, float)) or fps <= 0:
            raise InvalidRequestError(f"{param}: fps must be a positive number.", param=param)
        return VideoClip(clip.frames, float(fps))
    if isinstance(source, (list, tuple)):
        return _frames(source, param, policy, trusted)
    data = load_source(source, param, policy, trusted).data
    clip = decode_video(data, param, policy)
    if policy.use_audio_in_video:
        clip = replace(clip, soundtrack=decode_soundtrack(data, param, policy, audio_rate))
    return clip
