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


@pytest.fixture(scope="module")
def cg_demo():
    """The shipped CGSchNet-sized model (with priors) and its 269-bead chain."""
    from ase_flashschnet import shipped

    return shipped.get("cg-demo"), shipped.default_structure("cg-demo")


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


def _draw(rng, n, mean, std, jacobian, top):
    """n samples of p(x) ~ jacobian(x) exp(-(x - mean)^2 / (2 std^2)) where x > 0 and
    jacobian(x) > 0, by rejection from the Gaussian (``top`` bounds ``jacobian``
    where samples fall)."""
    out = np.empty(0)
    while out.size < n:
        x = rng.normal(mean, std, 2 * n)
        x = x[(x > 0) & (rng.uniform(0.0, top, x.size) < jacobian(x))]
        out = np.concatenate([out, x])
    return out[:n]


def sample_chain(rng, n_frames, n_beads, k_bond, r0, k_angle, theta0, kT):
    """Chains (n_frames, n_beads, 3) drawn from the Boltzmann distribution at ``kT``
    of harmonic bonds (consecutive beads) and angles (consecutive triples); the
    parameters are scalars or one value per bond / angle. A chain's volume
    element in bond lengths, angles and dihedrals is prod r^2 sin(theta) dr
    dtheta dphi, so drawing each r from r^2 exp(-U/kT), each theta from
    sin(theta) exp(-U/kT) and each dihedral uniformly samples it exactly."""
    k_bond, r0 = np.broadcast_to(k_bond, n_beads - 1), np.broadcast_to(r0, n_beads - 1)
    k_angle, theta0 = np.broadcast_to(k_angle, n_beads - 2), np.broadcast_to(theta0, n_beads - 2)
    pos = np.zeros((n_frames, n_beads, 3))
    for i in range(1, n_beads):
        std = np.sqrt(kT / k_bond[i - 1])
        r = _draw(rng, n_frames, r0[i - 1], std, np.square, (r0[i - 1] + 8 * std) ** 2)
        if i == 1:
            pos[:, 1, 0] = r
            continue
        std = np.sqrt(kT / k_angle[i - 2])
        theta = _draw(rng, n_frames, theta0[i - 2], std, np.sin, 1.0)  # sin < 0 rejects theta > pi
        phi = rng.uniform(0.0, 2 * np.pi, n_frames)
        a = pos[:, i - 3] if i >= 3 else pos[:, 0] + np.array([0.0, 1.0, 0.0])
        b, c = pos[:, i - 2], pos[:, i - 1]
        bc = (c - b) / np.linalg.norm(c - b, axis=1, keepdims=True)
        n = np.cross(b - a, bc)
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        m = np.cross(n, bc)
        pos[:, i] = c + r[:, None] * (-np.cos(theta)[:, None] * bc + (np.sin(theta) * np.cos(phi))[:, None] * m
                                      + (np.sin(theta) * np.sin(phi))[:, None] * n)
    return pos


@pytest.fixture
def boltzmann_chain(rng):
    """``boltzmann_chain(n_frames, n_beads, k_bond, r0, k_angle, theta0, kT)``: see :func:`sample_chain`."""

    def make(*args, **kwargs):
        return sample_chain(rng, *args, **kwargs)

    return make
