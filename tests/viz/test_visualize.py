"""Heatmaps over the image's token grid, and the callback that logs them to TensorBoard / W&B / TRL's table."""

import copy
import importlib.machinery
import io
import sys
import types
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from tests.testing_utils import ROOT, trainer_args
from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer
from trl_attention.callbacks import AttentionHeatmapCallback
from trl_attention.plotting import capture_image_attention, overlay_heatmap, select_tokens, token_grid
from trl_attention.tiny import build_tiny_vlm, make_grounding_dataset

GRID_THW = (1, 8, 8)  # 8x8 patches, merge 2: a 4x4 grid of visual tokens, as the tiny VLM makes of a 112 px image
POSITIONS = torch.arange(5, 21)  # the 16 visual tokens sit at positions 5..20 of a 30-token sequence


def _constructed_rows(peaks, heights, seq_len=30):
    """(n, T) attention rows: 1 - heights[i] spread uniformly over the sequence, plus heights[i] on visual token
    peaks[i] of row i."""
    rows = torch.full((len(peaks), seq_len), 1.0 / seq_len) * (1 - torch.tensor(heights))[:, None]
    for i, peak in enumerate(peaks):
        rows[i, POSITIONS[peak]] += heights[i]
    return rows


def _brightest_cell(image, rows=4, cols=4):
    """(row, col) of the cell with the highest mean luminance."""
    pixels = np.asarray(image.convert("L"), dtype=np.float64)
    h, w = pixels.shape
    means = pixels.reshape(rows, h // rows, cols, w // cols).mean(axis=(1, 3))
    return np.unravel_index(means.argmax(), means.shape), means


def test_hottest_cell_is_where_the_constructed_attention_peaks():
    # token 0 peaks on visual token 9 = cell (2, 1), token 1 on 6 = (1, 2), both 0.5; token 2 on 15 = (3, 3), 0.8
    rows = _constructed_rows([9, 6, 15], [0.5, 0.5, 0.8])
    assert torch.allclose(rows.sum(-1), torch.ones(3))
    grids = token_grid(rows, POSITIONS, GRID_THW, merge_size=2)
    assert grids.shape == (3, 4, 4)
    np.testing.assert_allclose(grids.reshape(3, 16), rows[:, POSITIONS].numpy(), rtol=0, atol=0)
    base = Image.new("RGB", (112, 112), (128, 128, 128))
    for tokens, cell in [(0, (2, 1)), (1, (1, 2)), (-1, (3, 3)), ((0, 2), None), ("mean", (3, 3)), (None, (3, 3))]:
        grid = select_tokens(grids, tokens)
        overlay = overlay_heatmap(base, grid)
        assert overlay.size == (112, 112) and overlay.mode == "RGB"
        (r, c), means = _brightest_cell(overlay)
        assert (r, c) == np.unravel_index(grid.argmax(), grid.shape)
        if cell is not None:
            assert (r, c) == cell, tokens
        else:  # span of tokens 0 and 1: two equal peaks, (2, 1) and (1, 2), brighter than every other cell
            assert means[2, 1] == pytest.approx(means[1, 2]) and means[2, 1] > np.delete(means.flat, [6, 9]).max()
    # a non-square image: the overlay keeps the image's size, one cell = 30x20 pixels
    overlay = overlay_heatmap(Image.new("RGB", (120, 80), (128, 128, 128)), select_tokens(grids, 0))
    assert overlay.size == (120, 80)
    (r, c), _ = _brightest_cell(overlay)
    assert (r, c) == (2, 1)


def test_overlay_and_selection_errors():
    grids = np.zeros((3, 4, 4))
    with pytest.raises(IndexError, match="token 3 out of range for 3 tokens"):
        select_tokens(grids, 3)
    with pytest.raises(ValueError, match="selects none"):
        select_tokens(grids, (2, 2))
    with pytest.raises(ValueError, match="tokens must be"):
        select_tokens(grids, "last")
    with pytest.raises(ValueError, match="must be 2D"):
        overlay_heatmap(Image.new("RGB", (8, 8)), grids)
    with pytest.raises(ValueError, match="needs 16"):
        token_grid(torch.zeros(1, 30), torch.arange(15), GRID_THW)
    blank = overlay_heatmap(Image.new("RGB", (8, 8), (10, 20, 30)), np.zeros((2, 2)), alpha=0.0)
    assert np.asarray(blank).tolist() == np.asarray(Image.new("RGB", (8, 8), (10, 20, 30))).tolist()


def test_capture_image_attention_matches_eager_per_completion_token():
    model, processor = build_tiny_vlm(seed=1)
    example = make_grounding_dataset(1, seed=2)[0]
    completion = "red square"
    attention = capture_image_attention(model, processor, example["prompt"], example["image"], completion)
    ids = processor.tokenizer(completion, add_special_tokens=False)["input_ids"]
    assert attention.grids.shape == (len(ids), 4, 4) and "".join(attention.tokens) == completion

    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    text = processor.apply_chat_template(example["prompt"], add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text + completion], images=[example["image"]], return_tensors="pt")
    assert inputs["input_ids"].shape[1] == attention.prompt_length + len(ids)  # same tokens as the ids appended
    with torch.no_grad():
        reference = eager(**inputs, output_attentions=True).attentions[-1][0].float().mean(0)
    is_image = inputs["input_ids"][0] == model.config.image_token_id
    expected = reference[attention.prompt_length :][:, is_image].reshape(len(ids), 4, 4).numpy()
    np.testing.assert_allclose(attention.grids, expected, atol=1e-6, rtol=0)


