"""Gemma 3 images through the HF engine equal transformers' own Gemma3Processor + `generate` on the same tiny random
model, including the bidirectional attention among one image's soft tokens (with a sliding window shorter than an
image), across prefill chunks smaller than an image, and in batches mixed with text requests."""

from __future__ import annotations

import asyncio

import pytest
import torch

from chatplex import ChatModel
from chatplex.errors import InvalidRequestError, UnsupportedFeatureError
from tests.engines.hf.test_multimodal_llava import _data_url, _noise

SPECIALS = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
# ChatML that writes Gemma 3's `<start_of_image>` for image parts, as Gemma's own template does.
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content is string %}{{ m.content }}{% else %}"
    "{% for p in m.content %}{% if p.type == 'image' %}<start_of_image>"
    "{% elif p.type == 'text' %}{{ p.text }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MAX_TOKENS = 8
IMAGE_TOKENS = 16  # mm_tokens_per_image
CHUNK = 12  # prefill tokens per step: smaller than one image


def _build(path) -> None:
    from transformers import AutoTokenizer, Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil

    from chatplex.models.embedded import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    tok.add_special_tokens({"additional_special_tokens": SPECIALS})
    tok.chat_template = TEMPLATE
    ids = tok.convert_tokens_to_ids(SPECIALS)
    config = Gemma3Config(
        text_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, intermediate_size=128, vocab_size=len(tok), max_position_embeddings=2048,
                         sliding_window=8, layer_types=["sliding_attention", "full_attention"], eos_token_id=2,
                         bos_token_id=1, pad_token_id=2),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=28, patch_size=7),
        mm_tokens_per_image=IMAGE_TOKENS, boi_token_index=ids[0], eoi_token_index=ids[1], image_token_index=ids[2],
    )
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        # The projector starts at zero; random and loud, the picture decides the tokens. Sharper attention
        # (q/k norms scale queries and keys) makes a wrong mask change them too.
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, 1.0)
        for layer in model.model.language_model.layers:
            layer.self_attn.q_norm.weight.fill_(3.0)
            layer.self_attn.k_norm.weight.fill_(3.0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    Gemma3ImageProcessorPil(size={"height": 28, "width": 28}).save_pretrained(path)


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gemma3")
    _build(path)
    return path


@pytest.fixture(scope="module")
def hf_model(gemma_dir):
    from transformers import Gemma3ForConditionalGeneration

    return Gemma3ForConditionalGeneration.from_pretrained(gemma_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def reference(gemma_dir, hf_model):
    """Greedy tokens from transformers: Gemma3Processor (its own image expansion and token_type_ids, which turn
    on the bidirectional image mask) + model.generate. `causal=True` drops token_type_ids."""
    from transformers import AutoTokenizer, Gemma3ImageProcessorPil, Gemma3Processor

    tok = AutoTokenizer.from_pretrained(
        gemma_dir, extra_special_tokens=dict(zip(("boi_token", "eoi_token", "image_token"), SPECIALS))
    )
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil.from_pretrained(gemma_dir), tokenizer=tok,
        image_seq_length=IMAGE_TOKENS,
    )

    def run(messages, images, causal=False):
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = processor(text=text, images=images or None, return_tensors="pt", add_special_tokens=False)
        if causal:
            inputs.pop("token_type_ids")
        with torch.inference_mode():
            out = hf_model.generate(**inputs, do_sample=False, max_new_tokens=MAX_TOKENS)
        return out[0, inputs["input_ids"].shape[1]:].tolist()

    return run


@pytest.fixture(scope="module")
def chat_model(gemma_dir):
    model = ChatModel({"model_name_or_path": str(gemma_dir), "infer_dtype": "float32", "max_num_seqs": 4,
                       "max_num_batched_tokens": CHUNK})
    yield model
    model.close()


def _tokens(chat_model, messages, **kw):
    [response] = chat_model.chat(messages, do_sample=False, max_tokens=MAX_TOKENS, ignore_eos=True, **kw)
    return response.token_ids


def _image_messages(text="Describe."):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def test_input_embeddings_are_what_the_model_embeds(hf_model) -> None:
    # Gemma 3 scales token embeddings by sqrt(hidden): the splice must start from the same scaled values.
    ids = torch.tensor([[5, 17, 300, 2]])
    seen = {}
    hook = hf_model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    try:
        with torch.inference_mode():
            hf_model(input_ids=ids)
    finally:
        hook.remove()
    with torch.inference_mode():
        assert torch.equal(hf_model.get_input_embeddings()(ids), seen["embeds"])


def test_images_argument_equals_generate(chat_model, reference) -> None:
    image = _noise((50, 40), 1)
    expected = reference(_image_messages("What is this?"), [image])
    assert len(expected) == MAX_TOKENS
    # chunks of CHUNK tokens split the image: its tokens still see each other both ways
    assert _tokens(chat_model, [{"role": "user", "content": "What is this?"}], images=[image]) == expected
    # the picture changes the answer, and so does a causal-only mask over the image (the bidirectional mask is live)
    assert reference(_image_messages("What is this?"), [_noise((50, 40), 2)]) != expected
    assert reference(_image_messages("What is this?"), [image], causal=True) != expected
    [r] = chat_model.chat([{"role": "user", "content": "<image>What is this?"}], images=[image], max_tokens=1)
    [text_only] = chat_model.chat([{"role": "user", "content": "What is this?"}], max_tokens=1)
    assert r.prompt_length > text_only.prompt_length + IMAGE_TOKENS + 2  # + boi, eoi and the blank lines


def test_image_url_parts_in_chunks_encode_once(chat_model, reference) -> None:
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
            {"type": "image_url", "image_url": _data_url(b)},
        ]}]
        assert _tokens(chat_model, messages) == expected
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
    url = _data_url(_noise((8, 8), 9))
    parts = [{"type": "text", "text": "x"}] + [{"type": "image_url", "image_url": url}] * 17
    many = [{"role": "user", "content": parts}]
    with pytest.raises(InvalidRequestError, match="more than 16 images") as info:
        chat_model.chat(many, max_tokens=2)
    assert info.value.param == "messages[0].content[17]"
    bad = [{"role": "user", "content": [{"type": "image_url", "image_url": "data:image/png;base64,AAAA"}]}]
    with pytest.raises(InvalidRequestError, match="not a readable image") as info:
        chat_model.chat(bad, max_tokens=2)
    assert info.value.param == "messages[0].content[0]"
    with pytest.raises(UnsupportedFeatureError, match="videos: gemma3 takes images only"):
        chat_model.chat([{"role": "user", "content": "x"}], videos=["clip.mp4"], max_tokens=2)
    assert len(_tokens(chat_model, [{"role": "user", "content": "still here"}])) == MAX_TOKENS
