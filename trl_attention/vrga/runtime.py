"""`enable_vrga(model, config)`: VRGA at generation time through the capture layer's attention wrapper.

Prefill (a forward whose input_ids hold more than one token): every decoder layer keeps its kernel's output and
additionally computes the per-head softmax row of ONE query token per sample (one (B, H, 1, T) product: the last
prompt token, or the question's as the released code takes it, `VRGAConfig.query`); after the last layer, stage 1
picks each sample's heads and focus tokens. Decoding (one query token): every layer computes
the new token's per-head row (the statistics need it), decides per (sample, head) whether to boost, and in the
default "correction" mode keeps the kernel's output and corrects the boosted heads with
    out' = (out + gamma * sum_S p_i v_i) / (1 + gamma * sum_S p_i)
(S = focus tokens + neighbours), which is exactly the output of the reweighted, renormalised row. No host sync
happens during decoding; everything is batched with per-sample index tensors (left padding, several images).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from torch import nn
from typing_extensions import Self

from ..capture import AttentionHooks, CaptureError, unwrap_model
from ..visual.layouts import LayoutError, visual_layout
from ..ops.attention_rows import normalize_mask
from .config import VRGAConfig
from .inputs import refuse_video
from .inputs import in_window as _in_window
from .inputs import layout_grids as _layout_grids
from .inputs import split_grids as _split_grids
from .select import boosted_heads, image_statistics, select_focus

__all__ = ["VRGA", "VRGADiagnostics", "enable_vrga", "head_rows"]


def head_rows(query, key, bias, scaling) -> torch.Tensor:
    """Per-head softmax rows (B, H, Q, T) in fp32; GQA keys (B, H_kv, T, D) are shared without being repeated.

    The product runs in the model's dtype (as eager attention does), the softmax in fp32.
    """
    batch, heads, rows, dim = query.shape
    kv_heads = key.shape[1]
    q = query.reshape(batch, kv_heads, heads // kv_heads * rows, dim) * scaling
    scores = torch.matmul(q, key.transpose(-1, -2)).float().view(batch, heads, rows, -1)
    if bias is not None:
        scores = scores + bias
    return torch.softmax(scores, dim=-1)


@dataclass
class VRGADiagnostics:
    """What VRGA decided for one sample in the last generate/forward call. Layers are decoder layer indices."""

    visual_heads: list  # [(layer, head)] selected in stage 1
    background_heads: list  # [(layer, head)]
    used_fallback: bool  # no head met both visual criteria: the R_img percentile alone was used
    r_img: torch.Tensor  # (L, H) at the last prompt token
    h_img: torch.Tensor  # (L, H)
    efr: torch.Tensor  # (L, H)
    refined_maps: list  # per image: A_refined on its token grid (h, w), or (t, h, w) for t > 1
    focus: list  # per image: bool grid of the focus tokens T_q
    boosted_tokens: list  # per image: bool grid of T_q and its neighbours (the tokens gamma multiplies)
    focus_positions: torch.Tensor  # sequence positions (in the padded prompt) of the boosted tokens
    boost_counts: torch.Tensor  # (L, H): decoding steps in which each head was boosted (updated while decoding)
    query_position: int = -1  # position (in the padded prompt) of the stage-1 query row


def _pad(rows: list, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D index tensors into (B, max) indices (0 where padded) and a validity mask."""
    width = max([len(r) for r in rows] + [1])
    index = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    valid = torch.zeros(len(rows), width, dtype=torch.bool, device=device)
    for b, r in enumerate(rows):
        index[b, : len(r)] = r
        valid[b, : len(r)] = True
    return index, valid


def _pairs(mask: torch.Tensor) -> list:
    """[(layer, head)] of the True entries of an (L, H) mask."""
    return [tuple(p) for p in torch.nonzero(mask).tolist()]


def _grid_views(values: torch.Tensor, grids) -> list:
    """Split a vector over a sample's image tokens into one (h, w) (or (t, h, w)) grid per image."""
    parts = torch.split(values.detach().cpu(), [t * h * w for t, h, w in grids])
    return [p.view(h, w) if t == 1 else p.view(t, h, w) for p, (t, h, w) in zip(parts, grids)]


