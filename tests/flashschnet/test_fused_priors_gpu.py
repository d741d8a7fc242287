"""The prior kernels of FusedSchNet (csrc/flashschnet/priors.cu) against the reference
priors (ase_flashschnet/priors.py, float64): energies, per-atom energies, forces and
virials of bonds, angles (one nearly linear) and repulsions (a sigma table that is
not symmetric, exclusions, a scalar sigma), over several replicas, with and without
periodic images; the shipped cg-demo model on its chain; the torch fallback for
priors of other kinds; CUDA-graph capture. The kernels' parameter layout and their
sm_90 build are checked without a GPU.

Tolerances (fp32 kernels against float64 references, relative to the largest
entry of the reference): with SchNet switched off (``energy_scale=0``), so that
only the priors count, energies and per-atom energies 2e-6, forces and virials
2e-5. An fp32 emulation of the kernels' formulas on these geometries is off by
at most 5e-7 and 5e-6: the force error comes from the nearly linear angle, where
rounding the positions to fp32 is amplified by 1/sin(theta) ~ 33. With SchNet on
(cg-demo), the fp32 tolerances of test_fused_gpu.py: 1e-5 and 1e-4. A CUDA-graph
replay equals an eager call to 1e-5 (the bonded atomics add in any order).
"""
import copy
import math
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

import gpucore
from ase_flashschnet import fused, shipped
from ase_flashschnet.fused import layouts
from ase_flashschnet.model import SchNet
from ase_flashschnet.neighbors import build_torch
from ase_flashschnet.priors import HarmonicAngles, HarmonicBonds, Repulsion
from ase_flashschnet.static_neighbors import StaticNeighborList

_HAS_GPU = gpucore.gpu_available() and torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not _HAS_GPU, reason="needs a CUDA GPU with CuPy and torch.cuda")

CUTOFF = 5.0
N_BEADS = 30
N_TYPES = 3
PRIOR_ENERGY_TOL = 2e-6
PRIOR_FORCE_TOL = 2e-5


class Tether(nn.Module):
    """A prior of a kind the kernels do not know: E = 0.5 k |x|^2 per atom."""

    def __init__(self, k: float):
        super().__init__()
        self.k = k

    def forward(self, types, pos, edge_src, edge_dst, edge_vec):
        return 0.5 * self.k * pos.square().sum(1)

    def config(self) -> dict:
        return {"kind": "Tether", "k": self.k}


def _chain_priors(n, seed=0, extra=()):
    """Bonds, angles, a typed repulsion with exclusions (sigma table not symmetric,
    so the (src, dst) order matters) and an untyped one without exclusions."""
    rng = np.random.default_rng(seed)
    bonds = [[i, i + 1] for i in range(n - 1)]
    angles = [[i, i + 1, i + 2] for i in range(n - 2)]
    sigma = rng.uniform(1.5, 2.5, (N_TYPES, N_TYPES))
    return [HarmonicBonds(bonds, k=rng.uniform(5.0, 15.0, n - 1), r0=rng.uniform(1.35, 1.55, n - 1), n_atoms=n),
            HarmonicAngles(angles, k=3.0, theta0=rng.uniform(1.8, 2.2, n - 2), n_atoms=n),
            Repulsion(sigma, exponent=6, cutoff=4.0, exclusions=bonds + [[i, k] for i, _, k in angles], n_atoms=n),
            Repulsion(1.2, exponent=4, cutoff=3.0),
            *extra]


def _model(priors, energy_scale=0.0):
    """A small SchNet under the priors (the kernel configuration of cg-demo, compiled
    once for both); ``energy_scale=0`` leaves the priors alone."""
    return SchNet(hidden_channels=32, num_filters=128, num_interactions=2, num_rbf=50, cutoff=CUTOFF,
                  num_types=N_TYPES, energy_scale=energy_scale, priors=priors, seed=0).cuda()


