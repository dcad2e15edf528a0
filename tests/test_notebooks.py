"""The notebooks run top to bottom (nbclient, a real kernel) on small data, as README promises."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["quickstart.ipynb", "evaluation.ipynb"])
def test_notebook_runs_top_to_bottom(name, shared_data, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    monkeypatch.setenv("ROOTWISE_SHARED_DATA", os.environ.get("ROOTWISE_SHARED_DATA", str(shared_data)))
    monkeypatch.setenv("ROOTWISE_NB_SCALE", "0.05")  # the quickstart's platform at half its default size
    monkeypatch.setenv("ROOTWISE_NB_DAYS", "1")  # over one day (its default: 1.5)
    monkeypatch.setenv("ROOTWISE_NB_WORKDIR", str(tmp_path))  # the quickstart's store goes with tmp_path
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"
    ]
    assert errors == []
    # every plotting cell produced a figure
    figures = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if "application/vnd.plotly.v1+json" in o.get("data", {})
    ]
    assert len(figures) >= 2
    nbformat.write(nb, tmp_path / name)  # the executed notebook, kept as a test artifact
