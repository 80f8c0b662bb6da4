"""Audio through `chatplex serve` with the real `openai` client: an OpenAI `input_audio` part (base64 WAV)
reaches the Qwen2-Audio model exactly as through the Python API, and a corrupt clip is a 400 naming the part."""

from __future__ import annotations

import base64

import openai
import pytest

from chatplex import ChatModel
from tests.engines.hf.test_multimodal_qwen2audio import _build, _clip, _wav
from tests.server.conftest import running_server


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("srv-qwen2audio")
    _build(path)
    return str(path)


@pytest.fixture(scope="module")
def audio_server(audio_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("au") / "server.log"
    with running_server(["--model", audio_dir, "--infer-dtype", "float32"], log) as srv:
        yield srv


def test_input_audio_part_equals_the_python_api(audio_server, audio_dir):
    data = base64.b64encode(_wav(_clip(1.0, 3))).decode()
    messages = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": data, "format": "wav"}},
                                             {"type": "text", "text": "Transcribe."}]}]
    client = openai.OpenAI(base_url=f"{audio_server.url}/v1", api_key="x", max_retries=0)
    served = client.chat.completions.create(model=client.models.list().data[0].id, messages=messages, max_tokens=8,
                                            temperature=0, extra_body={"ignore_eos": True})
    with ChatModel({"model_name_or_path": audio_dir, "infer_dtype": "float32"}) as local:
        [direct] = local.chat(messages, max_new_tokens=8, temperature=0, ignore_eos=True)
        [text_only] = local.chat([{"role": "user", "content": "Transcribe."}], max_new_tokens=1)
    assert served.choices[0].message.content == direct.response_text
    # 1 s = 100 mel frames -> 50 after the stride-2 conv -> 25 after pooling (+ the two audio markers)
    assert served.usage.prompt_tokens == direct.prompt_length == text_only.prompt_length + 27


def test_corrupt_audio_is_400_naming_the_part(audio_server):
    client = openai.OpenAI(base_url=f"{audio_server.url}/v1", api_key="x", max_retries=0)
    corrupt = base64.b64encode(b"RIFF....WAVEnope").decode()
    bad = [{"role": "user", "content": [{"type": "text", "text": "Listen:"},
                                        {"type": "input_audio", "input_audio": {"data": corrupt, "format": "wav"}}]}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=client.models.list().data[0].id, messages=bad, max_tokens=4)
    assert err.value.body["param"] == "messages[0].content[1]"
    ok = client.chat.completions.create(model=client.models.list().data[0].id,
                                        messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert ok.choices[0].finish_reason in ("stop", "length")
