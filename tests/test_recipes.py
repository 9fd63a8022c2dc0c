"""The recipes' helpers refuse what they cannot measure (trl_attention_recipes.evaluation)."""

import pytest
from datasets import Dataset

from trl_attention.tiny import build_tiny_vlm, make_grounding_dataset
from trl_attention_recipes.evaluation import evaluate, majority_accuracy


def test_evaluate_and_the_baseline_on_empty_sets():
    model, processor = build_tiny_vlm()
    empty = Dataset.from_list([])
    with pytest.raises(ValueError, match="evaluate: the held-out dataset is empty"):
        evaluate(model, processor, empty, max_new_tokens=2)  # was an IndexError
    rows = make_grounding_dataset(4)
    assert majority_accuracy(rows, []) != majority_accuracy(rows, [])  # NaN (was 0.0): no row, no accuracy
    assert 0.0 <= majority_accuracy(rows, rows) <= 1.0
