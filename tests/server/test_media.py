"""Images through `chatplex serve` with the real `openai` client: OpenAI `image_url` parts (data URLs) reach the
Qwen2-VL model exactly as through the Python API, and bad media is a 400 naming the content part."""

from __future__ import annotations

import openai
import pytest

from chatplex import ChatModel
from tests.engines.hf.multimodal_testing import noise_image
from tests.engines.hf.test_multimodal_qwen2vl import _build, _data_url
from tests.server.conftest import running_server


@pytest.fixture(scope="module")
def vl_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("srv-qwen2vl")
    _build(path)
    return str(path)


@pytest.fixture(scope="module")
def vl_server(vl_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("vl") / "server.log"
    with running_server(["--model", vl_dir, "--infer-dtype", "float32"], log) as srv:
        yield srv


def test_image_url_part_equals_the_python_api(vl_server, vl_dir):
    url = _data_url(noise_image((56, 56), 3))
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": "Describe."}]}]
    client = openai.OpenAI(base_url=f"{vl_server.url}/v1", api_key="x", max_retries=0)
    served = client.chat.completions.create(model=client.models.list().data[0].id, messages=messages, max_tokens=8,
                                            temperature=0, extra_body={"ignore_eos": True})
    with ChatModel({"model_name_or_path": vl_dir, "infer_dtype": "float32"}) as local:
        [direct] = local.chat(messages, max_new_tokens=8, temperature=0, ignore_eos=True)
        [text_only] = local.chat([{"role": "user", "content": "Describe."}], max_new_tokens=1)
    assert served.choices[0].message.content == direct.response_text
    # The image's tokens are counted: a 56x56 image is 4x4 patches, merged 2x2 into 4 tokens (+ 2 markers).
    assert served.usage.prompt_tokens == direct.prompt_length == text_only.prompt_length + 6


def test_corrupt_image_is_400_naming_the_part(vl_server):
    client = openai.OpenAI(base_url=f"{vl_server.url}/v1", api_key="x", max_retries=0)
    bad = [{"role": "user", "content": [{"type": "text", "text": "Look:"},
                                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=client.models.list().data[0].id, messages=bad, max_tokens=4)
    assert err.value.body["param"] == "messages[0].content[1]"
    ok = client.chat.completions.create(model=client.models.list().data[0].id,
                                        messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert ok.choices[0].finish_reason in ("stop", "length")