def _chains(replicas, periodic, seed=0, n=N_BEADS, bend=0.03):
    """(types, float64 positions, graph) of ``replicas`` compact chains (one system
    each, unwrapped). In every replica bead 0 continues the chain nearly straight:
    angle (0, 1, 2) = pi - ``bend``. Periodic: cubic cells of 14 A, in which beads
    see images of others."""
    rng = np.random.default_rng(seed)
    pos = []
    for r in range(replicas):
        p = shipped.compact_chain(n, seed=seed + r).positions.copy()
        axis = (p[1] - p[2]) / np.linalg.norm(p[1] - p[2])
        side = np.cross(axis, rng.normal(size=3))
        side /= np.linalg.norm(side)
        p[0] = p[1] + 1.45 * (math.cos(bend) * axis + math.sin(bend) * side)
        pos.append(p)
    dev = torch.device("cuda")
    pos = torch.tensor(np.concatenate(pos), device=dev)
    batch = torch.arange(replicas, device=dev).repeat_interleave(n)
    types = (torch.arange(n, device=dev) % N_TYPES).repeat(replicas)
    cell = torch.eye(3, dtype=pos.dtype, device=dev).expand(replicas, 3, 3) * 14.0 if periodic else None
    graph = build_torch(pos, CUTOFF, batch=batch, cell=cell, pbc=periodic, n_systems=replicas)
    return types, pos, graph


def _rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def _compare(model, types, pos, graph, energy_tol, force_tol):
    """Fused energies, per-atom energies, forces and virials against the float64 reference."""
    ref = copy.deepcopy(model).double()
    e_ref, f_ref, v_ref = ref.energy_forces_virial(types, pos, graph)
    with torch.no_grad():
        atoms_ref = ref.per_atom_energies(types, pos, graph.edge_src, graph.edge_dst, graph.edge_vec(pos))
    module = fused.FusedSchNet(model)
    energy, forces, virial = module.energy_forces_virial(types, pos, graph)
    pos32 = pos.float().contiguous()
    types = module._types(types)
    per_atom, _, _ = module._force_terms(types, pos32, module._csr_of(graph, pos.shape[0]), True)
    if module._torch_priors:
        per_atom = per_atom + module._prior_terms(types, pos32, graph, False)[0]
    errors = dict(energy=_rel(energy, e_ref), per_atom=_rel(per_atom, atoms_ref), forces=_rel(forces, f_ref),
                  virial=_rel(virial, v_ref))
    print("\n" + ", ".join(f"{k} rel err {v:.2e}" for k, v in errors.items()))
    assert errors["energy"] < energy_tol and errors["per_atom"] < energy_tol
    assert errors["forces"] < force_tol and errors["virial"] < force_tol
    return module


# ---------------------------------------------------------------- CPU


def test_kernel_prior_layouts():
    """fp32 parameters, int32 local topologies, a scalar sigma expanded to the type
    table, sorted int64 exclusion keys; other kinds (and subclasses) are left to torch."""

    class Softer(Repulsion):
        pass

    priors = nn.ModuleList(_chain_priors(6, extra=[Tether(0.1), Softer(1.0)]))
    bonded, repulsions, others = layouts.kernel_priors(priors, num_types=N_TYPES)
    assert [b.index.shape for b in bonded] == [(5, 2), (4, 3)]
    for term, prior in zip(bonded, priors[:2]):
        assert term.index.dtype == torch.int32 and term.n_atoms == 6
        assert torch.equal(term.index, prior.index.int())
        assert term.k.dtype == term.rest.dtype == torch.float32
    assert torch.equal(bonded[0].rest, priors[0].r0.float()) and torch.equal(bonded[1].rest, priors[1].theta0.float())
    typed, plain = repulsions
    assert typed.sigma.dtype == torch.float32 and torch.equal(typed.sigma, priors[2].sigma.float())
    assert typed.excluded_keys.dtype == torch.int64 and typed.n_atoms == 6
    assert torch.equal(typed.excluded_keys, torch.sort(typed.excluded_keys).values)
    assert typed.excluded_keys.numel() == 2 * (5 + 4)
    assert (typed.exponent, typed.cutoff) == (6, 4.0)
    assert plain.sigma.shape == (N_TYPES, N_TYPES) and bool((plain.sigma == 1.2).all()) and plain.sigma.is_contiguous()
    assert plain.excluded_keys.numel() == 0 and plain.n_atoms == 1
    assert [type(p) for p in others] == [Tether, Softer]