def _trainer(tmp_path, **overrides):
    model, processor = build_tiny_vlm(seed=0)
    args = trainer_args(AttentionGRPOConfig, tmp_path, max_steps=2, num_iterations=2, **overrides)

    def reward(completions, **kwargs):
        return [float(len(c[0]["content"]) % 3) for c in completions]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AttentionGRPOTrainer(
            model=model,
            reward_funcs=reward,
            args=args,
            processing_class=processor,
            train_dataset=make_grounding_dataset(8),
        )


def test_callback_writes_tensorboard_images_and_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = _trainer(tmp_path, report_to=["tensorboard"], log_multimodal=False)  # no rollout images: examples
    examples = make_grounding_dataset(3, seed=9)
    callback = AttentionHeatmapCallback(trainer, examples=examples, num_samples=2, max_new_tokens=4)
    trainer.add_callback(callback)
    trainer.train()

    (event_file,) = (tmp_path / "runs").rglob("events.out.tfevents.*")  # one file: the TensorBoardCallback's writer
    events = EventAccumulator(str(event_file), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"attention_heatmap/0", "attention_heatmap/1"} <= set(tags["images"])
    assert {"train/attention/jsd", "train/attention/image_mass", "attention_heatmap/image_mass"} <= set(
        tags["scalars"]
    )
    assert [e.step for e in events.Images("attention_heatmap/0")] == [1, 2]
    assert [e.step for e in events.Scalars("attention_heatmap/image_mass")] == [1, 2]
    last = Image.open(io.BytesIO(events.Images("attention_heatmap/1")[-1].encoded_image_string))
    assert last.size == examples[1]["image"].size
    np.testing.assert_array_equal(np.asarray(last.convert("RGB")), np.asarray(callback.last_images[1][1]))
    mass = events.Scalars("attention_heatmap/image_mass")[-1].value
    assert 0 < mass < 1


def test_callback_logs_to_wandb_and_the_completions_table(tmp_path, monkeypatch):
    import trl.extras.profiling as profiling_module
    import trl.trainer.grpo_trainer as grpo_module

    logged, tables = [], []
    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)  # `is_wandb_available` looks for a spec
    fake.run = object()
    fake.Image = lambda image, caption=None: types.SimpleNamespace(image=image, caption=caption)
    fake.Table = lambda dataframe: tables.append(dataframe) or "table"
    fake.log = logged.append
    monkeypatch.setitem(sys.modules, "wandb", fake)
    for module in (grpo_module, profiling_module):  # TRL imports wandb only when it is installed
        monkeypatch.setattr(module, "wandb", fake, raising=False)

    trainer = _trainer(tmp_path, log_completions=True)
    trainer.args.report_to = ["wandb"]  # after construction: the real WandbCallback needs the real package
    trainer.add_callback(AttentionHeatmapCallback(trainer, every_n_steps=2, num_samples=3))
    trainer.train()

    ours = [entry for entry in logged if "attention_heatmap/images" in entry]
    assert [entry["train/global_step"] for entry in ours] == [2]  # every_n_steps=2
    images = ours[0]["attention_heatmap/images"]
    assert len(images) == 3 and all(im.image.size == (112, 112) and "image mass" in im.caption for im in images)
    assert 0 < ours[0]["attention_heatmap/image_mass"] < 1
    # TRL logs its table at step 1, step 2 and with the final summary (still step 2); overlays from step 2 on
    assert [sum(len(row) == 2 for row in table["image"]) for table in tables] == [0, 3, 3]
    assert all(len(row) in (1, 2) for table in tables for row in table["image"])
    overlays = [row[1].image for row in tables[1]["image"] if len(row) == 2]
    assert [np.asarray(o).tolist() for o in overlays] == [np.asarray(i.image).tolist() for i in images]


def test_readme_heatmap_snippet_runs(tmp_path, monkeypatch):
    import re

    readme = (ROOT / "docs" / "visualisation.md").read_text()
    code = re.search(r"## Attention heatmaps in TensorBoard and W&B\n\n```python\n(.*?)```", readme, re.DOTALL).group(
        1
    )
    model, processor = build_tiny_vlm(seed=0)
    example = make_grounding_dataset(1, seed=4)[0]
    added = []
    trainer = types.SimpleNamespace(
        args=types.SimpleNamespace(), processing_class=processor, add_callback=added.append
    )
    namespace = {
        "model": model,
        "processor": processor,
        "prompt": example["prompt"],
        "image": example["image"],
        "trainer": trainer,
        **dict(zip(("x0", "y0", "x1", "y1"), example["box"])),
    }
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/visualisation.md", "exec"), namespace)
    assert isinstance(added[0], AttentionHeatmapCallback) and added[0].layer == -1
    n = len(processor.tokenizer("a red square", add_special_tokens=False)["input_ids"])
    assert namespace["att"].grids.shape == (n, 4, 4) and (tmp_path / "heat.png").is_file()


def test_capture_image_attention_needs_a_qwen_style_processor():
    model, processor = build_tiny_vlm(seed=0)
    example = make_grounding_dataset(1)[0]

    class GridlessProcessor:  # a LLaVA-style processor returns no image_grid_thw
        tokenizer = processor.tokenizer
        apply_chat_template = processor.apply_chat_template

        def __call__(self, **kwargs):
            return {k: v for k, v in processor(**kwargs).items() if k != "image_grid_thw"}

    with pytest.raises(ValueError, match="needs a Qwen2/2.5/3-VL-style processor"):
        capture_image_attention(model, GridlessProcessor(), example["prompt"], example["image"])
