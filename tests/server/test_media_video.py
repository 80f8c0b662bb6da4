"""Video through `chatplex serve` with the real `openai` client: a `video_url` part (data URL of an mp4) reaches
Qwen2-VL exactly as through the Python API; a corrupt video is a 400 naming the part. Needs torchvision (run by
`make test` in .venv-media)."""

from __future__ import annotations

import base64

import openai
import pytest

from chatplex import ChatModel
from tests.engines.hf.multimodal_testing import needs_torchvision
from tests.engines.hf.test_multimodal_qwen_video import _build
from tests.media.conftest import encode_mp4
from tests.server.conftest import running_server

pytestmark = [needs_torchvision, pytest.mark.video]


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def vl_dir(tmp_path_factory, request):
    path = tmp_path_factory.mktemp(f"srv-{request.param}-video")
    _build(path, request.param)
    return str(path)


@pytest.fixture(scope="module")
def vl_server(vl_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("vlv") / "server.log"
    with running_server(["--model", vl_dir, "--infer-dtype", "float32"], log) as srv:
        yield srv


def test_video_url_part_equals_the_python_api(vl_server, vl_dir):
    mp4 = encode_mp4([(i * 16, 200 - i * 10, 90) for i in range(16)], fps=8, size=(96, 64))
    url = "data:video/mp4;base64," + base64.b64encode(mp4).decode()
    messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                             {"type": "text", "text": "What happens?"}]}]
    client = openai.OpenAI(base_url=f"{vl_server.url}/v1", api_key="x", max_retries=0)
    model = client.models.list().data[0].id
    served = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0,
                                            extra_body={"ignore_eos": True})
    with ChatModel({"model_name_or_path": vl_dir, "infer_dtype": "float32"}) as local:
        [direct] = local.chat(messages, max_new_tokens=8, temperature=0, ignore_eos=True)
        [text_only] = local.chat([{"role": "user", "content": "What happens?"}], max_new_tokens=1)
    assert served.choices[0].message.content == direct.response_text
    # 4 frames sampled at 2 fps, resized to 56x84 (4x6 patches): 2 temporal patches x 6 merged tokens, + 2 markers
    assert served.usage.prompt_tokens == direct.prompt_length == text_only.prompt_length + 14

    bad = [{"role": "user", "content": [{"type": "text", "text": "Look:"},
                                        {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}]}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model, messages=bad, max_tokens=4)
    assert err.value.body["param"] == "messages[0].content[1]"
    assert "not a readable video" in err.value.body["message"]
    ok = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert ok.choices[0].finish_reason in ("stop", "length")
