"""Qwen3-VL images through `chatplex serve` with the real `openai` client: an `image_url` data-URL part gives the
same text and token counts as the Python API (DeepStack included), and a corrupt image is a 400 naming the part."""

from __future__ import annotations

from tests.engines.hf.multimodal_testing import image_url_messages, noise_image, served_model_fixture, user
from tests.engines.hf.test_multimodal_qwen3vl import _build

qwen3vl_server = served_model_fixture("qwen3vl", _build)


def test_image_url_part_equals_the_python_api(qwen3vl_server):
    messages = image_url_messages(noise_image((64, 64), 3))
    served, direct, text_only = qwen3vl_server.assert_equals_python_api(messages, user("Describe."))
    other = qwen3vl_server.ask(image_url_messages(noise_image((64, 64), 4)))
    assert other.choices[0].message.content != served.choices[0].message.content  # the picture matters
    # 64x64 at patch 16: 4x4 patches, merged 2x2 into 4 tokens, + vision start and end
    assert served.usage.prompt_tokens == direct.prompt_length == text_only.prompt_length + 6


def test_corrupt_image_is_400_naming_the_part(qwen3vl_server):
    bad = user([{"type": "text", "text": "Look:"}, {"type": "image_url", "image_url": "data:image/png;base64,AAAA"}])
    body = qwen3vl_server.assert_bad_request(bad, "messages[0].content[1]")
    assert "not a readable image" in body["message"]
