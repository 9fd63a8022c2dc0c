"""The trainers' docstring examples run as written, and their model cards cite the methods' papers."""

import os
import textwrap
import warnings

import pytest

from trl_attention import AttentionGKDTrainer, AttentionGRPOTrainer


def _example(cls) -> str:
    doc = cls.__doc__
    return textwrap.dedent(doc[doc.index("```python") + len("```python") : doc.rindex("```")])


@pytest.mark.parametrize("cls", [AttentionGRPOTrainer, AttentionGKDTrainer], ids=lambda c: c.__name__)
def test_docstring_example_runs_and_the_model_card_cites_the_papers(cls, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(_example(cls), cls.__name__, "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 2
    trainer.create_model_card()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "arXiv:2602.04884" in card and "Reinforced Attention Learning" in card  # RAL
    base = "arXiv:2402.03300" if cls is AttentionGRPOTrainer else "On-Policy Distillation of Language Models"
    assert base in card  # and the TRL trainer's own paper (GRPO's DeepSeekMath, GKD)
    assert "trl-attention" in card and os.path.isfile(tmp_path / "out" / "README.md")