class VRGA:
    """Handle of VRGA on a model: active from creation until `disable()` (or the end of a `with` block).

    `diagnostics` holds one `VRGADiagnostics` per sample of the last prompt (None for a sample without images).
    `q_end_pos` (an int, or one per sample; settable between calls) overrides `config.q_end_pos`.
    """

    def __init__(self, model: nn.Module, config: VRGAConfig | None = None, q_end_pos=None):
        self.config = config if config is not None else VRGAConfig()
        self.q_end_pos = q_end_pos if q_end_pos is not None else self.config.q_end_pos
        base = unwrap_model(model)
        self._end_of_turn = _end_of_turn_ids(base)
        self._vision_start = getattr(base.config, "vision_start_token_id", None)
        name = type(base).__name__
        self.image_token_id = getattr(base.config, "image_token_id", None)
        if self.image_token_id is None:
            raise CaptureError(f"VRGA needs a vision-language model with image tokens; {name} has no image_token_id")
        try:  # where the image tokens are and the grid they form: the layouts SAYO and the heatmaps read
            self.layout = visual_layout(base)
        except LayoutError as error:
            raise CaptureError(f"VRGA needs one token grid over each whole image: {error}") from error
        self.image_token_id, self.merge = self.layout.token_id, self.layout.merge
        # transformers' generate encodes the images before the prefill forward and does not pass their grids
        # (image_grid_thw, Gemma4's image_position_ids) to it: they are read where the images are encoded, in the
        # (inner) model's get_image_features. A fixed layout (LLaVA, Gemma3) needs none.
        self._grid_key = {"dynamic": "image_grid_thw", "patches": "image_position_ids"}.get(self.layout.kind)
        self._encoder_owner = getattr(base, "base_model", base)
        encoder = getattr(self._encoder_owner, "get_image_features", None)
        if encoder is None:
            raise CaptureError(f"VRGA needs a VLM with get_image_features(pixel_values, ...); {name} has none")
        self._hooks = AttentionHooks(model, self._attention)  # sdpa/eager only: CaptureError otherwise
        self.num_layers = len(self._hooks.layers)
        self.diagnostics: list = []
        self._state: dict | None = None
        self._grids = None
        self._encoder_owner.get_image_features = self._recording(encoder)
        self._generate_owner, base.generate = base, _one_sequence_per_prompt(base.generate, base)  # one per prompt
        self._pre_hook = base.register_forward_pre_hook(self._on_forward, with_kwargs=True)
        self._hooks.enable()

    def _recording(self, encoder):
        signature = inspect.signature(encoder)

        @functools.wraps(encoder)
        def get_image_features(*args, **kwargs):
            if self._grid_key is not None:
                self._grids = signature.bind(*args, **kwargs).arguments.get(self._grid_key)
            return encoder(*args, **kwargs)

        return get_image_features

    # -- lifecycle ----------------------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self._pre_hook is not None

    def disable(self) -> None:
        """Remove VRGA: the model runs exactly as before (diagnostics are kept)."""
        if self._pre_hook is not None:
            self._pre_hook.remove()
            self._pre_hook = None
            self._hooks.disable()
            del self._encoder_owner.get_image_features, self._generate_owner.generate  # ours: the class's show again

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.disable()

    # -- per forward --------------------------------------------------------------------------------------------
    def _on_forward(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if kwargs.get("use_cache") is False:
            raise ValueError("VRGA needs use_cache=True: decoding steps are recognised by their single query token")
        if ids is None:
            raise ValueError(f"VRGA needs input_ids (to find the image tokens); {type(module).__name__} got none")
        mask = kwargs.get("attention_mask")
        n_keys = mask.sum(-1) if mask is not None and mask.dim() == 2 else torch.full(ids.shape[:1], ids.shape[1])
        if ids.shape[1] > 1:
            refuse_video(module, ids)  # VRGA is defined on images (inputs.py)
            cache = kwargs.get("past_key_values")
            if cache is not None and cache.get_seq_length() > 0:
                raise ValueError("VRGA does not support chunked prefill or multi-token continuation of a cache")
            keys = mask.bool() if mask is not None and mask.dim() == 2 else torch.ones_like(ids, dtype=torch.bool)
            self._state = {"ids": ids, "keys": keys, "n_keys": n_keys.to(ids.device, torch.float32)}
            self._state.update(prefill={}, ready=False, length=ids.shape[1])  # length: positions in the cache
            self.diagnostics = []
        elif self._state is not None and mask is not None and mask.dim() == 2:
            self._state["n_keys"] = n_keys.to(torch.float32)
            self._state["length"] += 1
        elif self._state is not None:  # no 2-D mask: every cached position counts
            self._state["n_keys"] = self._state["n_keys"] + 1
            self._state["length"] += 1

    def _locate_images(self, state):
        """At the first prefill layer (the images are encoded by then): per-sample image positions and grids."""
        input_ids, device = state.pop("ids"), state["n_keys"].device
        grids, self._grids = _layout_grids(self.layout, input_ids, self._grids), None
        samples = _split_grids(input_ids, self.image_token_id, grids, self.merge)
        empty = torch.zeros(0, dtype=torch.long, device=device)
        flat = [torch.cat(pos) if pos else empty for pos, _ in samples]
        slot = self.config.image_span == "vision_start"
        spans = [
            torch.cat([self._span(ids, p) for p in pos]) if pos else empty for ids, (pos, _) in zip(input_ids, samples)
        ]  # noqa: E501
        index, valid = _pad(spans if slot else flat, device)
        state.update(samples=samples, flat=flat, img_index=index, img_valid=valid, has_image=valid.any(-1))
        keys = state["key_mask"] = state.pop("keys").to(device)
        if isinstance(self.q_end_pos, (list, tuple)) and len(self.q_end_pos) != input_ids.shape[0]:
            raise ValueError(  # was: extra entries ignored, too few a bare IndexError
                f"VRGA: q_end_pos has {len(self.q_end_pos)} entries for a batch of {input_ids.shape[0]} prompts; "
                "give one per prompt (or one int for all)"
            )
        rows = [self._query_row(b, ids, k, pos) for b, (ids, k, (pos, _)) in enumerate(zip(input_ids, keys, samples))]
        query = torch.tensor(rows)
        state["query"] = query.to(device)
        visible = (keys & (torch.arange(keys.shape[1], device=device) <= state["query"][:, None])).sum(-1)
        state["stage1_keys"] = (visible if self.config.r_img_keys == "visible" else keys.sum(-1)).float()

    def _span(self, ids, positions):
        """An image's stage-1 keys: its tokens, preceded by its <|vision_start|> with image_span="vision_start"."""
        if self.config.image_span == "image":
            return positions
        slot = int(positions[0]) - 1
        if slot < 0 or (self._vision_start is not None and int(ids[slot]) != self._vision_start):
            raise ValueError(
                f"VRGA image_span='vision_start': the token before the image at position {int(positions[0])} is not "
                f"<|vision_start|> (id {self._vision_start}); use image_span='image'"
            )
        return torch.cat([positions.new_tensor([slot]), positions])

    def _query_row(self, b, ids, keys, positions) -> int:
        """Stage-1 query row of sample b, as a position in its padded prompt (see VRGAConfig.query)."""
        last = ids.shape[0] - 1
        q_end = self.q_end_pos[b] if isinstance(self.q_end_pos, (list, tuple)) else self.q_end_pos
        if q_end is not None:
            row = int(torch.nonzero(keys)[0]) + int(q_end) - 1
            if not 0 <= row <= last:
                raise ValueError(f"VRGA: q_end_pos={q_end} puts the query row outside the prompt of {last + 1} tokens")
            return row
        if self.config.query == "last" or not positions:
            return last
        vision_end = int(positions[-1][-1]) + 1  # the question follows the last image's <|vision_end|>
        after = torch.isin(ids[vision_end + 1 :], ids.new_tensor(self._end_of_turn))
        if not after.any():  # no question end to find: guessing the last token would not be the reference's row
            raise ValueError(
                f"VRGA query='question': sample {b} has no end-of-turn token (ids {self._end_of_turn}) after its last "
                "image, so the question's end is unknown; pass q_end_pos (eval_qwen.py's meaning) or query='last'"
            )
        return max(vision_end + int(torch.nonzero(after)[0]) - 1, 0)

    def _finish_prefill(self, state):
        """Stage 1 for every sample, once all layers have reported their query rows."""
        layers = [state["prefill"].pop(i) for i in range(self.num_layers)]
        r_img, h_img, efr, maps = (torch.stack([layer[k] for layer in layers], dim=1) for k in range(4))
        batch, _, heads = r_img.shape
        counts = torch.zeros(batch, self.num_layers, heads, dtype=torch.long, device=r_img.device)
        boosted, self.diagnostics = [], []
        for b, (positions, grids) in enumerate(state["samples"]):
            n_image = len(state["flat"][b])
            if n_image == 0:
                boosted.append(state["flat"][b])
                self.diagnostics.append(None)
                continue
            slot = self.config.image_span == "vision_start"
            n_span = n_image + len(grids) * int(slot)
            sel = select_focus(r_img[b], efr[b], maps[b, :, :, :n_span], grids, self.config, slot)
            boosted.append(state["flat"][b][sel.boosted])
            views = [_grid_views(t, grids) for t in (sel.refined, sel.focus, sel.boosted)]
            stats = [t[b].cpu() for t in (r_img, h_img, efr)]
            self.diagnostics.append(
                VRGADiagnostics(
                    _pairs(sel.visual),
                    _pairs(sel.background),
                    sel.used_fallback,
                    *stats,
                    *views,
                    focus_positions=boosted[-1].cpu(),
                    boost_counts=counts[b],
                    query_position=int(state["query"][b]),
                )
            )
        state["boost_index"], state["boost_valid"] = _pad(boosted, r_img.device)
        state["counts"], state["ready"] = counts, True

    # -- the attention hook -------------------------------------------------------------------------------------
    def _attention(self, layer, module, query, key, value, attention_mask, output, kwargs):
        state = self._state
        if state is None:
            return None
        batch, _, q_len, dim = query.shape
        scaling = kwargs.get("scaling") or dim**-0.5
        if q_len > 1:
            if layer in state["prefill"] or state["ready"]:
                return None  # a multi-token forward after stage 1 (no new prompt seen): keep the selection
            if "ids" in state:
                self._locate_images(state)
            is_causal = kwargs.get("is_causal")
            is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
            rows = self._query_rows(state, query, key, attention_mask, output[1], is_causal, scaling)
            stats = self._statistics(state, rows, state["stage1_keys"])
            state["prefill"][layer] = stats + (self._gather(rows, state["img_index"]),)
            if len(state["prefill"]) == self.num_layers:
                self._finish_prefill(state)
            return None
        if not state["ready"]:
            return None
        return self._decode_step(state, layer, query, key, value, attention_mask, output, scaling)

    @staticmethod
    def _gather(rows, index):
        return rows.gather(-1, index[:, None, :].expand(-1, rows.shape[1], -1))

    @staticmethod
    def _query_rows(state, query, key, attention_mask, weights, is_causal, scaling):
        """(B, H, T) fp32 probabilities of each sample's stage-1 query row (`state["query"]`)."""
        batch, heads, q_len, dim = query.shape
        where = state["query"]
        if weights is not None:  # eager base: its probabilities are already there
            index = where[:, None, None, None].expand(-1, heads, 1, weights.shape[-1])
            return weights.gather(2, index)[:, :, 0].float()
        if bool((where == q_len - 1).all()):  # the last prompt token: the kernel's own mask row
            bias = normalize_mask(attention_mask, batch, 1, q_len, key.shape[2], is_causal, query.device)
            return head_rows(query[:, :, -1:], key, bias, scaling)[:, :, 0]
        keys = state["key_mask"]
        keep = keys & (torch.arange(keys.shape[1], device=keys.device) <= where[:, None])
        bias = torch.where(keep, 0.0, float("-inf"))[:, None, None, :].float()
        picked = query.gather(2, where[:, None, None, None].expand(-1, heads, 1, dim))
        return head_rows(picked, key, bias, scaling)[:, :, 0]

    def _statistics(self, state, rows, n_keys=None, entropy: str = "image", image=None):
        index, valid = (state["img_index"], state["img_valid"]) if image is None else image
        image_probs = self._gather(rows, index)
        mean_all = rows.sum(-1) / (state["n_keys"] if n_keys is None else n_keys)[:, None]
        return image_statistics(image_probs, mean_all, valid[:, None], entropy)

    def _decode_step(self, state, layer, query, key, value, attention_mask, output, scaling):
        batch, heads = query.shape[:2]
        kv_heads, length = key.shape[1], key.shape[2]
        weights = output[1]
        if weights is not None:
            rows = weights[:, :, -1].float()
        else:
            bias = normalize_mask(attention_mask, batch, 1, 1, length, False, query.device)
            rows = head_rows(query, key, bias, scaling)[:, :, 0]  # (B, H, T)
        # A sliding-window layer's cache holds the last `length` of the sequence's positions: shift the image and
        # focus positions into it (those that left the window are masked there anyway, so not boosted).
        offset = state["length"] - length
        image = _in_window(state["img_index"], state["img_valid"], offset)
        n_keys = state["n_keys"].clamp(max=length) if offset > 0 else None
        r_img, h_img, _ = self._statistics(state, rows, n_keys, self.config.boost_entropy, image)
        cfg = self.config
        boost = boosted_heads(r_img, h_img, cfg) & state["has_image"][:, None]
        state["counts"][:, layer] += boost
        gain = cfg.gamma * boost.to(torch.float32)  # (B, H): gamma on boosted heads, 0 elsewhere
        index, valid = _in_window(state["boost_index"], state["boost_valid"], offset)
        attn_output = output[0]  # (B, 1, H, D)
        if cfg.mode == "correction":
            focus_probs = self._gather(rows, index) * valid[:, None]  # (B, H, S)
            picked = value.gather(2, index[:, None, :, None].expand(-1, kv_heads, -1, value.shape[-1]))
            grouped = focus_probs.view(batch, kv_heads, heads // kv_heads, -1)
            correction = torch.matmul(grouped.to(value.dtype), picked).float().view(batch, 1, heads, -1)
            out = (attn_output.float() + gain[:, None, :, None] * correction) / (1.0 + gain * focus_probs.sum(-1))[
                :, None, :, None
            ]
        else:  # explicit: reweight the whole row, renormalise, multiply by V (what an eager implementation does)
            in_focus = torch.zeros(batch, length, device=rows.device)
            in_focus.scatter_add_(1, index, valid.to(in_focus.dtype))  # padded entries add 0 at index 0
            reweighted = rows * (1.0 + gain[:, :, None] * in_focus[:, None, :])
            reweighted = reweighted / reweighted.sum(-1, keepdim=True)
            grouped = reweighted.view(batch, kv_heads, heads // kv_heads, length).to(value.dtype)
            out = torch.matmul(grouped, value).view(batch, 1, heads, -1)
        return out.to(attn_output.dtype), output[1]


def enable_vrga(model: nn.Module, config: VRGAConfig | None = None, q_end_pos=None) -> VRGA:
    """Turn VRGA on for `model` (a VLM whose image tokens form one grid per image, `visual.layouts`: Qwen2/2.5/3-VL,
    Qwen3.5-VL, LLaVA, Gemma3, Gemma4; on sdpa or eager attention).

    Returns the handle: `with enable_vrga(model, cfg) as vrga: model.generate(**inputs)`, or keep it and call
    `vrga.disable()`. `vrga.diagnostics` describes the last prompt (heads, refined map and focus tokens per image).
    `q_end_pos`: the released eval_qwen.py's question end (stage-1 query row q_end_pos - 1 in the unpadded prompt),
    an int or one per sample; overrides `config.q_end_pos` and `config.query`.
    """
    return VRGA(model, config, q_end_pos)


def _one_sequence_per_prompt(generate, base):
    """`generate` refusing num_beams / num_return_sequences > 1 (VRGA's per-sample state is one row per prompt)."""

    @functools.wraps(generate)
    def checked(*args, **kwargs):
        config = kwargs.get("generation_config") or getattr(base, "generation_config", None)
        for option in ("num_beams", "num_return_sequences"):
            if int(value := kwargs.get(option, getattr(config, option, None)) or 1) > 1:
                raise ValueError(f"VRGA supports one sequence per prompt: {option}={value} is not supported")
        return generate(*args, **kwargs)

    return checked


def _end_of_turn_ids(base) -> list:
    """Token ids that close the user turn (the model's eos ids: <|im_end|> on Qwen-VL), for query="question"."""
    sources = (base.config, getattr(base.config, "text_config", None), getattr(base, "generation_config", None))
    ids = [getattr(source, "eos_token_id", None) for source in sources if source is not None]
    flat = [i for v in ids for i in (v if isinstance(v, (list, tuple)) else [v]) if i is not None]
    return list(dict.fromkeys(int(i) for i in flat))
