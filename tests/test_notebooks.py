"""Every notebook in notebooks/ runs top to bottom, and is committed clean.

* Kernel: a kernelspec written to a temp dir that runs *this* interpreter
  (``sys.executable -m ipykernel_launcher``), handed to nbclient through its own
  KernelSpecManager -- no user or system kernelspec is needed or used.
* Each notebook runs in its own temp working dir, with ``TMPDIR`` pointing there
  too (the notebooks put their keystore and data under ``tempfile.mkdtemp()``), and
  without the ``SPARK_KMS_*`` variables of the calling shell, so a notebook cannot
  lean on a developer's keystore.
* A cell error fails the test (nbclient raises ``CellExecutionError`` with the traceback).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
KERNEL_NAME = "spark_kms_tests"
CELL_TIMEOUT_S = 300  # generous: the machine is shared; the notebooks themselves aim at < 60 s

# Notebooks that must draw a chart, and the notebook that must never show a full SSN.
CHART_NOTEBOOKS = {"02_explore_encrypted_dataset.ipynb", "03_rotation.ipynb"}
MASKED_NOTEBOOK = "02_explore_encrypted_dataset.ipynb"
SSN_RE = re.compile(r"\b\d{3}-\d{2}-\d{4}\b")


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def test_the_expected_notebooks_exist() -> None:
    names = {p.name for p in NOTEBOOKS}
    assert {"01_quickstart.ipynb", "02_explore_encrypted_dataset.ipynb", "03_rotation.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name} has no code cells"
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs or execution counts; clear them before committing"


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    kernels = tmp_path_factory.mktemp("kernels")
    spec_dir = kernels / KERNEL_NAME
    spec_dir.mkdir()
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "spark_kms tests",
        "language": "python",
    }))
    return kernels


def _kernel_env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_KMS_") and k != "MPLBACKEND"}
    env.update({
        "TMPDIR": str(workdir),
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYTHONHASHSEED": "0",
    })
    return env


def _execute(path: Path, kernel_dir: Path, workdir: Path) -> nbformat.NotebookNode:
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    km = AsyncKernelManager(
        kernel_name=KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)])
    )
    client = NotebookClient(
        nb, km=km, timeout=CELL_TIMEOUT_S, allow_errors=False, resources={"metadata": {"path": str(workdir)}}
    )
    # cleanup_kc: shut the kernel down afterwards even though we built the kernel manager
    client.execute(cleanup_kc=True, env=_kernel_env(workdir))
    return nb


def _outputs(nb: nbformat.NotebookNode) -> list[dict[str, Any]]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def _texts(nb: nbformat.NotebookNode) -> list[str]:
    out = []
    for o in _outputs(nb):
        if o.get("output_type") == "stream":
            out.append(o.get("text", ""))
        for mime in ("text/plain", "text/html"):
            value = o.get("data", {}).get(mime)
            if value:
                out.append(value if isinstance(value, str) else "".join(value))
    return out


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs(path: Path, kernel_dir: Path, tmp_path: Path) -> None:
    nb = _execute(path, kernel_dir, tmp_path)

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "every code cell ran"
    errors = [o for o in _outputs(nb) if o.get("output_type") == "error"]
    assert not errors

    if path.name in CHART_NOTEBOOKS:
        images = [o for o in _outputs(nb) if "image/png" in o.get("data", {})]
        assert images, f"{path.name} should render its key-version chart(s) as PNG"

    html = "\n".join(t for t in _texts(nb) if "<table" in t)
    assert "<table" in html, f"{path.name} renders no HTML table (key table / inspection view)"

    if path.name == MASKED_NOTEBOOK:
        leaked = sorted({m for t in _texts(nb) for m in SSN_RE.findall(t)})
        assert not leaked, f"{path.name} shows {len(leaked)} full SSN value(s); it must only show masked values"
        assert "\u2022" in "\n".join(_texts(nb)), "the masked values are displayed"

    # The notebook's scratch space lived under the test's own temp dir and was cleaned up by the notebook.
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("spark_kms_")]
    assert not leftovers, f"{path.name} left {leftovers} behind"
