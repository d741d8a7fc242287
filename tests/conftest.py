"""Shared test configuration: the `gpu` marker skips cleanly on machines without a GPU."""
import os
import pathlib

import pytest

import gpucore

REPO = pathlib.Path(__file__).resolve().parents[1]


def molecules_dir() -> pathlib.Path:
    """Benchmark geometries: $FUSION_MOLECULES, else the ones shipped in benchmarks/molecules."""
    return pathlib.Path(os.environ.get("FUSION_MOLECULES") or REPO / "benchmarks" / "molecules")


def pytest_collection_modifyitems(config, items):
    if gpucore.gpu_available():
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU: {gpucore.unavailable_reason()}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
