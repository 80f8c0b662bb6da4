"""The FP8 linear kernel (engines/hf/fp8_matmul.py) on a GPU with float8 tensor cores: its output against the same
arithmetic in torch, and an FP8 checkpoint served by the engine (kernel inside CUDA graphs) greedy-equal to
transformers' `generate` on the same model with the same layers. Skipped without such a GPU (CI's CPU machine);
run on an H100 through the device tool."""

from __future__ import annotations

import pytest
import torch

from chatplex import ChatModel
from chatplex.engines.hf import fp8_matmul, quantization
from tests.engines.hf.greedy import engine_tokens, generate_tokens
from tests.engines.hf.quantized_checkpoints import write_fp8_checkpoint

GPU = torch.device("cuda")
pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and fp8_matmul.available(GPU)), reason="needs Triton and a GPU of compute 8.9+"
)


def _quantized(n: int, k: int, block: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    return fp8_matmul.quantize(torch.randn(n, k, device=GPU) / k**0.5, block)


@pytest.mark.parametrize("m", [1, 5, 16, 33, 300])
@pytest.mark.parametrize(("n", "k", "block"), [(384, 256, (128, 128)), (96, 320, (128, 128)),
                                               (64, 64, (32, 32)), (200, 256, None), (256, 4160, (128, 128))])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_kernel_equals_the_same_arithmetic_in_torch(m, n, k, block, dtype):
    torch.manual_seed(m + n)
    weight, scale = _quantized(n, k, block)
    x = torch.randn(m, k, device=GPU, dtype=dtype)
    x[0] = 0  # an all-zero row (a padding row) must not divide by zero
    got = fp8_matmul.fp8_matmul(x, weight, scale, block)
    want = fp8_matmul.reference(x, weight, scale, block)
    assert got.dtype == dtype and got.shape == (m, n)
    assert not got.isnan().any()
    # Triton's division is not IEEE-rounded, so an activation on a float8 rounding boundary can land on the other
    # side than in torch: one float8 step of one input, a few thousandths in an output (seen in float32).
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-2 if dtype == torch.bfloat16 else 1e-4, atol=5e-3)
    # and FP8 is close to the full-precision product it stands for (a single row is the zero row: nothing to compare)
    exact = x.float() @ fp8_matmul.dequantized(weight, scale, block).T
    if m > 1:
        assert ((got.float() - exact).norm() / exact.norm()) < 0.1


@pytest.mark.parametrize("split", [2, 3, 8, 16])
@pytest.mark.parametrize("m", [1, 7, 16])
def test_k_in_slices_adds_up_to_one_pass(m, split):
    """Decode launches cut K into slices whose partial sums the last slice to finish adds up: the same result as
    one pass over K (up to float32 rounding), with more slices than K blocks too, and the arrival counters left at
    zero for the next launch."""
    torch.manual_seed(split)
    weight, scale = _quantized(320, 1100, (128, 128))
    x = torch.randn(m, 1100, device=GPU, dtype=torch.float32)
    one_pass = fp8_matmul.fp8_matmul(x, weight, scale, (128, 128), SPLIT_K=1)
    sliced = fp8_matmul.fp8_matmul(x, weight, scale, (128, 128), SPLIT_K=split)
    torch.testing.assert_close(sliced, one_pass, rtol=1e-5, atol=1e-5)
    assert not fp8_matmul._ARRIVED[weight.device].any()


def test_sliced_launches_replay_in_a_cuda_graph():
    """The arrival counters are made before capture and reset by each launch, so a captured decode matmul replays
    right every time, for new inputs."""
    weight, scale = _quantized(4096, 4096, (128, 128))
    x = torch.randn(4, 4096, device=GPU, dtype=torch.bfloat16)
    assert fp8_matmul.launch_config(4, 4096, 4096, GPU)["SPLIT_K"] > 1
    fp8_matmul.fp8_matmul(x, weight, scale, (128, 128))  # warm-up outside capture, as the engine's is
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fp8_matmul.fp8_matmul(x, weight, scale, (128, 128))
    for seed in range(3):
        x.copy_(torch.randn(4, 4096, device=GPU, generator=torch.Generator(GPU).manual_seed(seed)))
        graph.replay()
        torch.testing.assert_close(out.float(), fp8_matmul.reference(x, weight, scale, (128, 128)).float(),
                                   rtol=1e-2, atol=2e-2)


