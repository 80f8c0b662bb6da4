"""What the multimodal engine and server tests share: tiny random models made to react to their inputs (ChatML
templates, tokenizers, build folders), greedy tokens from transformers' `generate` (the reference) and from
chatplex alone or in a concurrent batch, media as data URLs, a counter for tower calls, the checks that bad media
is refused naming its part while the engine keeps serving, a `chatplex serve` fixture over a tiny model, and the
torchvision gate."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import torch
from PIL import Image

from chatplex import ChatModel
from chatplex.errors import InvalidRequestError

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
needs_torchvision = pytest.mark.skipif(
    not HAS_TORCHVISION, reason="needs torchvision for transformers' video processors: run by `make test` in .venv-media"
)
CORRUPT_PNG = "data:image/png;base64,AAAA"


# --- tiny models ---------------------------------------------------------------------------------------------------

def qwen2vl_config(vocab_size: int, ids: list[int], eos: int) -> Any:
    """A tiny Qwen2-VL's config: `ids` are the vision start, vision end, image pad and video pad tokens."""
    from transformers import Qwen2VLConfig

    return Qwen2VLConfig(
        text_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=vocab_size, max_position_embeddings=4096,
                         eos_token_id=eos, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        vision_start_token_id=ids[0], vision_end_token_id=ids[1], image_token_id=ids[2], video_token_id=ids[3],
    )


def llava_config(vocab_size: int, image_token_id: int, eos: int, bos: int, pinpoints: list | None = None) -> Any:
    """A tiny LLaVA's config (CLIP tower on 28x28 images, 7-pixel patches); LLaVA-NeXT's with `pinpoints`."""
    import transformers

    cls = transformers.LlavaNextConfig if pinpoints else transformers.LlavaConfig
    return cls(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=28, patch_size=7),
        text_config=dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, vocab_size=vocab_size,
                         max_position_embeddings=2048, eos_token_id=eos, bos_token_id=bos),
        image_token_id=image_token_id, vision_feature_layer=-2, vision_feature_select_strategy="default",
        **({"image_grid_pinpoints": pinpoints} if pinpoints else {}),
    )


def qwen3vl_config(vocab_size: int, ids: list[int], eos: int, bos: int | None = None, layers: int = 2) -> Any:
    """A tiny Qwen3-VL's config: `ids` are the vision start, vision end, image pad and video pad tokens."""
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig(
        text_config=dict(hidden_size=64, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, intermediate_size=128, vocab_size=vocab_size, max_position_embeddings=2048,
                         eos_token_id=eos, bos_token_id=bos,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                                          "mrope_interleaved": True}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64, num_position_embeddings=64,
                           deepstack_visual_indexes=[0, 1]),
        vision_start_token_id=ids[0], vision_end_token_id=ids[1], image_token_id=ids[2], video_token_id=ids[3],
    )


def omni_thinker_config(vocab_size: int, ids: dict[str, int], eos: int, bos: int | None = None) -> Any:
    """A tiny Qwen2.5-Omni thinker's config: `ids` by the names Qwen2.5-Omni's tokenizer gives its media tokens."""
    from transformers import Qwen2_5OmniThinkerConfig

    return Qwen2_5OmniThinkerConfig(
        text_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=vocab_size, max_position_embeddings=4096,
                         eos_token_id=eos, bos_token_id=bos,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1]),
        audio_config=dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                          d_model=32, output_dim=64, n_window=50),
        audio_token_index=ids["audio_token"], image_token_index=ids["image_token"],
        video_token_index=ids["video_token"], audio_start_token_id=ids["audio_bos_token"],
        audio_end_token_id=ids["audio_eos_token"], vision_start_token_id=ids["vision_bos_token"],
    )


def chatml_template(**placeholders: str) -> str:
    """ChatML that writes `placeholders[kind]` for each content part of that type (image, video, audio) and the
    text of text parts (real checkpoints ship their own template)."""
    branches = "{% el".join(f"if p.type == '{kind}' %}}{text}" for kind, text in placeholders.items())
    return (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content is string %}{{ m.content }}{% else %}"
        "{% for p in m.content %}{% " + branches + "{% elif p.type == 'text' %}{{ p.text }}{% endif %}{% endfor %}"
        "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def tiny_tokenizer(template: str, specials: list[str] = (), **kwargs: Any) -> Any:
    """SmolLM2's tokenizer with the model family's special tokens added and `template` as its chat template."""
    from transformers import AutoTokenizer

    from chatplex.models.embedded import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(embedded_model_dir(), **kwargs)
    if specials:
        tok.add_special_tokens({"additional_special_tokens": list(specials)})
    tok.chat_template = template
    return tok


