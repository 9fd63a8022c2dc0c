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
