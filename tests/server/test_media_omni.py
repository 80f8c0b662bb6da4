"""Qwen2.5-Omni's thinker through `chatplex serve` with the real `openai` client: `image_url`, `video_url` and
OpenAI's own `input_audio` parts in one message give what the Python API gives. Needs torchvision (run by
`make test` in .venv-media)."""

from __future__ import annotations

import pytest

from tests.engines.hf.multimodal_testing import (
    data_url, image_data_url, input_audio_part, needs_torchvision, noise_image, served_model_fixture, user,
)
from tests.engines.hf.test_multimodal_qwen2audio import _clip, _wav
from tests.engines.hf.test_multimodal_qwen_omni import _build
from tests.media.conftest import encode_mp4

pytestmark = [needs_torchvision, pytest.mark.video]

omni_server = served_model_fixture("omni", _build)


def test_image_video_and_input_audio_parts_equal_the_python_api(omni_server):
    mp4 = encode_mp4([(200, i * 15, 40) for i in range(16)], fps=8, size=(96, 64))
    parts = [
        {"type": "image_url", "image_url": {"url": image_data_url(noise_image((56, 84), 9))}},
        {"type": "video_url", "video_url": {"url": data_url("video/mp4", mp4)}},
        input_audio_part(_wav(_clip(0.7, 4))),
        {"type": "text", "text": "What do you see and hear?"},
    ]
    served, direct, without_audio = omni_server.assert_equals_python_api(user(parts), user(parts[:2] + parts[3:]))
    # 0.7 s of audio: 70 mel frames -> 35 after the stride-2 conv -> 17 after pooling, + the 2 audio markers
    assert served.usage.prompt_tokens == direct.prompt_length == without_audio.prompt_length + 19

    bad = user([{"type": "text", "text": "Listen:"}, input_audio_part(_wav(_clip(31.0, 1)))])
    assert "at most 30 s" in omni_server.assert_bad_request(bad, "messages[0].content[1]")["message"]
