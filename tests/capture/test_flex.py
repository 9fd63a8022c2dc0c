"""The capture under transformers' flex_attention, end to end on CPU (forward only: torch's flex attention has no CPU
backward), against eager attention with left padding."""

import torch

from trl_attention import capture_attention
from trl_attention.tiny import build_tiny_lm


@torch.no_grad()
def test_flex_attention_rows_match_eager_with_left_padding():
    model, _ = build_tiny_lm(seed=0, attn_implementation="flex_attention")
    eager, _ = build_tiny_lm(seed=0, attn_implementation="eager")
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [0, 0, 7, 8, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    with capture_attention(model, num_rows=3) as cap:
        logits = model(input_ids=ids, attention_mask=mask).logits
    reference = eager(input_ids=ids, attention_mask=mask, output_attentions=True)
    torch.testing.assert_close(cap.probs, reference.attentions[-1].mean(1)[:, -3:], atol=1e-6, rtol=0)
    torch.testing.assert_close(logits[mask.bool()], reference.logits[mask.bool()], atol=1e-5, rtol=0)
    assert model.config._attn_implementation == "flex_attention"  # the wrapper was left again