def save_all(path: Path | str, *parts: Any) -> None:
    """`save_pretrained` each of a model, its tokenizer and its processors into one folder."""
    for part in parts:
        part.save_pretrained(path)


def build_in(tmp_path_factory: Any, name: str, build: Callable[..., None], *args: Any) -> Path:
    """A fresh temporary folder called after `name` with `build(folder, *args)` written into it."""
    path = tmp_path_factory.mktemp(name)
    build(path, *args)
    return path


def tiny_chat_model(path: Path | str, **config: Any) -> ChatModel:
    """chatplex over a built folder in float32 (the reference runs in float32 too), with engine `config` on top."""
    return ChatModel({"model_name_or_path": str(path), "infer_dtype": "float32", **config})


def sharpen_attention(language_model: Any, factor: float = 8.0) -> None:
    """Scale the decoder's query and key projections: random weights otherwise attend almost uniformly, and then
    positions (and so position mistakes) barely change the tokens."""
    with torch.no_grad():
        for layer in language_model.layers:
            layer.self_attn.q_proj.weight.mul_(factor)
            layer.self_attn.k_proj.weight.mul_(factor)


def expand_image_pads(text: str, grid_thw: torch.Tensor, merge: int = 4) -> str:
    """Each `<|image_pad|>` in turn repeated once per merged patch of its image (grid t*h*w / merge), as the Qwen
    processors do; the reference uses this where the full processor needs torchvision."""
    for n in (grid_thw.prod(-1) // merge).tolist():
        text = text.replace("<|image_pad|>", "<|IMG|>" * n, 1)
    return text.replace("<|IMG|>", "<|image_pad|>")


# --- media and messages --------------------------------------------------------------------------------------------

def noise_image(size: tuple[int, int], seed: int) -> Image.Image:
    """An RGB image of uniform noise, `size` = (width, height): different seeds give images the towers tell apart."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def color_clip(seed: int, frames: int = 16, fps: int = 8, size: tuple[int, int] = (96, 64)) -> bytes:
    """An mp4 of `frames` flat frames in random colours: different seeds give clips the towers tell apart."""
    from tests.media.conftest import encode_mp4

    rng = np.random.default_rng(seed)
    return encode_mp4([tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(frames)], fps, size)


def data_url(mime: str, data: bytes) -> str:
    """`data:` URL of raw bytes, as OpenAI clients send media."""
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_data_url(image: Image.Image, fmt: str = "PNG") -> str:
    """`image` encoded as `fmt` in a `data:` URL."""
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return data_url(f"image/{fmt.lower()}", buf.getvalue())


def input_audio_part(wav: bytes) -> dict:
    """OpenAI's own `input_audio` content part: base64 WAV bytes."""
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}


def user(content: Any) -> list[dict]:
    """A conversation of one user message."""
    return [{"role": "user", "content": content}]


def image_url_messages(image: Image.Image, text: str = "Describe.") -> list[dict]:
    """One user message as OpenAI clients write it: an `image_url` part (a data URL), then `text`."""
    return user([{"type": "image_url", "image_url": {"url": image_data_url(image)}}, {"type": "text", "text": text}])


def image_messages(text: str = "Describe.") -> list[dict]:
    """One user message: an image part, then `text` (the reference's form of `images=` plus a text prompt)."""
    return user([{"type": "image"}, {"type": "text", "text": text}])


# --- tokens --------------------------------------------------------------------------------------------------------