_CSRC = gpucore.csrc_root()


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_prior_kernels_compile_for_sm90_without_spills(tmp_path):
    out = subprocess.run(["nvcc", "-arch=sm_90", "-cubin", "-Xptxas", "-v", "-std=c++17", f"-I{_CSRC}",
                          str(_CSRC / "flashschnet" / "priors.cu"), "-o", str(tmp_path / "priors.cubin")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out.stderr)
    assert len(spills) == 3 and all(a == "0" and b == "0" for a, b in spills), out.stderr


# ---------------------------------------------------------------- GPU


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("periodic", [False, True])
def test_priors_match_reference(periodic):
    """Bonds, angles and two repulsions together over 4 replicas, SchNet off."""
    types, pos, graph = _chains(4, periodic, seed=1)
    _compare(_model(_chain_priors(N_BEADS)), types, pos, graph, PRIOR_ENERGY_TOL, PRIOR_FORCE_TOL)


@pytest.mark.gpu
@needs_gpu
def test_unknown_prior_kind_falls_back_to_torch():
    """A prior of another kind goes through torch autograd beside the kernels."""
    types, pos, graph = _chains(3, True, seed=2)
    module = _compare(_model(_chain_priors(N_BEADS, extra=[Tether(0.05)])), types, pos, graph,
                      PRIOR_ENERGY_TOL, PRIOR_FORCE_TOL)
    assert [type(p) for p in module._torch_priors] == [Tether]


@pytest.mark.gpu
@needs_gpu
def test_repulsion_forces_stay_bitwise_reproducible():
    """Repulsions go through dE/dd and the deterministic edge kernel: no atomics."""
    types, pos, graph = _chains(4, True, seed=3)
    module = fused.FusedSchNet(_model(_chain_priors(N_BEADS)[2:], energy_scale=1.0))
    e1, f1, v1 = module.energy_forces_virial(types, pos, graph)
    e2, f2, v2 = module.energy_forces_virial(types, pos, graph)
    assert torch.equal(e1, e2) and torch.equal(f1, f2) and torch.equal(v1, v2)


@pytest.mark.gpu
@needs_gpu
def test_cg_demo_chain_matches_reference():
    """The shipped model (SchNet, bonds, angles, repulsion with exclusions) on 4
    perturbed replicas of its chain, graph from the MD neighbour list (padding slots
    included) for the fused model, a plain one for the reference."""
    model, chain = shipped.get("cg-demo").cuda(), shipped.default_structure("cg-demo")
    replicas, n = 4, len(chain)
    rng = np.random.default_rng(4)
    pos = torch.tensor(np.concatenate([chain.positions + rng.normal(0, 0.05, chain.positions.shape)
                                       for _ in range(replicas)]), device="cuda")
    batch = torch.arange(replicas, device="cuda").repeat_interleave(n)
    types = model.types_from_numbers(np.tile(chain.numbers, replicas)).cuda()
    nl = StaticNeighborList(model.cutoff, 1.0, batch, replicas, dtype=torch.float32, device="cuda",
                            index_dtype=torch.int32)
    nl.rebuild(pos.float())
    assert nl.graph.num_edges > int(nl.graph.dst_ptr[-1])  # padding slots exist
    ref = copy.deepcopy(model).double()
    e_ref, f_ref, v_ref = ref.energy_forces_virial(types, pos, build_torch(pos, model.cutoff, batch=batch,
                                                                         n_systems=replicas))
    energy, forces, virial = fused.FusedSchNet(model).energy_forces_virial(types, pos.float(), nl.graph)
    print(f"\ncg-demo: energy rel err {_rel(energy, e_ref):.2e}, force rel err {_rel(forces, f_ref):.2e}, "
          f"virial rel err {_rel(virial, v_ref):.2e}")
    assert _rel(energy, e_ref) < 1e-5
    assert _rel(forces, f_ref) < 1e-4
    assert _rel(virial, v_ref) < 1e-4


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_with_priors_replays_eager(precision, captured):
    """A force call with priors captured in a CUDA graph, replayed after the positions
    changed in place, equals an eager call at the new positions (up to the last
    bits the bonded atomics may sum differently: 1e-5 of the largest entry)."""
    types, pos, graph = _chains(4, True, seed=5)
    pos = pos.float()
    module = fused.FusedSchNet(_model(_chain_priors(N_BEADS), energy_scale=1.0), precision=precision)
    cuda_graph, (e_static, f_static) = captured(lambda: module.energy_and_forces(types, pos, graph))
    gen = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(2):
        pos.add_(0.01 * torch.randn(pos.shape, device="cuda", generator=gen))
        e_eager, f_eager = module.energy_and_forces(types, pos, graph)
        cuda_graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(e_static, e_eager, rtol=0, atol=1e-5 * float(e_eager.abs().max()))
        torch.testing.assert_close(f_static, f_eager, rtol=0, atol=1e-5 * float(f_eager.abs().max()))
