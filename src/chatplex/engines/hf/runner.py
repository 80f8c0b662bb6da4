"""The only code that runs the model: scheduled chunks -> one flat forward pass -> sampled tokens.

Layout of a step: every scheduled token of every sequence sits in one row (batch size 1), single-token decodes
first, then prefill chunks. One builder makes a step's inputs on the host (step_inputs.py); an eager step turns
them into tensors and runs the model, a decode-only step on a GPU copies them into a CUDA graph's buffers and
replays it (cuda_graphs.py), and on a CPU with `compile: true` runs the compiled step (cpu_decode.py).

A step returns without waiting for the device (`StepOutput.sample` is still on it). A sequence's pending token
(sampled by the previous step, not yet on the host) is read from that step's device tensor of tokens, so the
engine can launch step N+1 before it has seen step N's tokens. Host -> device copies are non-blocking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from chatplex.engines.hf import paged_decode
from chatplex.engines.hf.attention import AttentionMetadata, PrefillSegment
from chatplex.engines.hf.cpu_prefill import CompiledCpuPrefill
from chatplex.engines.hf.decode_step import DecodeReplayer
from chatplex.engines.hf.kv_cache import PagedKVCache
from chatplex.engines.hf.lora import LoraAdapters
from chatplex.engines.hf.sampler import PendingSample, SamplingRow, sample_async
from chatplex.engines.hf.scheduler import ScheduledSeq
from chatplex.engines.hf.scoring import decoder_of
from chatplex.engines.hf.sequence import Sequence
from chatplex.engines.hf.step_inputs import DeviceInputs, StepInputs
from chatplex.engines.hf.transfer import h2d


@dataclass
class StepOutput:
    seqs: list[Sequence]  # the sequences that sampled this step, in the sample's row order
    sample: PendingSample | None
    replayed: bool = False  # a decode-only step run by the DecodeReplayer (CUDA graphs, compiled CPU step)


class ModelRunner:
    def __init__(
        self,
        model: Any,
        cache: PagedKVCache,
        device: torch.device,
        graphs: DecodeReplayer | None = None,
        lora: LoraAdapters | None = None,
        score_head: torch.nn.Module | None = None,
        multimodal: Any = None,
        pad_tokens_to: int = 0,
        batch_invariant: bool = False,
        prefill: CompiledCpuPrefill | None = None,
    ) -> None:
        self.model = model
        # Vision-language models: image embeddings and 3-D positions per step (engines/hf/multimodal.py).
        self.multimodal = multimodal
        self.lora = lora
        # Reward models: the decoder's last hidden state at each sequence's last token goes through this head.
        self.score_head = score_head
        self.cache = cache
        self.device = device
        self.block_size = cache.block_size
        # Decode attention through block tables (paged_decode.py), else over each decode's gathered context slots.
        self.reads_block_tables = paged_decode.available(device)
        self.graphs = graphs
        self.prefill = prefill  # steps with prompt tokens on a CPU with `compile: true`
        self.graph_steps = 0  # decode steps run by `graphs` (CUDA graphs, or the compiled CPU step; stats, tests)
        # Eager steps (prefill chunks) round their token count up to a multiple of this: cuBLAS picks (and on
        # Hopper JIT-builds) kernels per matrix shape on the host, and an unpadded count is a new shape almost
        # every step (measured on an H100: ~30-70 ms of host time per eager step before, for a 2-4 ms forward).
        self.pad_tokens_to = pad_tokens_to
        self.batch_invariant = batch_invariant
        # The last step's sampled tokens on the device, and each sampling sequence's row in them.
        self._prev_tokens: torch.Tensor | None = None
        self._prev_rows: dict[int, int] = {}

    def _metadata(self, host: StepInputs, dev: DeviceInputs) -> AttentionMetadata:
        d = host.num_decodes  # in a padded decode-only step, its padding rows too
        segments = []
        for i in range(host.num_decodes, len(host.items)):
            it = host.items[i]
            end = it.start + it.num_tokens
            ctx = h2d(torch.from_numpy(host.context_slots(i, end)), torch.long, self.device) if it.start else None
            spans = self.multimodal.bidirectional(it) if self.multimodal is not None else None
            segments.append(PrefillSegment(int(host.offsets[i]), it.num_tokens, it.start, ctx, spans))
        decode_ctx = None
        if d and not self.reads_block_tables:
            decode_ctx = h2d(torch.from_numpy(host.decode_context_slots()), torch.long, self.device)
        return AttentionMetadata(
            cache=self.cache,
            slot_mapping=dev.slots,
            num_decode=d,
            decode_ctx_slots=decode_ctx,
            decode_positions=dev.positions[:d] if d else None,
            prefills=segments,
            decode_block_tables=dev.tables if d and self.reads_block_tables else None,
            decode_seq_lens=dev.seq_lens if d and self.reads_block_tables else None,
            padded_from=host.padded_from,
            per_sequence_decode=self.batch_invariant,
        )

    @torch.inference_mode()
    def execute(self, batch: list[ScheduledSeq], rows: dict[int, SamplingRow]) -> StepOutput:
        """Launch one step. `rows` maps seq_id -> sampling settings for each sequence that samples this step."""
        if self.multimodal is not None:  # Gemma 3: an image's tokens run in one chunk (they attend both ways)
            self.multimodal.align_chunks(batch)
        host = self._inputs(batch)
        sampling = [it.seq for it in host.items if it.samples]
        uses_lora = any(it.seq.adapter for it in host.items)
        if self._replays(host, uses_lora):
            assert self.graphs is not None
            host.pad(self.graphs.bucket(host.num_tokens))
            logits = self.graphs.replay(host.to_device(self.device, self._prev_tokens))[: len(sampling)]
            self.graph_steps += 1
            return self._sample(logits, sampling, rows, replayed=True)
        if self.pad_tokens_to and self.multimodal is None:
            host.pad(-(-host.num_tokens // self.pad_tokens_to) * self.pad_tokens_to)
        if self.batch_invariant:
            # oneDNN's bfloat16 matmul takes another path for a single row, which can round differently (found in
            # SmolLM2's down_proj, 1536 inputs): a lone token runs beside a dummy row, as in any batch.
            host.pad(2)
        dev = host.to_device(self.device, self._prev_tokens)
        meta = self._metadata(host, dev)
        inputs = {"input_ids": dev.input_ids[None], "position_ids": dev.positions[None]}
        if self.multimodal is not None:
            inputs = self.multimodal.step_inputs(host.items, dev.input_ids[None], dev.positions)
        if uses_lora:
            self._activate_lora(host)
        try:
            if self.prefill is not None:
                assert self.multimodal is None  # not compiled for media models (setup.py): their inputs differ
                index = host.sample_index or [host.num_tokens - 1]  # a chunk that samples nothing projects one row
                keep = h2d(index, torch.long, self.device)
                logits = self.prefill(inputs["input_ids"], inputs["position_ids"], keep, meta)
                return self._sample(logits[: len(sampling)] if sampling else None, sampling, rows, replayed=False)
            if not sampling:
                self.model(**inputs, use_cache=False, logits_to_keep=1, chatplex_meta=meta)
                return self._sample(None, [], rows, replayed=False)
            index = host.sample_index
            if self.batch_invariant and len(index) == 1:
                index = index * 2  # the LM head's matmul on two rows as well (see the padding above); one is dropped
            keep = h2d(index, torch.long, self.device)
            logits = self.model(**inputs, use_cache=False, logits_to_keep=keep, chatplex_meta=meta).logits[0]
            if logits.shape[0] != len(index):
                # Some models' forward ignores logits_to_keep (Qwen2-Audio projects every position): take the rows.
                logits = logits[keep.to(logits.device)]
            return self._sample(logits[: len(sampling)], sampling, rows, replayed=False)
        finally:
            if uses_lora:
                assert self.lora is not None
                self.lora.deactivate()

    def _inputs(self, batch: list[ScheduledSeq]) -> StepInputs:
        ordered = [it for it in batch if it.num_tokens == 1] + [it for it in batch if it.num_tokens > 1]
        return StepInputs.build(ordered, self.block_size, self._prev_rows if self._prev_tokens is not None else None)

    def _replays(self, host: StepInputs, uses_lora: bool) -> bool:
        """Whether `graphs` runs the step (a CUDA-graph replay, or the compiled CPU step): decodes only, no adapter,
        a bucket that holds them."""
        return (
            self.graphs is not None
            and not uses_lora
            and host.num_decodes == len(host.items)
            and host.num_tokens <= self.graphs.max_batch
        )

    def _sample(
        self, logits: torch.Tensor | None, seqs: list[Sequence], rows: dict[int, SamplingRow], replayed: bool
    ) -> StepOutput:
        sample = sample_async(logits, [rows[s.seq_id] for s in seqs]) if logits is not None else None
        if sample is not None:  # the next step reads its pending tokens from here
            self._prev_tokens = sample.tokens
            self._prev_rows = {seq.seq_id: i for i, seq in enumerate(seqs)}
        return StepOutput(seqs, sample, replayed)

    def _activate_lora(self, host: StepInputs) -> None:
        assert self.lora is not None
        groups: dict[str, list[int]] = {}
        for i, it in enumerate(host.items):
            if it.seq.adapter:
                groups.setdefault(it.seq.adapter, []).extend(range(int(host.offsets[i]), int(host.offsets[i + 1])))
        self.lora.activate({n: h2d(idx, torch.long, self.device) for n, idx in groups.items()})

    @torch.inference_mode()
    def score(self, batch: list[ScheduledSeq]) -> dict[int, float]:
        """Run one step of a reward model: seq_id -> raw score for each sequence whose last token ran."""
        assert self.score_head is not None
        host = self._inputs(batch)
        dev = host.to_device(self.device, None)
        hidden = decoder_of(self.model)(
            input_ids=dev.input_ids[None],
            position_ids=dev.positions[None],
            use_cache=False,
            chatplex_meta=self._metadata(host, dev),
        ).last_hidden_state[0]
        scored = [it.seq for it in host.items if it.samples]
        if not scored:
            return {}
        last = hidden[h2d(host.sample_index, torch.long, self.device)]
        values = self.score_head(last.to(self.score_head.weight.dtype))[:, 0].float().tolist()
        return {seq.seq_id: v for seq, v in zip(scored, values)}
