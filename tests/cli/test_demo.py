"""The demo end to end through the CLI, the plots, and the attention heatmap against eager `output_attentions`."""

import copy
import csv
import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from trl_attention import cli
from trl_attention_recipes.demo import DemoConfig
from trl_attention.plotting import attention_heatmap, plot_metrics
from trl_attention.rewards import char_overlap, exact_answer
from trl_attention.tiny import build_tiny_vlm, make_grounding_dataset

MAX_STEPS = 2


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    argv = [
        "demo", "--output_dir", str(out), "--num_samples", "8", "--eval_samples", "4", "--sft_steps", "3",
        "--max-steps", str(MAX_STEPS), "--per_device_train_batch_size", "4", "--num_generations", "2",
        "--max_completion_length", "6", "--learning_rate", "1e-2", "--threads", "1", "--seed", "0",
        "--image_size", "112", "--sft_batch_size", "4", "--sft_warmup_steps", "1",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    return out


def _open_png(path, min_size=(200, 200)):
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1], image.size
        assert image.size[0] <= 4000 and image.size[1] <= 4000, image.size
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 5  # not a blank canvas
    return image.size


def test_demo_writes_models_metrics_and_plots(demo_dir):
    for name in ("summary.json", "metrics.json", "metrics.csv", "metrics_grpo.png", "metrics_ral.png"):
        assert (demo_dir / name).is_file(), name
    for name in ("sft", "grpo", "ral"):
        _open_png(demo_dir / f"heatmap_{name}.png", min_size=(300, 300))
    _open_png(demo_dir / "metrics_ral.png", min_size=(600, 400))
    assert not list(demo_dir.rglob("checkpoint-*"))  # checkpoint saving stays off

    summary = json.loads((demo_dir / "summary.json").read_text())
    assert set(summary["results"]) == {"sft", "grpo", "ral"}
    for result in summary["results"].values():
        assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["region_share"] <= 1.0
        assert 0.0 < result["image_mass"] < 1.0 and 0.0 < result["entropy"] <= math.log(16) + 1e-6
    assert summary["box_token_share"] == 0.25  # the grid task: each object owns a 2x2-token slot of the 4x4 tokens
    assert 0.0 <= summary["majority_accuracy"] <= 1.0

    rows = json.loads((demo_dir / "metrics.json").read_text())
    by_arm = {arm: [r for r in rows if r["arm"] == arm] for arm in ("sft", "grpo", "ral")}
    assert [r["step"] for r in by_arm["sft"]] == [1, 2, 3]
    for arm in ("grpo", "ral"):
        assert [r["step"] for r in by_arm[arm]] == list(range(1, MAX_STEPS + 1))
        assert "reward" in by_arm[arm][0]  # step 1 generates; step 2 reuses the rollouts (num_iterations=2)
    assert not any("attention/jsd" in r for r in by_arm["grpo"])  # attn_coef=0: the capture does not run
    jsd = [r["attention/jsd"] for r in by_arm["ral"]]
    assert max(jsd[0::2]) < 1e-7 and all(0.0 <= v <= math.log(2) for v in jsd)  # 0 on the generating step
    with open(demo_dir / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(line["arm"], int(line["step"])) for line in table] == [(r["arm"], r["step"]) for r in rows]


def test_demo_saves_a_loadable_model_equal_to_the_trained_one(demo_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(demo_dir / "model").eval()
    processor = AutoProcessor.from_pretrained(demo_dir / "model")
    sft = AutoModelForImageTextToText.from_pretrained(demo_dir / "sft").eval()
    example = make_grounding_dataset(1, seed=9)[0]
    text = processor.apply_chat_template(example["prompt"], add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[example["image"]], return_tensors="pt")
    with torch.no_grad():
        logits, before = model(**inputs).logits, sft(**inputs).logits
    assert torch.isfinite(logits).all()
    rows = json.loads((demo_dir / "metrics.json").read_text())
    moved = any(r.get("grad_norm", 0.0) > 0 for r in rows if r["arm"] == "ral")
    assert torch.equal(logits, before) != moved  # the RL-trained model (equal to SFT only if no step had a gradient)
    vision = dict(model.model.visual.named_parameters())
    assert all(torch.equal(p, vision[n]) for n, p in sft.model.visual.named_parameters())  # RL froze the tower


def test_heatmap_is_the_captured_image_attention(tmp_path):
    model, processor = build_tiny_vlm(seed=3)
    example = make_grounding_dataset(3, seed=5)[2]
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    text = processor.apply_chat_template(example["prompt"], add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[example["image"]], return_tensors="pt")
    with torch.no_grad():
        attentions = eager(**inputs, output_attentions=True).attentions
    is_image = inputs["input_ids"][0] == model.config.image_token_id
    _, gh, gw = inputs["image_grid_thw"][0].tolist()
    shape = (gh // 2, gw // 2)
    assert int(is_image.sum()) == shape[0] * shape[1] == 16  # 112 px image: 8x8 patches, 4x4 merged tokens

    for layer in (-1, 0):
        reference = attentions[layer][0].float().mean(0)[-1]  # head average, last prompt token's row
        grid = attention_heatmap(model, processor, example, tmp_path / f"heat{layer}.png", layer=layer)
        _open_png(tmp_path / f"heat{layer}.png", min_size=(300, 300))
        assert isinstance(grid, np.ndarray) and grid.shape == shape
        assert np.isfinite(grid).all() and (grid >= 0).all()
        assert grid.sum() == pytest.approx(float(reference[is_image].sum()), abs=1e-5)
        np.testing.assert_allclose(grid, reference[is_image].reshape(shape).numpy(), atol=1e-6, rtol=0)
        assert 0 < grid.sum() < 1
    assert model.config.text_config._attn_implementation == "sdpa" and not model.training  # capture, mode restored


def test_plot_metrics_handles_missing_metrics(tmp_path):
    history = [{"step": s, "loss": 0.1, "attention/jsd": 0.01 * (s % 2)} for s in range(1, 60)]
    history += [{"step": 60, "train_runtime": 1.0}]
    for row in history[::2]:
        row["reward"] = 0.2
    plot_metrics(history, tmp_path / "m.png")  # image_mass and entropy were never logged
    _open_png(tmp_path / "m.png", min_size=(600, 400))


def test_rewards():
    conv = lambda text: [{"role": "assistant", "content": text}]
    completions = [conv("Red."), conv("it is red"), conv("gre xx"), conv(""), "green!"]
    answers = ["red", "red", "green", "green", "green"]
    assert exact_answer(completions, answers) == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert char_overlap(completions, answers) == pytest.approx([1.0, 1.0, 0.6, 0.0, 1.0])


def test_help_lists_demo_config_fields(capsys):
    assert cli.main(["demo", "--help"]) == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(DemoConfig):
        assert f"--{f.name}" in text, f.name
        assert f.metadata["help"].split()[0] in text, f.name
    assert cli.main(["--help"]) == 0 and "demo" in capsys.readouterr().out
    assert cli.main(["demo", "--max_steps", "not-a-number"]) == 2
    assert cli.main(["demo", "--sft_steps", "-1"]) == 2
    assert cli.main(["demo", "--image_size", "140"]) == 2  # not a multiple of the 56 px slot
    assert cli.main(["demo", "--sft_adam_beta2", "1.0"]) == 2
    assert cli.main(["demo", "--per_device_train_batch_size", "6", "--num_generations", "4"]) == 2
    assert "multiple of num_generations" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    done = subprocess.run(
        [sys.executable, "-m", "trl_attention", "demo", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "--num_iterations" in done.stdout
