"""VRGA on unsupported generation settings: a clear error naming the option, not one about prompt truncation."""

import pytest
import torch
from transformers import GenerationConfig

from trl_attention.tiny import build_tiny_vlm, make_grounding_dataset
from trl_attention.vrga import VRGAConfig, enable_vrga


@pytest.fixture(scope="module")
def vlm_inputs():
    model, processor = build_tiny_vlm(seed=0)
    rows = make_grounding_dataset(2)
    texts = [processor.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False) for r in rows]
    inputs = processor(text=texts, images=[r["image"] for r in rows], return_tensors="pt", padding=True)
    return model, inputs


@pytest.mark.parametrize(
    "options, named",
    [
        ({"num_beams": 2}, "num_beams=2"),
        ({"num_return_sequences": 2, "do_sample": True}, "num_return_sequences=2"),
        ({"generation_config": GenerationConfig(num_beams=3, max_new_tokens=2)}, "num_beams=3"),
    ],
)
def test_beams_and_several_sequences_per_prompt_name_the_option(vlm_inputs, options, named):
    model, inputs = vlm_inputs
    with enable_vrga(model, VRGAConfig()):
        with pytest.raises(ValueError, match=f"VRGA supports one sequence per prompt: {named} is not supported"):
            model.generate(**inputs, max_new_tokens=2, **options)
        greedy = model.generate(**inputs, max_new_tokens=2, do_sample=False)  # one sequence per prompt: fine
    assert greedy.shape[0] == 2
    assert "generate" not in vars(model)  # disabled: the class's generate again, beams work
    beams = model.generate(**inputs, max_new_tokens=2, num_beams=2, do_sample=False)
    assert beams.shape[0] == 2 and torch.is_tensor(beams)


def test_reference_query_without_a_question_end_is_an_error_not_a_guess(vlm_inputs):
    """query='question' looks for the end of the user turn after the image; a prompt without one (no chat template)
    must not silently fall back to the last token, which is not the row the released code reads."""
    model, _ = vlm_inputs
    processor = build_tiny_vlm(seed=0)[1]
    image = make_grounding_dataset(1)[0]["image"]
    raw = processor(
        text=["<|vision_start|><|image_pad|><|vision_end|>What colour is the square?"],
        images=[image],
        return_tensors="pt",
    )
    with enable_vrga(model, VRGAConfig(preset="reference")):
        with pytest.raises(ValueError, match="sample 0 has no end-of-turn token .* pass q_end_pos"):
            model.generate(**raw, max_new_tokens=2, do_sample=False)
    with enable_vrga(model, VRGAConfig(preset="reference", query="last")):  # the explicit alternative runs
        assert model.generate(**raw, max_new_tokens=2, do_sample=False).shape[0] == 1


@pytest.mark.parametrize("entries", [1, 3])
def test_q_end_pos_needs_one_entry_per_prompt(vlm_inputs, entries):
    """Was: extra entries silently ignored, too few a bare IndexError."""
    model, inputs = vlm_inputs
    batch = inputs["input_ids"].shape[0]
    with enable_vrga(model, VRGAConfig(), q_end_pos=[3] * (batch + entries - 2)):
        with pytest.raises(ValueError, match=rf"q_end_pos has {batch + entries - 2} entries for a batch of {batch}"):
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
    with enable_vrga(model, VRGAConfig(), q_end_pos=[3] * batch):
        assert model.generate(**inputs, max_new_tokens=2, do_sample=False).shape[0] == batch
