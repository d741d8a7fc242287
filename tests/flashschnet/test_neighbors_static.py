"""Fixed-capacity neighbour graphs for MD (StaticNeighborList): layout, padding that
changes nothing, the kernels' source-order algorithm, gated builds and overflow
(CPU, through the host builder and the 'emulate' backend); the CUDA kernels
against the host builder (GPU)."""
import numpy as np
import pytest
import torch

from ase_flashschnet.model import SchNet
from ase_flashschnet.neighbors import Graph, build_cpu
from ase_flashschnet.static_neighbors import StaticNeighborList, capacity_for
from ase_flashschnet.priors import Repulsion
from ase_flashschnet.step_status import (STAT_BUILDS, STAT_ERROR, STAT_MAX_TOTAL, STAT_OVERFLOW, STAT_STEP, STAT_TOTAL,
                                         new_stat)

TRICLINIC = np.array([[3.1, 0.0, 0.0], [0.6, 3.4, 0.0], [-0.4, 0.5, 2.9]])
FIELDS = ("edge_src", "edge_dst", "cell_shifts", "dst_ptr", "src_order", "src_ptr")


def replicas(rng, n_rep, n, size=4.0, cell=None):
    parts = [rng.random((n, 3)) * size if cell is None else rng.random((n, 3)) @ cell + rng.normal(0, 1, (n, 3))
             for _ in range(n_rep)]
    return torch.tensor(np.concatenate(parts)), torch.arange(n_rep).repeat_interleave(n)


def assert_layout(nl: StaticNeighborList, ref: Graph):
    """The buffers hold ``ref``'s edges, then padding as documented."""
    g, n_edges, cap = nl.graph, ref.num_edges, nl.capacity
    assert g.edge_src.numel() == cap and g.dst_ptr[-1] == n_edges
    for name in FIELDS:
        got = getattr(g, name)
        want = getattr(ref, name)
        got = got if name in ("dst_ptr", "src_ptr") else got[:n_edges]
        assert torch.equal(got.long().cpu(), want.long().cpu()), name
    torch.testing.assert_close(g.shifts[:n_edges].cpu(), ref.shifts.to(g.shifts.dtype).cpu(), rtol=0, atol=1e-5)
    pad = torch.arange(cap - n_edges) % nl.n_atoms
    assert torch.equal(g.edge_src[n_edges:].long().cpu(), pad) and torch.equal(g.edge_dst[n_edges:].long().cpu(), pad)
    assert torch.equal(g.src_order[n_edges:].long().cpu(), torch.arange(n_edges, cap))
    assert (g.shifts[n_edges:, 0].cpu() == nl.pad).all() and (g.shifts[n_edges:, 1:].cpu() == 0).all()
    assert nl.pad > nl.radius


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.long])
@pytest.mark.parametrize("periodic", [False, True])
def test_host_build_layout(periodic, index_dtype, rng):
    cell = TRICLINIC * 2 if periodic else None
    pos, batch = replicas(rng, 3, 11, cell=cell)
    nl = StaticNeighborList(2.2, 0.5, batch, 3, cell=cell, pbc=periodic, dtype=torch.float64,
                            index_dtype=index_dtype, margin=0.3)
    grown = nl.rebuild(pos)
    assert grown and nl.graph.edge_src.dtype == index_dtype
    ref = build_cpu(pos, 2.7, batch, cell=cell, pbc=periodic, n_systems=3, library="ase")
    assert nl.num_edges == ref.num_edges and nl.capacity == capacity_for(ref.num_edges, 0.3)
    assert_layout(nl, ref)
    # a rebuild that fits keeps every tensor where it is
    ptrs = [t.data_ptr() for t in (nl.graph.edge_src, nl.graph.shifts, nl.graph.src_order, nl.graph.dst_ptr)]
    moved = pos + torch.tensor(rng.normal(0, 0.05, pos.shape))
    assert not nl.rebuild(moved)
    assert ptrs == [t.data_ptr() for t in (nl.graph.edge_src, nl.graph.shifts, nl.graph.src_order, nl.graph.dst_ptr)]
    assert_layout(nl, build_cpu(moved, 2.7, batch, cell=cell, pbc=periodic, n_systems=3, library="ase"))
    compact = nl.compact()
    assert compact.num_edges == nl.num_edges and compact.edge_src.dtype == torch.long


def test_needs_contiguous_systems():
    with pytest.raises(ValueError, match="contiguous"):
        StaticNeighborList(2.0, 0.5, torch.tensor([0, 1, 0, 1]), 2)


