"""Reward scores from the HF engine equal a direct torch computation, for both reward-model formats, under
left and right padding, batched or one by one, through chunked prefill; wrong-kind models fail clearly."""

from __future__ import annotations

import pytest
import torch

from chatplex import ChatModel
from chatplex.errors import ConfigError, ContextLengthExceededError, InvalidRequestError, UnsupportedFeatureError

TEXTS = [
    "Hi",
    "The quick brown fox jumps over the lazy dog and keeps running far away",
    "One two three four five",
    "A much longer input: " + "lorem ipsum dolor sit amet " * 6,
    "x",
    "Hello!<|im_end|>",  # ends in the pad token (SmolLM2's pad is its eos): a pad-id search would read too early
]
CONVERSATION = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]


def _config(tokenizer, **extra):
    from transformers import LlamaConfig

    # SmolLM2's pad token is its eos token (<|im_end|>): the case transformers' own classifier gets wrong.
    return LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(tokenizer), max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, **extra,
    )


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory, smollm_tokenizer) -> str:
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("tiny-rm-cls")
    LlamaForSequenceClassification(_config(smollm_tokenizer, num_labels=1)).save_pretrained(path)
    smollm_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def value_head_dirs(tmp_path_factory, smollm_tokenizer) -> tuple[str, str]:
    """LLaMA-Factory's format: a causal LM, a LoRA adapter, and value_head.safetensors in the adapter dir."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    torch.manual_seed(2)
    base = tmp_path_factory.mktemp("tiny-rm-base")
    LlamaForCausalLM(_config(smollm_tokenizer)).save_pretrained(base)
    smollm_tokenizer.save_pretrained(base)
    adapter = tmp_path_factory.mktemp("tiny-rm-adapter")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(LlamaForCausalLM.from_pretrained(base), lora).save_pretrained(adapter)
    save_file({"v_head.summary.weight": torch.randn(1, 64), "v_head.summary.bias": torch.randn(1)},
              str(adapter / "value_head.safetensors"))
    return str(base), str(adapter)


def _pad(tokenizer, texts: list[str], side: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, index of each row's last real token) for a padded batch."""
    ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id
    rows = [([pad] * (width - len(x)) + x) if side == "left" else (x + [pad] * (width - len(x))) for x in ids]
    mask = [([0] * (width - len(x)) + [1] * len(x)) if side == "left" else ([1] * len(x) + [0] * (width - len(x))) for x in ids]
    mask_t = torch.tensor(mask)
    last = torch.full((len(ids),), width - 1) if side == "left" else mask_t.sum(-1) - 1
    return torch.tensor(rows), mask_t, last


def reference_classifier(path: str, tokenizer, texts: list[str], side: str) -> list[float]:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    ids, mask, last = _pad(tokenizer, texts, side)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        hidden = model.model(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        return model.score(hidden[torch.arange(len(texts)), last])[:, 0].tolist()


def reference_value_head(base: str, adapter: str, tokenizer, texts: list[str], side: str) -> list[float]:
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter)
    model = model.merge_and_unload().eval()
    head = load_file(f"{adapter}/value_head.safetensors")
    ids, mask, last = _pad(tokenizer, texts, side)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True)
        hidden = out.hidden_states[-1][torch.arange(len(texts)), last]  # what trl's value head read
        return (hidden @ head["v_head.summary.weight"].T + head["v_head.summary.bias"])[:, 0].tolist()


@pytest.fixture(scope="module")
def classifier_model(classifier_dir):
    with ChatModel({"model_name_or_path": classifier_dir, "infer_dtype": "float32"}) as model:
        yield model


@pytest.fixture(scope="module")
def value_head_model(value_head_dirs):
    base, adapter = value_head_dirs
    args = {"model_name_or_path": base, "adapter_name_or_path": adapter, "stage": "rm", "infer_dtype": "float32",
            "max_num_batched_tokens": 16, "kv_block_size": 4}  # chunked prefill across steps
    with ChatModel(args) as model:
        yield model


@pytest.mark.parametrize("side", ["left", "right"])
def test_sequence_classifier_equals_torch(classifier_model, classifier_dir, smollm_tokenizer, side):
    expected = reference_classifier(classifier_dir, smollm_tokenizer, TEXTS, side)
    assert classifier_model.engine.is_reward_model
    assert classifier_model.get_scores(TEXTS) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("side", ["left", "right"])
def test_value_head_with_adapter_equals_torch(value_head_model, value_head_dirs, smollm_tokenizer, side):
    expected = reference_value_head(*value_head_dirs, smollm_tokenizer, TEXTS, side)
    assert value_head_model.get_scores(TEXTS) == pytest.approx(expected, abs=1e-4)


async def test_batched_equals_one_by_one(classifier_model, value_head_model):
    for model in (classifier_model, value_head_model):
        batched = await model.aget_scores(TEXTS)
        single = [(await model.aget_scores([t]))[0] for t in TEXTS]
        assert batched == pytest.approx(single, abs=1e-5)
    # The whole batch goes through the scheduler together: one step (the value-head model chunks its prefill).
    steps = classifier_model.stats().steps
    await classifier_model.aget_scores(TEXTS)
    assert classifier_model.stats().steps - steps == 1


