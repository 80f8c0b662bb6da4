"""The vLLM engine's own behaviour (the engine conformance suite covers what all engines share).

Runs in vLLM's environment (`make test-vllm`); elsewhere the module is skipped. The mapping tests need no engine;
the rest share one engine on the embedded SmolLM2 with a hand-made LoRA adapter named in `lora_modules`.
"""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here: make test-vllm runs these in its own environment")

from safetensors.torch import save_file  # noqa: E402
from vllm.logprobs import Logprob  # noqa: E402

from chatplex import ChatModel  # noqa: E402
from chatplex.config import load_args  # noqa: E402
from chatplex.engines.vllm import params  # noqa: E402
from chatplex.engines.vllm.output import SequenceOutput  # noqa: E402
from chatplex.errors import ConfigError, NotFoundError  # noqa: E402
from chatplex.sampling import build_sampling_params  # noqa: E402

STORY = [{"role": "user", "content": "Tell me a short story about a cat."}]
GREEDY = {"do_sample": False}


def _sampling(**kwargs):
    return build_sampling_params(kwargs, load_args({}).generating.as_request_defaults())


# ---- mapping, no engine -------------------------------------------------------------------------------------
def test_sampling_params_map_every_field():
    sp = _sampling(
        temperature=0.7, top_p=0.9, top_k=5, min_p=0.1, repetition_penalty=1.1, presence_penalty=0.2,
        frequency_penalty=0.3, max_new_tokens=9, min_new_tokens=2, stop_token_ids=[7], seed=11, logprobs=True,
        top_logprobs=3, logit_bias={"12": 1.5}, skip_special_tokens=False,
    )
    v = params.sampling_params(sp, index=2, max_tokens=9, stop_token_ids=frozenset({2, 7}))
    assert (v.temperature, v.top_p, v.top_k, v.min_p) == (0.7, 0.9, 5, 0.1)
    assert (v.repetition_penalty, v.presence_penalty, v.frequency_penalty) == (1.1, 0.2, 0.3)
    assert (v.max_tokens, v.min_tokens, v.seed, v.logprobs) == (9, 2, 13, 3)  # seed + index, as the HF engine
    assert sorted(v.stop_token_ids) == [2, 7] and v.ignore_eos and not v.detokenize
    assert v.logit_bias == {12: 1.5} and v.skip_special_tokens is False and v.n == 1


def test_engine_args_pass_through(smollm_dir):
    margs = load_args({
        "infer_backend": "vllm", "vllm_maxlen": 1024, "vllm_gpu_util": 0.5, "vllm_enforce_eager": True,
        "vllm_config": {"tensor_parallel_size": 2, "pipeline_parallel_size": 2, "max_model_len": 512},
    }).model
    args = params.engine_args(margs, smollm_dir, on_cpu=True, lora=True)
    assert (args.gpu_memory_utilization, args.enforce_eager) == (0.5, True)
    assert (args.tensor_parallel_size, args.pipeline_parallel_size) == (2, 2)
    assert args.max_model_len == 512  # vllm_config wins over the mapped keys
    assert args.kv_cache_memory_bytes == 2 * 2**30  # chatplex's CPU default, not 70% of host memory
    assert args.enable_lora and args.max_lora_rank == 32
    gpu = params.engine_args(load_args({"infer_backend": "vllm"}).model, smollm_dir, on_cpu=False, lora=False)
    assert gpu.kv_cache_memory_bytes is None and gpu.max_model_len == 4096 and not gpu.enable_lora
    off = load_args({"infer_backend": "vllm", "enable_prefix_caching": False}).model
    assert params.engine_args(off, smollm_dir, on_cpu=True, lora=False).enable_prefix_caching is False
    fp8 = load_args({"infer_backend": "vllm", "kv_cache_dtype": "fp8_e5m2"}).model
    assert params.engine_args(fp8, smollm_dir, on_cpu=True, lora=False).kv_cache_dtype == "fp8_e5m2"


def test_unknown_vllm_config_key_is_named(smollm_dir):
    margs = load_args({"infer_backend": "vllm", "vllm_config": {"tensor_paralel_size": 2}}).model
    with pytest.raises(ConfigError, match="tensor_paralel_size") as err:
        params.engine_args(margs, smollm_dir, on_cpu=True, lora=False)
    assert err.value.param == "vllm_config"


def test_adapter_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot stack"):
        params.adapter_paths(load_args({"infer_backend": "vllm", "adapter_name_or_path": "a,b"}).model)
    with pytest.raises(ConfigError, match="adapter_config.json"):
        params.Adapters([], {"x": str(tmp_path)})
    with pytest.raises(NotFoundError) as err:
        params.Adapters([], {}).pick("nope")
    assert (err.value.param, err.value.code) == ("model", "model_not_found")
    with pytest.raises(NotFoundError) as err:
        params.Adapters([], {}).remove("nope")
    assert (err.value.param, err.value.code) == ("lora_name", "model_not_found")


