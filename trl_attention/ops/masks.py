"""The mask an attention kernel was given, rebuilt for `attention_rows` from what that kernel received.

sdpa and eager get a 4D mask (or None for plain causal), which `attention_rows` reads as is. Flash-attention style
kernels get a 2D padding mask or None, and for padding-free (packed) batches the sequence boundaries through
`cu_seq_lens_q/k` or packed `position_ids`; flex attention gets a `BlockMask`. `kernel_mask` turns the latter two
into a 4D bool mask (B, 1, C, T) over the captured rows, with the kernel's own causal / sliding-window alignment.
"""

from __future__ import annotations

import torch

__all__ = ["RowMask", "kernel_mask", "varlen_keep"]


def _segments(cu: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The sequence each flattened token `index` belongs to under cumulative lengths `cu`; len(cu) - 1 past the end."""
    return torch.searchsorted(cu[1:].contiguous(), index, right=True)


def varlen_keep(cu_q, cu_k, rows: int, q_len: int, kv_len: int, is_causal: bool, sliding_window, device):
    """(1, 1, C, T) bool: which of the `kv_len` packed keys each of the last `rows` packed queries sees.

    As flash-attention's varlen kernels: no attention across sequences; within one, causality is bottom-right
    aligned (query i of a sequence with q/k lengths Lq/Lk sees keys j <= i + Lk - Lq), and a window w keeps
    keys j > i + Lk - Lq - w. Tokens past the last boundary see nothing.
    """
    cu_q, cu_k = cu_q.to(device=device, dtype=torch.long), cu_k.to(device=device, dtype=torch.long)
    q_idx = torch.arange(q_len - rows, q_len, device=device)
    k_idx = torch.arange(kv_len, device=device)
    seg_q, seg_k = _segments(cu_q, q_idx), _segments(cu_k, k_idx)
    n_seq = cu_q.numel() - 1
    keep = (seg_q[:, None] == seg_k[None, :]) & (seg_q < n_seq)[:, None]
    seg = seg_q.clamp(max=max(n_seq - 1, 0))
    off_q = q_idx - cu_q[seg]  # position of the query inside its sequence
    off_k = k_idx - cu_k[seg_k.clamp(max=cu_k.numel() - 2)]
    shift = (cu_k[seg + 1] - cu_k[seg]) - (cu_q[seg + 1] - cu_q[seg])  # Lk - Lq of the query's sequence
    last = (off_q + shift)[:, None]  # the last key position inside the sequence the query may see
    if is_causal:
        keep &= off_k[None, :] <= last
    if sliding_window is not None:
        keep &= off_k[None, :] > last - sliding_window
    return keep[None, None]


def _packed_boundaries(position_ids: torch.Tensor):
    """cu_seq_lens from packed position_ids (batch 1) as transformers' flash path derives them, or None if unpacked."""
    if position_ids is None or position_ids.shape[0] != 1 or position_ids.shape[-1] == 1:
        return None
    pos = position_ids.reshape(-1)
    if torch.equal(pos, torch.arange(pos.numel(), device=pos.device) + pos.min()):
        return None  # one increasing sequence: not packed
    starts = (pos == pos.min()).nonzero().view(-1)
    return torch.cat([starts, torch.tensor([pos.numel()], device=pos.device)])


def _block_mask_keep(block_mask, batch: int, rows: int, q_len: int, kv_len: int, device):
    """(B, 1, C, T) bool from a flex-attention BlockMask, by evaluating its mask_mod on the captured rows."""
    b = torch.arange(batch, device=device)[:, None, None, None]
    h = torch.zeros((), dtype=torch.long, device=device)
    q = torch.arange(q_len - rows, q_len, device=device)[None, None, :, None]
    k = torch.arange(kv_len, device=device)[None, None, None, :]
    keep = block_mask.mask_mod(b, h, q, k)
    return keep.expand(batch, 1, rows, kv_len).bool()


def kernel_mask(
    attention_mask, kwargs: dict, batch: int, rows: int, q_len: int, kv_len: int, is_causal, varlen, device
):
    """(mask, is_causal, sliding_window) for `attention_rows`, from what the kernel got.

    `varlen`: the kernel reads packing from `cu_seq_lens_q/k` (with `max_length_q/k`) or from packed
    `position_ids` when it gets no mask (flash-attention and kernels following its convention); sdpa and eager get
    packing inside their 4D mask instead. A ValueError for a packed batch of more than one row.
    """
    window = kwargs.get("sliding_window")
    if attention_mask is not None and type(attention_mask).__name__ == "BlockMask":
        return _block_mask_keep(attention_mask, batch, rows, q_len, kv_len, device), False, None
    if attention_mask is not None or not varlen:
        return attention_mask, is_causal, window
    names = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
    if all(kwargs.get(n) is not None for n in names):
        cu_q, cu_k = kwargs["cu_seq_lens_q"], kwargs["cu_seq_lens_k"]
    else:
        cu_q = cu_k = _packed_boundaries(kwargs.get("position_ids"))
        if cu_q is None:
            return None, is_causal, window
    if batch != 1:
        raise ValueError(f"padding-free (packed) attention needs a batch of one row, got {batch}")
    return varlen_keep(cu_q, cu_k, rows, q_len, kv_len, is_causal, window, device), False, None


class RowMask:
    """The mask of the last `rows` queries, turned into an additive fp32 bias one row block at a time.

    Same semantics as `normalize_mask` (None / 2D padding / 4D bool / 4D additive float, bottom-right causality, a
    sliding window for None and 2D masks), but nothing of size C x T is built up front: a 4D mask is kept as the
    caller's view, causality and the window are arange comparisons per block. `pieces` goes further for the torch
    kernel: the key span a row block can see at all, and bias only where its rows disagree (the r x r diagonal of a
    causal mask, the window's left edge), so the kernel neither computes nor masks keys no row of the block sees.
    """

    def __init__(self, attention_mask, rows: int, kv_len: int, is_causal: bool, sliding_window, device):
        self.rows, self.kv_len, self.device = rows, kv_len, device
        self.dense = self.pad = None
        self.causal = bool(is_causal)
        self.window = sliding_window if sliding_window is not None and kv_len > sliding_window else None
        if attention_mask is None:
            pass
        elif attention_mask.dim() == 4:
            dense = attention_mask[..., -rows:, -kv_len:]
            if dense.shape[1] != 1:
                raise ValueError(
                    f"per-head attention masks are not supported (mask shape {tuple(attention_mask.shape)})"
                )
            self.dense, self.causal, self.window = dense, False, None
        elif attention_mask.dim() == 2:
            self.pad = attention_mask[:, None, None, -kv_len:].bool()
        else:
            raise ValueError(f"unsupported attention mask of shape {tuple(attention_mask.shape)}")

    @classmethod
    def from_bias(cls, bias):
        """A RowMask reading an additive bias (B|1, 1, C, T) (or None) as is."""
        mask = cls(
            None, 0 if bias is None else bias.shape[-2], 0 if bias is None else bias.shape[-1], False, None, None
        )
        mask.dense = bias
        return mask

    def tensors(self) -> tuple:
        return tuple(t for t in (self.dense, self.pad) if t is not None)

    def block(self, r0: int, r1: int):
        """Additive bias (B|1, 1, r1 - r0, T) for rows [r0, r1), fp32 (fp64 for an fp64 mask), or None."""
        if self.dense is None and not (self.causal or self.window is not None or self.pad is not None):
            return None
        return self._bias(r0, r1, 0, self.kv_len)

    def pieces(self, r0: int, r1: int, batch: int | None = None):
        """(lo, hi, [(c0, c1, bias (B|1, 1, r, c1 - c0))], dead) for rows [r0, r1) (of batch row `batch` only:
        (1, 1, r, c1 - c0) biases, when given).

        Every row of the block is masked outside keys [lo, hi) (causality, window) and sees every key of [lo, hi)
        outside the pieces; `dead` (B|1, r) bool marks rows that see no key at all (only possible when one piece
        covers [lo, hi): padding, a 4D mask, queries before the first key), else None.
        """
        lo, hi = 0, self.kv_len
        first, last = self.kv_len - self.rows + r0, self.kv_len - self.rows + r1 - 1  # query positions
        if self.dense is None:
            hi = min(hi, last + 1) if self.causal else hi
            lo = max(lo, first - self.window + 1) if self.window is not None else lo
        if hi <= lo:
            return lo, lo, [], None
        if self.dense is not None or self.pad is not None:
            spans = [(lo, hi)]
        else:  # causal: keys after the block's first query differ by row; window: keys before its last one's start
            spans = [(lo, min(hi, last - self.window + 1))] if self.window is not None else []
            if self.causal:
                spans.append((max(lo, first + 1), hi))
            spans = [(c0, c1) for c0, c1 in spans if c1 > c0]
            if len(spans) == 2 and spans[1][0] <= spans[0][1]:
                spans = [(spans[0][0], spans[1][1])]
        pieces = [(c0, c1, self._bias(r0, r1, c0, c1, batch)) for c0, c1 in spans]
        dead = None
        if len(spans) == 1 and spans[0] == (lo, hi):
            dead = (pieces[0][2] == float("-inf")).all(dim=-1)[:, 0]
        return lo, hi, pieces, dead

    def _bias(self, r0: int, r1: int, c0: int, c1: int, batch: int | None = None):
        """Additive bias (B|1, 1, r1 - r0, c1 - c0) of rows [r0, r1) over keys [c0, c1) (of one batch row)."""
        rows_of = (lambda t: t) if batch is None else (lambda t: t[batch : batch + 1] if t.shape[0] > 1 else t)
        if self.dense is not None:
            dense = rows_of(self.dense)[..., r0:r1, c0:c1]
            if dense.dtype != torch.bool:
                return dense.to(torch.float64 if dense.dtype == torch.float64 else torch.float32)
            keep = dense
        else:
            keep = None if self.pad is None else rows_of(self.pad)[..., c0:c1]
            if self.causal or self.window is not None:
                query_pos = torch.arange(
                    self.kv_len - self.rows + r0, self.kv_len - self.rows + r1, device=self.device
                )
                key_pos = torch.arange(c0, c1, device=self.device)[None, :]
                near = key_pos <= query_pos[:, None] if self.causal else None
                if self.window is not None:
                    inside = key_pos > query_pos[:, None] - self.window
                    near = inside if near is None else near & inside
                keep = near[None, None] if keep is None else keep & near
            if keep is None:  # padding-free, causal-free: every key visible
                keep = torch.ones((1, 1, r1 - r0, c1 - c0), dtype=torch.bool, device=self.device)
        zero = torch.zeros((), dtype=torch.float32, device=keep.device)
        return torch.where(keep, zero, torch.full((), float("-inf"), device=keep.device))
