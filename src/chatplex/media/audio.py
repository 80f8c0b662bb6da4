"""Audio: bytes from any source (decoded with soundfile: WAV, FLAC, OGG, MP3...) or an (array, sampling_rate)
pair -> a mono float32 clip, resampled to the rate the model's feature extractor wants."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from chatplex.errors import InvalidRequestError
from chatplex.media.policy import MediaPolicy
from chatplex.media.sources import load_source


@dataclass(frozen=True)
class AudioClip:
    array: np.ndarray  # [samples] float32, mono
    sampling_rate: int


def resample(array: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Linear-interpolation resampling: enough for speech features, with no scipy/librosa dependency."""
    if rate == target or array.size == 0:
        return array
    n_out = max(1, round(array.size * target / rate))
    t_out = np.arange(n_out, dtype=np.float64) * (rate / target)
    return np.interp(t_out, np.arange(array.size, dtype=np.float64), array).astype(np.float32)


def _from_array(array: Any, rate: Any, param: str) -> tuple[np.ndarray, int]:
    if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
        raise InvalidRequestError(f"{param}: the sampling rate must be a positive integer, got {rate!r}.", param=param)
    try:
        arr = np.asarray(array, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidRequestError(f"{param}: the audio array is not numeric.", param=param) from None
    if arr.ndim == 2:  # [samples, channels] as soundfile gives, or [channels, samples] as torch users have it
        arr = arr.mean(axis=1 if arr.shape[0] >= arr.shape[1] else 0)
    if arr.ndim != 1:
        raise InvalidRequestError(f"{param}: the audio array must be 1-D (mono) or 2-D (channels).", param=param)
    return arr, rate


def _decode(data: bytes, param: str) -> tuple[np.ndarray, int]:
    try:
        import soundfile
    except ImportError:  # pragma: no cover - the install hint is the point
        raise InvalidRequestError(
            f"{param}: decoding audio needs soundfile: pip install 'chatplex[media]'.", param=param
        ) from None
    try:
        arr, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 - soundfile.LibsndfileError, RuntimeError, TypeError for unknown formats
        raise InvalidRequestError(f"{param}: not a readable audio file ({e}).", param=param) from None
    return arr.mean(axis=1), int(rate)


def check_clip(arr: np.ndarray, rate: int, param: str, policy: MediaPolicy) -> None:
    """Refuse an empty clip, one with non-finite samples, or one longer than the policy allows."""
    if arr.size == 0:
        raise InvalidRequestError(f"{param}: the audio is empty.", param=param)
    if not np.isfinite(arr).all():
        raise InvalidRequestError(f"{param}: the audio has NaN or infinite samples.", param=param)
    if arr.size / rate > policy.max_audio_seconds:
        raise InvalidRequestError(
            f"{param}: the audio lasts {arr.size / rate:.1f} s, more than {policy.max_audio_seconds:g} s.", param=param
        )


def load_audio(
    source: Any,
    param: str = "audio",
    policy: MediaPolicy | None = None,
    *,
    target_rate: int | None = None,
    trusted: bool = True,
) -> AudioClip:
    """A mono float32 clip from a path, bytes, a data or http(s) URL, an (array, rate) pair or a
    {"array", "sampling_rate"} dict (the datasets shape); resampled to `target_rate` when given."""
    policy = policy or MediaPolicy()
    if isinstance(source, dict) and "array" in source:
        arr, rate = _from_array(source["array"], source.get("sampling_rate"), param)
    elif isinstance(source, (tuple, list)) and len(source) == 2 and not isinstance(source[0], (str, bytes)):
        arr, rate = _from_array(source[0], source[1], param)
    elif isinstance(source, np.ndarray):
        raise InvalidRequestError(f"{param}: give a bare array with its rate: (array, sampling_rate).", param=param)
    else:
        arr, rate = _decode(load_source(source, param, policy, trusted).data, param)
    check_clip(arr, rate, param, policy)
    if target_rate is not None:
        arr, rate = resample(arr, rate, target_rate), target_rate
    return AudioClip(np.ascontiguousarray(arr, dtype=np.float32), rate)