def mirror_src_order(g: Graph) -> np.ndarray:
    """What nbr_finish computes: each edge's place in source order, from its mirror
    edge in the destination row of its source (no sort)."""
    src, dst = g.edge_src.numpy(), g.edge_dst.numpy()
    cs, ptr = g.cell_shifts.numpy(), g.dst_ptr.numpy()
    out = np.full(g.num_edges, -1)
    for e in range(g.num_edges):
        i, j = dst[e], src[e]
        lo, hi = ptr[j], ptr[j + 1]
        g0 = lo + np.searchsorted(src[lo:hi], i, side="left")
        g1 = lo + np.searchsorted(src[lo:hi], i, side="right")
        r = [q for q in range(g0, g1) if (cs[q] == -cs[e]).all()]
        assert len(r) == 1
        out[lo + (g0 - lo) + (g1 - 1 - r[0])] = e
    return out


@pytest.mark.parametrize("pbc", [(False, False, False), (True, True, True), (True, False, True)])
def test_source_order_from_mirror_edges(pbc, rng):
    """The kernels' src_order algorithm (mirror edges, group reversal for several
    images of one pair) equals the stable argsort, also when a pair meets through
    several periodic images (cutoff larger than the cell)."""
    pos = torch.tensor(rng.random((13, 3)) @ TRICLINIC)
    g = build_cpu(pos, 4.0, cell=TRICLINIC, pbc=pbc, library="ase")
    assert torch.equal(g.dst_ptr, g.src_ptr)  # full lists are symmetric
    np.testing.assert_array_equal(mirror_src_order(g), g.src_order.numpy())


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.long])
def test_padding_changes_no_energy_or_force(index_dtype, rng, cluster):
    """Padding slots (self pairs far beyond the cutoff) add exact zeros, with priors
    acting on the edges too; int32 indices work for the reference as well."""
    model = SchNet(hidden_channels=16, num_filters=12, num_interactions=2, num_rbf=10, cutoff=3.0, seed=3,
                   priors=[Repulsion(1.0, cutoff=2.5)]).double()
    n, reps = 10, 3
    pos = torch.cat([cluster(n, 3.5) for _ in range(reps)])
    batch = torch.arange(reps).repeat_interleave(n)
    types = model.types_from_numbers(np.full(n * reps, 6))
    plain = build_cpu(pos, 3.5, batch, n_systems=reps, library="ase")
    nl = StaticNeighborList(3.0, 0.5, batch, reps, dtype=torch.float64, index_dtype=index_dtype, margin=0.5)
    nl.rebuild(pos)
    assert nl.capacity - nl.num_edges > 50
    e0, f0 = model.energy_and_forces(types, pos, plain)
    e1, f1 = model.energy_and_forces(types, pos, nl.graph)
    assert torch.equal(e0, e1) and torch.equal(f0, f1)


def test_emulated_gated_build_semantics(rng):
    """Gate off: nothing happens. Gate on: build, count, x_ref follows. Too many
    edges: the old graph stays, the first overflowing step is recorded."""
    pos, batch = replicas(rng, 2, 12, size=3.0)
    nl = StaticNeighborList(2.0, 0.4, batch, 2, dtype=torch.float64, margin=0.0, backend="emulate")
    assert nl.gated and not nl.use_kernels
    nl.rebuild(pos)
    stat = new_stat("cpu")
    stat[STAT_STEP] = 7
    before = {k: getattr(nl.graph, k).clone() for k in FIELDS}
    x_ref = pos.clone()
    moved = pos + 0.3
    nl.build_gated(moved, x_ref, torch.zeros(1, dtype=torch.int32), stat)
    assert all(torch.equal(before[k], getattr(nl.graph, k)) for k in FIELDS) and torch.equal(x_ref, pos)
    assert stat[STAT_BUILDS] == 0
    squeezed = pos * 0.6  # denser: more edges than the slots
    nl.build_gated(squeezed, x_ref, nl.ones, stat)
    total = build_cpu(squeezed, 2.4, batch, n_systems=2, library="ase").num_edges
    assert total > nl.capacity
    assert stat[STAT_OVERFLOW] == 7 and stat[STAT_TOTAL] == total and stat[STAT_BUILDS] == 0
    assert all(torch.equal(before[k], getattr(nl.graph, k)) for k in FIELDS) and torch.equal(x_ref, pos)
    stat[STAT_STEP] = 9
    spread = pos * 1.5  # fewer edges: fits
    nl.build_gated(spread, x_ref, nl.ones, stat)
    assert stat[STAT_OVERFLOW] == 7 and stat[STAT_BUILDS] == 1 and stat[STAT_MAX_TOTAL] == total
    assert torch.equal(x_ref, spread)
    assert_layout(nl, build_cpu(spread, 2.4, batch, n_systems=2, library="ase"))


# ---------------------------------------------------------------- GPU only


