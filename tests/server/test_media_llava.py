"""LLaVA images through `chatplex serve` with the real `openai` client: an `image_url` data-URL part gives the
same text and token counts as the Python API, and too many images is a 400 naming the part."""

from __future__ import annotations

import openai
import pytest

from chatplex import ChatModel
from tests.engines.hf.test_multimodal_llava import IMAGE_TOKENS, _build, _data_url, _noise
from tests.server.conftest import running_server


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("srv-llava")
    _build(path)
    return str(path)


@pytest.fixture(scope="module")
def llava_server(llava_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("llava") / "server.log"
    with running_server(["--model", llava_dir, "--infer-dtype", "float32"], log) as srv:
        yield srv


def test_image_url_part_equals_the_python_api(llava_server, llava_dir):
    client = openai.OpenAI(base_url=f"{llava_server.url}/v1", api_key="x", max_retries=0)
    model = client.models.list().data[0].id

    def ask(image):
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(image)}},
                                                 {"type": "text", "text": "Describe."}]}]
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0,
                                               extra_body={"ignore_eos": True})
        return messages, reply

    messages, served = ask(_noise((56, 40), 3))
    _, other = ask(_noise((56, 40), 4))
    with ChatModel({"model_name_or_path": llava_dir, "infer_dtype": "float32"}) as local:
        [direct] = local.chat(messages, max_new_tokens=8, temperature=0, ignore_eos=True)
        [text_only] = local.chat([{"role": "user", "content": "Describe."}], max_new_tokens=1)
    assert served.choices[0].message.content == direct.response_text
    assert other.choices[0].message.content != served.choices[0].message.content  # the picture matters
    assert served.usage.prompt_tokens == direct.prompt_length == text_only.prompt_length + IMAGE_TOKENS + 1


def test_too_many_images_is_400_naming_the_part(llava_server):
    client = openai.OpenAI(base_url=f"{llava_server.url}/v1", api_key="x", max_retries=0)
    part = {"type": "image_url", "image_url": {"url": _data_url(_noise((8, 8), 5))}}
    model = client.models.list().data[0].id
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": [part] * 17}], max_tokens=2)
    assert err.value.body["param"] == "messages[0].content[16]"
    ok = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert ok.choices[0].finish_reason in ("stop", "length")