def test_conversation_is_rendered_with_the_template(classifier_model):
    text = classifier_model.engine.tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert classifier_model.get_scores([CONVERSATION]) == pytest.approx(classifier_model.get_scores([text]), abs=1e-6)


def test_max_length_keeps_the_beginning(classifier_model, smollm_tokenizer):
    long = TEXTS[3]
    first8 = smollm_tokenizer.decode(smollm_tokenizer.encode(long, add_special_tokens=False)[:8])
    assert classifier_model.get_scores([long], max_length=8) == pytest.approx(classifier_model.get_scores([first8]), abs=1e-6)


def test_bad_inputs_name_the_field(classifier_model):
    with pytest.raises(InvalidRequestError, match=r"batch_input\[1\]"):
        classifier_model.get_scores(["ok", 3])
    with pytest.raises(InvalidRequestError, match="max_length"):
        classifier_model.get_scores(["ok"], max_length=0)


def test_reward_model_refuses_to_chat(classifier_model):
    with pytest.raises(UnsupportedFeatureError, match="reward model"):
        classifier_model.chat([{"role": "user", "content": "hi"}], max_new_tokens=2)


def test_generative_model_refuses_to_score(tiny_model_dir):
    with ChatModel({"model_name_or_path": tiny_model_dir("llama"), "infer_dtype": "float32"}) as model:
        assert not model.engine.is_reward_model
        with pytest.raises(UnsupportedFeatureError, match="not a reward model"):
            model.get_scores(["hi"])


def test_task_score_without_a_head_is_a_config_error(tiny_model_dir):
    with pytest.raises(ConfigError, match="value_head.safetensors"):
        ChatModel({"model_name_or_path": tiny_model_dir("llama"), "task": "score"})


def test_value_head_of_the_wrong_size(tmp_path, tiny_model_dir):
    import shutil

    from safetensors.torch import save_file

    path = tmp_path / "m"
    shutil.copytree(tiny_model_dir("llama"), path)
    save_file({"v_head.summary.weight": torch.zeros(1, 7), "v_head.summary.bias": torch.zeros(1)},
              str(path / "value_head.safetensors"))
    with pytest.raises(ConfigError, match="hidden size 64"):
        ChatModel({"model_name_or_path": str(path), "task": "score"})


def test_value_head_bin_in_the_model_dir(tmp_path, value_head_dirs, smollm_tokenizer):
    """value_head.bin (torch.save, as older LLaMA-Factory runs wrote it) beside a model with no adapter."""
    import shutil

    from transformers import AutoModelForCausalLM

    path = tmp_path / "rm"
    shutil.copytree(value_head_dirs[0], path)
    torch.manual_seed(3)
    head = {"v_head.summary.weight": torch.randn(1, 64), "v_head.summary.bias": torch.randn(1)}
    torch.save(head, path / "value_head.bin")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    expected = []
    with torch.no_grad():
        for text in TEXTS:
            ids = torch.tensor([smollm_tokenizer.encode(text, add_special_tokens=False)])
            last = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1]
            expected.append(float(last @ head["v_head.summary.weight"][0] + head["v_head.summary.bias"][0]))
    with ChatModel({"model_name_or_path": str(path), "task": "score", "infer_dtype": "float32"}) as rm:
        assert rm.get_scores(TEXTS) == pytest.approx(expected, abs=1e-4)


def test_score_inputs_and_the_kv_cache(classifier_dir, smollm_tokenizer):
    """An input longer than the whole KV cache is refused (it could never be scheduled); inputs that only fit one
    at a time still score, and equal their scores from a roomy cache."""
    per_token = 2 * 2 * 2 * 16 * 4  # k and v, 2 layers, 2 kv heads, head dim 16, fp32
    small = {"model_name_or_path": classifier_dir, "infer_dtype": "float32", "kv_block_size": 4,
             "kv_cache_memory_gb": 32 * per_token / 2**30}
    fits = [TEXTS[1], TEXTS[2], TEXTS[1] + " again"]
    with ChatModel({"model_name_or_path": classifier_dir, "infer_dtype": "float32"}) as roomy:
        expected = roomy.get_scores(fits)
    with ChatModel(small) as model:
        cap = model.engine.blocks.capacity_tokens
        lengths = [len(smollm_tokenizer.encode(t, add_special_tokens=False)) for t in fits]
        assert max(lengths) <= cap < sum(lengths) and len(smollm_tokenizer.encode(TEXTS[3])) > cap
        with pytest.raises(ContextLengthExceededError, match=rf"batch_input\[1\].*KV cache holds {cap}\b"):
            model.get_scores([TEXTS[0], TEXTS[3]])
        assert model.get_scores(fits) == pytest.approx(expected, abs=1e-5)
