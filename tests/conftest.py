"""Session setup and fixtures; shared helpers live in `tests/testing_utils.py`."""

import os

# Nothing can be downloaded here (nor in CI): fail hub look-ups at once instead of after connection retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402

from tests.testing_utils import PROMPTS  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if not torch.cuda.is_available():
    # The Triton kernel tests run in Triton's CPU interpreter, which must be chosen before anything imports triton
    # (importing trl/transformers does, via torch._dynamo): so here, before any test module is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def text_dataset():
    return Dataset.from_dict({"prompt": PROMPTS * 4})
