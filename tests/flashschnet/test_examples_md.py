"""The MD quickstart script and the FlashSchNet notebook run as a user would run them.

One OpenMP thread: the inputs are tiny, and on a busy 2-core machine torch's
thread pool costs far more than it saves.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


@pytest.fixture
def user_env(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return dict(os.environ)


def test_md_quickstart_runs(tmp_path, user_env):
    proc = subprocess.run([sys.executable, str(EXAMPLES / "md_quickstart.py"), "--out", str(tmp_path / "out"),
                           "--steps", "60"], capture_output=True, text=True, timeout=600, env=user_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ASE Langevin" in proc.stdout and "ns/day" in proc.stdout
    assert (tmp_path / "out" / "replicas.png").stat().st_size > 0
    assert len(list((tmp_path / "out").glob("replica_*.traj"))) == 8


def test_notebook_runs(user_env):
    path = EXAMPLES / "notebooks" / "flashschnet.ipynb"
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "max |F - F_numerical|" in outputs and "ns/day" in outputs
