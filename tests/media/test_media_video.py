"""Videos: containers decoded with PyAV and sampled like transformers' own loader, frame lists, limits, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from tests.media.conftest import data_url, encode_image, encode_mp4, encode_wav

from chatplex.errors import ConfigError, InvalidRequestError
from chatplex.media import MediaPolicy, collect_media, load_video

# 16 frames at 8 fps: two seconds, every frame its own colour, far enough apart to survive lossy coding.
COLORS = [((i * 53) % 256, (i * 97 + 40) % 256, (255 - i * 15) % 256) for i in range(16)]


@pytest.fixture(scope="module")
def mp4(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    path.write_bytes(encode_mp4(COLORS, fps=8))
    return str(path)


def _mean_colors(frames: np.ndarray) -> list[tuple[int, ...]]:
    return [tuple(int(c) for c in f.reshape(-1, 3).mean(0).round()) for f in frames]


def test_samples_at_video_fps_like_transformers(mp4: str) -> None:
    from transformers.video_utils import load_video as hf_load_video

    clip = load_video(mp4, "videos[0]", MediaPolicy(video_fps=2.0))
    assert clip.frames.shape == (4, 48, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.fps == pytest.approx(2.0) and clip.seconds == pytest.approx(2.0)
    assert clip.frame_times == [0.0, 0.5, 1.0, 1.5]  # frames 0, 4, 8, 12 of an 8 fps clip
    reference, metadata = hf_load_video(mp4, backend="pyav", fps=2)
    assert list(metadata.frames_indices) == [0, 4, 8, 12]
    np.testing.assert_array_equal(clip.frames, reference)
    # The sampled frames are the coloured frames 0, 4, 8, 12 (within the codec's rounding).
    for got, want in zip(_mean_colors(clip.frames), [COLORS[i] for i in (0, 4, 8, 12)]):
        assert max(abs(g - w) for g, w in zip(got, want)) <= 6, (got, want)


def test_frame_cap_spreads_over_the_clip(mp4: str) -> None:
    clip = load_video(mp4, "v", MediaPolicy(video_fps=8.0, max_video_frames=3))
    assert len(clip.frames) == 3  # indices 0, 5, 10: the whole clip, not its first three frames
    assert clip.fps == pytest.approx(1.5)
    for got, want in zip(_mean_colors(clip.frames), [COLORS[i] for i in (0, 5, 10)]):
        assert max(abs(g - w) for g, w in zip(got, want)) <= 6


def test_every_source_form(mp4: str) -> None:
    data = open(mp4, "rb").read()
    by_path = load_video(mp4)
    for source in (data, data_url(data, "video/mp4"), "file://" + mp4):
        np.testing.assert_array_equal(load_video(source).frames, by_path.frames)
    frames = [Image.new("RGB", (8, 6), (i * 30, 0, 0)) for i in range(3)]
    clip = load_video(frames, "v", MediaPolicy(video_fps=2.0))
    assert clip.frames.shape == (3, 6, 8, 3) and clip.fps == 2.0
    assert clip.frame_times == [0.0, 0.5, 1.0]
    assert clip.frames[2, 0, 0, 0] == 60
    arrays = load_video({"frames": [np.zeros((6, 8, 3), np.uint8)] * 2, "fps": 4})
    assert arrays.frames.shape == (2, 6, 8, 3) and arrays.fps == 4.0


def test_bad_videos_name_the_item(mp4: str) -> None:
    cases = [
        (b"not a video at all", "not a readable video", "v"),
        (encode_wav(0.2), "no video stream", "v"),
        ([], "at least one frame", "v"),
        ([np.zeros((6, 8), np.uint8)], r"\[height, width, 3\]", "v"),
        ([Image.new("RGB", (8, 6)), Image.new("RGB", (4, 4))], "same size", "v"),
        ({"frames": [Image.new("RGB", (8, 6))], "fps": 0}, "fps must be a positive number", "v"),
        ([encode_image("PNG", (4, 4)), b"junk"], r"v\[1\]: not a readable image", "v[1]"),  # the frame itself
    ]
    for source, message, param in cases:
        with pytest.raises(InvalidRequestError, match=message) as info:
            load_video(source, "v")
        assert info.value.param == param
    with pytest.raises(InvalidRequestError, match="more than 2 frames|3 frames, more than max_video_frames"):
        load_video([Image.new("RGB", (8, 6))] * 3, "v", MediaPolicy(max_video_frames=2))
    with pytest.raises(InvalidRequestError, match="64x48, more than 100 pixels"):
        load_video(mp4, "v", MediaPolicy(max_image_pixels=100))


def test_parts_placeholders_and_limits(mp4: str) -> None:
    url = data_url(open(mp4, "rb").read(), "video/mp4")
    messages = [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": url}},
        {"type": "text", "text": "what happens?"},
        {"type": "video_url", "video_url": url},
    ]}]
    media = collect_media(messages)
    assert len(media.videos) == 2 and not media.images
    assert media.messages[0]["content"][0] == {"type": "video"}
    with pytest.raises(InvalidRequestError, match="more than 1 videos") as info:
        collect_media(messages, policy=MediaPolicy(max_videos=1))
    assert info.value.param == "messages[0].content[2]"

    frames = [Image.new("RGB", (8, 6))] * 2
    media = collect_media([{"role": "user", "content": "first <video> then <image>"}], [Image.new("RGB", (4, 4))],
                          videos=[frames])
    assert [p["type"] for p in media.messages[0]["content"]] == ["text", "video", "text", "image"]
    with pytest.raises(InvalidRequestError, match="more <video> placeholders than videos"):
        collect_media([{"role": "user", "content": "<video> <video>"}], videos=[frames])


def test_policy_checks_video_fields() -> None:
    with pytest.raises(ConfigError, match="max_video_frames"):
        MediaPolicy(max_video_frames=0)
    with pytest.raises(ConfigError, match="video_fps"):
        MediaPolicy(video_fps=0)


def test_llamafactory_pipeline_picks_its_frames():
    """`video_pipeline: llamafactory` picks what LLaMA-Factory's plugins pick: floor(seconds x fps) frames spread
    from the first to the last (30 frames at 10 fps, 2 fps: 0, 5, 11, 17, 23, 29), where transformers' picking
    gives 0, 5, 10, 15, 20, 25; an odd count is padded with the last frame by the Qwen-VL families."""
    from tests.templates.lf_tokenizers import noise_video  # the goldens' videos

    data = noise_video((64, 48, 30, 10), 0)
    theirs = load_video(data, policy=MediaPolicy(video_pipeline="llamafactory"))
    ours = load_video(data, policy=MediaPolicy())
    assert theirs.indices == [0, 5, 11, 17, 23, 29] and ours.indices == [0, 5, 10, 15, 20, 25]
    odd = load_video(noise_video((64, 48, 25, 10), 0), policy=MediaPolicy(video_pipeline="llamafactory"))
    assert odd.indices == [0, 6, 12, 18, 24]
    padded = odd.padded_to(2)
    assert padded.indices == [0, 6, 12, 18, 24, 24] and len(padded.frames) == 6 and padded.fps == odd.fps
    assert (padded.frames[-1] == padded.frames[-2]).all()


def test_use_audio_in_video_reads_the_soundtrack():
    """Each video file's sound comes with its frames, sample for sample (16-bit PCM in a QuickTime file), at the
    rate asked; a video without sound, or frames alone, is refused naming the part and the fix."""
    from tests.templates.lf_tokenizers import noise_video, soundtrack

    policy = MediaPolicy(use_audio_in_video=True)
    clip = load_video(noise_video((64, 48, 30, 10), 0, sound=True), "messages[0].content[0]", policy, audio_rate=16000)
    assert clip.soundtrack.sampling_rate == 16000
    np.testing.assert_array_equal(clip.soundtrack.array, soundtrack((64, 48, 30, 10), 0))
    halved = load_video(noise_video((64, 48, 30, 10), 0, sound=True), policy=policy, audio_rate=8000)
    assert abs(halved.soundtrack.array.size - 24000) <= 32  # FFmpeg's resampler, flushed
    assert load_video(noise_video((64, 48, 30, 10), 0, sound=True)).soundtrack is None  # off: not read
    with pytest.raises(InvalidRequestError, match=r"messages\[0\].content\[0\]: the video has no audio track.*"
                                                  "turn use_audio_in_video off") as e:
        load_video(noise_video((64, 48, 30, 10), 0), "messages[0].content[0]", policy)
    assert e.value.param == "messages[0].content[0]"
    with pytest.raises(InvalidRequestError, match="frames has no soundtrack"):
        load_video([np.zeros((8, 8, 3), np.uint8)] * 2, "videos[0]", policy)
