"""Video rows through AttentionGRPOTrainer: capture vs eager on video inputs, the tensors every forward gets, rows
mixing images and videos kept aligned through TRL's shuffle and split, temporal positions, construction errors."""

import copy

import numpy as np
import pytest
import torch
from datasets import Dataset
from trl.trainer.utils import shuffle_sequence_dict, split_tensor_dict

from tests.testing_utils import length_reward, trainer_args
from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer, capture_attention
from trl_attention.tiny import build_tiny_qwen_vl, build_tiny_vlm, make_grounding_dataset
from trl_attention.tiny.video_data import make_motion_dataset
from trl_attention.trl_internals import pad
from trl_attention.video import VideoArguments, VideoError, tokenize_visual_prompts, write_video
from trl_attention.video.rows import encode_row

SMALL = {"video_min_pixels": 56 * 56, "video_max_pixels": 112 * 112}
VIDEO_ARGS = VideoArguments(video_nframes=4, **SMALL)


def _mixed_rows(n_image=2, n_video=2, seed=0):
    """Rows of both kinds in one dataset (image rows have video=None and the reverse), like Video-R1."""
    rows = []
    for r in make_grounding_dataset(n_image, seed=seed):
        rows.append(
            {"prompt": r["prompt"], "image": r["image"], "video": None, "video_fps": None, "solution": r["answer"]}
        )
    for r in make_motion_dataset(n_video, seed=seed, frames=6):
        rows.append(
            {"prompt": r["prompt"], "image": None, "video": r["video"], "video_fps": 2.0, "solution": r["answer"]}
        )
    return rows


def _batch(model, processor, rows, suffixes):
    """Left-padded forward inputs of `rows` built by hand from the video package's row encoder."""
    visuals = [encode_row(i, r, processor, VIDEO_ARGS) for i, r in enumerate(rows)]
    ids, fields = tokenize_visual_prompts(
        processor, [r["prompt"] for r in rows], visuals, "<|image_pad|>", "<|video_pad|>"
    )
    tok = processor.tokenizer
    ids = [i + tok(s)["input_ids"] for i, s in zip(ids, suffixes)]
    input_ids = pad([torch.tensor(i) for i in ids], padding_value=tok.pad_token_id, padding_side="left")
    mask = pad([torch.ones(len(i), dtype=torch.long) for i in ids], padding_value=0, padding_side="left")
    types = torch.zeros_like(input_ids)
    types[input_ids == model.config.image_token_id] = 1
    types[input_ids == model.config.video_token_id] = 2
    fields = {k: v for k, v in fields.items() if k != "mm_token_type_ids"}
    return {"input_ids": input_ids, "attention_mask": mask, "mm_token_type_ids": types, **fields}, visuals


def test_capture_matches_eager_on_videos_left_padded():
    model, processor = build_tiny_vlm(seed=0)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    rows = _mixed_rows(1, 2)
    rows[2] = {**rows[2], "videos": [rows[2]["video"], rows[1]["video"][:4]], "video": None}  # two videos in a row
    rows[2]["prompt"] = [
        {"role": "user", "content": [{"type": "video"}, {"type": "video"}, {"type": "text", "text": "?"}]}
    ]
    inputs, _ = _batch(model, processor, rows, ["a", "it moves left and", "b"])
    assert (inputs["attention_mask"] == 0).any() and inputs["video_grid_thw"].size(0) == 3
    with capture_attention(model, num_rows=6) as cap:
        model(**inputs)
    out = eager(**inputs, output_attentions=True)
    ref = out.attentions[-1].float().mean(1)[:, -6:]
    torch.testing.assert_close(cap.probs, ref, atol=1e-5, rtol=0)
    video = inputs["input_ids"] == model.config.video_token_id
    assert (cap.probs * video[:, None]).sum() > 0  # the rows attend to video tokens
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))
    (cap.probs * w).sum().backward()
    (ref * w).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    for n, p in eager.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)
    assert any("visual" in n for n in grads)  # gradients reach the vision tower through the frames


