import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.neighborlist import neighbor_list

from ase_flashschnet.neighbors import (Graph, NeighborList, VerletNeighborList, _vesin_grid_is_empty, build_cpu,
                                       build_torch)

LIBRARIES = ["ase", "vesin"] if importlib.util.find_spec("vesin") else ["ase"]

TRICLINIC = np.array([[3.1, 0.0, 0.0], [0.6, 3.4, 0.0], [-0.4, 0.5, 2.9]])


def builders():
    """Every way of building a graph, as (name, fn(pos, cutoff, **kw))."""
    out = [("torch", build_torch)]
    for lib in LIBRARIES:
        out.append((lib, lambda pos, cutoff, _lib=lib, **kw: build_cpu(pos, cutoff, library=_lib, **kw)))
    return out


BUILDERS = builders()
BUILDER_IDS = [name for name, _ in BUILDERS]


def ase_pairs(pos, cell, pbc, cutoff, offset=0):
    atoms = Atoms(positions=pos, cell=cell, pbc=pbc)
    i, j, S = neighbor_list("ijS", atoms, cutoff)
    # ASE: vector r_j - r_i + S cell; here src = j, dst = i.
    return {(int(b) + offset, int(a) + offset, tuple(int(x) for x in s)) for a, b, s in zip(i, j, S)}


def graph_pairs(g: Graph):
    return set(zip(g.edge_src.tolist(), g.edge_dst.tolist(), map(tuple, g.cell_shifts.tolist())))


def scattered(rng, n, cell, spread=2.5):
    """Positions partly outside the cell (builders must not assume wrapped input)."""
    return rng.random((n, 3)) @ cell + rng.normal(scale=spread, size=(n, 3))


@pytest.mark.parametrize("name,build", BUILDERS, ids=BUILDER_IDS)
@pytest.mark.parametrize("pbc", [(False, False, False), (True, True, True), (True, False, True), (False, False, True)])
@pytest.mark.parametrize("cutoff", [2.2, 4.0])  # 4.0 exceeds half the cell: several images per pair
def test_matches_ase(name, build, pbc, cutoff, rng):
    pos = scattered(rng, 17, TRICLINIC)
    g = build(torch.tensor(pos), cutoff, cell=TRICLINIC, pbc=pbc)
    assert graph_pairs(g) == ase_pairs(pos, TRICLINIC, pbc, cutoff)
    d = g.edge_vec(torch.tensor(pos)).norm(dim=1)
    assert float(d.max()) < cutoff
    assert g.shifts.dtype == torch.float64


@pytest.mark.parametrize("name,build", BUILDERS, ids=BUILDER_IDS)
def test_batched_systems_match_ase_per_system(name, build, rng):
    cells = np.stack([TRICLINIC, np.diag([5.0, 5.5, 6.0]), np.zeros((3, 3))])
    pbcs = np.array([[True, True, True], [True, True, False], [False, False, False]])
    sizes = [9, 12, 7]
    parts = [scattered(rng, n, c if c.any() else np.eye(3) * 4) for n, c in zip(sizes, cells)]
    pos = torch.tensor(np.concatenate(parts))
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    cutoff = 3.0
    g = build(pos, cutoff, batch=batch, cell=cells, pbc=pbcs)
    expected, offset = set(), 0
    for p, c, b in zip(parts, cells, pbcs):
        expected |= ase_pairs(p, c, b, cutoff, offset)
        offset += len(p)
    assert graph_pairs(g) == expected
    assert g.n_systems == 3
    assert torch.equal(g.batch[g.edge_src], g.batch[g.edge_dst])


def test_interleaved_batch_and_empty_system(rng):
    """Systems need not be contiguous; an empty system is allowed."""
    pos = torch.tensor(rng.random((10, 3)) * 3)
    batch = torch.tensor([0, 2, 0, 2, 0, 2, 0, 2, 0, 2])
    g = build_torch(pos, 2.0, batch=batch, n_systems=3)
    ref = build_cpu(pos, 2.0, batch=batch, n_systems=3, library="ase")
    assert graph_pairs(g) == graph_pairs(ref)
    assert torch.equal(g.batch[g.edge_src], g.batch[g.edge_dst])


