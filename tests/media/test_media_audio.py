"""Audio from paths, bytes, data URLs, OpenAI input_audio and (array, rate) pairs; resampling; bad audio."""

from __future__ import annotations

import numpy as np
import pytest
from tests.media.conftest import data_url, encode_wav

from chatplex.errors import InvalidRequestError
from chatplex.media import MediaPolicy, load_audio
from chatplex.media.audio import resample


def test_wav_from_bytes_path_and_data_url(tmp_path) -> None:
    wav = encode_wav(0.25, 8000, channels=2)
    path = tmp_path / "a.wav"
    path.write_bytes(wav)
    for source in (wav, str(path), data_url(wav, "audio/wav")):
        clip = load_audio(source, "audios[0]")
        assert clip.sampling_rate == 8000 and clip.array.shape == (2000,) and clip.array.dtype == np.float32
        assert 0.45 < np.abs(clip.array).max() <= 0.5


def test_flac_and_ogg_decode() -> None:
    import io

    import soundfile

    wave = np.sin(np.linspace(0, 100, 4000)).astype(np.float32) * 0.3
    for fmt in ("FLAC", "OGG"):
        buf = io.BytesIO()
        soundfile.write(buf, wave, 16000, format=fmt)
        clip = load_audio(buf.getvalue())
        assert clip.sampling_rate == 16000 and abs(clip.array.size - 4000) < 10


def test_arrays_with_rate_and_resampling() -> None:
    wave = np.sin(np.arange(8000) / 8000 * 2 * np.pi * 5).astype(np.float64)
    clip = load_audio((wave, 8000), target_rate=16000)
    assert clip.sampling_rate == 16000 and clip.array.size == 16000 and clip.array.dtype == np.float32
    np.testing.assert_allclose(clip.array[::2], wave, atol=1e-6)  # even samples sit on the originals
    stereo = load_audio({"array": np.stack([wave, wave]), "sampling_rate": 8000})  # [channels, samples]
    assert stereo.array.shape == (8000,)
    assert resample(np.ones(10, np.float32), 10, 10).size == 10


@pytest.mark.parametrize(
    ("source", "match"),
    [
        (b"RIFF....WAVEjunk", "not a readable audio file"),
        (data_url(b"garbage", "audio/mp3"), "not a readable audio file"),
        ((np.zeros(0), 16000), "empty"),
        ((np.zeros(10), 0), "sampling rate must be a positive integer"),
        ((np.zeros(10), 16000.0), "sampling rate must be a positive integer"),
        ((np.full(10, np.nan), 16000), "NaN"),
        ((np.zeros((2, 2, 2)), 16000), "1-D"),
        ((["a", "b"], 16000), "not numeric"),
        (np.zeros(10), "with its rate"),
    ],
)
def test_bad_audio_names_the_item(source, match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match) as info:
        load_audio(source, "messages[0].content[2]")
    assert info.value.param == "messages[0].content[2]"


def test_too_long_and_too_large() -> None:
    with pytest.raises(InvalidRequestError, match="lasts 2.0 s, more than 1 s"):
        load_audio((np.zeros(32000), 16000), "audios[1]", MediaPolicy(max_audio_seconds=1))
    wav = encode_wav()
    with pytest.raises(InvalidRequestError, match="larger than"):
        load_audio(wav, "audios[0]", MediaPolicy(max_item_bytes=len(wav) - 1))
