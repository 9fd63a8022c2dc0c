"""Peak live tensor bytes, counted per aten op: how the capture's memory claim is measured, on any device.

`torch.cuda.max_memory_allocated` exists only on CUDA and RSS on CPU mixes in the allocator's caching; this counts
the storages ops create (forward, autograd, optimizer) and frees them when their storage dies. Used by
`tests/capture/test_memory.py` and `benchmarks/capture.py --live-bytes`.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["LiveTensorBytes"]


class LiveTensorBytes(TorchDispatchMode):
    """`with LiveTensorBytes() as counter: ...` then `counter.peak`: the most bytes of storages created by ops
    inside the block alive at once, `counter.live` those alive now.

    Exact for the tensors ops hand out (views and in-place results share a storage and count once); blind to
    scratch memory inside one kernel and to tensors created outside the block.
    """

    def __init__(self):
        super().__init__()
        self.sizes, self.live, self.peak = {}, 0, 0

    def _free(self, key) -> None:
        self.live -= self.sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        seen = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in (t for t in tree_leaves(out) if isinstance(t, torch.Tensor)):
            storage = tensor.untyped_storage()
            if (key := storage._cdata) not in seen and key not in self.sizes:
                self.sizes[key] = storage.nbytes()
                self.live += self.sizes[key]
                weakref.finalize(storage, self._free, key)
        self.peak = max(self.peak, self.live)
        return out
