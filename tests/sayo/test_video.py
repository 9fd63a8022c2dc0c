"""SAYO and video rows: refused, with the row and the column named, at construction (any attention reward), in the
reward's per-batch check and in the reward itself (docs/sayo.md, "Video rows")."""

import types
import warnings

import pytest
import torch
from datasets import Dataset

from tests.testing_utils import length_reward, trainer_args
from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer
from trl_attention.sayo import CompletionAttention, RegionAttentionReward, RewardAttentionMixin, attention_reward
from trl_attention.visual.rows import first_video_row
from trl_attention.tiny import build_tiny_vlm, make_grounding_dataset
from trl_attention.tiny.video_data import make_motion_dataset
from trl_attention.video import VideoError

SMALL = {"video_min_pixels": 56 * 56, "video_max_pixels": 112 * 112, "video_nframes": 4}


def _mixed(n_image=2, n_video=1):
    """Image rows (with boxes) then video rows, like Video-R1: each kind has None in the other's column."""
    rows = [
        {"prompt": r["prompt"], "image": r["image"], "video": None, "boxes": [[r["box"]]]}
        for r in make_grounding_dataset(n_image)
    ]
    rows += [
        {"prompt": r["prompt"], "image": None, "video": r["video"], "boxes": None}
        for r in make_motion_dataset(n_video, frames=4)
    ]
    return Dataset.from_list(rows)


def _build(tmp_path, reward_funcs, train_dataset, eval_dataset=None):
    model, processor = build_tiny_vlm(seed=0)
    args = trainer_args(AttentionGRPOConfig, tmp_path, max_steps=1, attn_coef=0.0, **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AttentionGRPOTrainer(
            model=model,
            reward_funcs=reward_funcs,
            args=args,
            processing_class=processor,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
        )


def test_attention_rewards_with_video_rows_fail_at_construction_naming_row_and_column(tmp_path):
    with pytest.raises(
        VideoError,
        match=r"train_dataset row 2, column `video`: a video row, but the reward\(s\) "
        r"region_attention read the policy's attention, which describes image tokens only",
    ):
        _build(tmp_path, [RegionAttentionReward(), length_reward], _mixed())

    @attention_reward
    def looks_anywhere(completions, attention=None, **kwargs):
        return [0.0] * len(completions)

    images_only = _mixed(n_video=0).remove_columns("video")
    with pytest.raises(VideoError, match=r"eval_dataset\['clips'\] row 0, column `video`: .*looks_anywhere"):
        _build(tmp_path, [looks_anywhere], images_only, eval_dataset={"clips": make_motion_dataset(1, frames=4)})
    assert first_video_row(images_only) is None and first_video_row(_mixed(3, 2)) == (3, "video")
    videos = Dataset.from_list([{"prompt": "p", "videos": []}, {"prompt": "q", "videos": ["a.mp4"]}])
    assert first_video_row(videos) == (1, "videos")  # an empty list of videos is no video


def test_video_rows_without_attention_rewards_still_build(tmp_path):
    trainer = _build(tmp_path, [length_reward], _mixed())
    assert trainer.has_video and trainer.attention_reward_indices == []


def test_the_per_batch_check_refuses_a_sampled_video_row():
    image_row, video_row = (dict(r) for r in _mixed(1, 1))
    reward = RegionAttentionReward()
    reward.check_batch([image_row])
    with pytest.raises(VideoError, match="row_id='clip-7', column `video`: a video row; RegionAttentionReward scores"):
        reward.check_batch([image_row, {**video_row, "row_id": "clip-7"}])
    with pytest.raises(VideoError, match="row 1, column `videos`: a video row"):
        reward.validate([image_row, {**video_row, "video": None, "videos": [video_row["video"]]}])


def test_the_reward_refuses_attention_over_a_video_prompt():
    model, _ = build_tiny_vlm(seed=0)
    video = model.config.video_token_id
    ids = torch.tensor([[11, 12, video, video, video, 13, 20, 21]])  # 3 video tokens, then 2 completion tokens
    scoring = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "probs": torch.full((1, 2, 8), 1 / 8),
        "rows": 2,
        "entropies": None,
        "image_grid_thw": None,
        "num_images": None,
    }
    (item,) = RewardAttentionMixin._per_completion(types.SimpleNamespace(model=model), scoring)
    assert item.video_tokens == 3 and item.image_positions == [] and item.prompt_length == 6
    completions = [[{"role": "assistant", "content": "left"}]]
    with pytest.raises(VideoError, match="row_id='v1': its prompt holds 3 video tokens; RegionAttentionReward"):
        RegionAttentionReward()(completions, attention=[item], boxes=[[[[0, 0, 8, 8]]]], row_id=["v1"])
    image_item = CompletionAttention(torch.full((2, 8), 1 / 8), [torch.tensor([2, 3])], [(1, 2, 2)], None, 2, 6)
    assert image_item.video_tokens == 0  # image rows are untouched: the default
