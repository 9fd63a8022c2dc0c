"""`trl-attention vrga` and examples/vrga_eval.py on a saved tiny VLM."""

import importlib.util
import json
import sys

import pytest
from PIL import Image

from tests.testing_utils import ROOT
from trl_attention import cli
from trl_attention.tiny import make_grounding_dataset, save_tiny_vlm
from trl_attention.vrga import VRGAConfig
from trl_attention.vrga.qa import answer_questions, is_correct, load_model

EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A JSONL with relative image paths, one record with two images; answers as (images, question, answer)."""
    folder = tmp_path_factory.mktemp("vrga_data")
    rows = make_grounding_dataset(3, seed=4)
    records, samples = [], []
    for i, row in enumerate(rows):
        row["image"].save(folder / f"{i}.png")
        question = row["prompt"][0]["content"][1]["text"]
        image = [f"{i}.png", "0.png"] if i == 2 else f"{i}.png"
        records.append({"image": image, "question": question, "answer": row["answer"]})
        samples.append(([row["image"], rows[0]["image"]] if i == 2 else row["image"], question))
    (folder / "data.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return folder / "data.jsonl", samples, [r["answer"] for r in records]


def test_is_correct():
    assert is_correct("It is a Red circle.", "red circle") and is_correct("red", "Red")
    assert not is_correct("credible", "red") and not is_correct("circle red", "red circle") and not is_correct("x", "")


def test_cli_prints_both_answers_and_writes_the_focus_heatmaps(tiny_dir, data, tmp_path, capsys):
    folder = data[0].parent
    argv = [
        "vrga",
        "--model",
        tiny_dir,
        "--image",
        str(folder / "0.png"),
        "--image",
        str(folder / "1.png"),
        "--question",
        "What colour is the circle?",
        "--max_new_tokens",
        "4",
        "--heatmap",
        str(tmp_path / "f.png"),
        "--gamma",
        "2.0",
        "--min_focus_tokens",
        "3",
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    model, processor = load_model(tiny_dir)
    images = [Image.open(folder / f"{i}.png").convert("RGB") for i in range(2)]
    sample = [(images, "What colour is the circle?")]
    (plain,), _ = answer_questions(model, processor, sample, None, 4)
    (steered,), (diag,) = answer_questions(model, processor, sample, VRGAConfig(gamma=2.0, min_focus_tokens=3), 4)
    wide = [([images[0], Image.new("RGB", (1000, 4))], "q")]  # VRGA's helper checks its images as the trainers do
    with pytest.raises(ValueError, match=r"sample 0, image 1: the image is 1000x4 .*image processor rejects"):
        answer_questions(model, processor, wide, None, 4)
    assert f"plain:    {plain}\n" in out and f"vrga:     {steered}\n" in out
    assert f"visual heads (layer, head): {diag.visual_heads}" in out
    for i in (1, 2):
        with Image.open(tmp_path / f"f_{i}.png") as png:
            assert png.format == "PNG" and min(png.size) >= 200
        assert f"focus tokens of image {i}: {int(diag.focus[i - 1].sum())}/16" in out
    assert cli.main(["vrga", "--model", tiny_dir, "--image", "missing.png", "--question", "q"]) == 2
    assert (
        cli.main(
            ["vrga", "--model", tiny_dir, "--image", str(folder / "0.png"), "--question", "q", "--neighborhood", "3d"]
        )
        == 2
    )
    assert "neighborhood" in capsys.readouterr().err


def test_eval_script_prints_the_accuracy_of_each_preset(tiny_dir, data, capsys):
    path, samples, answers = data
    spec = importlib.util.spec_from_file_location("vrga_eval", EXAMPLES / "vrga_eval.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["vrga_eval"] = module
    spec.loader.exec_module(module)
    assert (
        module.main(
            ["--model", tiny_dir, "--data", str(path), "--max_new_tokens", "4", "--batch_size", "2", "--gamma", "1.5"]
        )
        == 0
    )
    out = capsys.readouterr().out
    model, processor = load_model(tiny_dir)
    configs = {"plain": None, "reference": VRGAConfig(gamma=1.5), "paper": VRGAConfig(preset="paper", gamma=1.5)}
    for name, cfg in configs.items():
        predictions, diagnostics = answer_questions(model, processor, samples, cfg, 4, batch_size=3)
        accuracy = sum(is_correct(p, a) for p, a in zip(predictions, answers)) / 3
        assert f"accuracy {name + ':':<11} {accuracy:.4f}" in out
        if cfg is not None:
            heads = sum(int((d.boost_counts > 0).sum()) for d in diagnostics) / 3
            focus = sum(int(sum(f.sum() for f in d.focus)) for d in diagnostics) / 3
            assert f"{name}: mean per sample: boosted heads {heads:.2f}, focus tokens {focus:.2f}" in out
    assert "samples: 3" in out
    assert module.main(["--model", tiny_dir, "--data", str(path), "--max_new_tokens", "2", "--preset", "paper"]) == 0
    only = capsys.readouterr().out
    assert "accuracy paper:" in only and "reference" not in only
    bad = path.parent / "bad.jsonl"
    bad.write_text('{"image": "0.png", "question": "q"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: missing field"):
        module.read_jsonl(bad)


def test_benchmark_smoke(capsys):
    spec = importlib.util.spec_from_file_location("vrga_generation", EXAMPLES.parent / "benchmarks/vrga_generation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(
        [
            "--batch",
            "2",
            "--new_tokens",
            "3",
            "--layers",
            "2",
            "--hidden",
            "64",
            "--mlp",
            "128",
            "--heads",
            "4",
            "--kv_heads",
            "2",
            "--image_size",
            "112",
            "--repeats",
            "1",
            "--device",
            "cpu",
        ]
    )
    out = capsys.readouterr().out
    assert all(f"\n{mode} " in out for mode in ("plain", "vrga", "explicit", "eager"))
    assert "same tokens as vrga: {'explicit': True, 'eager': True}" in out