@pytest.mark.parametrize("name,build", BUILDERS, ids=BUILDER_IDS)
def test_csr_layout_and_determinism(name, build, rng):
    pos = torch.tensor(scattered(rng, 15, TRICLINIC))
    g = build(pos, 3.5, cell=TRICLINIC, pbc=True)
    keys = list(zip(g.edge_dst.tolist(), g.edge_src.tolist(), map(tuple, g.cell_shifts.tolist())))
    assert keys == sorted(keys)
    n = pos.shape[0]
    assert torch.equal(g.dst_ptr, torch.cat([torch.zeros(1, dtype=torch.long),
                                             torch.bincount(g.edge_dst, minlength=n).cumsum(0)]))
    for a in range(n):
        assert (g.edge_dst[g.dst_ptr[a]:g.dst_ptr[a + 1]] == a).all()
        rows = g.src_order[g.src_ptr[a]:g.src_ptr[a + 1]]
        assert (g.edge_src[rows] == a).all()
    assert sorted(g.src_order.tolist()) == list(range(g.num_edges))
    again = build(pos, 3.5, cell=TRICLINIC, pbc=True)
    for field in ("edge_src", "edge_dst", "cell_shifts", "shifts", "dst_ptr", "src_order", "src_ptr"):
        assert torch.equal(getattr(g, field), getattr(again, field))


