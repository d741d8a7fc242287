"""Liveness-aware orchestration: pick a topology and an evaluation order.

Liveness is counted per shell quartet (:func:`stage_peaks`): an intermediate
is live from the op that writes it through its last read (both ops included;
a value never read dies where it is written).  During the primitive stage all
accumulators are live (they persist across the primitive loop) besides the
temporaries of one primitive quartet; in the contracted stage the
accumulators are live from the start until their last read.  Scalars such as
``PA_x`` or ``AB_x`` are inputs, not intermediates.  The peak is the larger
of the two stage peaks.

Orchestrated order (:func:`orchestrate`): the VRR runs depth first from the
accumulator targets, each target accumulated as soon as it exists; the
contracted stage runs phase by phase (one side's HRR and, fused, its
transforms), one spectator (label of the other side) at a time, with the
best of a few depth-first orders of the per-spectator template, so each row
dies before the next begins, and outputs are written as soon as they exist.
HRR topologies are searched over a small candidate list (exact peaks, cheap
thanks to the template structure); the VRR topology follows a measured rule
(:data:`VRR_RULE`, :func:`vrr_side`).

Naive order (:func:`naive`): default topology, every stage level by level
(Boys values, VRR by depth, accumulation at the end, then each contracted
step level by level: HRRs, then the transforms of d, c, b, a), outputs
written at the end.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

import numpy as np

from . import ir
from .graph import RCG, Topology, build_rcg, vrr_registry

STEP = {s: i for i, s in enumerate(ir.STEPS)}

#: VRR direction rule.  On dddd and ffff, lowering z first ('zyx') with the
#: targets sorted x-major beat min/max and the other permutations by 1.3-2x.
VRR_RULE = 'zyx'
#: HRR candidates (side first, direction rule); the best is kept.
HRR_CANDIDATES = (('ket', 'min'), ('bra', 'min'))


def vrr_side(la, lb, lc, ld) -> str:
    """Electron the VRR lowers first: the one with the higher top target, so
    that the other, shorter side is raised last (measured 1-2% lower peaks
    than the reverse on (ff|df) and (gf|gg); ties: the ket)."""
    return 'ket' if lc + ld <= la + lb else 'bra'


# ------------------------------------------------------------------ tables

class _Builder:
    """Accumulates ops (python lists) and produces an ir.OpTable."""

    def __init__(self):
        self.kind, self.step, self.dst, self.arg, self.level = [], [], [], [], []
        self.nterm, self.src, self.coef, self.sym = [], [], [], []

    def add(self, kind, step, dst, arg, level, src=(), coef=(), sym=()):
        self.kind.append(kind)
        self.step.append(step)
        self.dst.append(dst)
        self.arg.append(arg)
        self.level.append(level)
        self.nterm.append(len(src))
        self.src.extend(src)
        self.coef.extend(coef)
        self.sym.extend(sym)

    def table(self) -> ir.OpTable:
        ptr = np.zeros(len(self.kind) + 1, dtype=np.int64)
        np.cumsum(self.nterm, out=ptr[1:])
        return ir.OpTable(np.array(self.kind, dtype=np.int8), np.array(self.step, dtype=np.int8),
                          np.array(self.dst, dtype=np.int64), np.array(self.arg, dtype=np.int64),
                          np.array(self.level, dtype=np.int64), ptr,
                          np.array(self.src, dtype=np.int64), np.array(self.coef, dtype=float),
                          np.array(self.sym, dtype=np.int8))


def _frozen(t: ir.OpTable) -> ir.OpTable:
    """Make a table's arrays read-only (tables are shared between programs)."""
    for f in ('kind', 'step', 'dst', 'arg', 'level', 'ptr', 'src', 'coef', 'sym'):
        getattr(t, f).setflags(write=False)
    return t


def _concat(tables) -> ir.OpTable:
    tables = [t for t in tables if len(t)]
    if not tables:
        return _Builder().table()
    ptr = [np.zeros(1, dtype=np.int64)]
    off = 0
    for t in tables:
        ptr.append(t.ptr[1:] + off)
        off += t.ptr[-1]
    cat = lambda f: np.concatenate([getattr(t, f) for t in tables])
    return ir.OpTable(cat('kind'), cat('step'), cat('dst'), cat('arg'), cat('level'),
                      np.concatenate(ptr), cat('src'), cat('coef'), cat('sym'))


