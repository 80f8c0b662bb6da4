"""Qwen2.5-Omni's thinker through `chatplex serve` with the real `openai` client: `image_url`, `video_url` and
OpenAI's own `input_audio` parts in one message give what the Python API gives. Needs torchvision (run by
`make test` in .venv-media)."""

from __future__ import annotations

import base64
import io

import openai
import pytest

from chatplex import ChatModel
from tests.engines.hf.test_multimodal_qwen2audio import _clip, _wav
from tests.engines.hf.multimodal_testing import needs_torchvision, noise_image
from tests.engines.hf.test_multimodal_qwen_omni import _build
from tests.media.conftest import encode_mp4
from tests.server.conftest import running_server

pytestmark = [needs_torchvision, pytest.mark.video]


@pytest.fixture(scope="module")
def omni_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("srv-omni")
    _build(path)
    return str(path)


@pytest.fixture(scope="module")
def omni_server(omni_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("omni") / "server.log"
    with running_server(["--model", omni_dir, "--infer-dtype", "float32"], log) as srv:
        yield srv


def test_image_video_and_input_audio_parts_equal_the_python_api(omni_server, omni_dir):
    png = io.BytesIO()
    noise_image((56, 84), 9).save(png, format="PNG")
    mp4 = encode_mp4([(200, i * 15, 40) for i in range(16)], fps=8, size=(96, 64))
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()}},
        {"type": "video_url", "video_url": {"url": "data:video/mp4;base64," + base64.b64encode(mp4).decode()}},
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(_wav(_clip(0.7, 4))).decode(), "format": "wav"}},
        {"type": "text", "text": "What do you see and hear?"},
    ]}]
    client = openai.OpenAI(base_url=f"{omni_server.url}/v1", api_key="x", max_retries=0)
    model = client.models.list().data[0].id
    served = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0,
                                            extra_body={"ignore_eos": True})
    with ChatModel({"model_name_or_path": omni_dir, "infer_dtype": "float32"}) as local:
        [direct] = local.chat(messages, max_new_tokens=8, temperature=0, ignore_eos=True)
        parts = messages[0]["content"]
        [without_audio] = local.chat([{"role": "user", "content": parts[:2] + parts[3:]}], max_new_tokens=1)
    assert served.choices[0].message.content == direct.response_text
    # 0.7 s of audio: 70 mel frames -> 35 after the stride-2 conv -> 17 after pooling, + the 2 audio markers
    assert served.usage.prompt_tokens == direct.prompt_length == without_audio.prompt_length + 19

    long_audio = base64.b64encode(_wav(_clip(31.0, 1))).decode()
    bad = [{"role": "user", "content": [{"type": "text", "text": "Listen:"},
                                        {"type": "input_audio", "input_audio": {"data": long_audio, "format": "wav"}}]}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model, messages=bad, max_tokens=4)
    assert "at most 30 s" in err.value.body["message"]
    ok = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert ok.choices[0].finish_reason in ("stop", "length")
