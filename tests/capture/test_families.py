"""The capture on other families: hybrid decoders (attention layers among Mamba / linear-attention layers) and
VLMs beyond Qwen, against eager `output_attentions` (which lists the attention layers only)."""

import copy

import pytest
import torch

from trl_attention import CaptureError, capture_attention
from trl_attention.capture.models import attention_layers, find_decoder_layers, kernel_options, visual_token_ids
from trl_attention_recipes.families import (
    HYBRID_FAMILIES,
    VLM_FAMILIES,
    available_families,
    build_tiny_family,
    dummy_inputs,
)
from trl_attention_recipes.families_vlm import IMAGE_TOKENS

FAMILIES = available_families()
_TEXT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
HYBRIDS = [f for f in HYBRID_FAMILIES if f in FAMILIES]
VLMS = [f for f in VLM_FAMILIES if f in FAMILIES]


def _model_and_inputs(name):
    model, extra = build_tiny_family(name)
    return model, (extra if isinstance(extra, dict) else dummy_inputs())


@pytest.mark.parametrize("name", HYBRIDS + VLMS)
@pytest.mark.parametrize("layer", [-1, 0])
def test_rows_and_grads_match_eager_of_that_attention_layer(name, layer):
    model, inputs = _model_and_inputs(name)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with capture_attention(model, num_rows=5, layer=layer) as cap:
        model(**inputs)
    attentions = eager(**inputs, output_attentions=True).attentions
    assert len(attentions) == len(attention_layers(model))  # eager lists exactly the layers the capture indexes
    ref = attentions[layer].float().mean(1)[:, -5:]
    valid = inputs["attention_mask"].bool()[:, -5:]
    torch.testing.assert_close(cap.probs[valid], ref[valid], atol=1e-5, rtol=0)
    weight = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))
    (cap.probs * weight).sum().backward()
    (ref * weight).sum().backward()
    grads = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
    reference = dict(eager.named_parameters())
    assert grads
    for n, g in grads:
        expected = reference[n].grad  # relative to the tensor's norm: Gemma3's projector grads reach ~5e4
        assert (g - expected).norm() <= 1e-4 * expected.norm() + 1e-6, n


@pytest.mark.parametrize("name", HYBRIDS)
def test_hybrid_layer_indices(name):
    model, _ = build_tiny_family(name)
    decoder = find_decoder_layers(model)
    found = attention_layers(model)
    assert [i for i, _ in found] == [1, 3] and len(decoder) == 5  # the tiny hybrids end on a non-attention layer
    cap = capture_attention(model, layer=-1)
    assert cap.layer_index == 1 and cap._hooks.model_layers == [3]  # "final layer" = the last attention layer
    assert cap._hooks.modules[0] is found[-1][1]
    with pytest.raises(CaptureError, match=r"layer=2 is out of range for the 2 attention layers \(decoder layers"):
        capture_attention(model, layer=2)


def test_kernel_options_name_softcap_and_sinks():
    names = {
        family: [name for name, _, _ in kernel_options(attention_layers(build_tiny_family(family)[0])[0][1])]
        for family in ("gemma2", "gpt_oss", "qwen3_5")
        if family in FAMILIES
    }
    assert names.get("gemma2", ["softcap", "sliding_window"]) == ["softcap", "sliding_window"]
    assert names.get("gpt_oss", ["s_aux", "sliding_window"]) == ["s_aux", "sliding_window"]
    assert names.get("qwen3_5", []) == []


@pytest.mark.parametrize("name", VLMS)
def test_visual_token_ids_know_each_family(name):
    model, inputs = build_tiny_family(name)
    video = ("qwen2_vl", "qwen3_vl", "qwen3_5_vl", "gemma4", "llava_onevision")  # these have video tokens
    expected = [5, 6] if name in video else [5]
    assert visual_token_ids(model) == expected
    per_row = IMAGE_TOKENS.get(name, 4)  # the builders' image placeholders match the vision tower's output
    assert (inputs["input_ids"] == 5).sum() == 2 * per_row
    features = model.get_image_features(**{k: v for k, v in inputs.items() if k not in _TEXT_KEYS}).pooler_output
    features = torch.cat(list(features)) if isinstance(features, (list, tuple)) else features
    assert features.reshape(-1, features.shape[-1]).shape[0] == 2 * per_row
