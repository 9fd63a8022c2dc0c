"""VRGA and video: a prompt with video tokens is refused at prefill, naming the sample; image prompts keep working
under the same handle, and the video prompt generates once VRGA is off (docs/vrga.md, "Video")."""

import pytest
import torch

from trl_attention.tiny import build_tiny_vlm, make_grounding_dataset
from trl_attention.tiny.video_data import make_motion_dataset
from trl_attention.trl_internals import pad
from trl_attention.video import VideoArguments, tokenize_visual_prompts
from trl_attention.video.grpo import mm_token_type_ids
from trl_attention.video.rows import encode_row
from trl_attention.vrga import VRGAConfig, enable_vrga
from trl_attention.vrga.inputs import refuse_video

ARGS = VideoArguments(video_nframes=4, video_min_pixels=56 * 56, video_max_pixels=112 * 112)
GEN = {"max_new_tokens": 2, "do_sample": False}


@pytest.fixture(scope="module")
def vlm():
    return build_tiny_vlm(seed=0)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _inputs(model, processor, rows):
    """Left-padded generation inputs of rows with images and / or videos, as the trainer's video path builds them."""
    visuals = [encode_row(i, row, processor, ARGS) for i, row in enumerate(rows)]
    ids, fields = tokenize_visual_prompts(
        processor, [r["prompt"] for r in rows], visuals, "<|image_pad|>", "<|video_pad|>"
    )
    input_ids = pad(
        [torch.tensor(i) for i in ids], padding_value=processor.tokenizer.pad_token_id, padding_side="left"
    )
    mask = pad([torch.ones(len(i), dtype=torch.long) for i in ids], padding_value=0, padding_side="left")
    fields = {k: v for k, v in fields.items() if k != "mm_token_type_ids"}
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "mm_token_type_ids": mm_token_type_ids(model, input_ids),
    } | fields


def test_a_video_prompt_is_refused_naming_the_sample(vlm):
    model, processor = vlm
    image_row = dict(make_grounding_dataset(1)[0])
    video_row = dict(make_motion_dataset(1, frames=4)[0])
    both = {**video_row, "image": image_row["image"]}
    both["prompt"] = [{"role": "user", "content": [{"type": "image"}, *video_row["prompt"][0]["content"]]}]
    images_only = _inputs(model, processor, [image_row])
    with enable_vrga(model, VRGAConfig()) as vrga:
        with pytest.raises(ValueError, match=r"VRGA: sample 1 holds 32 video tokens \(id 6\); VRGA reweights image"):
            model.generate(**_inputs(model, processor, [image_row, video_row]), **GEN)
        with pytest.raises(ValueError, match="sample 0 holds 32 video tokens"):  # video next to an image: refused too
            model.generate(**_inputs(model, processor, [both]), **GEN)
        with pytest.raises(ValueError, match="give the frames as images"):
            model(**_inputs(model, processor, [video_row]))  # a plain forward as well, not only generate
        out = model.generate(**images_only, **GEN)  # the same handle still steers image prompts
        assert out.shape[1] == images_only["input_ids"].shape[1] + 2 and vrga.diagnostics[0] is not None
    plain = model.generate(**_inputs(model, processor, [video_row]), **GEN)  # VRGA off: the video prompt runs
    assert plain.shape[0] == 1


def test_refuse_video_reads_the_model_config():
    config = type("Config", (), {"video_token_id": 6})()
    model = type("Model", (), {"config": config})()
    refuse_video(model, torch.tensor([[1, 5, 5, 2]]))  # image tokens only: fine
    refuse_video(
        type("Model", (), {"config": object()})(), torch.tensor([[6, 6]])
    )  # no video token: nothing to refuse
    with pytest.raises(ValueError, match="sample 2 holds 1 video tokens"):
        refuse_video(model, torch.tensor([[1, 2], [3, 4], [6, 1]]))
