"""The test session keeps gpucore's cache in its temporary folder (conftest's
``session_cache``), in this process and in the processes tests start."""
import os
import pathlib
import subprocess
import sys

import gpucore

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_the_cache_in_effect_is_the_session_s_temporary_one(session_cache, tmp_path_factory):
    here = gpucore.cache_dir()
    assert here.is_relative_to(session_cache)
    assert session_cache.is_relative_to(tmp_path_factory.getbasetemp())
    assert not here.is_relative_to(pathlib.Path.home() / ".cache")


def test_processes_the_tests_start_use_it_too(session_cache):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", "import gpucore; print(gpucore.cache_dir())"],
                         env=env, capture_output=True, text=True, timeout=120, check=True)
    assert pathlib.Path(out.stdout.strip()) == gpucore.cache_dir()
