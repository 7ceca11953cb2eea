"""Every notebook in notebooks/ runs top to bottom (small settings), so none of them rots.

Each notebook is executed with SST_NOTEBOOK_SMALL=1 in a kernel started from this very
interpreter (the project's venv), with the repository root as working directory. A notebook
fails the test if any cell raises, including its own `assert` cells.
"""

import json
import os
import pathlib
import sys

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 300  # a notebook must run in two minutes on 2 cores; this only stops hangs
# Flags of conftest.py's XLA_FLAGS a notebook's kernel runs without: notebook 04's Jacobian of
# functionals compiles twice as slowly without the fusion emitters (179 s against 98 s).
NOTEBOOK_XLA_FLAGS_DROPPED = {"04_gradients_optax.ipynb": ("--xla_cpu_use_fusion_emitters=false",)}


@pytest.fixture(scope="module")
def kernel_spec_manager(tmp_path_factory) -> KernelSpecManager:
    """A kernelspec that starts `sys.executable`, whatever kernels the user has installed."""
    kernels = tmp_path_factory.mktemp("kernels")
    spec_dir = kernels / "sst-venv"
    spec_dir.mkdir()
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "sst venv",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(kernels)])


def test_notebooks_found():
    assert NOTEBOOKS, "no notebooks found under notebooks/"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, kernel_spec_manager, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), (
        f"{path.name} is committed with outputs; clear them before committing."
    )
    monkeypatch.setenv("SST_NOTEBOOK_SMALL", "1")  # the kernel inherits this environment
    dropped = NOTEBOOK_XLA_FLAGS_DROPPED.get(path.name, ())
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if f not in dropped]
    monkeypatch.setenv("XLA_FLAGS", " ".join(flags))
    km = KernelManager(kernel_name="sst-venv", kernel_spec_manager=kernel_spec_manager)
    assert km.kernel_spec.argv[0] == sys.executable
    client = NotebookClient(
        nb, km=km, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()
