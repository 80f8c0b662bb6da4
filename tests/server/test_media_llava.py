"""LLaVA images through `chatplex serve` with the real `openai` client: an `image_url` data-URL part gives the
same text and token counts as the Python API, and too many images is a 400 naming the part."""

from __future__ import annotations

from tests.engines.hf.multimodal_testing import (
    image_data_url, image_url_messages, noise_image, served_model_fixture, user,
)
from tests.engines.hf.test_multimodal_llava import IMAGE_TOKENS, _build

llava_server = served_model_fixture("llava", _build)


def test_image_url_part_equals_the_python_api(llava_server):
    messages = image_url_messages(noise_image((56, 40), 3))
    served, direct, text_only = llava_server.assert_equals_python_api(messages, user("Describe."))
    other = llava_server.ask(image_url_messages(noise_image((56, 40), 4)))
    assert other.choices[0].message.content != served.choices[0].message.content  # the picture matters
    assert served.usage.prompt_tokens == direct.prompt_length == text_only.prompt_length + IMAGE_TOKENS + 1


def test_too_many_images_is_400_naming_the_part(llava_server):
    part = {"type": "image_url", "image_url": {"url": image_data_url(noise_image((8, 8), 5))}}
    llava_server.assert_bad_request(user([part] * 17), "messages[0].content[16]", max_tokens=2)
