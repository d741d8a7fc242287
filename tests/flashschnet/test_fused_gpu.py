"""FusedSchNet on the GPU against the reference SchNet (float64 on the same GPU):
energies, exact forces, virials, determinism, 16-bit accuracy, fresh outputs."""
import copy

import numpy as np
import pytest
import torch

import gpucore
from ase_flashschnet.model import SchNet
from ase_flashschnet.neighbors import build_torch
from ase_flashschnet.priors import HarmonicBonds, Repulsion

_HAS_GPU = gpucore.gpu_available() and torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _HAS_GPU, reason="needs a CUDA GPU with CuPy and torch.cuda")]

if _HAS_GPU:
    from ase_flashschnet.fused import FusedSchNet

CUTOFF = 5.0


def _batch(sizes, periodic, seed, n_types=8, isolated=True, spacing=1.9):
    """Systems of jittered-grid atoms (no two closer than ~1.1 A); with ``isolated``
    the last system gets an atom with no neighbour. Positions float64 on the GPU."""
    rng = np.random.default_rng(seed)
    pos, batch, cells = [], [], []
    for s, n in enumerate(sizes):
        side = int(np.ceil(n ** (1 / 3)))
        grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
        p = (grid[rng.permutation(len(grid))[:n]] + rng.uniform(-0.2, 0.2, (n, 3))) * spacing
        if isolated and s == len(sizes) - 1 and not periodic:
            p[-1] = p.max(0) + 3 * CUTOFF
        pos.append(p)
        batch += [s] * n
        length = side * spacing
        cells.append(np.diag([length, length * 1.1, length * 1.05]) + (0.3 * np.triu(np.ones((3, 3)), 1) if s % 2 else 0))
    dev = torch.device("cuda")
    pos = torch.tensor(np.concatenate(pos), device=dev)
    batch = torch.tensor(batch, device=dev)
    types = torch.tensor(rng.integers(0, n_types, len(batch)), device=dev)
    cell = torch.tensor(np.stack(cells), device=dev) if periodic else None
    graph = build_torch(pos, CUTOFF, batch=batch, cell=cell, pbc=periodic, n_systems=len(sizes))
    return types, pos, graph


def _model(activation="tanh", filters=128, n_rbf=50, seed=0, priors=()):
    model = SchNet(hidden_channels=64, num_filters=filters, num_interactions=3, num_rbf=n_rbf, cutoff=CUTOFF,
                   activation=activation, num_types=8, seed=seed, priors=priors).cuda()
    with torch.no_grad():  # larger filter weights than the default init, so the filters matter
        for block in model.interactions:
            block.filter2.weight.mul_(3.0)
    return model


def _reference(model, types, pos, graph, virial=False):
    ref = copy.deepcopy(model).double()
    if virial:
        return ref.energy_forces_virial(types, pos, graph)
    return ref.energy_and_forces(types, pos, graph)


def _rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


CASES = [  # activation, filters, Gaussians, periodic
    ("tanh", 128, 50, False),
    ("tanh", 128, 50, True),
    ("ssp", 64, 20, False),
    ("silu", 128, 50, True),
]


@pytest.mark.parametrize("activation, filters, n_rbf, periodic", CASES)
def test_fp32_matches_reference(activation, filters, n_rbf, periodic):
    model = _model(activation, filters, n_rbf)
    types, pos, graph = _batch([37, 64, 29], periodic, seed=1)
    e_ref, f_ref = _reference(model, types, pos, graph)
    energy, forces = FusedSchNet(model).energy_and_forces(types, pos, graph)
    assert energy.dtype == pos.dtype and forces.shape == pos.shape
    print(f"\n{activation} F={filters} n_rbf={n_rbf} periodic={periodic}: edges {graph.num_edges}, "
          f"energy rel err {_rel(energy, e_ref):.2e}, force rel err {_rel(forces, f_ref):.2e}")
    assert _rel(energy, e_ref) < 1e-5
    assert _rel(forces, f_ref) < 1e-4


def test_fp32_many_tiles_and_blocks():
    """~100k edges: many edge tiles per block, atoms split across tiles, many blocks."""
    model = _model()
    types, pos, graph = _batch([300, 300, 300, 300], True, seed=2, spacing=1.5)
    e_ref, f_ref = _reference(model, types, pos, graph)
    energy, forces = FusedSchNet(model).energy_and_forces(types, pos, graph)
    print(f"\nedges {graph.num_edges}: energy rel err {_rel(energy, e_ref):.2e}, "
          f"force rel err {_rel(forces, f_ref):.2e}")
    assert _rel(energy, e_ref) < 1e-5
    assert _rel(forces, f_ref) < 1e-4


def test_virial_and_priors_match_reference():
    n = 30
    bonds = [[i, i + 1] for i in range(n - 1)]
    priors = [HarmonicBonds(bonds, k=2.0, r0=1.9, n_atoms=n), Repulsion(sigma=1.5, exponent=6, cutoff=4.0)]
    model = _model(priors=priors)
    types, pos, graph = _batch([n, n, n], True, seed=3, isolated=False)
    e_ref, f_ref, v_ref = _reference(model, types, pos, graph, virial=True)
    energy, forces, virial = FusedSchNet(model).energy_forces_virial(types, pos, graph)
    assert virial.shape == (3, 3, 3)
    assert _rel(energy, e_ref) < 1e-5
    assert _rel(forces, f_ref) < 1e-4
    assert _rel(virial, v_ref) < 1e-4


