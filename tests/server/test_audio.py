"""Audio through `chatplex serve` with the real `openai` client: an OpenAI `input_audio` part (base64 WAV)
reaches the Qwen2-Audio model exactly as through the Python API, and a corrupt clip is a 400 naming the part."""

from __future__ import annotations

from tests.engines.hf.multimodal_testing import input_audio_part, served_model_fixture, user
from tests.engines.hf.test_multimodal_qwen2audio import _build, _clip, _wav

audio_server = served_model_fixture("qwen2audio", _build)


def test_input_audio_part_equals_the_python_api(audio_server):
    messages = user([input_audio_part(_wav(_clip(1.0, 3))), {"type": "text", "text": "Transcribe."}])
    served, direct, text_only = audio_server.assert_equals_python_api(messages, user("Transcribe."))
    # 1 s = 100 mel frames -> 50 after the stride-2 conv -> 25 after pooling (+ the two audio markers)
    assert served.usage.prompt_tokens == direct.prompt_length == text_only.prompt_length + 27


def test_corrupt_audio_is_400_naming_the_part(audio_server):
    bad = user([{"type": "text", "text": "Listen:"}, input_audio_part(b"RIFF....WAVEnope")])
    audio_server.assert_bad_request(bad, "messages[0].content[1]")
