"""Shared test configuration: the `gpu` marker skips cleanly on machines without a GPU,
and the whole session keeps its caches in a temporary folder, not the user's."""
import os
import pathlib

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


def pytest_collection_modifyitems(config, items):
    if gpucore.gpu_available():
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU: {gpucore.unavailable_reason()}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