def generate_tokens(model: Any, inputs: dict[str, Any], max_tokens: int) -> list[int]:
    """The reference: transformers' greedy `generate` on processor outputs; the new token ids."""
    with torch.inference_mode():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_tokens)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def video_reference(model: Any, processor: Any, max_tokens: int) -> Callable[..., list[int]]:
    """`run(messages, images=(), videos=())`: greedy tokens from transformers with the full processor (its chat
    template, its video loader at 2 fps with the frames' metadata, its placeholder expansion) and `generate`."""
    from transformers.video_utils import load_video

    def run(messages: list[dict], images: Any = (), videos: Any = ()) -> list[int]:
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        kwargs = {}
        if videos:
            loaded = [load_video(v, backend="pyav", fps=2) for v in videos]
            kwargs = dict(videos=[v for v, _ in loaded], video_metadata=[m for _, m in loaded], do_sample_frames=False)
        inputs = processor(text=[text], images=list(images) or None, return_tensors="pt", **kwargs)
        return generate_tokens(model, inputs, max_tokens)

    return run


def engine_tokens(chat_model: Any, messages: list[dict], max_tokens: int, **kwargs: Any) -> list[int]:
    """chatplex's greedy tokens for one request, EOS ignored so that every run has `max_tokens` to compare."""
    [response] = chat_model.chat(messages, do_sample=False, max_tokens=max_tokens, ignore_eos=True, **kwargs)
    return response.token_ids


async def concurrent_tokens(chat_model: Any, requests: list[tuple[list[dict], dict]],
                            max_tokens: int) -> list[list[int]]:
    """chatplex's greedy tokens (EOS ignored) for (messages, kwargs) requests sent all at once, in request order."""

    async def one(messages: list[dict], kwargs: dict) -> list[int]:
        [r] = await chat_model.achat(messages, do_sample=False, max_tokens=max_tokens, ignore_eos=True, **kwargs)
        return r.token_ids

    return await asyncio.gather(*(one(m, kw) for m, kw in requests))


async def batched_tokens(chat_model: Any, requests: list[tuple[list[dict], dict]], max_tokens: int) -> list[list[int]]:
    """`concurrent_tokens`, checking that the requests shared steps: alone, each needs `max_tokens` decode steps at
    least, so fewer steps in all on this run means they were batched (a count of this run's steps, not a
    high-water mark another test may have set)."""
    before = chat_model.stats().steps
    tokens = await concurrent_tokens(chat_model, requests, max_tokens)
    steps = chat_model.stats().steps - before
    assert steps < len(requests) * max_tokens, (steps, len(requests), max_tokens)
    return tokens


