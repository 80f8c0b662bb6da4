"""Gemma 3 images through `chatplex serve` with the real `openai` client: an `image_url` data-URL part gives the
same text and token counts as the Python API, different pictures give different answers, and too many images is
a 400 naming the part while the server keeps serving."""

from __future__ import annotations

import openai
import pytest

from chatplex import ChatModel
from tests.engines.hf.test_multimodal_gemma3 import IMAGE_TOKENS, _build
from tests.engines.hf.test_multimodal_llava import _data_url, _noise
from tests.server.conftest import running_server


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("srv-gemma3")
    _build(path)
    return str(path)


@pytest.fixture(scope="module")
def gemma_server(gemma_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("gemma3") / "server.log"
    with running_server(["--model", gemma_dir, "--infer-dtype", "float32"], log) as srv:
        yield srv


def _ask(client, image):
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(image)}},
                                             {"type": "text", "text": "Describe."}]}]
    reply = client.chat.completions.create(model=client.models.list().data[0].id, messages=messages, max_tokens=8,
                                           temperature=0, extra_body={"ignore_eos": True})
    return messages, reply


def test_image_url_part_equals_the_python_api(gemma_server, gemma_dir):
    client = openai.OpenAI(base_url=f"{gemma_server.url}/v1", api_key="x", max_retries=0)
    messages, served = _ask(client, _noise((64, 48), 3))
    _, other = _ask(client, _noise((64, 48), 4))
    with ChatModel({"model_name_or_path": gemma_dir, "infer_dtype": "float32"}) as local:
        [direct] = local.chat(messages, max_new_tokens=8, temperature=0, ignore_eos=True)
        [text_only] = local.chat([{"role": "user", "content": "Describe."}], max_new_tokens=1)
    assert served.choices[0].message.content == direct.response_text
    assert other.choices[0].message.content != served.choices[0].message.content  # the picture matters
    assert served.usage.prompt_tokens == direct.prompt_length
    assert direct.prompt_length > text_only.prompt_length + IMAGE_TOKENS + 2  # soft tokens, boi, eoi, blank lines


def test_too_many_images_is_400_naming_the_part(gemma_server):
    client = openai.OpenAI(base_url=f"{gemma_server.url}/v1", api_key="x", max_retries=0)
    part = {"type": "image_url", "image_url": {"url": _data_url(_noise((8, 8), 5))}}
    model = client.models.list().data[0].id
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": [part] * 17}], max_tokens=2)
    assert err.value.body["param"] == "messages[0].content[16]"
    ok = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert ok.choices[0].finish_reason in ("stop", "length")