def test_generic_energy_api_unsorted_edges():
    """energy()/per_atom_energies() on a shuffled edge list, differentiable via edge_vec."""
    model = _model()
    types, pos, graph = _batch([40, 33], False, seed=4)
    perm = torch.randperm(graph.num_edges, device=pos.device)
    src, dst = graph.edge_src[perm], graph.edge_dst[perm]
    fused = FusedSchNet(model)
    ref = copy.deepcopy(model).double()
    leaf = pos.clone().requires_grad_(True)
    energy = fused.energy(types, leaf, src, dst, leaf[src] - leaf[dst], graph.batch, graph.n_systems)
    (grad,) = torch.autograd.grad(energy.sum(), leaf)
    e_ref, f_ref = ref.energy_and_forces(types, pos, graph)
    assert _rel(energy.detach(), e_ref) < 1e-5
    assert _rel(-grad, f_ref) < 1e-4
    per_atom = fused.per_atom_energies(types, pos, src, dst)
    assert _rel(per_atom, ref.per_atom_energies(types, pos, src, dst)) < 1e-5


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bitwise_reproducible(precision):
    model = _model()
    types, pos, graph = _batch([300, 300], True, seed=5, spacing=1.5)
    fused = FusedSchNet(model, precision=precision)
    e1, f1 = fused.energy_and_forces(types, pos, graph)
    e2, f2 = fused.energy_and_forces(types, pos, graph)
    assert torch.equal(e1, e2) and torch.equal(f1, f2)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("periodic", [False, True])
def test_16bit_force_error(precision, periodic):
    model = _model()
    types, pos, graph = _batch([64, 64, 50], periodic, seed=6)
    e32, f32 = FusedSchNet(model).energy_and_forces(types, pos, graph)
    e16, f16 = FusedSchNet(model, precision=precision).energy_and_forces(types, pos, graph)
    rms = float((f16 - f32).norm() / f32.norm())
    print(f"\n{precision} periodic={periodic}: force RMS rel err {rms:.2e}, energy rel err {_rel(e16, e32):.2e}")
    assert rms < 1e-2


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fresh_outputs(precision):
    """Outputs are fully written by the kernels: poison the allocator's free memory
    with NaN first (an atom without neighbours included)."""
    model = _model()
    types, pos, graph = _batch([37, 29], False, seed=7)
    assert int((graph.dst_ptr[1:] - graph.dst_ptr[:-1] == 0).sum()) >= 1
    fused = FusedSchNet(model, precision=precision)
    e1, f1 = fused.energy_and_forces(types, pos, graph)
    torch.cuda.synchronize()
    del e1, f1
    free = torch.cuda.mem_get_info()[0]
    poison = torch.full((min(free // 8, 1 << 28),), float("nan"), device="cuda")
    del poison
    e2, f2 = fused.energy_and_forces(types, pos, graph)
    assert bool(torch.isfinite(e2).all()) and bool(torch.isfinite(f2).all())
    e_ref, f_ref = _reference(model, types, pos, graph)
    assert _rel(f2, f_ref) < (1e-4 if precision == "fp32" else 5e-2)


def test_inference_only():
    fused = FusedSchNet(_model())
    assert list(fused.parameters()) == []
    with pytest.raises(RuntimeError, match="inference-only"):
        fused.train()
    types, pos, graph = _batch([20], False, seed=8)
    with pytest.raises(NotImplementedError):
        fused.energy_and_forces(types, pos, graph, create_graph=True)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cfconv_independent_of_grid(precision):
    """The CFConv kernels' outputs (per-atom sums, dE/dd) are bitwise the same for any
    number of blocks: from 1 to more blocks than atoms (blocks without edges, atoms
    split across tiles, parts starting before a block's first edge, atoms without
    neighbours), every output row written (freed memory poisoned with NaN first)."""
    model = _model()
    types, pos, graph = _batch([150, 90, 37], False, seed=9)
    fused = FusedSchNet(model, precision=precision)
    n = pos.shape[0]
    csr = fused._csr_of(graph, n)
    kernels, blk = fused._kernels, fused._blocks[1]
    d = kernels.edge_lengths(pos.float().contiguous(), csr)
    gen = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(n, 128, device="cuda", generator=gen)
    gm = torch.randn(n, 128, device="cuda", generator=gen)

    def poisoned(fn):
        junk = torch.full((4 * n * 128 + 4 * csr.n_edges,), float("nan"), device="cuda")
        del junk
        return fn()

    ref = (kernels.cfconv_forward(h, d, csr, blk), *kernels.cfconv_backward(h, gm, d, csr, blk))
    assert all(bool(torch.isfinite(t).all()) for t in ref)
    for grid in (1, 2, 7, 33, csr.n_edges // 20 + 1, n + 13):
        got = poisoned(lambda: (kernels.cfconv_forward(h, d, csr, blk, grid=grid),
                                *kernels.cfconv_backward(h, gm, d, csr, blk, grid=grid)))
        for name, a, b in zip(("m", "grad_h", "grad_d"), got, ref):
            assert torch.equal(a, b), (grid, name, float((a - b).abs().max()))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_replay_matches_eager(precision, captured):
    """One force evaluation captured in a CUDA graph (as benchmarks/schnet_throughput.py
    --cuda-graph does) replays to the eager result, bit for bit."""
    model = _model()
    types, pos, graph = _batch([64, 50], True, seed=10)
    pos = pos.float()
    fused = FusedSchNet(model, precision=precision)
    e_eager, f_eager = fused.energy_and_forces(types, pos, graph)
    cuda_graph, (e_static, f_static) = captured(lambda: fused.energy_and_forces(types, pos, graph))
    for _ in range(2):
        cuda_graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(e_static, e_eager) and torch.equal(f_static, f_eager)
