"""Video rows through AttentionGKDTrainer: the collated tensors against the video package's row encoder, the student
forward and greedy on-policy generation against the model fed hand-built inputs, a short training run, the gamma=0
loss against TRL's generalized JSD, and every bad video refused at construction naming the row or model."""

import re
import warnings

import numpy as np
import pytest
import torch
from datasets import Dataset
from trl.experimental.gkd import GKDTrainer

from tests.testing_utils import gkd_args
from trl_attention.distill import AttentionGKDConfig, AttentionGKDTrainer
from trl_attention.distill.collator import VisionDistillationCollator
from trl_attention.distill.trainer import multimodal_kwargs
from trl_attention.tiny import build_tiny_lm, build_tiny_qwen_vl, build_tiny_vlm, make_grounding_dataset
from trl_attention.tiny.video_data import make_motion_dataset
from trl_attention.video import VideoArguments, VideoError, write_video
from trl_attention.video.rows import encode_row

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore")
SMALL = {"video_min_pixels": 56 * 56, "video_max_pixels": 112 * 112}
VIDEO_ARGS = VideoArguments(**SMALL)
VISUAL_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def _video_rows(n=2, seed=0, frames=4):
    data = make_motion_dataset(n, seed=seed, frames=frames, size=56)
    return [{**data[i], "completion": f"it is {data[i]['answer']}" + " ok" * i} for i in range(n)]


def _mixed_rows():
    """An image row, a video row, and a row with an image and two videos (Video-R1 mixes rows like these)."""
    image = make_grounding_dataset(1)[0]
    video_a, video_b = _video_rows(2)
    both = {
        "prompt": [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "video"}, {"type": "video"}, {"type": "text", "text": "?"}],
            }
        ],
        "images": [image["image"]],
        "videos": [video_a["video"], video_b["video"][:2]],
        "video_fps": 2.0,
        "completion": "left then right",
    }
    rows = [{"prompt": image["prompt"], "image": image["image"], "completion": "a red square"}, video_a, both]
    return _uniform(rows)


def _uniform(rows):
    """Every row with every column (None where absent): Dataset.from_list takes its columns from the first row."""
    columns = ("prompt", "completion", "image", "images", "video", "videos", "video_fps")
    return [{c: row.get(c) for c in columns} for row in rows]


def _types(model, ids):
    config = model.config
    return (ids == config.image_token_id).long() + 2 * (ids == config.video_token_id).long()


def _hand_inputs(model, processor, row, i=0):
    """One row's unpadded forward inputs, built without the collator: chat template, placeholders expanded by hand
    to grid.prod() // 4 tokens, the row's tensors from `encode_row`, token types from the ids."""
    visuals = encode_row(i, row, processor, VIDEO_ARGS)
    counts = {
        kind: [int(g.prod()) // 4 for g in visuals.get(f"{key}_grid_thw", [])]
        for kind, key in (("image", "image"), ("video", "video"))
    }
    prompt_text = processor.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    full = processor.apply_chat_template(
        row["prompt"] + [{"role": "assistant", "content": [{"type": "text", "text": row["completion"]}]}],
        tokenize=False,
    )
    queues = {k: iter(v) for k, v in counts.items()}
    expanded = re.sub(
        r"<\|(image|video)_pad\|>", lambda m: m.group(0) * next(queues[m.group(1)]), prompt_text
    )  # each placeholder once, in prompt order
    tok = processor.tokenizer
    prompt_ids = tok(expanded)["input_ids"]
    completion_ids = tok(full[len(prompt_text) :], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + completion_ids])
    kwargs = {k: visuals[k] for k in VISUAL_KEYS if k in visuals}
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": _types(model, ids),
        **kwargs,
    }


