"""The notebooks in examples/notebooks run top to bottom (nbclient), with CI-sized parameters, so they cannot rot.

Each notebook's first code cell is tagged `parameters`; the overrides below are appended to it. Assertions inside
the notebooks check their numbers (JSD bounds, reward ranges, focus tokens)."""

import nbformat
import pytest
from nbclient import NotebookClient

from tests.testing_utils import ROOT

NOTEBOOKS = ROOT / "examples" / "notebooks"
CI_PARAMETERS = {
    "ral_quickstart": "MAX_STEPS = 2\nNUM_SAMPLES = 8",
    "sayo_reward": "MAX_STEPS = 2\nNUM_SAMPLES = 8",
    "attention_distillation": "MAX_STEPS = 2",
    "vrga": "MAX_NEW_TOKENS = 4",
}


def test_every_notebook_is_tested():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(CI_PARAMETERS)


@pytest.mark.parametrize("name", sorted(CI_PARAMETERS))
def test_notebook_runs(name, tmp_path):
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    (parameters,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    parameters.source += "\n" + CI_PARAMETERS[name]
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError with the cell and its traceback on failure
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert any(
        o.output_type == "display_data" and "image/png" in o.data
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