def test_temporal_positions_follow_the_sampled_frame_rate():
    """8 frames at 4 fps, 4 sampled -> 2 fps -> 1 s per temporal group -> tokens_per_second=2 positions apart."""
    model, processor = build_tiny_vlm(seed=0)
    row = make_motion_dataset(1, frames=8, fps=4.0)[0]
    inputs, _ = _batch(model, processor, [row], [""])
    assert inputs["second_per_grid_ts"].tolist() == [1.0]
    positions, _ = model.model.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        video_grid_thw=inputs["video_grid_thw"],
        second_per_grid_ts=inputs["second_per_grid_ts"],
        attention_mask=inputs["attention_mask"],
    )
    video = inputs["input_ids"][0] == model.config.video_token_id
    t = positions[0, 0][video]
    per_group = int(inputs["video_grid_thw"][0, 1:].prod()) // 4
    assert t.view(2, per_group).unique(dim=1).tolist() == [[t[0].item()], [t[0].item() + 2]]


def _recording_trainer(tmp_path, rows, teacher_model=None, **overrides):
    model, processor = build_tiny_vlm(seed=0)
    overrides = {"per_device_train_batch_size": 4, **overrides}
    args = trainer_args(
        AttentionGRPOConfig,
        tmp_path,
        num_iterations=2,
        max_steps=1,
        num_generations=2,
        max_completion_length=4,
        video_nframes=4,
        **SMALL,
        **overrides,
    )
    trainer = AttentionGRPOTrainer(
        model=model,
        reward_funcs=length_reward,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=processor,
        teacher_model=teacher_model,
    )
    calls = []

    def record(module, args_, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.size(1) > 1:  # generation prefill, scoring and loss forwards (not decode steps)
            calls.append({k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)})

    trainer.model.register_forward_pre_hook(record, with_kwargs=True)
    tower = []  # grid_thw of every vision tower call
    trainer.model.model.visual.register_forward_pre_hook(
        lambda m, a, k: tower.append(k.get("grid_thw", a[1] if len(a) > 1 else None)), with_kwargs=True
    )
    return trainer, calls, tower


def test_every_forward_gets_its_rows_frames(tmp_path):
    trainer, calls, tower = _recording_trainer(tmp_path, _mixed_rows(1, 1))  # every batch: one image, one video row
    trainer.train()
    config = trainer.model.config
    scored = [c for c in calls if "labels" in c]  # TRL's old-logps and loss forwards
    assert len(scored) == 2
    for kwargs in calls:  # generation's prefill too: its token types come from the video path's tokenizer
        ids = kwargs["input_ids"]
        types = kwargs["mm_token_type_ids"]
        assert torch.equal(types == 2, ids == config.video_token_id)
        assert torch.equal(types == 1, ids == config.image_token_id)
    for kwargs in scored:
        ids = kwargs["input_ids"]
        n_video, n_image = (ids == config.video_token_id).sum(), (ids == config.image_token_id).sum()
        assert n_video > 0 and n_image > 0
        assert int(kwargs["video_grid_thw"].prod(-1).sum()) // 4 == n_video
        assert kwargs["pixel_values_videos"].size(0) == int(kwargs["video_grid_thw"].prod(-1).sum())
        assert kwargs["second_per_grid_ts"].numel() == kwargs["video_grid_thw"].size(0) == 2  # 2 generations
        assert int(kwargs["image_grid_thw"].prod(-1).sum()) // 4 == n_image
    video_grid = scored[0]["video_grid_thw"][0].tolist()
    # The vision tower saw the clip's grid in generation, the old-logps forward and the loss forward.
    assert sum(video_grid in g.tolist() for g in tower if g is not None) >= 3
    logged = trainer.state.log_history[0]
    assert 0 < logged["attention/video_mass"] < 1 and 0 < logged["attention/image_mass"] < 1
    total = logged["attention/video_mass"] + logged["attention/image_mass"]
    assert logged["attention/visual_mass"] == pytest.approx(total, rel=1e-6)


