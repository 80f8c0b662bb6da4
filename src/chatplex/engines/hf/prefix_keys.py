"""What a sequence's cached keys and values depend on besides its tokens: the root of its block hashes.

Two sequences may share a cached block only when the block's keys and values would come out the same, so the root
names the LoRA adapter the sequence runs with and a digest of its media (the same placeholder tokens stand for any
image). Media digests hash the processed inputs (pixel values, audio features, grid sizes), not the embeddings the
engine fills in later nor what follows from the tokens.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import torch

# Not hashed: filled in by the engine after admission (embeds, deepstack), or derived from the prompt's tokens and
# the media inputs that are hashed (where each media token sits, its positions, its image span). Hashing these
# would make the key depend on the whole prompt, so a conversation's next turn could never find its earlier turns.
_SKIPPED_FIELDS = frozenset({"embeds", "deepstack", "rank", "positions", "rope_delta", "spans"})


def cache_key(adapter: str | None, media: Any = None) -> bytes:
    """The root hash of a sequence's blocks. Computed where media is prepared (off the event loop: an image's
    pixels take a few milliseconds to hash)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(b"adapter\0" + (adapter or "").encode() + b"\0")
    if media is not None:
        for field in dataclasses.fields(media):
            if field.name not in _SKIPPED_FIELDS:
                h.update(field.name.encode() + b"\0")
                _update(h, getattr(media, field.name))
    return h.digest()


def cache_limit(media: Any) -> int | None:
    """The last position a cached prefix may end at, for media whose tokens attend to each other both ways (Gemma
    3's images): such a span must be computed whole (align_chunks), so a cached prefix stops before the first one."""
    spans = getattr(media, "spans", None)
    if spans is None:
        return None
    inside = (spans >= 0).nonzero()
    return int(inside[0, 0]) if len(inside) else None


def _update(h: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, (list, tuple)):
        h.update(b"[%d" % len(value))
        for item in value:
            _update(h, item)
    elif isinstance(value, dict):
        for k in sorted(value):
            h.update(str(k).encode())
            _update(h, value[k])
    else:
        h.update(repr(value).encode())
