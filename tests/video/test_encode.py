"""The NumPy video encoder and the Qwen-layout prompt tokenizer against transformers' own image processor and
processor (a 2-frame clip of one image is exactly what the image processor makes of that image)."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from trl_attention.tiny import build_processor, make_grounding_dataset
from trl_attention.video import VideoArguments, encode_video, tokenize_visual_prompts
from trl_attention.video.encode import frame_size

ARGS = VideoArguments(video_min_pixels=56 * 56, video_max_pixels=112 * 112)


def _frame(seed, h=112, w=84):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _image_pixels(processor, frame, args=ARGS):
    ip = Qwen2VLImageProcessorPil(
        min_pixels=args.video_min_pixels,
        max_pixels=args.video_max_pixels,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=processor.image_processor.image_mean,
        image_std=processor.image_processor.image_std,
    )
    out = ip(images=[Image.fromarray(frame)], return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


@pytest.fixture(scope="module")
def processor():
    return build_processor()


@pytest.mark.parametrize("shape", [(112, 84), (100, 130)])  # already on the 28 px grid / resized (bicubic)
def test_frame_pairs_equal_the_image_processor(processor, shape):
    a, b = _frame(0, *shape), _frame(1, *shape)
    out = encode_video(np.stack([a, a, b, b]), 2.0, processor, ARGS)
    ref_a, grid = _image_pixels(processor, a)
    ref_b, _ = _image_pixels(processor, b)
    assert out["video_grid_thw"].tolist() == [[2, *grid[0, 1:].tolist()]]
    n = ref_a.size(0)
    torch.testing.assert_close(out["pixel_values_videos"][:n], ref_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(out["pixel_values_videos"][n:], ref_b, atol=1e-5, rtol=0)
    assert out["frames"].shape[1:3] == (grid[0, 1] * 14, grid[0, 2] * 14)


def test_temporal_pairs_are_real_frame_pairs(processor):
    """A patch holds frames (2t, 2t+1) of the same spatial cell: with frames of constants 0, 1, 2, 3 (/255 scale)
    group 0 holds values of frames 0 and 1 in its two temporal halves."""
    frames = np.stack([np.full((56, 56, 3), v * 60, dtype=np.uint8) for v in range(4)])
    out = encode_video(frames, 4.0, processor, ARGS)
    pv = out["pixel_values_videos"].view(-1, 3, 2, 14, 14)  # (N, C, t, p, p)
    mean, std = np.array(processor.image_processor.image_mean), np.array(processor.image_processor.image_std)
    per_group = pv.size(0) // 2
    for g in range(2):
        for t in range(2):
            expected = (np.float32((2 * g + t) * 60 / 255) - mean) / std
            got = pv[g * per_group : (g + 1) * per_group, :, t].mean(dim=(0, 2, 3)).numpy()
            np.testing.assert_allclose(got, expected, atol=1e-5)
    assert out["second_per_grid_ts"].tolist() == [0.5]  # temporal patch 2 / 4 fps


def test_odd_frame_count_repeats_the_last_frame(processor):
    frames = np.stack([_frame(i, 56, 56) for i in range(3)])
    out = encode_video(frames, 2.0, processor, ARGS)
    padded = encode_video(np.concatenate([frames, frames[-1:]]), 2.0, processor, ARGS)
    assert out["video_grid_thw"].tolist() == [[2, 4, 4]]
    torch.testing.assert_close(out["pixel_values_videos"], padded["pixel_values_videos"])


def test_total_pixel_budget_shrinks_frames():
    args = VideoArguments(video_min_pixels=28 * 28, video_max_pixels=448 * 448, video_total_pixels=16 * 112 * 112)
    assert frame_size(448, 448, 2, args, 28) == (448, 448)  # 16*112*112/2*2 = 448*448 per frame allowed
    assert frame_size(448, 448, 32, args, 28) == (112, 112)  # 32 frames share the budget: 112*112 each


def test_image_rows_tokenize_like_the_processor(processor):
    """Only image rows: the video path's tokenizer gives the processor's own ids, pixels and token types."""
    rows = make_grounding_dataset(3, seed=2)
    prompts = [r["prompt"] for r in rows]
    visuals = []
    for r in rows:
        enc = processor.image_processor(images=[r["image"]], return_tensors="pt")
        visuals.append({"pixel_values": enc["pixel_values"], "image_grid_thw": enc["image_grid_thw"]})
    ids, fields = tokenize_visual_prompts(processor, prompts, visuals, "<|image_pad|>", "<|video_pad|>")
    texts = [processor.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    ref = processor(text=texts, images=[[r["image"]] for r in rows], return_tensors="pt", padding=True)
    for i in range(3):
        keep = ref["attention_mask"][i].bool()
        assert ids[i] == ref["input_ids"][i][keep].tolist()
        assert fields["mm_token_type_ids"][i] == ref["mm_token_type_ids"][i][keep].tolist()
    torch.testing.assert_close(fields["pixel_values"], ref["pixel_values"])
    assert torch.equal(fields["image_grid_thw"], ref["image_grid_thw"])


def test_video_placeholders_expand_to_grid_tokens(processor):
    frames = np.stack([_frame(i, 56, 84) for i in range(4)])
    video = encode_video(frames, 2.0, processor, ARGS)
    image = processor.image_processor(images=[Image.fromarray(_frame(9))], return_tensors="pt")
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "hi"}]}]
    vis = {"pixel_values": image["pixel_values"], "image_grid_thw": image["image_grid_thw"], **video}
    ids, fields = tokenize_visual_prompts(processor, [prompt], [vis], "<|image_pad|>", "<|video_pad|>")
    tok = processor.tokenizer
    n_video = int(video["video_grid_thw"].prod()) // 4
    assert ids[0].count(tok.convert_tokens_to_ids("<|video_pad|>")) == n_video == 2 * 2 * 3
    assert ids[0].count(tok.convert_tokens_to_ids("<|image_pad|>")) == int(image["image_grid_thw"].prod()) // 4
    assert fields["mm_token_type_ids"][0].count(2) == n_video
    with pytest.raises(ValueError, match="row 0: its prompt has 1 video placeholder.*2 video"):
        two = {**vis, "video_grid_thw": torch.cat([video["video_grid_thw"]] * 2)}
        tokenize_visual_prompts(processor, [prompt], [two], "<|image_pad|>", "<|video_pad|>")
