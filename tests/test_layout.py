"""The package layout's promises: a cheap `import trl_attention`, every 0.1 public name still importable (as the
same object as its new home), no module over 400 lines, and no library module importing the demo."""

import ast
import importlib
import json
import subprocess
import sys
import warnings

import pytest

from tests.testing_utils import ROOT

PACKAGE = ROOT / "trl_attention"
PUBLIC_NAMES_0_1 = json.loads((ROOT / "tests" / "data" / "public_names_0.1.json").read_text())


def test_import_is_cheap():
    code = (
        "import sys, trl_attention; trl_attention.__all__; "
        "print(sorted(m for m in ('torch', 'transformers', 'trl', 'datasets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("module", sorted(PUBLIC_NAMES_0_1))
def test_every_0_1_public_name_still_imports(module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # old paths warn that they moved
        mod = importlib.import_module(module)
        missing = [name for name in PUBLIC_NAMES_0_1[module] if not hasattr(mod, name)]
    assert not missing, f"{module} lost {missing}"


def test_old_paths_are_the_new_objects():
    sys.modules.pop("trl_attention.gkd", None)  # imported by the test above: import it afresh
    with pytest.warns(FutureWarning, match="trl_attention.gkd moved to trl_attention.distill"):
        old = importlib.import_module("trl_attention.gkd")
    from trl_attention.distill import AttentionGKDTrainer
    from trl_attention.sayo import RegionAttentionReward

    assert old.AttentionGKDTrainer is AttentionGKDTrainer
    with pytest.warns(FutureWarning, match="sayo"):
        from trl_attention.rewards import RegionAttentionReward as moved
    assert moved is RegionAttentionReward


def _library_modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_module_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in _library_modules() if (n := len(p.read_text().splitlines())) > 400}
    assert not long


def test_no_library_module_imports_the_demo():
    importers = []
    for path in _library_modules():
        if path.relative_to(PACKAGE).as_posix() == "cli/demo.py":  # the `demo` command itself
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] == "demo":
                importers.append(str(path.relative_to(ROOT)))
    assert not importers
