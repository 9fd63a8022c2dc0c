"""Session setup and fixtures; shared helpers live in `tests/testing_utils.py`."""

import os

import pytest
import torch
from datasets import Dataset

from tests.testing_utils import PROMPTS

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if not torch.cuda.is_available():
    # The Triton kernel tests run in Triton's CPU interpreter, which must be chosen before anything imports triton
    # (importing trl/transformers does, via torch._dynamo): so here, before any test module is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def text_dataset():
    return Dataset.from_dict({"prompt": PROMPTS * 4})
