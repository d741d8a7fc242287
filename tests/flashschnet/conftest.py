"""Shared fixtures for the FlashSchNet reference tests (CPU, float64)."""

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: torch's thread pool costs more than it saves (and CI has 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def cluster(rng):
    """``cluster(n, size, min_dist)``: float64 positions (n, 3) in a cube of side
    ``size``, no two closer than ``min_dist`` (keeps energies and forces tame)."""

    def make(n, size, min_dist=0.9):
        points = []
        while len(points) < n:
            p = rng.uniform(0.0, size, 3)
            if all(np.linalg.norm(p - q) >= min_dist for q in points):
                points.append(p)
        return torch.tensor(np.array(points), dtype=torch.float64)

    return make


@pytest.fixture
def small_model():
    """``small_model(**overrides)``: a small float64 SchNet with fixed seed."""
    from ase_flashschnet.model import SchNet

    def make(**overrides):
        kwargs = dict(hidden_channels=16, num_filters=12, num_interactions=2, num_rbf=10, cutoff=3.0, seed=7)
        kwargs.update(overrides)
        return SchNet(**kwargs).double()

    return make


def finite_difference_forces(energy_fn, pos, h=1e-5):
    """-dE/dpos by central differences of ``energy_fn(pos) -> scalar tensor``."""
    forces = torch.zeros_like(pos)
    for i in range(pos.shape[0]):
        for a in range(3):
            plus, minus = pos.clone(), pos.clone()
            plus[i, a] += h
            minus[i, a] -= h
            forces[i, a] = -(energy_fn(plus) - energy_fn(minus)) / (2 * h)
    return forces


@pytest.fixture
def fd_forces():
    return finite_difference_forces


@pytest.fixture
def captured():
    """``captured(fn)``: ``(cuda_graph, outputs)``, ``fn`` warmed up on a side stream
    (as capture asks), then captured once; ``cuda_graph.replay()`` refreshes
    ``outputs`` in place."""
    return _capture


def _capture(fn, warmup=2):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    cuda_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(cuda_graph):
        outputs = fn()
    return cuda_graph, outputs
