"""Images through `chatplex serve` with the real `openai` client: OpenAI `image_url` parts (data URLs) reach the
Qwen2-VL model exactly as through the Python API, and bad media is a 400 naming the content part."""

from __future__ import annotations

from tests.engines.hf.multimodal_testing import CORRUPT_PNG, image_url_messages, noise_image, served_model_fixture, user
from tests.engines.hf.test_multimodal_qwen2vl import _build

vl_server = served_model_fixture("qwen2vl", _build)


def test_image_url_part_equals_the_python_api(vl_server):
    messages = image_url_messages(noise_image((56, 56), 3))
    served, direct, text_only = vl_server.assert_equals_python_api(messages, user("Describe."))
    # The image's tokens are counted: a 56x56 image is 4x4 patches, merged 2x2 into 4 tokens (+ 2 markers).
    assert served.usage.prompt_tokens == direct.prompt_length == text_only.prompt_length + 6


def test_corrupt_image_is_400_naming_the_part(vl_server):
    bad = user([{"type": "text", "text": "Look:"}, {"type": "image_url", "image_url": {"url": CORRUPT_PNG}}])
    vl_server.assert_bad_request(bad, "messages[0].content[1]")