def _take(t: ir.OpTable, perm) -> ir.OpTable:
    """Reorder the ops of a table."""
    perm = np.asarray(perm, dtype=np.int64)
    counts = np.diff(t.ptr)[perm]
    ptr = np.zeros(len(perm) + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    j = np.repeat(t.ptr[perm] - ptr[:-1], counts) + np.arange(ptr[-1])
    return ir.OpTable(t.kind[perm], t.step[perm], t.dst[perm], t.arg[perm], t.level[perm],
                      ptr, t.src[j], t.coef[j], t.sym[j])


# ---------------------------------------------------------------- liveness

def _peak(t: ir.OpTable, n_temps: int, fixed: int = 0, initial=None) -> int:
    """Peak live count of one stage (see the module docstring).

    ``initial``: temporaries live when the stage starts; ``fixed``: count of
    values live throughout (the accumulators during the primitive stage).
    """
    n = len(t)
    if n == 0:
        return fixed + (0 if initial is None else len(initial))
    opi, srcs = t.sources()
    last = np.full(n_temps, -1, dtype=np.int64)
    np.maximum.at(last, srcs, opi)
    writes = (t.kind == ir.BOYS) | (t.kind == ir.LINCOMB)
    start = np.nonzero(writes)[0]
    dst = t.dst[writes]
    end = np.maximum(last[dst], start)
    if initial is not None and len(initial):
        init = np.asarray(initial, dtype=np.int64)
        start = np.concatenate([np.zeros(len(init), dtype=np.int64), start])
        end = np.concatenate([np.maximum(last[init], 0), end])
    diff = np.zeros(n + 1, dtype=np.int64)
    np.add.at(diff, start, 1)
    np.add.at(diff, end + 1, -1)
    return int(np.cumsum(diff)[:n].max()) + fixed


def stage_peaks(program: ir.Program):
    """(primitive-stage peak, contracted-stage peak) of a Program."""
    return (_peak(program.prim, program.n_temps, fixed=program.n_acc),
            _peak(program.ctr, program.n_temps, initial=np.arange(program.n_acc)))


def peak_live(program: ir.Program) -> int:
    """Peak number of simultaneously live intermediates of one shell quartet."""
    return max(stage_peaks(program))


# ------------------------------------------------------------- primitive stage

def _prim_dfs(rcg: RCG, side: str, rule: str, targets):
    """Depth-first primitive stage of ``rcg``'s accumulators (:func:`vrr_stage`)."""
    reg = vrr_registry(side, rule, rcg.topology.bra_build, rcg.topology.ket_build)
    return vrr_stage(reg, targets, [(key, i, -1) for i, (_, key) in enumerate(rcg.acc)], rcg.n_acc)


def vrr_stage(reg, targets, accumulators, n_acc: int):
    """Depth-first primitive stage of VRR registry ``reg``; each target is
    accumulated when it exists (and only the targets: a vertex of another
    target's cone is not).

    ``accumulators``: ``(target key, accumulator, weight)``, the weight the
    ACCUMULATE op's ``arg`` (-1: the contraction weight alone, ``c``: times
    twice the exponent of shell ``c``, see ``ir.Accumulate``); targets missing
    from ``targets`` are skipped.  Temporaries are numbered from ``n_acc`` in
    evaluation order.  Returns (table, number of temporaries).
    """
    roots = [reg.node(t) for t in targets]
    own = set(roots)
    acc_of = {}
    for key, a, weight in accumulators:
        g = reg.node(key)
        if g in own:
            acc_of.setdefault(g, []).append((a, weight))
    kids_of, coefs, syms, keys = reg.kids, reg.coefs, reg.syms, reg.keys
    local = [-1] * len(kids_of)
    levels = []
    b = _Builder()
    kind, step, dst, arg, level = b.kind.append, b.step.append, b.dst.append, b.arg.append, \
        b.level.append
    nterm, src_e, coef_e, sym_e = b.nterm.append, b.src.extend, b.coef.extend, b.sym.extend
    vrr, boys, contract = STEP['vrr'], STEP['boys'], STEP['contract']

    def visit(g):
        kids = kids_of[g]
        for c in kids:
            if local[c] < 0:
                visit(c)
        i = local[g] = n_acc + len(levels)
        if kids:
            src = [local[c] for c in kids]
            lv = 1 + max([levels[s - n_acc] for s in src])
            kind(ir.LINCOMB), step(vrr), dst(i), arg(-1), level(lv), nterm(len(src))
            src_e(src), coef_e(coefs[g]), sym_e(syms[g])
        else:
            lv = 0
            kind(ir.BOYS), step(boys), dst(i), arg(keys[g][2]), level(0), nterm(0)
        levels.append(lv)
        for a, weight in acc_of.get(g, ()):
            kind(ir.ACCUMULATE), step(contract), dst(a), arg(weight), level(lv + 1), nterm(1)
            src_e((i,)), coef_e((1.0,)), sym_e((0,))

    for g in roots:
        if local[g] < 0:
            visit(g)
    return b.table(), n_acc + len(levels)


def lower_peak(table: ir.OpTable, n_temps: int, n_acc: int) -> ir.OpTable:
    """The better of a primitive stage's order and its level-sorted version
    (the latter wins for one-sided VRRs such as (ss|gg))."""
    by_level = _take(table, np.argsort(table.level, kind='stable'))
    peaks = [_peak(t, n_temps, fixed=n_acc) for t in (table, by_level)]
    return (table, by_level)[int(np.argmin(peaks))]


#: Recent primitive stages by (canonical class, topology), see _prim_stage:
#: Cartesian and spherical programs, fused or not, and all build variants of
#: a class share them (the VRR does not see the output form).
_PRIM_CACHE: "OrderedDict[tuple, tuple]" = OrderedDict()
PRIM_CACHE_SIZE = 16


def _prim_stage(rcg: RCG):
    """Primitive stage of ``rcg``: depth first, or level-sorted when that
    has the lower peak (:func:`lower_peak`).

    The VRR only sees the l of each pair's build and other shell, and the
    build centre only swaps PA for PB and QC for QD (same vertices, same
    edges); so stages are cached for the mirrored class built on ('a', 'c')
    and relabelled (this also shares them between, e.g., (fg| and (gf|).
    """
    topo = rcg.topology
    la, lb, lc, ld = rcg.ls
    canon_ls = ((la, lb) if topo.bra_build == 'a' else (lb, la)) + \
        ((lc, ld) if topo.ket_build == 'c' else (ld, lc))
    canon = replace(topo, bra_build='a', ket_build='c')
    key = (canon_ls, canon)
    hit = _PRIM_CACHE.get(key)
    if hit is None:
        crcg = build_rcg(*canon_ls, canon, rcg.cart, rcg.fused)
        table, n = _prim_dfs(crcg, canon.vrr_side, canon.vrr_dir,
                             _prim_targets(crcg, canon.vrr_side))
        hit = _PRIM_CACHE[key] = (lower_peak(table, n, crcg.n_acc), n,
                                  (crcg.built('bra'), crcg.built('ket')))
        if len(_PRIM_CACHE) > PRIM_CACHE_SIZE:
            _PRIM_CACHE.popitem(last=False)
    _PRIM_CACHE.move_to_end(key)
    table, n, targets = hit
    assert targets == (rcg.built('bra'), rcg.built('ket'))   # same accumulators, same order
    lut = np.arange(len(ir.Sym), dtype=np.int8)
    if topo.bra_build == 'b':
        lut[list(ir.PA)] = ir.PB
    if topo.ket_build == 'd':
        lut[list(ir.QC)] = ir.QD
    return replace(table, sym=lut[table.sym]), n


def _prim_targets(rcg: RCG, side: str):
    return sorted_targets([(e, f, 0) for e in rcg.built('bra') for f in rcg.built('ket')], side)


def sorted_targets(targets, side: str):
    """Targets in sorted order of the electron raised last (``(e, f)`` when
    the ket is lowered first): consecutive targets then share their cones."""
    return sorted(targets) if side == 'ket' else sorted(targets, key=lambda k: (k[1], k[0]))


def _naive_prim(rcg: RCG):
    topo = rcg.topology
    t, n = _prim_dfs(rcg, topo.vrr_side, topo.vrr_dir, _prim_targets(rcg, 'ket'))
    is_acc = t.kind == ir.ACCUMULATE
    return _take(t, np.lexsort((np.where(is_acc, t.dst, 0), t.level, is_acc))), n


# ------------------------------------------------------------ contracted stage

def _template(ph, order):
    """Arrays of a phase template in ``order``: per node step and local level,
    per term (node, coef, sym, is_local, index)."""
    loc = {lab: j for j, lab in enumerate(order)}
    inp = {lab: q for q, lab in enumerate(ph.inputs)}
    step, level, node, coef, sym, local, index = [], [], [], [], [], [], []
    for j, lab in enumerate(order):
        st, terms = ph.nodes[lab]
        lv = 0
        for c, y, ch in terms:
            node.append(j)
            coef.append(c)
            sym.append(int(y))
            if ch in loc:
                local.append(True)
                index.append(loc[ch])
                lv = max(lv, level[loc[ch]])
            else:
                local.append(False)
                index.append(inp[ch])
        step.append(STEP[st])
        level.append(lv + 1)
    a = lambda x, d=np.int64: np.array(x, dtype=d)
    return (a(step, np.int8), a(level), a(node), a(coef, float), a(sym, np.int8),
            a(local, bool), a(index))


def _template_order(ph, last_phase: bool):
    """Best of three orders of one phase template: depth first from the
    outputs forward or backward, and level by level (best when a template
    runs for one spectator only and its nodes share much).

    Returns (order, peak); the peak counts the template's inputs (live at the
    start) and its outputs (kept for the next phase, or written at once in the
    last phase).
    """
    best = None
    for order in _dfs_orders(ph) + [_level_order(ph)]:
        p = _template_peak(ph, order, last_phase)
        if best is None or p < best[1]:
            best = (order, p)
    return best


def _dfs_orders(ph):
    orders = []
    for outs in (ph.outputs, ph.outputs[::-1]):
        order = []
        done = set(ph.inputs)

        def visit(lab):
            done.add(lab)
            for t in ph.nodes[lab][1]:
                if t[2] not in done:
                    visit(t[2])
            order.append(lab)

        for lab in outs:
            if lab not in done:
                visit(lab)
        orders.append(order)
    return orders


def _level_order(ph):
    """Nodes step by step, each step level by level (the naive order)."""
    depth = {}
    for lab, (_, terms) in ph.nodes.items():          # children first
        depth[lab] = 1 + max(depth.get(t[2], 0) for t in terms)
    return sorted(ph.nodes, key=lambda lab: (ph.steps.index(ph.nodes[lab][0]), depth[lab]))


def _template_peak(ph, order, last_phase):
    nin = len(ph.inputs)
    step, level, node, coef, sym, local, index = _template(ph, order)
    temp = np.where(local, index + nin, index)          # inputs 0..nin-1, nodes after
    T = len(order)
    b = _Builder()
    pos = {lab: j for j, lab in enumerate(order)}
    outs = set(pos[o] for o in ph.outputs)
    ptr = np.searchsorted(node, np.arange(T + 1))
    for j in range(T):
        b.add(ir.LINCOMB, 0, nin + j, -1, 0, temp[ptr[j]:ptr[j + 1]])
        if last_phase and j in outs:
            b.add(ir.OUTPUT, 0, -1, 0, 0, (nin + j,))
    if not last_phase:
        for j in sorted(outs):
            b.add(ir.OUTPUT, 0, -1, 0, 0, (nin + j,))
    return _peak(b.table(), nin + T, initial=np.arange(nin))


#: Template orders by (PairPhase.key, last phase): templates recur across
#: classes (the ket template of (lc, ld) in every class with that ket pair).
_TEMPLATE_CACHE: dict = {}


def _planned(ph, last: bool):
    """(order, peak, arrays) of a phase template, memoised."""
    key = (ph.key, last)
    hit = _TEMPLATE_CACHE.get(key)
    if hit is None:
        order, peak = _template_order(ph, last)
        hit = _TEMPLATE_CACHE[key] = (order, peak, _template(ph, order))
    return hit


def _ctr_plan(rcg: RCG):
    """Per-phase template orders and the contracted-stage peak.

    Spectators run one after another, so while spectator k of n runs, the
    other rows hold their inputs (not yet run) or outputs (done); the peak is
    therefore ``max(P_t + (n-1) * max(n_in, n_out))`` over phases, with P_t
    the template peak (n_out = 0 in the last phase: outputs are written).
    """
    peak = rcg.n_acc
    orders = []
    for n, ph in enumerate(rcg.phases):
        last = n == len(rcg.phases) - 1
        order, p_t, _ = _planned(ph, last)
        rest = max(len(ph.inputs), 0 if last else len(ph.outputs))
        peak = max(peak, p_t + (len(ph.spectators) - 1) * rest)
        orders.append(order)
    return orders, peak


def ctr_phases(rcg: RCG, orders, first_id: int, naive: bool = False, acc0: int = 0):
    """Expand the phase templates over their spectators (vectorised).

    ``state[i, j]`` holds the temporary of (bra label i, ket label j); the
    accumulators are ``acc0 ..`` and new temporaries are numbered from
    ``first_id``.  Returns the ops in order (orchestrated: spectator-major;
    naive: by step and level), the final state (``rcg.bra_final`` x
    ``rcg.ket_final``), its level and the next free temporary.
    """
    state = acc0 + np.arange(rcg.n_acc, dtype=np.int64).reshape(len(rcg.bra_start),
                                                                 len(rcg.ket_start))
    state_level = np.zeros(state.shape, dtype=np.int64)
    next_id = first_id
    tables, keys = [], []
    for n, (ph, order) in enumerate(zip(rcg.phases, orders)):
        S = state if ph.side == 'ket' else state.T          # (spectators, inputs)
        base_level = int(state_level.max())
        planned = _planned(ph, n == len(rcg.phases) - 1)
        arrays = planned[2] if planned[0] is order else _template(ph, order)
        step, level, node, coef, sym, local, index = arrays
        ns, T = S.shape[0], len(order)
        ids = next_id + np.arange(ns)[:, None] * T + np.arange(T)     # (ns, T)
        next_id += ns * T
        src = np.empty((ns, len(node)), dtype=np.int64)
        src[:, local] = ids[:, index[local]]
        src[:, ~local] = S[:, index[~local]]
        counts = np.bincount(node, minlength=T)
        tptr = np.zeros(ns * T + 1, dtype=np.int64)
        np.cumsum(np.tile(counts, ns), out=tptr[1:])
        tables.append(ir.OpTable(
            np.full(ns * T, ir.LINCOMB, dtype=np.int8), np.tile(step, ns), ids.ravel(),
            np.full(ns * T, -1, dtype=np.int64), np.tile(level, ns) + base_level, tptr,
            src.ravel(), np.tile(coef, ns), np.tile(sym, ns)))
        # ordering keys: orchestrated spectator-major; naive by step, level
        spec = np.repeat(np.arange(ns), T)
        tj = np.tile(np.arange(T), ns)
        if naive:
            rank = np.array([ph.steps.index(st) if st in ph.steps else 0
                             for st in ir.STEPS])[step]
            keys.append((n, rank[tj], level[tj], tj, spec))
        else:
            keys.append((n, 0, 0, spec, tj))
        pos = {lab: j for j, lab in enumerate(order)}
        new = ids[:, [pos[o] for o in ph.outputs]]
        state = new if ph.side == 'ket' else new.T
        state_level = np.full(state.shape, base_level + int(level.max()) if T else base_level)
    table = _concat(tables)
    if len(tables):
        phase = np.concatenate([np.full(len(k[3]), k[0]) for k in keys])
        cols = [np.concatenate([np.broadcast_to(k[c], k[3].shape) for k in keys])
                for c in (1, 2, 3, 4)]
        table = _take(table, np.lexsort((cols[3], cols[2], cols[1], cols[0], phase)))
    return table, state, int(state_level.max()), next_id


def _ctr_table(rcg: RCG, orders, first_id: int, naive: bool):
    """The contracted stage of ``rcg``: :func:`ctr_phases` and the outputs."""
    table, state, level, next_id = ctr_phases(rcg, orders, first_id, naive)
    out_ops = _outputs(rcg, state, level + 1)
    if naive or not len(table):
        return _concat([table, out_ops]), next_id
    return outputs_after_writers(table, out_ops, next_id), next_id


def outputs_after_writers(table: ir.OpTable, out_ops: ir.OpTable, n_temps: int) -> ir.OpTable:
    """``table`` with each OUTPUT op of ``out_ops`` right after the op that
    writes its value (those of accumulators first)."""
    where = np.full(n_temps, -1, dtype=np.int64)
    where[table.dst] = np.arange(len(table))
    after = where[out_ops.src]                               # -1: an accumulator
    order = np.argsort(np.concatenate([np.arange(len(table)) * 2 + 1, after * 2 + 2]),
                       kind='stable')
    return _take(_concat([table, out_ops]), order)


def _outputs(rcg: RCG, state, level: int) -> ir.OpTable:
    """OUTPUT ops, bra-major over the final labels."""
    shape = tuple((ir.ncart if rcg.cart else ir.nsph)(l) for l in rcg.ls)
    bi, ki = rcg.final_index('bra'), rcg.final_index('ket')
    n = len(bi) * len(ki)
    idx = np.concatenate([np.repeat(bi, len(ki), axis=0), np.tile(ki, (len(bi), 1))], axis=1)
    return ir.OpTable(np.full(n, ir.OUTPUT, dtype=np.int8), np.full(n, STEP['output'], np.int8),
                      np.full(n, -1, dtype=np.int64), np.ravel_multi_index(idx.T, shape),
                      np.full(n, level, dtype=np.int64), np.arange(n + 1, dtype=np.int64),
                      state.ravel().astype(np.int64), np.ones(n), np.zeros(n, dtype=np.int8))


# ------------------------------------------------------------------ drivers

def _program(rcg: RCG, prim: ir.OpTable, first_ctr: int, ctr_orders, naive: bool):
    ctr, n_temps = _ctr_table(rcg, ctr_orders, first_ctr, naive)
    prim, ctr = _frozen(prim), _frozen(ctr)
    la, lb, lc, ld = rcg.ls
    tag = f'{rcg.topology}{" fused" if rcg.fused else ""}{" naive" if naive else ""}'
    return ir.Program(la, lb, lc, ld, rcg.cart, n_temps, rcg.n_acc, rcg.boys_const,
                      prim, ctr, tag, rcg)


def naive(la, lb, lc, ld, cart=False) -> ir.Program:
    """Level-by-level order, default topology, transforms at the end."""
    rcg = build_rcg(la, lb, lc, ld, Topology(), cart, fused=False)
    prim, n = _naive_prim(rcg)
    orders = [list(ph.nodes) for ph in rcg.phases]       # any topological order
    return _program(rcg, prim, n, orders, naive=True)


def orchestrate(la, lb, lc, ld, cart=False, fused=True, topology: Topology = None,
                builds=(None, None)) -> ir.Program:
    """Orchestrated program (fused, or with all transforms at the end).

    HRR choices only change the contracted stage and VRR choices only the
    primitive stage, so they are chosen one after the other (HRR first: it
    fixes the accumulator set the VRR must produce).  ``topology`` skips the
    choice (evaluation orders are still orchestrated); ``builds`` sets the
    build centres (``Topology.bra_build`` / ``ket_build``) of the search.
    """
    rcg, orders = chosen_rcg(la, lb, lc, ld, cart, fused, topology, builds)
    prim, n = _prim_stage(rcg)
    return _program(rcg, prim, n, orders, naive=False)


def chosen_rcg(la, lb, lc, ld, cart, fused, topology=None, builds=(None, None), keep=''):
    """(RCG, contracted-stage orders) of the topology :func:`orchestrate` takes
    (``keep``: indices left Cartesian, see ``graph.build_rcg``)."""
    if topology is None:
        side = vrr_side(la, lb, lc, ld)
        candidates = [Topology(side, VRR_RULE, first, rule, *builds)
                      for first, rule in HRR_CANDIDATES]
    else:
        candidates = [topology]
    best = None
    for topo in candidates:
        rcg = build_rcg(la, lb, lc, ld, topo, cart, fused, keep)
        orders, p = _ctr_plan(rcg)
        if best is None or p < best[0]:
            best = (p, rcg, orders)
    return best[1], best[2]


def split_primitive_stage(la, lb, lc, ld, pieces: int, cart=False):
    """The orchestrated program's primitive stage cut into ``pieces`` by its
    accumulator targets (consecutive runs of the stage's target order), each
    a depth-first VRR of its own targets that recomputes what it shares with
    the others: what each thread would run in a form that spreads one
    quartet's VRR over ``pieces`` threads, each in its own registers
    (``benchmarks/rcg_split_vrr.py`` counts its cost).  ``[(table, n_temps)]``,
    the accumulators numbered as the whole program's."""
    rcg, _ = chosen_rcg(la, lb, lc, ld, cart, True)
    topo = rcg.topology
    targets = _prim_targets(rcg, topo.vrr_side)
    return [_prim_dfs(rcg, topo.vrr_side, topo.vrr_dir, [targets[i] for i in part])
            for part in np.array_split(np.arange(len(targets)), pieces)]
