"""notebooks/quickstart.ipynb runs top to bottom on a trained run, offline, and is stored without outputs."""

import nbclient
import nbformat

from conftest import ROOT

NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


def test_the_quickstart_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def test_the_quickstart_notebook_runs_top_to_bottom_on_a_trained_run(trained_run, monkeypatch):
    monkeypatch.setenv("RUN_DIR", str(trained_run / "cifar_cat_dog_conditional_improved"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) == 2 + 4  # a grid per class, and the run's four figures
