"""The README's quickstart runs as written (with a shorter run and a temporary output directory), the README stays a
short entry point that maps every docs page, and docs/sayo.md's GQA converter produces a valid SAYO row."""

import re

from tests.testing_utils import ROOT

README = ROOT / "README.md"
SAYO = ROOT / "docs" / "sayo.md"


def test_quickstart_runs_and_logs_attention_metrics(tmp_path):
    code = re.search(r"## Quickstart\n\n```python\n(.*?)```", README.read_text(), re.DOTALL).group(1)
    assert len(code.strip().splitlines()) <= 10
    code = code.replace('output_dir="out"', f'output_dir="{tmp_path}", disable_tqdm=True, logging_steps=1')
    code = code.replace("max_steps=20", "max_steps=2")
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    logs = [h for h in namespace["trainer"].state.log_history if "attention/jsd" in h]
    assert len(logs) == 2
    assert all(0 <= h["attention/jsd"] < 0.7 and 0 < h["attention/image_mass"] < 1 for h in logs)


def test_readme_is_short_and_maps_every_docs_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 120, "the README is the entry point: move details to a page under docs/"
    assert "bash scripts/test.sh" in text  # .ci/run runs the README's test command
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md")) + ["trl-internals.md"]
    missing = [name for name in pages if f"](docs/{name})" not in text]
    assert not missing, f"docs pages missing from the README's documentation map: {missing}"


def test_gqa_converter_produces_a_valid_sayo_row():
    from datasets import Dataset
    from PIL import Image

    from trl_attention.sayo import RegionAttentionReward

    code = re.search(r"```python\n(def gqa_to_sayo.*?)```", SAYO.read_text(), re.DOTALL).group(1)
    namespace = {}
    exec(code, namespace)
    record = {
        "question": "What colour is the cup?",
        "answer": "red",
        "image": Image.new("RGB", (64, 48)),
        "annotations": {"question": {"4": "o2", "1:3": "o1"}},
    }
    objects = {"o1": {"x": 1, "y": 2, "w": 10, "h": 5}, "o2": {"x": 30, "y": 20, "w": 8, "h": 8}}
    row = namespace["gqa_to_sayo"](record, objects)
    assert row["boxes"] == [[[1, 2, 11, 7], [30, 20, 38, 28]]] and row["solution"] == "red"
    RegionAttentionReward().validate(Dataset.from_list([row]))  # passes the trainer's pre-training validation
