"""Host <-> device copies that never make the host wait for the device.

Async scheduling launches step N+1 while step N still runs on the GPU, so any host code on the launch path that
blocks on the device stream costs the overlap. A plain `torch.tensor(data, device="cuda")` copies from pageable
memory and then synchronizes the stream; staging in pinned memory and copying with `non_blocking` does not
(PyTorch's pinned-memory cache keeps the staging buffer alive until the copy has run).
"""

from __future__ import annotations

from typing import Any

import torch


def h2d(data: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`data` (a list or CPU tensor) on `device`, copied without waiting for the device's queued work."""
    host = data.to(dtype) if isinstance(data, torch.Tensor) else torch.tensor(data, dtype=dtype)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


class D2H:
    """Device tensors copied to the host in the background; `get()` waits for them (GIL released) on first use."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        self._event = None
        if tensors and tensors[0].is_cuda:
            self._host = [t.to("cpu", non_blocking=True) for t in tensors]
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = list(tensors)

    def get(self) -> list[torch.Tensor]:
        if self._event is not None:
            # An event wait lets go of the GIL (a blocking tolist would hold it), so the event loop thread can
            # deliver text while the device works.
            self._event.synchronize()
            self._event = None
        return self._host
