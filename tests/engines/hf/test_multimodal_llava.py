"""LLaVA images through the HF engine equal transformers' own LlavaProcessor + `generate` on the same tiny random
model: alone, in a batch mixed with text requests, and across prefill chunks (vision tower once per request)."""

from __future__ import annotations

import asyncio
import base64
import io

import pytest
import torch
from PIL import Image

from chatplex import ChatModel
from chatplex.errors import InvalidRequestError, UnsupportedFeatureError

# ChatML that writes LLaVA's `<image>` for image parts (real checkpoints ship their own).
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content is string %}{{ m.content }}{% else %}"
    "{% for p in m.content %}{% if p.type == 'image' %}<image>\n"
    "{% elif p.type == 'text' %}{{ p.text }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MAX_TOKENS = 8
IMAGE_TOKENS = 16  # 28x28 pixels in 7x7 patches, CLS dropped ("default" strategy)
CHUNK = 24  # prefill tokens per step: image prompts run in several chunks


def _noise(size, seed) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy())


def _data_url(image: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode()}"


# LLaVA-NeXT tiles an image onto the best of these (height, width) grids of 28x28 tiles, by its size.
PINPOINTS = [[28, 56], [56, 28], [56, 56]]


def _build(path, kind: str = "llava") -> None:
    import transformers
    from transformers import AutoTokenizer

    from chatplex.models.embedded import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tok.chat_template = TEMPLATE
    next_ = kind == "llava_next"
    config_class = transformers.LlavaNextConfig if next_ else transformers.LlavaConfig
    config = config_class(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=28, patch_size=7),
        text_config=dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, vocab_size=len(tok),
                         max_position_embeddings=2048, eos_token_id=2, bos_token_id=1),
        image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
        vision_feature_select_strategy="default", **({"image_grid_pinpoints": PINPOINTS} if next_ else {}),
    )
    torch.manual_seed(0)
    model_class = getattr(transformers, ("LlavaNext" if next_ else "Llava") + "ForConditionalGeneration")
    model = model_class(config).eval()
    with torch.no_grad():  # loud image features, so that the picture decides the tokens
        model.model.multi_modal_projector.linear_2.weight.mul_(20)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    sizes = dict(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    if next_:
        transformers.LlavaNextImageProcessorPil(image_grid_pinpoints=PINPOINTS, **sizes).save_pretrained(path)
    else:
        transformers.CLIPImageProcessorPil(**sizes).save_pretrained(path)


@pytest.fixture(scope="module", params=["llava", "llava_next"])
def llava_dir(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    _build(path, request.param)
    return path


@pytest.fixture(scope="module")
def reference(llava_dir):
    """Greedy tokens from transformers: its own processor (LlavaProcessor / LlavaNextProcessor: `<image>` expansion,
    tiling) + model.generate. `run.prompt_len` gives the processor's prompt length."""
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    next_ = AutoConfig.from_pretrained(llava_dir).model_type == "llava_next"
    model_class = getattr(transformers, ("LlavaNext" if next_ else "Llava") + "ForConditionalGeneration")
    model = model_class.from_pretrained(llava_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(llava_dir)
    image_processor = (transformers.LlavaNextImageProcessorPil if next_ else transformers.CLIPImageProcessorPil)
    processor = (transformers.LlavaNextProcessor if next_ else transformers.LlavaProcessor)(
        image_processor=image_processor.from_pretrained(llava_dir), tokenizer=tok, patch_size=7,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )

    def inputs(messages, images):
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return processor(text=text, images=images or None, return_tensors="pt", add_special_tokens=False)

    def run(messages, images):
        x = inputs(messages, images)
        with torch.inference_mode():
            out = model.generate(**x, do_sample=False, max_new_tokens=MAX_TOKENS)
        return out[0, x["input_ids"].shape[1]:].tolist()

    run.prompt_len = lambda messages, images: inputs(messages, images)["input_ids"].shape[1]
    return run


@pytest.fixture(scope="module")
def chat_model(llava_dir):
    model = ChatModel({"model_name_or_path": str(llava_dir), "infer_dtype": "float32", "max_num_seqs": 4,
                       "max_num_batched_tokens": CHUNK})
    yield model
    model.close()


def _tokens(chat_model, messages, **kw):
    [response] = chat_model.chat(messages, do_sample=False, max_tokens=MAX_TOKENS, ignore_eos=True, **kw)
    return response.token_ids


def _image_messages(text="Describe."):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def test_images_argument_equals_generate(chat_model, reference) -> None:
    image = _noise((90, 70), 1)
    expected = reference(_image_messages("What is this?"), [image])
    assert len(expected) == MAX_TOKENS
    assert _tokens(chat_model, [{"role": "user", "content": "What is this?"}], images=[image]) == expected
    # the image changes the answer (the vision path is live)
    assert reference(_image_messages("What is this?"), [_noise((90, 70), 2)]) != expected
    [r] = chat_model.chat([{"role": "user", "content": "<image>What is this?"}], images=[image], max_tokens=1)
    assert r.prompt_length == reference.prompt_len(_image_messages("What is this?"), [image])
    # LLaVA: 16 tokens per image; LLaVA-NeXT: the count follows the image's size
    wide, tall = _noise((120, 30), 8), _noise((30, 120), 8)
    lengths = [chat_model.chat([{"role": "user", "content": "Hi"}], images=[im], max_tokens=1)[0].prompt_length
               for im in (wide, tall, _noise((90, 90), 8))]
    assert lengths == [reference.prompt_len(_image_messages("Hi"), [im]) for im in (wide, tall, _noise((90, 90), 8))]
    anyres = chat_model.engine.multimodal.model.config.model_type == "llava_next"
    assert len(set(lengths)) == (3 if anyres else 1), lengths


def test_image_url_parts_and_chunked_prefill(chat_model, reference) -> None:
    # the prompt (two images of 16 tokens) runs in several chunks of CHUNK tokens, splitting an image
    a, b = _noise((60, 100), 3), _noise((120, 50), 4)
    expected = reference(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"}]}], [a, b]
    )
    vision = chat_model.engine.multimodal.model.model
    calls = []
    original = vision.get_image_features
    vision.get_image_features = lambda *args, **kw: calls.append(1) or original(*args, **kw)
    try:
        messages = [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": _data_url(a)}},
            {"type": "text", "text": "and"},
            {"type": "image_url", "image_url": _data_url(b, "PNG")},
        ]}]
        [r] = chat_model.chat(messages, do_sample=False, max_tokens=MAX_TOKENS, ignore_eos=True)
        assert r.token_ids == expected
        assert r.prompt_length > CHUNK  # (the second image straddles the first chunk boundary)
    finally:
        del vision.get_image_features
    assert calls == [1]


async def test_mixed_batch_equals_each_alone(chat_model, reference) -> None:
    cases = [
        ([{"role": "user", "content": "Hi, a text request."}], None),
        ([{"role": "user", "content": "First image"}], [_noise((80, 80), 6)]),
        ([{"role": "user", "content": "Another"}], [_noise((50, 110), 7)]),
        ([{"role": "user", "content": "Text again, longer this time."}], None),
    ]
    alone = [reference(_image_messages(m[0]["content"]) if imgs else m, imgs or []) for m, imgs in cases]

    async def one(messages, images):
        [r] = await chat_model.achat(messages, images=images, do_sample=False, max_tokens=MAX_TOKENS, ignore_eos=True)
        return r.token_ids

    assert await asyncio.gather(*(one(m, i) for m, i in cases)) == alone
    assert chat_model.stats().max_batch_size >= 2


def test_bad_media_names_the_part(chat_model) -> None:
    bad = [{"role": "user", "content": [{"type": "text", "text": "x"},
                                        {"type": "image_url", "image_url": "data:image/png;base64,AAAA"}]}]
    with pytest.raises(InvalidRequestError, match="not a readable image") as info:
        chat_model.chat(bad, max_tokens=2)
    assert info.value.param == "messages[0].content[1]"
    url = _data_url(_noise((8, 8), 9))
    many = [{"role": "user", "content": [{"type": "image_url", "image_url": url}] * 17}]
    with pytest.raises(InvalidRequestError, match="more than 16 images") as info:
        chat_model.chat(many, max_tokens=2)
    assert info.value.param == "messages[0].content[16]"
    with pytest.raises(UnsupportedFeatureError, match="audios: llava(_next)? takes images only"):
        chat_model.chat([{"role": "user", "content": "x"}], audios=[([0.0] * 160, 16000)], max_tokens=2)
    assert len(_tokens(chat_model, [{"role": "user", "content": "still here"}])) == MAX_TOKENS
