"""The only code that runs the model: scheduled chunks -> one flat forward pass -> sampled tokens.

Layout of a step: every scheduled token of every sequence sits in one row (batch size 1), single-token decodes
first, then prefill chunks. Positions and cache slots are computed from block tables with tensor ops, so the
per-step Python work is proportional to the number of sequences, not to their context lengths.
"""

from __future__ import annotations

from typing import Any

import torch

from chatplex.engines.hf import triton_decode
from chatplex.engines.hf.attention import AttentionMetadata, PrefillSegment
from chatplex.engines.hf.cuda_graphs import DecodeGraphs
from chatplex.engines.hf.kv_cache import PagedKVCache
from chatplex.engines.hf.lora import LoraAdapters
from chatplex.engines.hf.scoring import decoder_of
from chatplex.engines.hf.sampler import SampleOutput, SamplingRow, sample
from chatplex.engines.hf.scheduler import ScheduledSeq


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

    def _slots(self, tables: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Cache slots of `positions` ([rows, n]) for sequences whose block tables are `tables` ([rows, blocks])."""
        blocks = tables.gather(1, positions // self.block_size)
        return blocks * self.block_size + positions % self.block_size

    def _tables(self, items: list[ScheduledSeq]) -> torch.Tensor:
        width = max(len(it.seq.block_table) for it in items)
        rows = [it.seq.block_table + [0] * (width - len(it.seq.block_table)) for it in items]
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def _metadata(self, decodes: list[ScheduledSeq], prefills: list[ScheduledSeq]) -> tuple[AttentionMetadata, torch.Tensor]:
        dev = self.device
        slot_parts: list[torch.Tensor] = []
        pos_parts: list[torch.Tensor] = []
        decode_ctx = decode_pos = None
        decode_tables = decode_lens = None
        if decodes:
            decode_pos = torch.tensor([it.start for it in decodes], dtype=torch.long, device=dev)
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
            table = torch.tensor([it.seq.block_table], dtype=torch.long, device=dev)
            end = it.start + it.num_tokens
            ctx = self._slots(table, torch.arange(end, device=dev)[None, :])[0]
            segments.append(PrefillSegment(offset, it.num_tokens, it.start, ctx if it.start else None))
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
    def execute(self, batch: list[ScheduledSeq], rows: dict[int, SamplingRow]) -> dict[int, tuple[int, SampleOutput]]:
        """Run one step. `rows` maps seq_id -> sampling settings for each sequence that samples this step.

        Returns seq_id -> (row index into the SampleOutput, the shared SampleOutput).
        """
        decodes = [it for it in batch if it.num_tokens == 1]
        prefills = [it for it in batch if it.num_tokens > 1]
        uses_lora = any(it.seq.state.get("adapter") for it in batch)
        if self.graphs is not None and not prefills and not uses_lora and len(decodes) <= self.graphs.max_batch:
            return self._execute_graph(decodes, rows)
        ordered = decodes + prefills
        input_ids, meta, positions = self._flat_batch(decodes, prefills)
        sampling_items, last_index = self._last_tokens(ordered)
        if uses_lora:
            self._activate_lora(ordered)
        inputs = {"input_ids": input_ids, "position_ids": positions[None]}
        if self.multimodal is not None:
            inputs = self.multimodal.step_inputs(ordered, input_ids, positions)
        try:
            return self._forward(inputs, meta, sampling_items, last_index, rows)
        finally:
            if self.lora is not None:
                self.lora.deactivate()

    def _flat_batch(
        self, decodes: list[ScheduledSeq], prefills: list[ScheduledSeq]
    ) -> tuple[torch.Tensor, AttentionMetadata, torch.Tensor]:
        token_ids: list[int] = []
        for it in decodes + prefills:
            token_ids.extend(it.seq.token_ids[it.start : it.start + it.num_tokens])
        meta, positions = self._metadata(decodes, prefills)
        return torch.tensor([token_ids], dtype=torch.long, device=self.device), meta, positions

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
            name = it.seq.state.get("adapter")
            if name:
                groups.setdefault(name, []).extend(range(offset, offset + it.num_tokens))
            offset += it.num_tokens
        self.lora.activate({n: torch.tensor(idx, dtype=torch.long, device=self.device) for n, idx in groups.items()})

    def _forward(
        self,
        inputs: dict[str, torch.Tensor],  # input_ids or inputs_embeds, and position_ids
        meta: AttentionMetadata,
        sampling_items: list[ScheduledSeq],
        last_index: list[int],
        rows: dict[int, SamplingRow],
    ) -> dict[int, tuple[int, SampleOutput]]:
        if not sampling_items:
            self.model(**inputs, use_cache=False, logits_to_keep=1, chatplex_meta=meta)
            return {}
        out = self.model(
            **inputs,
            use_cache=False,
            logits_to_keep=torch.tensor(last_index, device=self.device),
            chatplex_meta=meta,
        )
        logits = out.logits[0]
        if logits.shape[0] != len(sampling_items):
            # Some models' forward ignores logits_to_keep (Qwen2-Audio projects every position): take the rows here.
            logits = logits[torch.tensor(last_index, device=logits.device)]
        result = sample(logits, [rows[it.seq.seq_id] for it in sampling_items])
        return {it.seq.seq_id: (i, result) for i, it in enumerate(sampling_items)}

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
        last = hidden[torch.tensor(last_index, device=self.device)]
        values = self.score_head(last.to(self.score_head.weight.dtype))[:, 0].float().tolist()
        return {it.seq.seq_id: v for it, v in zip(items, values)}

    def _execute_graph(self, decodes: list[ScheduledSeq], rows: dict[int, SamplingRow]) -> dict[int, tuple[int, SampleOutput]]:
        assert self.graphs is not None
        bs = self.block_size
        tables = [it.seq.block_table for it in decodes]
        positions = [it.start for it in decodes]
        slots = [t[p // bs] * bs + p % bs for t, p in zip(tables, positions)]
        token_ids = [it.seq.token_ids[it.start] for it in decodes]
        logits = self.graphs.run(token_ids, positions, slots, tables)
        self.graph_steps += 1
        result = sample(logits, [rows[it.seq.seq_id] for it in decodes])
        return {it.seq.seq_id: (i, result) for i, it in enumerate(decodes)}