def test_mixed_rows_stay_aligned_through_shuffle_and_split(tmp_path):
    """p_old of every row after TRL's shuffle and split equals a forward of that row alone, built by hand."""
    rows = _mixed_rows(2, 2, seed=3)
    trainer, _, _ = _recording_trainer(tmp_path, rows)
    inputs = [dict(r) for r in rows for _ in range(2)]  # what TRL's sampler hands over: each prompt twice
    trainer.model.train()
    output = trainer._generate_and_score_completions(inputs)
    assert len(output["visual_inputs"]) == 8 and "old_attention_probs" in output
    torch.manual_seed(0)
    pieces = split_tensor_dict(shuffle_sequence_dict(output), 2)
    model, config = trainer.model, trainer.model.config
    for piece in pieces:
        for r in range(piece["prompt_ids"].size(0)):
            keep = torch.cat([piece["prompt_mask"][r], piece["completion_mask"][r]]).bool()
            ids = torch.cat([piece["prompt_ids"][r], piece["completion_ids"][r]])
            vis = piece["visual_inputs"][r]
            kwargs = {
                k: vis[k]
                for k in (
                    "pixel_values",
                    "image_grid_thw",
                    "pixel_values_videos",
                    "video_grid_thw",
                    "second_per_grid_ts",
                )
                if k in vis
            }
            row_ids = ids[keep][None]
            types = (row_ids == config.image_token_id).long() + 2 * (row_ids == config.video_token_id).long()
            rows_c = piece["completion_ids"].size(1)
            with torch.no_grad(), capture_attention(model, num_rows=rows_c) as cap:
                model(input_ids=row_ids, attention_mask=torch.ones_like(row_ids), mm_token_type_ids=types, **kwargs)
            n_valid = int(piece["completion_mask"][r].sum())
            ref = cap.probs[0]
            got = piece["old_attention_probs"][r][:, keep]
            # Completion rows after the row's last real token are padding: compare the real ones.
            torch.testing.assert_close(got[:n_valid], ref[:n_valid], atol=2e-5, rtol=0)


def test_bad_videos_fail_at_construction(tmp_path):
    model, processor = build_tiny_vlm(seed=0)
    good = _mixed_rows(0, 2)

    def build(rows, model=model, processor=processor, **kw):
        args = trainer_args(
            AttentionGRPOConfig, tmp_path, num_generations=2, per_device_train_batch_size=2, **SMALL, **kw
        )
        AttentionGRPOTrainer(
            model=model,
            reward_funcs=length_reward,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=processor,
        )

    no_part = [dict(good[0]), {**good[1], "prompt": [{"role": "user", "content": [{"type": "text", "text": "?"}]}]}]
    with pytest.raises(
        VideoError,
        match=r"train_dataset row 1: the prompt has 0 \{'type': 'video'\} part\(s\) but the row has 1 video",
    ):
        build(no_part)
    path = write_video(tmp_path / "ok.mp4", [np.zeros((32, 32, 3), np.uint8)] * 4, fps=2)
    missing = [{**good[0], "video": path}, {**good[1], "video": str(tmp_path / "gone.mp4")}]
    with pytest.raises(VideoError, match="train_dataset row 1: video file .*gone.mp4' does not exist"):
        build(missing)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    with pytest.raises(VideoError, match="train_dataset row 0: video file .*broken.mp4' cannot be decoded"):
        build([{**good[0], "video": str(broken)}, {**good[1], "video": path}])
    with pytest.raises(VideoError, match="train_dataset row 0: the video has 6 frames; sampling needs 16"):
        build(good, video_nframes=16)
    with pytest.raises(VideoError, match=r"row 0: a video must be a list of frames .* got int"):
        build([{**good[0], "video": 3}, {**good[1], "video": 4}])
    both = [{**good[0], "videos": [good[0]["video"]]}, {**good[1], "videos": None}]
    with pytest.raises(VideoError, match="train_dataset row 0: it has both `video` and `videos`"):
        build(both)
    other, _ = build_tiny_qwen_vl("qwen3_vl")
    with pytest.raises(VideoError, match="model_type='qwen3_vl'.*the video path feeds Qwen2.5-VL"):
        build(good, model=other)
    # the battery: each failed mid-run (or silently) before; now named at construction
    sizes = [dict(good[0]), {**good[1], "video": [np.zeros((32, 32, 3), np.uint8)] * 5 + [np.zeros((28, 28, 3), np.uint8)]}]
    with pytest.raises(VideoError, match=r"train_dataset row 1: the frames of a video must share one size"):
        build(sizes)
    thin = [dict(good[0]), {**good[1], "video": [np.zeros((14, 3000, 3), np.uint8)] * 6}]
    with pytest.raises(VideoError, match=r"train_dataset row 1: a video frame: the image is 3000x14 \(aspect ratio"):
        build(thin)
    zero_fps = [dict(good[0]), {**good[1], "video_fps": 0}]
    with pytest.raises(VideoError, match="train_dataset row 1: the row's video_fps must be a finite number > 0, got 0"):
        build(zero_fps)


