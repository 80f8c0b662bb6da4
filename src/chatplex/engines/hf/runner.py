"""The only code that runs the model: scheduled chunks -> one flat forward pass -> sampled tokens.

Layout of a step: every scheduled token of every sequence sits in one row (batch size 1), single-token decodes
first, then prefill chunks. Positions and cache slots are computed from block tables with tensor ops, so the
per-step Python work is proportional to the number of sequences, not to their context lengths.

A step returns without waiting for the device (`StepOutput.sample` is still on it). A sequence's pending token
(sampled by the previous step, not yet on the host) is read from that step's device tensor of tokens, so the
engine can launch step N+1 before it has seen step N's tokens. Host -> device copies are non-blocking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from chatplex.engines.hf import triton_decode
from chatplex.engines.hf.attention import AttentionMetadata, PrefillSegment
from chatplex.engines.hf.cuda_graphs import DecodeGraphs
from chatplex.engines.hf.kv_cache import PagedKVCache
from chatplex.engines.hf.lora import LoraAdapters
from chatplex.engines.hf.scoring import decoder_of
from chatplex.engines.hf.sampler import PendingSample, SamplingRow, sample_async
from chatplex.engines.hf.scheduler import ScheduledSeq
from chatplex.engines.hf.sequence import Sequence
from chatplex.engines.hf.transfer import h2d


@dataclass
class StepOutput:
    seqs: list[Sequence]  # the sequences that sampled this step, in the sample's row order
    sample: PendingSample | None


class ModelRunner:
    def __init__(
        self,
        model: Any,
        cache: PagedKVCache,
        device: torch.device,
        graphs: DecodeGraphs | None = None,
        lora: LoraAdapters | None = None,
        score_head: torch.nn.Module | None = None,
        multimodal: Any = None,
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
        self.use_kernel = triton_decode.available(device)
        self.graphs = graphs
        self.graph_steps = 0  # decode steps replayed from CUDA graphs (for stats and tests)
        # Eager steps (prefill chunks) round their token count up to a multiple of this: cuBLAS picks (and on
        # Hopper JIT-builds) kernels per matrix shape on the host, and an unpadded count is a new shape almost
        # every step (measured on an H100: ~30-70 ms of host time per eager step before, for a 2-4 ms forward).
        self.pad_tokens_to = 128 if device.type == "cuda" else 0
        # The last step's sampled tokens on the device, and each sampling sequence's row in them.
        self._prev_tokens: torch.Tensor | None = None
        self._prev_rows: dict[int, int] = {}

    def _pending_row(self, seq: Sequence) -> int:
        """Row of `seq`'s pending token in the previous step's device tokens."""
        row = self._prev_rows.get(seq.seq_id)
        if row is None or self._prev_tokens is None:
            raise RuntimeError(f"sequence {seq.seq_id} has a pending token that no running step sampled")
        return row

    def _step_tokens(self, items: list[ScheduledSeq]) -> tuple[list[int], list[int], list[int]]:
        """The host token ids of the scheduled positions (0 where pending), and (index, previous-step row) pairs
        for the pending ones."""
        token_ids: list[int] = []
        fill_at: list[int] = []
        fill_from: list[int] = []
        for it in items:
            seq = it.seq
            end = it.start + it.num_tokens
            known = len(seq.token_ids)
            if end <= known:
                token_ids.extend(seq.token_ids[it.start : end])
                continue
            token_ids.extend(seq.token_ids[it.start : known])
            if end - max(it.start, known) != 1:
                raise RuntimeError(f"sequence {seq.seq_id}: more than one pending token scheduled")
            fill_at.append(len(token_ids))
            fill_from.append(self._pending_row(seq))
            token_ids.append(0)
        return token_ids, fill_at, fill_from

    def _slots(self, tables: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Cache slots of `positions` ([rows, n]) for sequences whose block tables are `tables` ([rows, blocks])."""
        blocks = tables.gather(1, positions // self.block_size)
        return blocks * self.block_size + positions % self.block_size

    def _tables(self, items: list[ScheduledSeq]) -> torch.Tensor:
        width = max(len(it.seq.block_table) for it in items)
        rows = [it.seq.block_table + [0] * (width - len(it.seq.block_table)) for it in items]
        return h2d(rows, torch.long, self.device)

    def _metadata(self, decodes: list[ScheduledSeq], prefills: list[ScheduledSeq]) -> tuple[AttentionMetadata, torch.Tensor]:
        dev = self.device
        slot_parts: list[torch.Tensor] = []
        pos_parts: list[torch.Tensor] = []
        decode_ctx = decode_pos = None
        decode_tables = decode_lens = None
        if decodes:
            decode_pos = h2d([it.start for it in decodes], torch.long, dev)
            tables = self._tables(decodes)
            slot_parts.append(self._slots(tables, decode_pos[:, None])[:, 0])
            pos_parts.append(decode_pos)
            if self.use_kernel:
                decode_tables = tables.to(torch.int32)
                decode_lens = (decode_pos + 1).to(torch.int32)
            else:
                ctx_len = max(it.start for it in decodes) + 1
                ctx_pos = torch.arange(ctx_len, device=dev).expand(len(decodes), ctx_len)
                # Positions past a sequence's length are masked in attention; clamp them so the gather stays valid.
                decode_ctx = self._slots(tables, torch.minimum(ctx_pos, decode_pos[:, None]))
        segments = []
        offset = len(decodes)
        for it in prefills:
            table = h2d([it.seq.block_table], torch.long, dev)
            end = it.start + it.num_tokens
            ctx = self._slots(table, torch.arange(end, device=dev)[None, :])[0]
            spans = self.multimodal.bidirectional(it) if self.multimodal is not None else None
            segments.append(PrefillSegment(offset, it.num_tokens, it.start, ctx if it.start else None, spans))
            slot_parts.append(ctx[it.start :])
            pos_parts.append(torch.arange(it.start, end, device=dev))
            offset += it.num_tokens
        meta = AttentionMetadata(
            cache=self.cache,
            slot_mapping=torch.cat(slot_parts),
            num_decode=len(decodes),
            decode_ctx_slots=decode_ctx,
            decode_positions=decode_pos,
            prefills=segments,
            decode_block_tables=decode_tables,
            decode_seq_lens=decode_lens,
        )
        return meta, torch.cat(pos_parts)

    @torch.inference_mode()
    def execute(self, batch: list[ScheduledSeq], rows: dict[int, SamplingRow]) -> StepOutput:
        """Launch one step. `rows` maps seq_id -> sampling settings for each sequence that samples this step."""
        if self.multimodal is not None:  # Gemma 3: an image's tokens run in one chunk (they attend both ways)
            self.multimodal.align_chunks(batch)
        decodes = [it for it in batch if it.num_tokens == 1]
        prefills = [it for it in batch if it.num_tokens > 1]
        uses_lora = any(it.seq.adapter for it in batch)
        if self.graphs is not None and not prefills and not uses_lora and len(decodes) <= self.graphs.max_batch:
            return self._remember(self._execute_graph(decodes, rows))
        ordered = decodes + prefills
        input_ids, meta, positions = self._flat_batch(decodes, prefills)
        if self.pad_tokens_to and self.multimodal is None:
            input_ids, positions = self._pad(input_ids, meta, positions)
        sampling_items, last_index = self._last_tokens(ordered)
        if uses_lora:
            self._activate_lora(ordered)
        inputs = {"input_ids": input_ids, "position_ids": positions[None]}
        if self.multimodal is not None:
            inputs = self.multimodal.step_inputs(ordered, input_ids, positions)
        try:
            return self._remember(self._forward(inputs, meta, sampling_items, last_index, rows))
        finally:
            if self.lora is not None:
                self.lora.deactivate()

    def _remember(self, out: StepOutput) -> StepOutput:
        if out.sample is not None:
            self._prev_tokens = out.sample.tokens
            self._prev_rows = {seq.seq_id: i for i, seq in enumerate(out.seqs)}
        return out

    def _flat_batch(
        self, decodes: list[ScheduledSeq], prefills: list[ScheduledSeq]
    ) -> tuple[torch.Tensor, AttentionMetadata, torch.Tensor]:
        token_ids, fill_at, fill_from = self._step_tokens(decodes + prefills)
        meta, positions = self._metadata(decodes, prefills)
        input_ids = h2d([token_ids], torch.long, self.device)
        if fill_at:
            assert self._prev_tokens is not None
            src = self._prev_tokens.index_select(0, h2d(fill_from, torch.long, self.device))
            input_ids[0].index_copy_(0, h2d(fill_at, torch.long, self.device), src)
        return input_ids, meta, positions

    def _pad(
        self, input_ids: torch.Tensor, meta: AttentionMetadata, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad the flat batch with dummy tokens at position 0 that write to the scratch block's slot 0."""
        tokens = input_ids.shape[1]
        pad = -tokens % self.pad_tokens_to
        if not pad:
            return input_ids, positions
        meta.slot_mapping = torch.cat([meta.slot_mapping, meta.slot_mapping.new_zeros(pad)])
        meta.padded_from = tokens
        return torch.cat([input_ids, input_ids.new_zeros(1, pad)], dim=1), torch.cat([positions, positions.new_zeros(pad)])

    @staticmethod
    def _last_tokens(ordered: list[ScheduledSeq]) -> tuple[list[ScheduledSeq], list[int]]:
        """The items whose last token runs this step, and that token's index in the flat batch."""
        items, last_index, offset = [], [], 0
        for it in ordered:
            offset += it.num_tokens
            if it.samples:
                items.append(it)
                last_index.append(offset - 1)
        return items, last_index

    def _activate_lora(self, ordered: list[ScheduledSeq]) -> None:
        assert self.lora is not None
        groups: dict[str, list[int]] = {}
        offset = 0
        for it in ordered:
            name = it.seq.adapter
            if name:
                groups.setdefault(name, []).extend(range(offset, offset + it.num_tokens))
            offset += it.num_tokens
        self.lora.activate({n: h2d(idx, torch.long, self.device) for n, idx in groups.items()})

    def _forward(
        self,
        inputs: dict[str, torch.Tensor],  # input_ids or inputs_embeds, and position_ids
        meta: AttentionMetadata,
        sampling_items: list[ScheduledSeq],
        last_index: list[int],
        rows: dict[int, SamplingRow],
    ) -> StepOutput:
        if not sampling_items:
            self.model(**inputs, use_cache=False, logits_to_keep=1, chatplex_meta=meta)
            return StepOutput([], None)
        keep = h2d(last_index, torch.long, self.device)
        out = self.model(**inputs, use_cache=False, logits_to_keep=keep, chatplex_meta=meta)
        logits = out.logits[0]
        if logits.shape[0] != len(sampling_items):
            # Some models' forward ignores logits_to_keep (Qwen2-Audio projects every position): take the rows here.
            logits = logits[keep.to(logits.device)]
        result = sample_async(logits, [rows[it.seq.seq_id] for it in sampling_items])
        return StepOutput([it.seq for it in sampling_items], result)

    @torch.inference_mode()
    def score(self, batch: list[ScheduledSeq]) -> dict[int, float]:
        """Run one step of a reward model: seq_id -> raw score for each sequence whose last token ran."""
        assert self.score_head is not None
        decodes = [it for it in batch if it.num_tokens == 1]
        prefills = [it for it in batch if it.num_tokens > 1]
        input_ids, meta, positions = self._flat_batch(decodes, prefills)
        items, last_index = self._last_tokens(decodes + prefills)
        hidden = decoder_of(self.model)(
            input_ids=input_ids, position_ids=positions[None], use_cache=False, chatplex_meta=meta
        ).last_hidden_state[0]
        if not items:
            return {}
        last = hidden[h2d(last_index, torch.long, self.device)]
        values = self.score_head(last.to(self.score_head.weight.dtype))[:, 0].float().tolist()
        return {it.seq.seq_id: v for it, v in zip(items, values)}

    def _execute_graph(self, decodes: list[ScheduledSeq], rows: dict[int, SamplingRow]) -> StepOutput:
        assert self.graphs is not None
        bs = self.block_size
        tables = [it.seq.block_table for it in decodes]
        positions = [it.start for it in decodes]
        slots = [t[p // bs] * bs + p % bs for t, p in zip(tables, positions)]
        token_ids, fill_at, fill_from = self._step_tokens(decodes)
        sources = None
        if fill_at:
            sources = [-1] * len(decodes)
            for i, row in zip(fill_at, fill_from):
                sources[i] = row
        logits = self.graphs.run(token_ids, positions, slots, tables, sources, self._prev_tokens)
        self.graph_steps += 1
        result = sample_async(logits, [rows[it.seq.seq_id] for it in decodes])
        return StepOutput([it.seq for it in decodes], result)