@contextlib.contextmanager
def counting_calls(obj: Any, method: str) -> Iterator[list[int]]:
    """Count the calls of `obj.method` inside the block: the list gets one entry per call (the tower ran once:
    `calls == [1]`). The instance attribute that wraps the method is removed on exit."""
    calls: list[int] = []
    original = getattr(obj, method)
    setattr(obj, method, lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
    try:
        yield calls
    finally:
        delattr(obj, method)


async def assert_mixed_image_batch_equals_alone(chat_model: Any, reference: Callable, max_tokens: int) -> None:
    """Text requests and image requests of different sizes sent at once get the tokens `reference(messages,
    images)` gives each alone, and the engine really batched them."""
    cases = [
        ("Hi, a text request.", None),
        ("First image", [noise_image((80, 80), 6)]),
        ("Another", [noise_image((50, 110), 7)]),
        ("Text again, longer this time.", None),
    ]
    alone = [reference(image_messages(text) if images else user(text), images or []) for text, images in cases]
    requests = [(user(text), {"images": images}) for text, images in cases]
    assert await batched_tokens(chat_model, requests, max_tokens) == alone


def assert_image_equals_generate(chat_model: Any, reference: Callable, image: Image.Image, other: Image.Image,
                                 max_tokens: int) -> list[int]:
    """chatplex's tokens for `images=[image]` equal the reference's (all `max_tokens` of them), and `other` changes
    the reference's answer (the vision path is live); the reference's tokens."""
    expected = reference(image_messages("What is this?"), [image])
    assert len(expected) == max_tokens
    assert engine_tokens(chat_model, user("What is this?"), max_tokens, images=[image]) == expected
    assert reference(image_messages("What is this?"), [other]) != expected
    return expected


def assert_prefix_cache_keyed_by_image(chat_model: Any, reference: Callable, max_tokens: int,
                                       size: tuple[int, int] = (112, 112)) -> None:
    """The prefix cache keys blocks by the request's media: the same prompt beside another image finds nothing (its
    placeholders are the same token ids) and gives that image's answer; the first image again finds its blocks."""
    a, b = noise_image(size, 31), noise_image(size, 32)
    lead = "Look closely at this picture, then describe it in detail. " * 3
    ref_messages = user([{"type": "text", "text": lead}, {"type": "image"}, {"type": "text", "text": "What is this?"}])
    for image, finds in ((a, False), (b, False), (a, True)):
        before = chat_model.stats().prefix_cache_hits
        got = engine_tokens(chat_model, user(lead + "<image>What is this?"), max_tokens, images=[image])
        assert got == reference(ref_messages, [image])
        assert (chat_model.stats().prefix_cache_hits > before) == finds


# --- refusals ------------------------------------------------------------------------------------------------------

def assert_refused(chat_model: Any, messages: list[dict], match: str, param: str | None,
                   error: type[Exception] = InvalidRequestError, **kwargs: Any) -> None:
    """The request fails with `error` whose message matches `match` and, unless None, names `param`."""
    with pytest.raises(error, match=match) as info:
        chat_model.chat(messages, max_tokens=2, **kwargs)
    if param is not None:
        assert info.value.param == param


def assert_still_serving(chat_model: Any, max_tokens: int) -> None:
    """After refusals, the engine still answers a plain request in full."""
    assert len(engine_tokens(chat_model, user("still here"), max_tokens)) == max_tokens


# --- `chatplex serve` over a tiny model ----------------------------------------------------------------------------

@dataclass
class ServedModel:
    """A running `chatplex serve` over a built folder, and the `openai` client that talks to it."""

    model_dir: str
    client: openai.OpenAI
    model: str

    def ask(self, messages: list[dict]) -> Any:
        """The served greedy completion of 8 tokens, EOS ignored."""
        return self.client.chat.completions.create(model=self.model, messages=messages, max_tokens=8, temperature=0,
                                                   extra_body={"ignore_eos": True})

    def assert_equals_python_api(self, messages: list[dict], baseline: list[dict]) -> tuple[Any, Any, Any]:
        """The served greedy answer has the text and prompt token count of the same request through the Python API
        on the same folder; (served, direct, base), base a one-token `baseline` request through the Python API
        (its prompt length is what the media adds to)."""
        served = self.ask(messages)
        with tiny_chat_model(self.model_dir) as local:
            [direct] = local.chat(messages, max_new_tokens=8, temperature=0, ignore_eos=True)
            [base] = local.chat(baseline, max_new_tokens=1)
        assert served.choices[0].message.content == direct.response_text
        assert served.usage.prompt_tokens == direct.prompt_length
        return served, direct, base

    def assert_bad_request(self, messages: list[dict], param: str | None, max_tokens: int = 4) -> dict:
        """The request is a 400 whose body names `param` (unless None), and the server keeps serving; the error
        body, for further checks."""
        with pytest.raises(openai.BadRequestError) as err:
            self.client.chat.completions.create(model=self.model, messages=messages, max_tokens=max_tokens)
        if param is not None:
            assert err.value.body["param"] == param
        ok = self.client.chat.completions.create(model=self.model, messages=user("hi"), max_tokens=3)
        assert ok.choices[0].finish_reason in ("stop", "length")
        return err.value.body


def served_model_fixture(name: str, build: Callable[..., None], params: list[str] | None = None) -> Any:
    """A module-scoped fixture: `build` (with each of `params`, if given) into a folder, `chatplex serve` it on
    loopback and yield a ServedModel; the server stops after the module."""

    @pytest.fixture(scope="module", params=params)
    def served(tmp_path_factory, request) -> Iterator[ServedModel]:
        from tests.server.conftest import running_server

        args = () if params is None else (request.param,)
        path = build_in(tmp_path_factory, f"srv-{name}" + "".join(f"-{a}" for a in args), build, *args)
        log = tmp_path_factory.mktemp(f"{name}-log") / "server.log"
        with running_server(["--model", str(path), "--infer-dtype", "float32"], log) as srv:
            client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0)
            yield ServedModel(str(path), client, client.models.list().data[0].id)
            client.close()

    return served
