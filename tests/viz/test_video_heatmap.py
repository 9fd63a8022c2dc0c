"""Video heatmaps: one panel per temporal group (2 frames), the mass where the attention was put, the callback on
video rollouts (`_logs["visual_rows"]`) and video examples, and the PNG written."""

import copy
import types
import warnings
from collections import deque

import numpy as np
import pytest
import torch
from PIL import Image

from tests.testing_utils import length_reward, trainer_args
from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer
from trl_attention.callbacks import VISUAL_ROWS, AttentionHeatmapCallback
from trl_attention.plotting import (
    VideoAttention,
    capture_video_attention,
    overlay_video_strip,
    plot_video_heatmap,
    token_grid,
)
from trl_attention.tiny import build_tiny_vlm, make_grounding_dataset
from trl_attention.tiny.video_data import make_motion_dataset
from trl_attention.video import VideoArguments
from trl_attention.video.rows import encode_row

SMALL = {"video_min_pixels": 56 * 56, "video_max_pixels": 112 * 112}
GRID_THW = (3, 8, 8)  # 3 temporal groups (6 frames) of 8x8 patches: 3 x 4x4 video tokens at merge 2
POSITIONS = torch.arange(5, 53)  # the 48 video tokens sit at positions 5..52 of a 60-token sequence
GAP = 2  # pixels between the panels of a strip


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _panel_means(strip, panels: int, width: int = 112) -> np.ndarray:
    pixels = np.asarray(strip.convert("L"), dtype=np.float64)
    return np.array([pixels[:, p * (width + GAP) : p * (width + GAP) + width].mean() for p in range(panels)])


def _hand_set(group: int, cell: int, n: int = 2, seq_len: int = 60) -> VideoAttention:
    """All the attention of `n` query tokens on video token `cell` of temporal group `group`."""
    rows = torch.zeros(n, seq_len)
    rows[:, POSITIONS[group * 16 + cell]] = 1.0
    grids = token_grid(rows, POSITIONS, GRID_THW, merge_size=2, sum_frames=False)
    frames = np.full((6, 112, 112, 3), 128, dtype=np.uint8)
    frames[:, 0, 0, 0] = np.arange(6)  # which frame a panel shows, in one pixel
    return VideoAttention(grids=grids, tokens=["a", "b"], frames=frames, prompt_length=50)


def test_the_mass_of_one_temporal_group_lands_in_its_panel(tmp_path):
    attention = _hand_set(group=1, cell=6)  # cell 6 of a 4x4 grid: row 1, column 2
    assert attention.grids.shape == (2, 3, 4, 4)
    grids = attention.select("mean")
    assert grids.sum((1, 2)).tolist() == [0.0, 1.0, 0.0] and grids[1, 1, 2] == 1.0
    frames = attention.group_frames()  # the first frame of each group: frames 0, 2, 4
    assert [np.asarray(f)[0, 0, 0] for f in frames] == [0, 2, 4]
    strip = overlay_video_strip(frames, grids)
    assert strip.size == (3 * 112 + 2 * GAP, 112)
    means = _panel_means(strip, 3)
    assert means.argmax() == 1 and means[1] > means[0] + 5 and means[0] == pytest.approx(means[2], abs=0.01)
    panel = np.asarray(strip.convert("L"))[:, 112 + GAP : 2 * 112 + GAP].astype(float)
    cells = panel.reshape(4, 28, 4, 28).mean(axis=(1, 3))
    assert np.unravel_index(cells.argmax(), cells.shape) == (1, 2)  # the hot token, in that panel
    path = plot_video_heatmap(frames, grids, tmp_path / "plots" / "video.png", title="mass on group 1")
    with Image.open(path) as png:
        assert png.size[0] > png.size[1] > 100  # one row of three panels and a colour bar
    with pytest.raises(ValueError, match="one frame per"):
        overlay_video_strip(frames[:2], grids)


def test_capture_video_attention_matches_eager_per_group():
    model, processor = build_tiny_vlm(seed=1)
    row = make_motion_dataset(1, frames=4, seed=3)[0]
    visuals = encode_row(0, row, processor, VideoArguments(video_nframes=4, **SMALL))
    completion = "it moves left"
    attention = capture_video_attention(model, processor, row["prompt"], visuals, completion)
    ids = processor.tokenizer(completion, add_special_tokens=False)["input_ids"]
    assert attention.grids.shape == (len(ids), 2, 4, 4) and "".join(attention.tokens) == completion
    assert attention.frames.shape == (4, 112, 112, 3) and len(attention.group_frames()) == 2

    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    from trl_attention.video import tokenize_visual_prompts
    from trl_attention.video.grpo import mm_token_type_ids

    (prompt_ids,), fields = tokenize_visual_prompts(
        processor, [row["prompt"]], [visuals], "<|image_pad|>", "<|video_pad|>"
    )
    input_ids = torch.tensor([prompt_ids + ids])
    fields = {k: v for k, v in fields.items() if k != "mm_token_type_ids"}
    with torch.no_grad():
        out = eager(
            input_ids=input_ids,
            mm_token_type_ids=mm_token_type_ids(model, input_ids),
            **fields,
            output_attentions=True,
        )
    reference = out.attentions[-1][0].float().mean(0)[len(prompt_ids) :]
    is_video = input_ids[0] == model.config.video_token_id
    expected = reference[:, is_video].reshape(len(ids), 2, 4, 4).numpy()
    np.testing.assert_allclose(attention.grids, expected, atol=1e-6, rtol=0)
    assert attention.select(None).sum() > 0
    with pytest.raises(ValueError, match="no video 1 to show"):
        capture_video_attention(model, processor, row["prompt"], visuals, video_index=1)


