"""RAL-zero: RAL with the thinking part of the format removed, answer-only (docs/papers.md section 1), on ChartQA.

Same recipe and flags as `examples/ral_grpo.py`; only the prompt format, its format reward and the dataset differ:

    accelerate launch --num_processes 8 examples/ral_zero_grpo.py --output_dir out/ral-zero --bf16 true
    python examples/ral_zero_grpo.py --tiny --output_dir out/ral-zero-tiny --max_steps 2    # CPU, what CI runs
"""

from __future__ import annotations

import sys

from ral_grpo import main as ral_main  # examples/ is on sys.path when this file runs

ZERO = {
    "prompt_format": "answer",  # "<answer>...</answer>" only; the format reward follows the prompt format
    "dataset_name": "HuggingFaceM4/ChartQA",
    "question_column": "query",
    "answer_column": "label",  # [answer]
    "max_completion_length": 64,
}


def main(argv=None):
    return ral_main(sys.argv[1:] if argv is None else argv, **ZERO)


if __name__ == "__main__":
    main()