def test_torch_and_cpu_builders_give_identical_graphs(rng):
    pos = torch.tensor(scattered(rng, 20, TRICLINIC))
    a = build_torch(pos, 3.0, cell=TRICLINIC, pbc=(True, False, True))
    b = build_cpu(pos, 3.0, cell=TRICLINIC, pbc=(True, False, True), library="ase")
    for field in ("edge_src", "edge_dst", "cell_shifts", "dst_ptr", "src_order", "src_ptr"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert torch.allclose(a.shifts, b.shifts, rtol=0, atol=1e-12)


@pytest.mark.parametrize("pbc", [False, True])
@pytest.mark.parametrize("max_block", [50, 2 * 27 * 8 * 8, 1 << 21])  # row blocks to whole batch
def test_chunking_gives_same_graph(pbc, max_block, rng):
    """Replicas of equal size are processed in chunks; the graph must not depend on it."""
    pos = torch.tensor(np.concatenate([scattered(rng, 8, TRICLINIC) for _ in range(5)]))
    batch = torch.arange(5).repeat_interleave(8)
    a = build_torch(pos, 3.0, batch, cell=TRICLINIC, pbc=pbc, max_block=max_block)
    b = build_cpu(pos, 3.0, batch, cell=TRICLINIC, pbc=pbc, library="ase")
    for field in ("edge_src", "edge_dst", "cell_shifts", "dst_ptr"):
        assert torch.equal(getattr(a, field), getattr(b, field))


def test_no_pairs_and_single_atom():
    g = build_torch(torch.zeros(1, 3, dtype=torch.float64), 2.0)
    assert g.num_edges == 0 and g.dst_ptr.tolist() == [0, 0]
    # A single atom in a small periodic cell sees its own images.
    g = build_torch(torch.zeros(1, 3, dtype=torch.float64), 2.0, cell=np.eye(3) * 1.5, pbc=True)
    assert g.num_edges == 6 and (g.edge_src == 0).all()


@pytest.mark.parametrize("name,build", BUILDERS, ids=BUILDER_IDS)
def test_nan_positions_name_the_atoms(name, build):
    pos = torch.zeros(5, 3, dtype=torch.float64)
    pos[1] = torch.arange(3)
    pos[3, 1] = float("nan")
    pos[4, 2] = float("inf")
    with pytest.raises(ValueError, match=r"atoms \[3, 4\]"):
        build(pos, 2.0)


@pytest.mark.parametrize("name,build", BUILDERS, ids=BUILDER_IDS)
def test_degenerate_periodic_cell_is_refused(name, build):
    cell = np.array([[2.0, 0, 0], [4.0, 0, 0], [0, 0, 3.0]])
    with pytest.raises(ValueError, match="degenerate"):
        build(torch.rand(4, 3, dtype=torch.float64), 1.5, cell=cell, pbc=True)


# Long, thin boxes whose cell list kills the process in vesin 0.6.2 (SIGFPE, see
# docs/known-issues.md): (positions, cell, pbc), cutoff 5 A.
THIN_BOXES = [
    ([[0, 0, 0], [1e6, 0, 0]], np.zeros((3, 3)), (False, False, False)),
    ([[0, 0, 0], [1.2, 0, 0], [1e6, 3, -2]], np.zeros((3, 3)), (False, False, False)),
    ([[0, 0, 0], [0, 0.9, 0], [0, 0, 1e6]], np.zeros((3, 3)), (False, False, False)),
    ([[0, 0, 0], [1, 1, 1], [5e5, 2, 2], [1e6 - 1, 0, 0]], np.diag([1e6, 5.5, 5.5]), (True, True, True)),
]


def test_long_thin_boxes_do_not_crash_the_cpu_builders():
    """Atoms 1e6 A apart: every CPU builder lists the right pairs, in a child
    process, since the fault would kill the test run itself."""
    script = (
        "import json, sys, torch\n"
        "from ase_flashschnet.neighbors import build_cpu\n"
        "out = []\n"
        "for library in json.loads(sys.argv[1]):\n"
        "    for pos, cell, pbc in json.loads(sys.argv[2]):\n"
        "        g = build_cpu(torch.tensor(pos, dtype=torch.float64), 5.0, cell=cell, pbc=pbc, library=library)\n"
        "        out.append([g.edge_src.tolist(), g.edge_dst.tolist(), g.cell_shifts.tolist()])\n"
        "print(json.dumps(out))\n")
    cases = [(pos, cell.tolist(), pbc) for pos, cell, pbc in THIN_BOXES]
    repo = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(LIBRARIES), json.dumps(cases)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, f"status {proc.returncode}: {proc.stderr}"
    graphs = iter(json.loads(proc.stdout))
    for _library in LIBRARIES:
        for pos, cell, pbc in THIN_BOXES:
            src, dst, shifts = next(graphs)
            assert set(zip(src, dst, map(tuple, shifts))) == ase_pairs(np.array(pos, float), cell, pbc, 5.0)


def test_only_long_thin_boxes_leave_vesin():
    """The guard sends to the torch builder only what vesin cannot take: a compact
    300 A cluster (more cells than vesin keeps, in proportion) stays with vesin."""
    no_cell, no_pbc = np.zeros((3, 3)), np.zeros(3, dtype=bool)
    assert not _vesin_grid_is_empty(np.array([[0.0, 0, 0], [300, 300, 300]]), no_cell, no_pbc, 5.0)
    assert not _vesin_grid_is_empty(np.array([[0.0, 0, 0], [1e5, 0, 0]]), no_cell, no_pbc, 5.0)
    for pos, cell, pbc in THIN_BOXES:
        assert _vesin_grid_is_empty(np.array(pos, float), cell, np.array(pbc), 5.0)


def test_mixed_pbc_with_zero_cell_rows(rng):
    """ASE atoms often have zero cell vectors along non-periodic axes."""
    cell = np.array([[4.0, 0, 0], [0, 0, 0], [0, 0, 0]])
    pos = rng.random((12, 3)) * 5
    g = build_torch(torch.tensor(pos), 2.5, cell=cell, pbc=(True, False, False))
    assert graph_pairs(g) == ase_pairs(pos, cell, (True, False, False), 2.5)


def test_neighborlist_backends_agree(rng):
    pos = torch.tensor(scattered(rng, 14, TRICLINIC))
    graphs = [NeighborList(2.5, skin=0.5, backend=b)(pos, cell=TRICLINIC, pbc=True) for b in ["torch", *LIBRARIES]]
    for g in graphs:
        assert g.cutoff == 3.0
        assert graph_pairs(g) == graph_pairs(graphs[0])
    with pytest.raises(ValueError, match="backend"):
        NeighborList(2.5, backend="gpu")


@pytest.mark.parametrize("backend", ["torch", "ase"])
def test_verlet_rebuilds_only_when_needed(backend, rng):
    cutoff, skin = 2.5, 0.6
    nl = VerletNeighborList(cutoff, skin, backend=backend)
    pos = torch.tensor(scattered(rng, 16, TRICLINIC))
    g0 = nl(pos, cell=TRICLINIC, pbc=True)
    assert nl.n_builds == 1 and g0.cutoff == cutoff + skin
    for _ in range(5):
        step = torch.tensor(rng.normal(size=(16, 3)))
        step *= 0.29 / step.norm(dim=1, keepdim=True)  # each atom moves < skin / 2
        moved = pos + step
        g = nl(moved, cell=TRICLINIC, pbc=True)
        assert g is g0 and nl.n_builds == 1
        # The stale list still contains every pair within the true cutoff.
        fresh = build_cpu(moved, cutoff, cell=TRICLINIC, pbc=True, library="ase")
        assert graph_pairs(fresh) <= graph_pairs(g)
    far = pos.clone()
    far[3] += torch.tensor([0.31, 0.0, 0.0], dtype=torch.float64)
    assert nl.needs_rebuild(far, cell=TRICLINIC, pbc=True)
    nl(far, cell=TRICLINIC, pbc=True)
    assert nl.n_builds == 2
    nl(far, cell=TRICLINIC * 1.01, pbc=True)  # cell change
    assert nl.n_builds == 3
    nl(far, cell=TRICLINIC * 1.01, pbc=(True, True, False))  # pbc change
    assert nl.n_builds == 4
    nl(far[:-1], cell=TRICLINIC * 1.01, pbc=(True, True, False))  # atom count change
    assert nl.n_builds == 5
