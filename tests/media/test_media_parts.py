"""A request's media from OpenAI content parts or the images=/audios= arguments, with limits and part indexes."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from tests.media.conftest import data_url, encode_image, encode_wav
from PIL import Image

from chatplex.errors import InvalidRequestError
from chatplex.media import MediaPolicy, collect_media

PNG_URL = data_url(encode_image("PNG", (4, 4)), "image/png")
WEBP_URL = data_url(encode_image("WEBP", (6, 2)), "image/webp")


def test_openai_parts_object_and_string_forms() -> None:
    wav_b64 = base64.b64encode(encode_wav(0.1, 16000)).decode()
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": PNG_URL, "detail": "low"}},
            {"type": "image_url", "image_url": WEBP_URL},
            {"type": "input_audio", "input_audio": {"data": wav_b64, "format": "wav"}},
            {"type": "audio_url", "audio_url": {"url": data_url(encode_wav(0.1, 8000), "audio/wav")}},
        ]},
    ]
    media = collect_media(messages, audio_rate=16000)
    assert [im.size for im in media.images] == [(4, 4), (6, 2)]
    assert [c.array.size for c in media.audios] == [1600, 1600] and media.audios[1].sampling_rate == 16000
    assert media.messages[1]["content"] == [
        {"type": "text", "text": "look"}, {"type": "image"}, {"type": "image"}, {"type": "audio"}, {"type": "audio"}
    ]
    assert media.messages[0] == messages[0] and bool(media)
    assert not collect_media([{"role": "user", "content": "hi"}])


def test_argument_media_with_and_without_placeholders(tmp_path) -> None:
    path = tmp_path / "x.jpg"
    path.write_bytes(encode_image("JPEG", (3, 5)))
    img = Image.new("RGB", (7, 7))
    media = collect_media([{"role": "user", "content": "a <image> then <image> and <audio>"}],
                          images=[str(path), img], audios=[(np.zeros(800), 8000)], audio_rate=16000)
    assert [im.size for im in media.images] == [(3, 5), (7, 7)]
    assert media.audios[0].array.size == 1600
    assert media.messages[0]["content"] == [
        {"type": "text", "text": "a "}, {"type": "image"}, {"type": "text", "text": " then "}, {"type": "image"},
        {"type": "text", "text": " and "}, {"type": "audio"},
    ]
    plain = collect_media([{"role": "system", "content": "s"}, {"role": "user", "content": "what?"}], images=[img])
    assert plain.messages[1]["content"] == [{"type": "image"}, {"type": "text", "text": "what?"}]
    # Text parts (OpenAI's list form) with images= and no placeholder: the image goes before the parts.
    listed = collect_media([{"role": "user", "content": [{"type": "text", "text": "what?"}]}], images=[img])
    assert listed.messages[0]["content"] == [{"type": "image"}, {"type": "text", "text": "what?"}]


def test_placeholder_count_mismatch() -> None:
    img = Image.new("RGB", (2, 2))
    with pytest.raises(InvalidRequestError, match="more <image> placeholders than images") as info:
        collect_media([{"role": "user", "content": "<image><image>"}], images=[img])
    assert info.value.param == "images"
    with pytest.raises(InvalidRequestError, match="more images than <image> placeholders") as info:
        collect_media([{"role": "user", "content": "<image>"}], images=[img, img])
    assert info.value.param == "images[1]"


def test_parts_and_arguments_together_are_refused() -> None:
    msg = [{"role": "user", "content": [{"type": "image_url", "image_url": PNG_URL}]}]
    with pytest.raises(InvalidRequestError, match="not both"):
        collect_media(msg, images=[Image.new("RGB", (2, 2))])


def test_bad_parts_name_their_index() -> None:
    bad = data_url(b"\x89PNG broken", "image/png")
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": bad}}]},
    ]
    with pytest.raises(InvalidRequestError, match="not a readable image") as info:
        collect_media(messages)
    assert info.value.param == "messages[2].content[1]"
    for part, param in (
        ({"type": "image_url", "image_url": {}}, "messages[0].content[0].image_url"),
        ({"type": "image_url"}, "messages[0].content[0].image_url"),
        ({"type": "input_audio", "input_audio": {"format": "wav"}}, "messages[0].content[0].input_audio.data"),
    ):
        with pytest.raises(InvalidRequestError) as info:
            collect_media([{"role": "user", "content": [part]}])
        assert info.value.param == param
    with pytest.raises(InvalidRequestError, match="not allowed") as info:  # a bare path from a request
        collect_media([{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "x"}}]}])
    assert info.value.param == "messages[0].content[0]"


def test_count_limits() -> None:
    parts = [{"type": "image_url", "image_url": PNG_URL}] * 3
    with pytest.raises(InvalidRequestError, match="more than 2 images") as info:
        collect_media([{"role": "user", "content": parts}], policy=MediaPolicy(max_images=2))
    assert info.value.param == "messages[0].content[2]"
    clips = [(np.zeros(10), 16000)] * 2
    with pytest.raises(InvalidRequestError, match="more than 1 audios") as info:
        collect_media([{"role": "user", "content": "hi"}], audios=clips, policy=MediaPolicy(max_audios=1))
    assert info.value.param == "audios[1]"


def test_policy_validates_its_fields() -> None:
    from chatplex.errors import ConfigError

    with pytest.raises(ConfigError, match="max_images"):
        MediaPolicy(max_images=-1)
    with pytest.raises(ConfigError, match="fetch_timeout_s"):
        MediaPolicy(fetch_timeout_s=0)