def _trainer(tmp_path, rows=None, model=None, teacher=None, processor=None, **overrides):
    if model is None:
        model, processor = build_tiny_vlm(seed=0)
    teacher = teacher if teacher is not None else build_tiny_vlm(seed=1)[0]
    args = gkd_args(AttentionGKDConfig, tmp_path, **{"max_steps": 2, **SMALL, **overrides})
    data = Dataset.from_list(rows if rows is not None else _video_rows(4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AttentionGKDTrainer(
            model=model, teacher_model=teacher, args=args, train_dataset=data, processing_class=processor
        )


def test_collated_video_batch_matches_the_row_encoder():
    model, processor = build_tiny_vlm(seed=0)
    rows = _mixed_rows()
    batch = VisionDistillationCollator(processor, video_args=VIDEO_ARGS)(rows)
    prompts, config = batch["prompts"], model.config
    visuals = [encode_row(i, r, processor, VIDEO_ARGS) for i, r in enumerate(rows)]
    for r, vis in enumerate(visuals):
        for key, token in (("video_grid_thw", config.video_token_id), ("image_grid_thw", config.image_token_id)):
            expected = sum(int(g.prod()) // 4 for g in vis.get(key, []))
            assert int((prompts[r] == token).sum()) == expected, (r, key)
    assert [len(v.get("video_grid_thw", [])) for v in visuals] == [0, 1, 2]
    for key in VISUAL_KEYS:  # the rows' tensors, concatenated in row order
        torch.testing.assert_close(batch[key], torch.cat([v[key] for v in visuals if key in v]), rtol=0, atol=0)
    assert torch.equal(batch["prompt_mm_token_type_ids"], _types(model, prompts))
    stored = [dict(r) for r in Dataset.from_list(rows)]  # `datasets` gives nested frame lists as {"bytes"} dicts
    assert isinstance(stored[2]["videos"][0][0], dict)
    again = VisionDistillationCollator(processor, video_args=VIDEO_ARGS)(stored)
    assert all(torch.equal(again[k], batch[k]) for k in batch)
    assert (batch["prompt_mm_token_type_ids"] == 2).any() and (batch["prompt_mm_token_type_ids"] == 1).any()
    width = prompts.size(1)
    assert torch.equal(batch["input_ids"][:, :width], prompts) and (batch["labels"][:, :width] == -100).all()
    # The image row tokenises and encodes as it does in an image-only batch (the processor's path).
    alone = VisionDistillationCollator(processor)(rows[:1])
    keep = batch["prompt_attention_mask"][0].bool()
    assert torch.equal(prompts[0][keep], alone["prompts"][0]) and "pixel_values_videos" not in alone
    torch.testing.assert_close(alone["pixel_values"], visuals[0]["pixel_values"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="batch example 1: the prompt has 1 video placeholder.* carries 0 video"):
        VisionDistillationCollator(processor, video_args=VIDEO_ARGS)([rows[0], {**rows[1], "video": None}])
    short = VideoArguments(video_nframes=8, **SMALL)
    with pytest.raises(VideoError, match="batch example 1: the video has 4 frames; sampling needs 8"):
        VisionDistillationCollator(processor, video_args=short)(rows[:2])


def test_student_and_teacher_forwards_get_the_video_inputs(tmp_path):
    trainer = _trainer(tmp_path, rows=_mixed_rows() + _uniform(_video_rows(1)), attn_distill_coef=0.5)
    model, processor = trainer.model, trainer.processing_class
    rows = _mixed_rows()
    batch = trainer.data_collator(rows)
    seen = []
    trainer.teacher_model.register_forward_hook(lambda m, a, k, out: seen.append(k), with_kwargs=True)  # final
    model.eval()
    with torch.no_grad():
        _, outputs = trainer.compute_loss(model, batch, return_outputs=True)
        for r, row in enumerate(rows):  # each row alone, unpadded, built by hand
            direct = model(**_hand_inputs(model, processor, row, r)).logits[0]
            keep = batch["attention_mask"][r].bool()
            torch.testing.assert_close(outputs.logits[r][keep], direct, atol=2e-5, rtol=1e-4, msg=f"row {r}")
    (teacher,) = seen
    assert torch.equal(teacher["mm_token_type_ids"], _types(model, batch["input_ids"]))
    for key in VISUAL_KEYS:
        assert torch.equal(teacher[key], batch[key]), key
    assert any(m.get("attention/distill_jsd") for m in trainer._metrics.values())  # "eval": model.eval()


def test_on_policy_generation_with_video_equals_direct_generate(tmp_path):
    trainer = _trainer(tmp_path, lmbda=1.0)
    model, processor = trainer.model, trainer.processing_class
    rows = _video_rows(2, seed=3)
    batch = trainer.data_collator(rows)
    config = trainer.generation_config
    config.do_sample = False
    assert model.config.video_token_id in config.suppress_tokens
    towers = []
    model.model.visual.register_forward_pre_hook(
        lambda m, a, k: towers.append(k.get("grid_thw", a[-1])), with_kwargs=True
    )
    model.eval()
    ids, mask, labels = trainer.generate_on_policy_outputs(model, batch, config)
    visuals = [encode_row(i, r, processor, VIDEO_ARGS) for i, r in enumerate(rows)]
    hand = {k: torch.cat([v[k] for v in visuals]) for k in VISUAL_KEYS[2:]}
    direct = model.generate(
        input_ids=batch["prompts"],
        attention_mask=batch["prompt_attention_mask"],
        mm_token_type_ids=_types(model, batch["prompts"]),
        generation_config=config,
        **hand,
    )
    assert torch.equal(ids, direct)
    assert torch.equal(towers[0], hand["video_grid_thw"])  # generation's prefill saw the clips
    width = batch["prompts"].size(1)
    assert not (ids[:, width:] == model.config.video_token_id).any()
    # The regenerated batch keeps its rows' videos: the loss forward equals a direct one on the new tokens.
    batch.update(input_ids=ids, attention_mask=mask, labels=labels)
    assert torch.equal(multimodal_kwargs(batch, ids)["mm_token_type_ids"], _types(model, ids))
    with torch.no_grad():
        _, outputs = trainer.compute_loss(model, batch, return_outputs=True)
        reference = model(input_ids=ids, attention_mask=mask, mm_token_type_ids=_types(model, ids), **hand)
    torch.testing.assert_close(outputs.logits, reference.logits, rtol=0, atol=0)


def test_training_on_videos_and_gamma_zero_is_trls_generalized_jsd(tmp_path):
    trainer = _trainer(
        tmp_path / "run", rows=_mixed_rows() + _uniform(_video_rows(1)), lmbda=0.5, attn_distill_coef=0.5
    )
    trainer.train()
    logged = [h["attention/distill_jsd"] for h in trainer.state.log_history if "attention/distill_jsd" in h]
    assert len(logged) == 2 and all(np.isfinite(v) and v > 0 for v in logged)
    # gamma=0, mu=1: the loss is TRL's generalized JSD of the two models fed the video inputs by hand.
    trainer = _trainer(tmp_path / "gkd", attn_distill_coef=0.0, gkd_coef=1.0)
    model, teacher = trainer.model, trainer.teacher_model
    rows = _video_rows(2, seed=5)
    batch = trainer.data_collator(rows)
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        visuals = [encode_row(i, r, trainer.processing_class, VIDEO_ARGS) for i, r in enumerate(rows)]
        hand = {k: torch.cat([v[k] for v in visuals]) for k in VISUAL_KEYS[2:]}
        kwargs = dict(input_ids=ids, attention_mask=mask, mm_token_type_ids=_types(model, ids), **hand)
        s_logits, t_logits = model(**kwargs).logits, teacher(**kwargs).logits
        labels = batch["labels"][:, 1:]
        reference = GKDTrainer.generalized_jsd_loss(s_logits[:, :-1], t_logits[:, :-1], labels, beta=trainer.beta)
        # Plain GKDTrainer's forward passes input_ids / attention_mask only: the placeholders silently read as text.
        text_only = GKDTrainer.compute_loss(trainer, model, batch)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-7)
    assert abs(text_only - loss) > 1e-4 * loss
    assert not any("attention/distill_jsd" in h for h in trainer.state.log_history)


def test_bad_videos_fail_at_construction(tmp_path):
    good = _video_rows(2)
    no_part = [good[0], {**good[1], "prompt": [{"role": "user", "content": [{"type": "text", "text": "?"}]}]}]
    with pytest.raises(
        VideoError, match=r"train_dataset row 1: the prompt has 0 \{'type': 'video'\} part\(s\) but the row has 1"
    ):
        _trainer(tmp_path, rows=no_part)
    path = write_video(tmp_path / "ok.mp4", [np.zeros((56, 56, 3), np.uint8)] * 4, fps=2)
    missing = [{**good[0], "video": path}, {**good[1], "video": str(tmp_path / "gone.mp4")}]
    with pytest.raises(VideoError, match="train_dataset row 1: video file .*gone.mp4' does not exist"):
        _trainer(tmp_path, rows=missing)
    with pytest.raises(VideoError, match="train_dataset row 0: the video has 4 frames; sampling needs 16"):
        _trainer(tmp_path, rows=good, video_nframes=16)
    _, processor = build_tiny_vlm(seed=0)
    qwen3, qwen3_teacher = build_tiny_qwen_vl("qwen3_vl")[0], build_tiny_qwen_vl("qwen3_vl", seed=1)[0]
    with pytest.raises(VideoError, match="model is Qwen3VLForConditionalGeneration \\(model_type='qwen3_vl'\\)"):
        _trainer(tmp_path, rows=good, model=qwen3, teacher=qwen3_teacher, processor=processor)
    lm, tokenizer = build_tiny_lm(seed=0)
    with pytest.raises(VideoError, match="model is Qwen2ForCausalLM \\(model_type='qwen2'\\)"):
        _trainer(tmp_path, rows=good, model=lm, teacher=build_tiny_lm(seed=1)[0], processor=tokenizer)
    teacher = build_tiny_vlm(seed=1)[0]
    teacher.config.model_type = "qwen3_vl"  # a teacher the video path cannot feed
    with pytest.raises(VideoError, match="^teacher_model: .*model_type='qwen3_vl'"):
        _trainer(tmp_path, rows=good, teacher=teacher)
