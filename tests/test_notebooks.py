"""The notebooks in examples/notebooks as a user runs them: in a Jupyter kernel
whose working folder is not theirs, every cell runs and every figure shows; the
saved notebooks carry no outputs; no example module picks a matplotlib backend
when imported; the ``notebooks`` extra brings what running them takes."""
import ast
import json
import os
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
NOTEBOOKS = sorted((EXAMPLES / "notebooks").glob("*.ipynb"))
#: What each notebook prints when its checks pass.
PRINTS = {"flashschnet.ipynb": ("max |F - F_numerical|", "ns/day"), "fusionrcg.ipynb": ("dE =", "FusionRCG"),
          "cln025.ipynb": ("folded fraction", "Jensen-Shannon divergence of RMSD")}
BACKEND_CALLS = {"matplotlib.use", "plt.switch_backend", "matplotlib.pyplot.switch_backend"}


def test_every_notebook_is_covered():
    assert [path.name for path in NOTEBOOKS] == sorted(PRINTS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_runs_from_another_folder_and_shows_its_figures(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # The kernel inherits this environment: the checkout's packages, one thread (tiny
    # inputs), and Jupyter's own inline figures, which MPLBACKEND (CI sets Agg) replaces.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    text = "".join(out.get("text", "") for cell in code for out in cell.outputs)
    for expected in PRINTS[path.name]:
        assert expected in text
    shows = sum(cell.source.count("plt.show()") for cell in code)
    figures = sum("image/png" in out.get("data", {}) for cell in code for out in cell.outputs)
    assert shows > 0 and figures == shows


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebooks_are_saved_without_outputs(path):
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda path: path.name)
def test_only_running_an_example_picks_the_matplotlib_backend(path):
    """matplotlib.use() only under ``if __name__ == "__main__"``: a notebook that
    imports an example keeps its inline figures."""
    tree = ast.parse(path.read_text())
    main_blocks = [node for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)]
    allowed = {id(node) for block in main_blocks for node in ast.walk(block)}
    picks = [ast.unparse(node) for node in ast.walk(tree)
             if isinstance(node, ast.Call) and ast.unparse(node.func) in BACKEND_CALLS and id(node) not in allowed]
    assert not picks


def test_notebooks_extra_brings_what_running_them_takes(setup_cfg):
    """``pip install ".[notebooks]"``: Jupyter to open them, nbconvert, nbclient and
    ipykernel for ``jupyter nbconvert --execute``, matplotlib for the figures."""
    requirements = setup_cfg["options.extras_require"]["notebooks"].split()
    names = {re.match(r"[A-Za-z0-9_.-]+", requirement).group().lower() for requirement in requirements}
    assert {"jupyter", "nbconvert", "nbclient", "ipykernel", "matplotlib"} <= names