def test_sequence_output_stop_string_across_tokens_and_logprobs(smollm_tokenizer):
    ids = smollm_tokenizer.encode("Once upon a time, a cat", add_special_tokens=False)
    seq = SequenceOutput(0, 10, _sampling(stop=["a time"], logprobs=True, top_logprobs=1), 50, frozenset({2}), (), smollm_tokenizer)
    lps = [{t: Logprob(-0.5, rank=2), 99: Logprob(-0.1, rank=1)} for t in ids]
    delta = seq.add(ids, lps, None)
    assert delta.text == "Once upon " and delta.finish_reason == "stop" and delta.stop_reason == "a time"
    assert delta.token_ids == ids[: len(delta.token_ids)] and len(delta.token_ids) < len(ids)  # later tokens dropped
    first = delta.logprobs[0]
    assert first.logprob == -0.5 and [t.token_id for t in first.top] == [99]  # the top 1, not the sampled one


def test_sequence_output_stop_token_and_length(smollm_tokenizer):
    seq = SequenceOutput(1, 4, _sampling(), 3, frozenset({2}), (), smollm_tokenizer)
    hi = smollm_tokenizer.encode("Hi", add_special_tokens=False)
    delta = seq.add(hi + [2, 5], None, None)
    assert (delta.text, delta.finish_reason, delta.stop_reason) == ("Hi", "stop", 2)
    assert delta.completion_tokens == len(hi) + 1 and delta.index == 1
    seq = SequenceOutput(0, 4, _sampling(), 2, frozenset({2}), (), smollm_tokenizer)
    assert seq.add([28, 29, 30], None, None).finish_reason == "length" and seq.num_tokens == 2


# ---- one engine, real generation ----------------------------------------------------------------------------
def _lora_adapter(path, base_dir, rank=8, scale=0.05):
    """A peft-format LoRA adapter on q_proj/v_proj with random weights large enough to change greedy output."""
    import torch

    config = json.load(open(f"{base_dir}/config.json"))
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    kv_out = config["num_key_value_heads"] * (hidden // config["num_attention_heads"])
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for i in range(layers):
        for proj, out in (("q_proj", hidden), ("v_proj", kv_out)):
            prefix = f"base_model.model.model.layers.{i}.self_attn.{proj}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, hidden, generator=gen) * scale
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out, rank, generator=gen) * scale
    path.mkdir()
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": rank, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"], "bias": "none", "base_model_name_or_path": base_dir,
        "fan_in_fan_out": False, "modules_to_save": None, "use_rslora": False, "use_dora": False,
    }))
    return str(path)


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, smollm_dir):
    return _lora_adapter(tmp_path_factory.mktemp("lora") / "style", smollm_dir)


@pytest.fixture(scope="module")
def vllm_model(smollm_dir, adapter_dir):
    model = ChatModel({
        "infer_backend": "vllm", "model_name_or_path": smollm_dir, "infer_dtype": "float32",
        "lora_modules": {"style": adapter_dir}, "vllm_max_lora_rank": 8,
    })
    yield model
    model.close()


@pytest.mark.slow
def test_lora_adapter_per_request(vllm_model, adapter_dir):
    assert vllm_model.engine.adapters == ["style"]
    base = vllm_model.chat(STORY, max_new_tokens=12, **GREEDY)[0].response_text
    styled = vllm_model.chat(STORY, max_new_tokens=12, adapter="style", **GREEDY)[0].response_text
    assert styled != base
    assert vllm_model.chat(STORY, max_new_tokens=12, adapter="style", **GREEDY)[0].response_text == styled
    with pytest.raises(NotFoundError):
        vllm_model.chat(STORY, max_new_tokens=4, adapter="missing")
    vllm_model.load_adapter("again", adapter_dir)
    assert vllm_model.chat(STORY, max_new_tokens=12, adapter="again", **GREEDY)[0].response_text == styled
    vllm_model.unload_adapter("again")
    assert vllm_model.engine.adapters == ["style"]


@pytest.mark.slow
def test_logit_bias_and_min_tokens(vllm_model, smollm_tokenizer):
    token = smollm_tokenizer.encode(" banana", add_special_tokens=False)[0]
    reply = vllm_model.chat(STORY, max_new_tokens=3, logit_bias={str(token): 100}, **GREEDY)[0]
    assert reply.token_ids == [token] * 3
    # eos (<|im_end|>, id 2) may not end the reply before min_new_tokens
    france = [{"role": "user", "content": "What is the capital of France?"}]
    short = vllm_model.chat(france, max_new_tokens=40, **GREEDY)[0]
    assert short.finish_reason == "stop" and short.response_length < 30
    longer = vllm_model.chat(france, max_new_tokens=40, min_new_tokens=short.response_length + 3, **GREEDY)[0]
    assert longer.response_length >= short.response_length + 3


@pytest.mark.slow
async def test_stats_count_running_requests(vllm_model):
    stream = vllm_model.astream_chat(STORY, max_new_tokens=200, ignore_eos=True, **GREEDY)
    async for _ in stream:
        break
    for _ in range(100):
        if vllm_model.stats().running == 1:
            break
        await asyncio.sleep(0.1)
    assert vllm_model.stats().running == 1
    await stream.aclose()
    assert vllm_model.stats().running == 0 and vllm_model.stats().aborted_requests >= 1


