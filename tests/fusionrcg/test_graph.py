"""Recurrence graph: structure, and topology invariance of the integrals."""
import pytest

from pyscf_fusionrcg import ir
from pyscf_fusionrcg.graph import (DIR_RULES, Topology, build_rcg, pick_direction,
                                   vrr_graph, vrr_registry)
from pyscf_fusionrcg.host import HostEngine
from pyscf_fusionrcg.schedule import orchestrate, peak_live
from pyscf_fusionrcg.spherical import cart_components


def test_pick_direction():
    assert pick_direction((2, 1, 0), 'min') == 1
    assert pick_direction((2, 1, 3), 'max') == 2
    assert pick_direction((2, 1, 3), 'zyx') == 2
    assert pick_direction((2, 1, 0), 'zyx') == 1
    assert pick_direction((0, 1, 3), 'xyz') == 1
    for rule in DIR_RULES:
        for t in cart_components(3):
            assert t[pick_direction(t, rule)] > 0


@pytest.mark.parametrize('side', ['ket', 'bra'])
@pytest.mark.parametrize('rule', ['min', 'zyx', 'yxz'])
def test_vrr_graph_structure(side, rule):
    ls = (2, 1, 1, 2)
    rcg = build_rcg(*ls, Topology(side, rule))
    nodes = vrr_graph([p for _, p in rcg.acc], rcg.topology)
    L = sum(ls)
    seen = set()
    for (e, f, m), (kids, coefs, syms) in nodes.items():
        assert all(k in seen for k in kids)          # children first
        seen.add((e, f, m))
        assert sum(e) + sum(f) + m <= L
        if not kids:
            assert e == f == (0, 0, 0)
        for (e2, f2, m2) in kids:                    # each term lowers e+f by 1 or 2
            assert sum(e2) + sum(f2) < sum(e) + sum(f) and m2 in (m, m + 1)
        assert all(ir.Sym(y) in ir.PRIMITIVE_SYMS for y in syms)
    assert sorted(k[2] for k in nodes if k[0] == k[1] == (0, 0, 0)) == list(range(L + 1))


def test_registry_is_children_first():
    reg = vrr_registry('ket', 'zyx')
    reg.node(((1, 2, 0), (0, 1, 1), 0))
    assert all(all(c < g for c in kids) for g, kids in enumerate(reg.kids))


@pytest.mark.parametrize('first', ['ket', 'bra'])
def test_accumulators_and_phases(first):
    la, lb, lc, ld = 1, 2, 3, 1
    rcg = build_rcg(la, lb, lc, ld, Topology(hrr_first=first))
    # like libcint, the VRR builds on the higher-l shell of each pair: b and c
    assert (rcg.topology.bra_build, rcg.topology.ket_build) == ('b', 'c')
    assert all(lab[0] == (0, 0, 0) for lab in rcg.bra_start)
    assert all(lab[1] == (0, 0, 0) for lab in rcg.ket_start)
    # HRR leaves: every Cartesian e with lb <= |e| <= la+lb, f with lc <= |f| <= lc+ld
    levels = sorted(sum(lab[1]) for lab in rcg.bra_start)
    assert levels == sorted(l for l in range(lb, la + lb + 1) for _ in cart_components(l))
    assert len(rcg.ket_start) == sum(len(cart_components(l)) for l in range(lc, lc + ld + 1))
    assert len(rcg.acc) == len(rcg.bra_start) * len(rcg.ket_start)
    assert rcg.phases[0].side == first
    steps = [s for ph in rcg.phases for s in ph.steps]
    assert steps[0] == 'hrr_' + first
    assert len(rcg.bra_final) == 3 * 5 and len(rcg.ket_final) == 7 * 3


TOPOLOGIES = [Topology('ket', 'zyx', 'ket', 'min'), Topology('bra', 'min', 'bra', 'max', 'b', 'c'),
              Topology('ket', 'max', 'bra', 'xyz', 'a', 'd'),
              Topology('bra', 'xzy', 'ket', 'zyx', 'b', 'd')]


@pytest.mark.parametrize('ls', [(2, 1, 1, 2), (1, 3, 2, 0), (0, 2, 3, 1)])
def test_topologies_give_the_same_integrals(synth, ls):
    mol = synth.mol()
    ref = synth.reference(mol, ls)
    for topo in TOPOLOGIES:
        for fused in (True, False):
            prog = orchestrate(*ls, fused=fused, topology=topo)
            ours = synth.assemble(HostEngine(mol).quartet_blocks(synth.quartets(ls), prog))
            assert synth.rel_err(ours, ref) < 1e-11, (topo, fused)


def test_topology_changes_liveness():
    """The choices are real: they change the peak for a non-trivial class."""
    peaks = {peak_live(orchestrate(2, 2, 2, 2, topology=t)) for t in TOPOLOGIES}
    assert len(peaks) > 1
