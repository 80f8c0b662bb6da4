"""Video through `chatplex serve` with the real `openai` client: a `video_url` part (data URL of an mp4) reaches
Qwen2-VL, Qwen2.5-VL and Qwen3-VL exactly as through the Python API; a corrupt video is a 400 naming the part.
Needs torchvision (run by `make test` in .venv-media)."""

from __future__ import annotations

import pytest

from tests.engines.hf.multimodal_testing import color_clip, data_url, needs_torchvision, served_model_fixture, user
from tests.engines.hf.test_multimodal_qwen3vl_video import build_with_video
from tests.engines.hf.test_multimodal_qwen_video import FAMILIES, _build
from tests.media.conftest import encode_mp4

pytestmark = [needs_torchvision, pytest.mark.video]

vl_server = served_model_fixture("video", _build, params=FAMILIES)
qwen3vl_server = served_model_fixture("qwen3vl-video", build_with_video)


def test_video_url_part_equals_the_python_api(vl_server):
    mp4 = encode_mp4([(i * 16, 200 - i * 10, 90) for i in range(16)], fps=8, size=(96, 64))
    messages = user([{"type": "video_url", "video_url": {"url": data_url("video/mp4", mp4)}},
                     {"type": "text", "text": "What happens?"}])
    served, direct, text_only = vl_server.assert_equals_python_api(messages, user("What happens?"))
    # 4 frames sampled at 2 fps, resized to 56x84 (4x6 patches): 2 temporal patches x 6 merged tokens, + 2 markers
    assert served.usage.prompt_tokens == direct.prompt_length == text_only.prompt_length + 14

    corrupt = {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}
    bad = user([{"type": "text", "text": "Look:"}, corrupt])
    assert "not a readable video" in vl_server.assert_bad_request(bad, "messages[0].content[1]")["message"]


def test_qwen3vl_video_url_part_equals_the_python_api(qwen3vl_server):
    """Qwen3-VL's per-frame timestamps and DeepStack rows through the server, next to an image."""
    def video(seed: int) -> list[dict]:
        return user([{"type": "video_url", "video_url": {"url": data_url("video/mp4", color_clip(seed))}},
                     {"type": "text", "text": "What happens?"}])

    served, direct, text_only = qwen3vl_server.assert_equals_python_api(video(0), user("What happens?"))
    assert served.usage.prompt_tokens > text_only.prompt_length + 4  # tokens per frame group plus the timestamps
    assert qwen3vl_server.ask(video(5)).choices[0].message.content != served.choices[0].message.content
    bad = user([{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}])
    assert "not a readable video" in qwen3vl_server.assert_bad_request(bad, "messages[0].content[0]")["message"]