@pytest.mark.slow
async def test_prompt_tokens_from_vllms_prefix_cache_are_reported(vllm_model):
    messages = [{"role": "system", "content": "Answer briefly. " * 40}, {"role": "user", "content": "Hi"}]
    last = []
    for _ in range(2):
        request = vllm_model.build_request(messages, do_sample=False, max_new_tokens=2)
        last.append([d async for d in vllm_model.agenerate(request)][-1])
    assert last[0].cached_tokens == 0 and last[1].cached_tokens > 0


# ---- reward models on vLLM's pooling runner -----------------------------------------------------------------
@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory, smollm_tokenizer):
    """A tiny random LlamaForSequenceClassification with one label and the SmolLM2 tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(
        # head_dim 64: vLLM's CPU attention kernels refuse smaller heads
        hidden_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=256,
        vocab_size=len(smollm_tokenizer), max_position_embeddings=512, num_labels=1,
        pad_token_id=smollm_tokenizer.pad_token_id, eos_token_id=smollm_tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config).eval()
    path = tmp_path_factory.mktemp("reward")
    model.save_pretrained(path)
    smollm_tokenizer.save_pretrained(path)
    return str(path)


def _torch_scores(model_dir, ids_list):
    """The classifier's output at each input's last token, straight from transformers."""
    import torch
    from transformers import LlamaForSequenceClassification

    model = LlamaForSequenceClassification.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0, 0].item() for ids in ids_list]


@pytest.mark.slow
def test_vllm_reward_model_scores_match_torch(reward_dir, smollm_tokenizer):
    from chatplex.errors import InvalidRequestError, UnsupportedFeatureError
    from chatplex.templates import render_prompt, resolve_template

    model = ChatModel({"infer_backend": "vllm", "model_name_or_path": reward_dir, "infer_dtype": "float32", "vllm_maxlen": 512,
                       "vllm_enforce_eager": True})
    try:
        assert model.engine.is_reward_model
        conversation = [{"role": "user", "content": "Is water wet?"}, {"role": "assistant", "content": "Yes."}]
        inputs = ["The sky is blue.", "Cats are great pets, and dogs too.", conversation]
        scores = model.get_scores(inputs)
        template = resolve_template(None, None, smollm_tokenizer)
        rendered = render_prompt(smollm_tokenizer, template, conversation, add_generation_prompt=False)
        ids = [smollm_tokenizer.encode(t, add_special_tokens=False) for t in (*inputs[:2], rendered)]
        expected = _torch_scores(reward_dir, ids)
        assert scores == pytest.approx(expected, abs=1e-3)
        assert len(set(round(s, 4) for s in scores)) == 3  # a head that outputs a constant would pass otherwise
        # max_length keeps the beginning of a long input
        cut = model.get_scores(["Cats are great pets, and dogs too."], max_length=3)
        assert cut == pytest.approx(_torch_scores(reward_dir, [ids[1][:3]]), abs=1e-3)
        # truncation_side "left" keeps the end (vLLM's truncate_prompt_tokens, served by /classify)
        tail = model.get_scores(["Cats are great pets, and dogs too."], max_length=3, truncation_side="left")
        assert tail == pytest.approx(_torch_scores(reward_dir, [ids[1][-3:]]), abs=1e-3)
        with pytest.raises(UnsupportedFeatureError, match="loads no adapters"):
            model.load_adapter("x", reward_dir)
        with pytest.raises(InvalidRequestError) as err:
            model.get_scores([42])
        assert err.value.param == "batch_input"
        with pytest.raises(UnsupportedFeatureError):
            model.chat(STORY, max_new_tokens=2)
    finally:
        model.close()


def test_vllm_reward_model_with_an_adapter_is_refused(tmp_path, reward_dir):
    """vLLM's pooling runner would score with the base weights: refused at start, before vLLM loads anything."""
    from chatplex.errors import ConfigError

    adapter = _lora_adapter(tmp_path / "rm-lora", reward_dir)
    with pytest.raises(ConfigError, match="adapter_name_or_path: the vllm engine scores") as err:
        ChatModel({"infer_backend": "vllm", "model_name_or_path": reward_dir, "adapter_name_or_path": adapter})
    assert err.value.param == "adapter_name_or_path"


def test_vllm_script_that_never_closes_its_model_exits_cleanly(tmp_path):
    """Closed by ChatModel's exit hook before vLLM's own exit hooks stop its engine process (which used to end the
    script with EngineDeadError and a TypeError traceback)."""
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text(
        "from chatplex import ChatModel\n"
        "if __name__ == '__main__':\n"  # vLLM starts its engine process with spawn, which re-imports the script
        "    m = ChatModel({'infer_backend': 'vllm', 'infer_dtype': 'float32', 'vllm_maxlen': 512,\n"
        "                   'vllm_enforce_eager': True, 'kv_cache_memory_gb': 0.5})\n"
        "    print(m.chat([{'role': 'user', 'content': 'Hi'}], max_new_tokens=2)[0].response_text)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for sign in ("Traceback", "Exception ignored", "EngineDeadError"):
        assert sign not in done.stderr, done.stderr[-3000:]
