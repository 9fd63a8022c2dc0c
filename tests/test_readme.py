"""The README's quickstart runs as written (with a shorter run and a temporary output directory)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs_and_logs_attention_metrics(tmp_path):
    code = re.search(r"## Quickstart\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert len(code.strip().splitlines()) <= 10
    code = code.replace('output_dir="out"', f'output_dir="{tmp_path}", disable_tqdm=True, logging_steps=1')
    code = code.replace("max_steps=20", "max_steps=2")
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    logs = [h for h in namespace["trainer"].state.log_history if "attention/jsd" in h]
    assert len(logs) == 2
    assert all(0 <= h["attention/jsd"] < 0.7 and 0 < h["attention/image_mass"] < 1 for h in logs)
