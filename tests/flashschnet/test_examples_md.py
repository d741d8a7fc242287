"""The MD quickstart script runs as a user would run it (the notebooks:
tests/test_notebooks.py).

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