def test_video_token_is_suppressed_in_generation_only_for_video_data(tmp_path):
    """A sampled <|video_pad|> would not match the next forward's video features (TRL suppresses the image token)."""
    video, _, _ = _recording_trainer(tmp_path, _mixed_rows(1, 1))
    config = video.model.config
    assert {config.image_token_id, config.video_token_id} <= set(video.generation_config.suppress_tokens)
    assert video.generation_kwargs["suppress_tokens"] == video.generation_config.suppress_tokens
    images, _, _ = _recording_trainer(tmp_path, [r for r in _mixed_rows(2, 0)])
    assert config.video_token_id not in images.generation_config.suppress_tokens  # TRL's own setting, untouched


def test_cost_benchmark_prints_the_ratio(capsys):
    from benchmarks.video_cost import main

    main(["--frames", "4", "--repeats", "1", "--new_tokens", "2"])
    out = capsys.readouterr().out
    assert " image:   16 visual tokens" in out and " video:   32 visual tokens" in out  # 4 frames = 2 token grids
    assert "video/image step time:" in out


def test_grpo_teacher_terms_see_the_frames(tmp_path):
    """The teacher's forward in the GRPO teacher terms gets the rows' video tensors and token types."""
    teacher, _ = build_tiny_vlm(seed=1)
    seen = []
    teacher.register_forward_pre_hook(
        lambda m, a, k: seen.append({n: v for n, v in k.items() if isinstance(v, torch.Tensor)}), with_kwargs=True
    )
    trainer, _, _ = _recording_trainer(
        tmp_path, _mixed_rows(0, 1), teacher, per_device_train_batch_size=2, gkd_coef=0.5, attn_distill_coef=0.5
    )
    model = trainer.model
    trainer.train()
    assert seen and all("pixel_values_videos" in k for k in seen)
    for k in seen:
        types, ids = k["mm_token_type_ids"], k["input_ids"]
        assert torch.equal(types == 2, ids == model.config.video_token_id)
        assert int(k["video_grid_thw"].prod(-1).sum()) // 4 == int((ids == model.config.video_token_id).sum())
    logged = trainer.state.log_history[0]
    assert np.isfinite(logged["attention/distill_jsd"]) and np.isfinite(logged["distill/gkd_jsd"])


def test_videos_column_from_a_dataset_trains(tmp_path):
    """datasets keeps the frames of a `videos` column (lists of lists of images) as {"bytes", "path"} dicts."""
    rows = [{k: v for k, v in r.items() if k != "video"} for r in _mixed_rows(0, 2)]
    for r, clip in zip(rows, _mixed_rows(0, 2)[0:2]):
        r["videos"] = [clip["video"], clip["video"][:4]]
        r["prompt"] = [
            {"role": "user", "content": [{"type": "video"}, {"type": "video"}, {"type": "text", "text": "?"}]}
        ]
    frame = Dataset.from_list(rows)[0]["videos"][0][0]
    assert isinstance(frame, dict) and frame.get("bytes")  # what the trainer is handed
    trainer, calls, _ = _recording_trainer(tmp_path, rows)
    trainer.train()
    scored = [c for c in calls if "labels" in c]
    assert scored and all(c["video_grid_thw"].size(0) == 2 * c["input_ids"].size(0) for c in scored)


def test_streamed_datasets_check_the_model():
    """An IterableDataset cannot be scanned at construction: the model is checked, rows when they are encoded."""
    from trl_attention.video import check_video_dataset

    model, processor = build_tiny_vlm(seed=0)
    stream = Dataset.from_list(_mixed_rows(0, 2)).to_iterable_dataset()
    assert check_video_dataset(stream, model, processor, VIDEO_ARGS) is True
    other, _ = build_tiny_qwen_vl("qwen3_vl")
    with pytest.raises(VideoError, match="model_type='qwen3_vl'"):
        check_video_dataset(stream, other, processor, VIDEO_ARGS)
