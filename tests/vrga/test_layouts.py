"""VRGA beyond Qwen's grids: the fixed grids of LLaVA / Gemma3 and Gemma4's patch grids (`visual.layouts`), the
sliding-window caches of Gemma3, and tiled layouts refused naming the class. The support matrix runs the full cell
(gamma=0 is plain generation, stage 1 against eager attention) on every family; these pin the mechanics."""

import pytest
import torch

from trl_attention import CaptureError
from trl_attention.vrga import VRGAConfig, enable_vrga
from trl_attention.vrga.inputs import in_window, layout_grids
from trl_attention.visual.layouts import visual_layout
from trl_attention_recipes.families import available_families, build_tiny_family

GEN = {"max_new_tokens": 3, "min_new_tokens": 3, "do_sample": False, "output_scores": True}
GEN["return_dict_in_generate"] = True


def _family(name):
    if name not in available_families():
        pytest.skip(f"this transformers has no {name}")
    return build_tiny_family(name)


def test_in_window_shifts_positions_and_drops_those_that_left():
    index, valid = torch.tensor([[5, 6, 9], [0, 7, 8]]), torch.tensor([[True, True, True], [False, True, True]])
    shifted, kept = in_window(index, valid, 6)
    assert shifted.tolist() == [[0, 0, 3], [0, 1, 2]]
    assert kept.tolist() == [[False, True, True], [False, True, True]]
    same, unchanged = in_window(index, valid, 0)
    assert same is index and unchanged is valid


@pytest.mark.parametrize("name, grid", [("llava", (1, 2, 2)), ("gemma3", (1, 2, 2)), ("gemma4", (1, 4, 4))])
def test_grids_per_layout(name, grid):
    model, inputs = _family(name)
    layout = visual_layout(model)
    recorded = inputs.get("image_position_ids")  # Gemma4's, as get_image_features receives it
    grids = layout_grids(layout, inputs["input_ids"], recorded)
    assert grids.tolist() == [list(grid)] * 2  # one image per row; (t, h, w) in patches, merge layout.merge
    assert layout_grids(layout, inputs["input_ids"][:, :4], recorded) is None  # no image token: no grid


def test_a_focus_token_that_left_the_sliding_window_is_not_boosted():
    """Gemma3's tiny layers all slide over 8 positions: at the first decoding step of a 13-token prompt the first
    image token (position 5) is out of every cache. Boosting it alone changes nothing; all four image tokens do."""
    model, inputs = _family("gemma3")
    plain = model.generate(**inputs, **GEN)
    first_only = VRGAConfig(preset="paper", gamma=4.0, min_focus_tokens=1, radius=0, sink_exclusion="none")
    with enable_vrga(model, first_only) as vrga:
        steered = model.generate(**inputs, **GEN)
    focus = [torch.nonzero(d.focus[0].flatten()).flatten().tolist() for d in vrga.diagnostics]
    assert focus == [[0], [0]]  # the first image token of each row
    assert all(torch.equal(a, b) for a, b in zip(plain.scores, steered.scores))
    every = VRGAConfig(preset="paper", gamma=4.0, min_focus_tokens=4, radius=0, sink_exclusion="none")
    with enable_vrga(model, every):
        boosted = model.generate(**inputs, **GEN)
    assert any(not torch.equal(a, b) for a, b in zip(plain.scores[1:], boosted.scores[1:]))


@pytest.mark.parametrize("name", ["internvl", "idefics3", "llava_onevision"])
def test_tiled_layouts_are_clear_errors(name):
    model, _ = _family(name)
    with pytest.raises(CaptureError, match=f"VRGA needs one token grid over each whole image: {type(model).__name__}"):
        enable_vrga(model)