def _kernel_list(pos, batch, n_sys, cutoff, skin, cell, pbc, dtype, index_dtype, margin=0.1):
    nl = StaticNeighborList(cutoff, skin, batch.cuda(), n_sys, cell=cell, pbc=pbc, dtype=dtype, device="cuda",
                            index_dtype=index_dtype, margin=margin, backend="kernels")
    nl.rebuild(pos.to("cuda", dtype).contiguous())
    return nl


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.long])
@pytest.mark.parametrize("periodic", [False, True])
def test_gpu_kernels_equal_the_host_builder(dtype, index_dtype, periodic, rng):
    cell = TRICLINIC * 2.2 if periodic else None
    pos, batch = replicas(rng, 5, 37, size=6.0, cell=cell)
    pos = pos.to(dtype)
    nl = _kernel_list(pos, batch, 5, 2.6, 0.5, cell, periodic, dtype, index_dtype)
    ref = build_cpu(pos.double(), 3.1, batch, cell=cell, pbc=periodic, n_systems=5, library="ase")
    assert nl.num_edges == ref.num_edges and nl.graph.edge_src.dtype == index_dtype
    assert_layout(nl, ref)
    assert torch.equal(nl.graph.dst_ptr, nl.graph.src_ptr)


@pytest.mark.gpu
def test_gpu_kernels_small_cell_many_images(rng):
    """Cutoff beyond half the cell: pairs through several images, atoms seeing themselves."""
    pos = torch.tensor(rng.random((9, 3)) @ TRICLINIC)
    nl = _kernel_list(pos, torch.zeros(9, dtype=torch.long), 1, 3.5, 0.5, TRICLINIC, True, torch.float64, torch.long)
    assert_layout(nl, build_cpu(pos, 4.0, cell=TRICLINIC, pbc=True, library="ase"))


@pytest.mark.gpu
def test_gpu_gated_build_gate_overflow_and_nan(rng):
    pos, batch = replicas(rng, 4, 40, size=5.0)
    pos = pos.float().cuda()
    nl = _kernel_list(pos, batch, 4, 2.5, 0.5, None, False, torch.float32, torch.int32, margin=0.0)
    before = {k: getattr(nl.graph, k).clone() for k in FIELDS + ("shifts",)}
    stat = new_stat("cuda")
    stat[STAT_STEP] = 5
    x_ref = pos.clone()
    gate = torch.zeros(1, dtype=torch.int32, device="cuda")
    nl.build_gated(pos * 0.5, x_ref, gate, stat)  # gate off
    assert all(torch.equal(before[k], getattr(nl.graph, k)) for k in before) and torch.equal(x_ref, pos)
    gate.fill_(1)
    nl.build_gated(pos * 0.5, x_ref, gate, stat)  # denser: overflow, nothing written
    st = stat.tolist()
    assert st[STAT_OVERFLOW] == 5 and st[STAT_BUILDS] == 0 and st[STAT_TOTAL] > nl.capacity
    assert all(torch.equal(before[k], getattr(nl.graph, k)) for k in before) and torch.equal(x_ref, pos)
    bad = pos * 1.2
    bad[3] = float("nan")  # no edges for a NaN atom, no crash, everything in bounds
    nl.build_gated(bad, x_ref, gate, stat)
    st = stat.tolist()
    assert st[STAT_BUILDS] == 1 and st[STAT_ERROR] == 0
    ref = build_cpu(torch.cat([bad[:3], bad[4:]]).double().cpu(), 3.0, torch.cat([batch[:3], batch[4:]]),
                    n_systems=4, library="ase")
    g = nl.graph
    n_edges = int(g.dst_ptr[-1])
    assert n_edges == ref.num_edges and not ((g.edge_src[:n_edges] == 3) | (g.edge_dst[:n_edges] == 3)).any()
    torch.testing.assert_close(x_ref, bad, equal_nan=True)


@pytest.mark.gpu
def test_gpu_kernel_rebuild_is_fast_for_the_benchmark_batch():
    """64 replicas of the 269-bead chain, 11 A: one gated rebuild in well under 2 ms."""
    from ase_flashschnet import shipped

    chain = shipped.default_structure("cg-demo")
    reps, n = 64, len(chain)
    pos = torch.tensor(np.tile(chain.positions, (reps, 1)), dtype=torch.float32, device="cuda")
    batch = torch.arange(reps).repeat_interleave(n)
    nl = _kernel_list(pos, batch, reps, 10.0, 1.0, None, False, torch.float32, torch.int32)
    for _ in range(3):
        nl.build_gated(pos, None, nl.ones, nl.stat)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        nl.build_gated(pos, None, nl.ones, nl.stat)
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / 20
    print(f"\ngated rebuild, {reps} x {n} atoms, {nl.num_edges} edges: {ms:.3f} ms")
    assert ms < 2.0