def test_the_op_is_one_node_for_torch_compile():
    weight, scale = _quantized(128, 128, (128, 128))
    x = torch.randn(2, 3, 128, device=GPU, dtype=torch.bfloat16)
    compiled = torch.compile(lambda t: torch.ops.chatplex.fp8_linear(t, weight, scale, 128, 128), fullgraph=True)
    torch.testing.assert_close(compiled(x), fp8_matmul.fp8_matmul(x, weight, scale, (128, 128)))


@pytest.fixture
def fp8_dir(tmp_path):
    """A tiny random Llama written as an FP8 checkpoint (the test machine may have no SmolLM2, so a word-level
    tokenizer stands in)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from chatplex.models.dummy import dummy_tokenizer

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=512, max_position_embeddings=512, eos_token_id=511,
                         tie_word_embeddings=False)
    (tmp_path / "bf16").mkdir()
    LlamaForCausalLM(config).save_pretrained(tmp_path / "bf16")
    dummy_tokenizer(512).save_pretrained(tmp_path / "bf16")
    (tmp_path / "fp8").mkdir()
    write_fp8_checkpoint(str(tmp_path / "bf16"), tmp_path / "fp8")
    return str(tmp_path / "fp8")


def test_the_start_up_check_passes_here():
    assert fp8_matmul.check(GPU, {(128, 128), (32, 32), None}) == ""


async def test_fp8_checkpoint_runs_its_float8_weights_greedy_equal_to_generate(fp8_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts = [" ".join(f"t{i}" for i in range(n)) for n in (1, 7, 30, 3)]
    reference = AutoModelForCausalLM.from_pretrained(fp8_dir, device_map={"": GPU}, dtype=torch.float32)
    assert fp8_matmul.install(reference) == 14  # 7 projections x 2 layers; generate runs the same layers
    expected = generate_tokens(reference, AutoTokenizer.from_pretrained(fp8_dir), prompts, 8)
    with ChatModel({"model_name_or_path": fp8_dir, "infer_dtype": "float32", "device": "cuda"}) as model:
        hf_model = model.engine.parts.model
        layer = hf_model.model.layers[0].mlp.down_proj
        assert layer.weight.dtype == torch.float8_e4m3fn and layer.forward.__func__ is fp8_matmul._forward
        assert quantization.describe(hf_model) == "fp8" and model.engine.runner.graphs is not None
        got = await engine_tokens(model, prompts, 8)
    assert got == expected


async def test_lora_over_fp8_layers_equals_peft_generate(fp8_dir, tmp_path):
    """An adapter kept live over the FP8 layers (LLaMA-Factory's rule for quantized models) and per request beside
    the base model, greedy-equal to peft's model over the same FP8 layers."""
    pytest.importorskip("peft")
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(5)
    bf16 = AutoModelForCausalLM.from_pretrained(fp8_dir.removesuffix("fp8") + "bf16")
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(bf16, config).save_pretrained(tmp_path / "adapter")
    adapter = str(tmp_path / "adapter")
    prompts = [" ".join(f"t{i}" for i in range(n)) for n in (2, 9, 4)]
    tok = AutoTokenizer.from_pretrained(fp8_dir)
    reference = AutoModelForCausalLM.from_pretrained(fp8_dir, device_map={"": GPU}, dtype=torch.float32)
    fp8_matmul.install(reference)
    plain = generate_tokens(reference, tok, prompts, 8)
    with_adapter = generate_tokens(PeftModel.from_pretrained(reference, adapter).eval(), tok, prompts, 8)
    assert with_adapter != plain
    keys = {"model_name_or_path": fp8_dir, "infer_dtype": "float32", "device": "cuda"}
    with ChatModel({**keys, "adapter_name_or_path": adapter}) as model:
        assert await engine_tokens(model, prompts, 8) == with_adapter
    with ChatModel({**keys, "lora_modules": {"mine": adapter}}) as model:
        assert await engine_tokens(model, prompts, 8, "mine") == with_adapter
        assert await engine_tokens(model, prompts, 8) == plain
