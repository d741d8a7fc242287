"""Orchestration: program validity, liveness counting, equivalence of orders."""
import numpy as np
import pytest

from pyscf_fusionrcg import ir
from pyscf_fusionrcg.host import HostEngine, get_program
from pyscf_fusionrcg.schedule import naive, orchestrate, peak_live, stage_peaks

CLASSES = [(0, 0, 0, 0), (1, 0, 0, 0), (0, 0, 1, 1), (2, 1, 0, 1), (1, 2, 2, 1),
           (2, 2, 2, 2), (3, 1, 2, 0), (0, 3, 0, 3)]


def _programs(ls):
    return {'fused': get_program(*ls), 'unfused': orchestrate(*ls, fused=False),
            'naive': naive(*ls), 'cart': get_program(*ls, cart=True)}


def _check_valid(p: ir.Program):
    """SSA, defined before use, levels, every block element written once."""
    written = set(range(p.n_acc))
    acc_seen = []
    for op in p.prim_ops:
        if isinstance(op, ir.Boys):
            assert op.dst not in written and 0 <= op.m <= p.max_m
            written.add(op.dst)
        elif isinstance(op, ir.LinComb):
            assert op.dst not in written and op.step == 'vrr'
            assert all(s in written and s >= p.n_acc for _, _, s in op.terms)
            assert all(y in ir.PRIMITIVE_SYMS for _, y, _ in op.terms)
            written.add(op.dst)
        else:
            assert isinstance(op, ir.Accumulate) and op.src in written
            acc_seen.append(op.dst)
    assert sorted(acc_seen) == list(range(p.n_acc))
    assert (p.prim.level[p.prim.kind == ir.BOYS] == 0).all()
    ctr_written = set(range(p.n_acc))
    outs = []
    for op in p.ctr_ops:
        if isinstance(op, ir.Output):
            assert op.src in ctr_written
            outs.append(op.index)
        else:
            assert op.dst not in written and op.dst not in ctr_written
            assert all(s in ctr_written for _, _, s in op.terms)
            assert all(y in ir.CONTRACTED_SYMS for _, y, _ in op.terms)
            ctr_written.add(op.dst)
    assert sorted(outs) == sorted(np.ndindex(*p.shape))
    for t in (p.prim, p.ctr):                   # wavefront levels: sources strictly lower
        lv = np.zeros(p.n_temps, dtype=np.int64)
        w = (t.kind == ir.BOYS) | (t.kind == ir.LINCOMB)
        lv[t.dst[w]] = t.level[w]
        opi, src = t.sources()
        assert (lv[src] < t.level[opi]).all()


def _brute_peaks(p: ir.Program):
    """Straightforward liveness count over the op objects (the documented rule)."""
    def stage(ops, fixed, initial):
        srcs = [([t[2] for t in op.terms] if isinstance(op, ir.LinComb) else
                 [op.src] if isinstance(op, (ir.Accumulate, ir.Output)) else []) for op in ops]
        last = {}
        for k, ss in enumerate(srcs):
            for s in ss:
                last[s] = k
        start = {v: 0 for v in initial}
        for k, op in enumerate(ops):
            if isinstance(op, (ir.Boys, ir.LinComb)):
                start[op.dst] = k
        best = 0
        for k in range(len(ops)):
            live = sum(1 for v, s in start.items() if s <= k <= max(last.get(v, s), s))
            best = max(best, live + fixed)
        return best
    return (stage(p.prim_ops, p.n_acc, ()), stage(p.ctr_ops, 0, range(p.n_acc)))


@pytest.mark.parametrize('ls', CLASSES)
def test_programs_are_valid(ls):
    for p in _programs(ls).values():
        _check_valid(p)


@pytest.mark.parametrize('ls', [(0, 0, 0, 0), (1, 0, 1, 0), (1, 1, 0, 1), (2, 0, 1, 1)])
def test_peak_matches_brute_force(ls):
    for p in _programs(ls).values():
        assert stage_peaks(p) == _brute_peaks(p)


@pytest.mark.parametrize('ls', [(2, 1, 0, 1), (1, 2, 2, 1), (3, 0, 2, 2)])
def test_all_orders_give_the_same_integrals(synth, ls):
    mol = synth.mol()
    ref = synth.reference(mol, ls)
    for name, p in _programs(ls).items():
        if name == 'cart':
            continue
        ours = synth.assemble(HostEngine(mol).quartet_blocks(synth.quartets(ls), p))
        assert synth.rel_err(ours, ref) < 1e-11, name


def test_depth_first_beats_level_order():
    for ls in [(2, 2, 2, 2), (3, 2, 1, 0), (1, 1, 3, 3)]:
        fused, unfused, nv = (peak_live(p) for p in (get_program(*ls),
                                                     orchestrate(*ls, fused=False), naive(*ls)))
        assert fused <= unfused < nv


def test_c_statements():
    p = get_program(1, 0, 1, 0)
    lines = [ir.c_statement(op) for op in p.prim_ops + p.ctr_ops]
    assert lines[0].startswith('t') and 'boys[' in lines[0]
    assert any('pa_' in s or 'qc_' in s for s in lines)
    assert any(s.startswith('out[') for s in lines)
    assert all(s.endswith(';') for s in lines)


def _accumulators(table: ir.OpTable, n_temps: int, n_acc: int, g, sym) -> np.ndarray:
    """One primitive quartet of a primitive-stage table, op by op, with Boys
    values ``g[m]`` and symbol values ``sym``: what it adds to each accumulator
    (NaN where it adds nothing)."""
    t = np.full(n_temps, np.nan)
    acc = np.full(n_acc, np.nan)
    for i in range(len(table)):
        terms = range(table.ptr[i], table.ptr[i + 1])
        if table.kind[i] == ir.BOYS:
            t[table.dst[i]] = g[table.arg[i]]
        elif table.kind[i] == ir.LINCOMB:
            t[table.dst[i]] = sum(table.coef[j] * sym[table.sym[j]] * t[table.src[j]] for j in terms)
        else:
            (j,) = terms
            assert np.isnan(acc[table.dst[i]])      # one accumulate each
            acc[table.dst[i]] = t[table.src[j]]
    return acc


@pytest.mark.parametrize('ls,pieces', [((2, 1, 2, 1), 3), ((3, 1, 2, 0), 7), ((1, 2, 0, 3), 4), ((1, 0, 1, 0), 1)])
def test_split_primitive_stage_gives_each_accumulator_once(ls, pieces):
    """The pieces of split_primitive_stage add to every accumulator of the
    program exactly once between them, each piece computing what it reads,
    with the values the whole primitive stage gives."""
    from pyscf_fusionrcg.schedule import split_primitive_stage
    p = get_program(*ls)
    rng = np.random.default_rng(7)
    g, sym = rng.uniform(0.1, 1.0, p.max_m + 1), rng.uniform(-1.0, 1.0, len(ir.Sym))
    sym[ir.Sym.ONE] = 1.0
    want = _accumulators(p.prim, p.n_temps, p.n_acc, g, sym)
    parts = split_primitive_stage(*ls, pieces)
    assert len(parts) == pieces
    got = np.full(p.n_acc, np.nan)
    for table, n_temps in parts:
        acc = _accumulators(table, n_temps, p.n_acc, g, sym)
        mine = ~np.isnan(acc)
        assert mine.any() and np.isnan(got[mine]).all()     # disjoint pieces
        got[mine] = acc[mine]
    assert not np.isnan(want).any()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