def _fake_trainer(processor, logs=None, has_video=True, log_completions=False):
    args = types.SimpleNamespace(attn_layer=-1, video_nframes=4, **SMALL)
    handler = types.SimpleNamespace(callbacks=[])
    return types.SimpleNamespace(
        args=args,
        processing_class=processor,
        callback_handler=handler,
        _logs=logs,
        has_video=has_video,
        log_completions=log_completions,
    )


def _run_on_log(callback, tmp_path, model, step=1):
    args = types.SimpleNamespace(logging_steps=1, report_to=["tensorboard"], output_dir=str(tmp_path))
    state = types.SimpleNamespace(global_step=step, is_world_process_zero=True)
    callback.on_log(args, state, None, logs={"attention/jsd": 0.5}, model=model)
    callback.on_train_end(args, state, None)


def _scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (event_file,) = (tmp_path / "runs").rglob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events, {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}


def test_callback_on_video_rollouts_logs_the_strip_and_video_mass(tmp_path, monkeypatch):
    model, processor = build_tiny_vlm(seed=0)
    video_row = make_motion_dataset(1, frames=4)[0]
    image_row = make_grounding_dataset(1)[0]
    prompts = [image_row["prompt"], video_row["prompt"]]
    logs = {
        "prompt": deque(prompts),
        "completion": deque([[{"role": "assistant", "content": c}] for c in ("a red square", "left")]),
        "images": deque([[image_row["image"]], None]),  # one image list (or None) per rollout
        # the video path's log: the visual columns of the rows it handled, None for the rows TRL's path handled
        VISUAL_ROWS: deque([None, {"video": video_row["video"], "video_fps": video_row["video_fps"]}]),
    }
    seen = {}

    def hand_set(model, processor, prompt, visuals, completion=None, layer=-1, video_index=0):
        seen["visuals"] = visuals
        attention = _hand_set(group=1, cell=6)  # 4 frames = 2 groups: keep groups 0 and 1 of the 3
        frames = visuals["video_frames"][video_index]
        return VideoAttention(attention.grids[:, :2], attention.tokens, frames, 50)

    monkeypatch.setattr("trl_attention.callbacks.capture_video_attention", hand_set)
    trainer = _fake_trainer(processor, logs, log_completions=True)
    callback = AttentionHeatmapCallback(trainer, num_samples=2)
    _run_on_log(callback, tmp_path, model)

    assert seen["visuals"]["video_grid_thw"].tolist() == [[2, 8, 8]]  # re-encoded as the trainer encodes it
    (image_caption, overlay), (video_caption, strip) = callback.last_images
    assert overlay.size == image_row["image"].size and "image mass" in image_caption
    assert strip.size == (2 * 112 + GAP, 112) and _panel_means(strip, 2).argmax() == 1
    assert "video mass 1.000; per frame group 0.000, 1.000" in video_caption
    events, scalars = _scalars(tmp_path)
    assert scalars["attention_heatmap/video_mass"] == pytest.approx(1.0)
    assert 0 < scalars["attention_heatmap/image_mass"] < 1 and scalars["attention/jsd"] == 0.5
    assert {"attention_heatmap/0", "attention_heatmap/1"} <= set(events.Tags()["images"])
    assert logs["images"][1] == [strip] and logs["images"][0][-1] is overlay  # TRL's completions table


def test_a_video_trainer_without_the_log_uses_the_examples(tmp_path):
    model, processor = build_tiny_vlm(seed=0)
    image_row = make_grounding_dataset(1)[0]
    logs = {  # images of an earlier batch next to a video batch's prompts: must not be paired
        "prompt": deque([image_row["prompt"]]),
        "completion": deque([[{"role": "assistant", "content": "x"}]]),
        "images": deque([[image_row["image"]]]),
    }
    example = make_motion_dataset(1, frames=4, seed=5)[0]
    callback = AttentionHeatmapCallback(_fake_trainer(processor, logs), examples=[example], max_new_tokens=3)
    assert callback._rollout_samples() == []
    _run_on_log(callback, tmp_path, model)
    ((caption, strip),) = callback.last_images
    assert strip.size == (2 * 112 + GAP, 112) and "video mass" in caption
    _, scalars = _scalars(tmp_path)
    assert 0 < scalars["attention_heatmap/video_mass"] < 1 and "attention_heatmap/image_mass" not in scalars


def test_training_on_video_rows_logs_video_heatmaps(tmp_path):
    model, processor = build_tiny_vlm(seed=0)
    args = trainer_args(
        AttentionGRPOConfig,
        tmp_path,
        max_steps=2,
        num_iterations=2,
        report_to=["tensorboard"],
        video_nframes=4,
        **SMALL,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = AttentionGRPOTrainer(
            model=model,
            reward_funcs=length_reward,
            args=args,
            processing_class=processor,
            train_dataset=make_motion_dataset(4, frames=4),
        )
    callback = AttentionHeatmapCallback(trainer, num_samples=2)
    trainer.add_callback(callback)
    trainer.train()
    events, scalars = _scalars(tmp_path)
    assert [e.step for e in events.Scalars("attention_heatmap/video_mass")] == [1, 2]
    assert 0 < scalars["attention_heatmap/video_mass"] < 1 and "attention_heatmap/image_mass" not in scalars
    assert "train/attention/video_mass" in scalars
    logs = trainer._logs  # the video path keeps the rollouts' visual columns in step with TRL's prompts
    assert len(logs[VISUAL_ROWS]) == len(logs["prompt"]) == len(logs["images"]) > 0
    assert all("video" in row for row in logs[VISUAL_ROWS])
    assert [e.step for e in events.Images("attention_heatmap/0")] == [1, 2]
    assert all(image.size == (2 * 112 + GAP, 112) for _, image in callback.last_images)
