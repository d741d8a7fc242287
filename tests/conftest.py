"""Shared test configuration: the `gpu` marker skips cleanly on machines without a GPU,
the whole session keeps its caches in a temporary folder, not the user's,
``mpirun`` starts scripts on several MPI ranks, ``setup_cfg`` /
``console_scripts`` read the package metadata, ``benchmark_script``
loads a script of benchmarks/ as a module, and ``refuses_without_gpu``
checks a benchmark's refusal on a machine without a GPU."""
import configparser
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

import gpucore
from gpucore.loader import CACHE_ENV

REPO = pathlib.Path(__file__).resolve().parents[1]


def molecules_dir() -> pathlib.Path:
    """Benchmark geometries: $FUSION_MOLECULES, else the ones shipped in benchmarks/molecules."""
    return pathlib.Path(os.environ.get("FUSION_MOLECULES") or REPO / "benchmarks" / "molecules")


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory):
    """gpucore's cache (compiled kernels, prepared objects, tier decisions) in a
    folder of this session, for the tests and the processes they start: a test
    run neither fills the user's ~/.cache nor reuses what is there. Tests of
    the cache itself point it at their own tmp_path on top of this."""
    root = tmp_path_factory.mktemp("fusion-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(root / "kernels"))
        yield root


@pytest.fixture(scope="session")
def setup_cfg() -> configparser.ConfigParser:
    """The repository's setup.cfg, parsed."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg


@pytest.fixture(scope="session")
def console_scripts(setup_cfg) -> dict:
    """{command: 'module:function'} of setup.cfg's console scripts."""
    lines = setup_cfg["options.entry_points"]["console_scripts"].split("\n")
    return dict(line.split(" = ") for line in lines if line)


@pytest.fixture
def refuses_without_gpu(capsys):
    """``check(main, argv)``: a benchmark's ``main(argv)`` on a machine without
    a usable GPU returns 2, says on stderr that it needs one, and writes no
    result file."""
    def check(main, argv):
        results = REPO / "benchmarks" / "results"
        before = sorted(results.iterdir())
        assert main(argv) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err
        assert sorted(results.iterdir()) == before
    return check


@pytest.fixture(scope="session")
def benchmark_script():
    """``load(name)``: benchmarks/<name>.py as a module, registered in
    ``sys.modules`` (dataclasses look their module up).  The scripts put
    benchmarks/ on ``sys.path`` themselves, for ``_common``."""
    def load(name):
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    return load


@pytest.fixture
def mpirun():
    """``mpirun(ranks, script, *args)``: the finished ``mpiexec -n ranks python
    script args`` (one thread per rank, this checkout first on the path);
    skips the test cleanly where mpi4py or ``mpiexec`` is missing. ``mpiexec``
    is the one beside this Python (the ``mpich`` wheel's), else the PATH's."""
    beside = pathlib.Path(sys.executable).parent / "mpiexec"
    mpiexec = str(beside) if beside.is_file() else shutil.which("mpiexec")
    if importlib.util.find_spec("mpi4py") is None or mpiexec is None:
        pytest.skip("needs mpi4py and mpiexec (pip install '.[mpi]')")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))

    def run(ranks, script, *args, timeout=300):
        res = subprocess.run([mpiexec, "-n", str(ranks), sys.executable, str(script), *map(str, args)],
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        assert res.returncode == 0, f"{ranks} ranks: {res.stdout}\n{res.stderr}"
        return res

    return run


def pytest_collection_modifyitems(config, items):
    if gpucore.gpu_available():
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU: {gpucore.unavailable_reason()}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
