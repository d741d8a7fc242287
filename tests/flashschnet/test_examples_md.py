"""The MD quickstart script and README's ASE section run as a user would run them
(the notebooks: tests/test_notebooks.py).

One OpenMP thread: the inputs are tiny, and on a busy 2-core machine torch's
thread pool costs far more than it saves.
"""
import os
import re
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


def test_readme_ase_section_runs_as_written(tmp_path, user_env):
    """README's "Using it from ASE" code, in a fresh folder, with fewer steps and
    every warning an error (ASE's fixcm deprecation among them)."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Using it from ASE\n", 1)[1].split("\n## ", 1)[0]
    python = re.findall(r"```python\n(.*?)```", section, re.S)
    shell = [line for block in re.findall(r"```bash\n(.*?)```", section, re.S) for line in block.splitlines()]
    assert len(python) == 1 and any(line.startswith("flashschnet-md ") for line in shell)
    assert re.search(r"friction=[^,]*/ *units\.fs", python[0]), "friction in ASE units, as the examples give it"
    script = re.sub(r"\.run\(\d+\)", ".run(3)", python[0])
    proc = subprocess.run([sys.executable, "-W", "error", "-c", script], capture_output=True, text=True,
                          timeout=300, env=user_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for line in shell:
        if line.startswith("flashschnet-md "):
            args = re.sub(r"--steps \d+", "--steps 3", line).split()[1:]
            proc = subprocess.run([sys.executable, "-W", "error", "-m", "ase_flashschnet.cli", *args,
                                   "--no-progress"], capture_output=True, text=True, timeout=300, env=user_env,
                                  cwd=tmp_path)
            assert proc.returncode == 0, f"{line}\n{proc.stderr}"
