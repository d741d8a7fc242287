"""Nuclear-derivative programs: d/dX (ab|cd) from the same recurrence graphs.

For a primitive Cartesian Gaussian on centre A with exponent alpha::

    d/dA_x [a b|c d] = 2 alpha [a+1_x b|c d] - a_x [a-1_x b|c d]

so the derivative of class (la lb|lc ld) on A is made of two plain classes:
the raised term (la+1 lb|lc ld), its primitives weighted by 2 alpha, and the
lowered term (la-1 lb|lc ld) (none for an s shell).  A derivative program
(``ir.DerivProgram``) runs the terms of every differentiated centre on one
primitive stage:

* primitive stage: the VRR cone of the union of the terms' accumulator
  targets (one registry: every term builds on the same centre of each pair),
  depth first (``schedule.vrr_stage``), or level-sorted when that has the
  lower peak.  Each term has accumulators of its own; a raised term's carry
  its exponent weight (``ir.Accumulate.weight``), applied per primitive
  quartet, so a vertex that several terms read is computed once and
  accumulated once per term.
* contracted stage, centre by centre: each term's HRR and the transforms of
  its other indices, orchestrated as a plain class's (``schedule.ctr_phases``,
  spectator by spectator, stepwise fused), the differentiated index kept
  Cartesian; then the combination ``D_x[a] = R[a+1_x] - a_x L[a-1_x]`` (step
  ``deriv``) and the transform of the differentiated index, row by row (one
  row per component of the other three indices), each output written as
  soon as it exists.

Only three of the four centres need terms: translational invariance gives
d/dD = -(d/dA + d/dB + d/dC), which the consumers apply (``grad.py``).
Normalisation is the differentiated class's: the terms are made of the
original shells' contraction coefficients and s/p angular factors, so the
Boys constant is the class's, not that of the terms' angular momenta.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from . import ir
from .graph import RCG, Topology, _cart_index, _minus, _plus, vrr_registry
from .schedule import (STEP, VRR_RULE, _concat, _frozen, chosen_rcg, ctr_phases, lower_peak,
                       outputs_after_writers, sorted_targets, vrr_side, vrr_stage)
from .spherical import angular_factor, cart_components, transform_matrix

#: The centres differentiated by default: D follows by translational invariance.
CENTRES = (0, 1, 2)


@dataclass
class Term:
    """One plain class of a derivative: ``rcg`` (its differentiated index
    Cartesian) with contracted-stage ``orders``; accumulators
    ``acc0 .. acc0 + rcg.n_acc - 1``, weighted by twice the exponent of shell
    ``centre`` when ``raised``."""
    centre: int
    raised: bool
    rcg: RCG
    orders: list
    acc0: int


def terms(ls, cart: bool, builds, centres=CENTRES) -> List[Term]:
    """The raised and lowered terms of every centre in ``centres``, in that
    order; ``builds`` the resolved build centres (``Topology.bra_build``,
    ``ket_build``) every term shares."""
    out, acc0 = [], 0
    for c in centres:
        for step in (1, -1):
            lt = list(ls)
            lt[c] += step
            if lt[c] < 0:
                continue
            rcg, orders = chosen_rcg(*lt, cart, True, builds=builds, keep='abcd'[c])
            out.append(Term(c, step > 0, rcg, orders, acc0))
            acc0 += rcg.n_acc
    return out


def derivative_program(la, lb, lc, ld, cart=False, builds=(None, None),
                       centres=CENTRES) -> ir.DerivProgram:
    """Orchestrated derivative program of class (la lb|lc ld) on the shells
    ``centres`` (0..3 for a..d); ``builds`` as in ``schedule.orchestrate``
    (default: the higher-l shell of each pair)."""
    ls = (la, lb, lc, ld)
    if sorted(set(centres)) != list(centres) or not set(centres) <= {0, 1, 2, 3}:
        raise ValueError(f'centres must be ascending shell positions 0..3, not {centres!r}')
    topo = Topology(bra_build=builds[0], ket_build=builds[1]).resolved(*ls)
    builds = (topo.bra_build, topo.ket_build)
    ts = terms(ls, cart, builds, centres)
    n_acc = sum(t.rcg.n_acc for t in ts)
    side = vrr_side(*ls)
    reg = vrr_registry(side, VRR_RULE, *builds)
    accs = [(key, t.acc0 + i, t.centre if t.raised else -1)
            for t in ts for i, (_, key) in enumerate(t.rcg.acc)]
    targets = sorted_targets(list(dict.fromkeys(key for key, _, _ in accs)), side)
    prim, next_id = vrr_stage(reg, targets, accs, n_acc)
    prim = lower_peak(prim, next_id, n_acc)
    tables, outs = [], []
    shape = (3 * len(centres),) + tuple((ir.ncart if cart else ir.nsph)(l) for l in ls)
    for n, c in enumerate(centres):
        rows = {}
        level = 0
        for t in (t for t in ts if t.centre == c):
            table, state, lv, next_id = ctr_phases(t.rcg, t.orders, next_id, acc0=t.acc0)
            tables.append(table)
            rows[t.raised] = _rows(t.rcg, state, c, cart)
            level = max(level, lv)
        table, out, next_id = _combine(ls, c, n, cart, rows[True], rows.get(False), next_id,
                                       level, shape)
        tables.append(table)
        outs.append(out)
    ctr = outputs_after_writers(_concat(tables), _concat(outs), next_id)
    tag = f'{topo} deriv:{"".join("abcd"[c] for c in centres)}'
    const = float(np.prod([angular_factor(l) for l in ls]))
    return ir.DerivProgram(la, lb, lc, ld, cart, next_id, n_acc, const, _frozen(prim),
                           _frozen(ctr), tag, None, tuple(centres))


def _rows(rcg: RCG, state, c: int, cart: bool) -> np.ndarray:
    """A term's final temporaries as (components of index ``c``, rows): one
    row per component tuple of the other three indices, C order."""
    dims = tuple(ir.ncart(l) if cart or i == c else ir.nsph(l) for i, l in enumerate(rcg.ls))
    full = np.empty(dims, dtype=np.int64)
    bi, ki = rcg.final_index('bra'), rcg.final_index('ket')
    full[bi[:, 0, None], bi[:, 1, None], ki[None, :, 0], ki[None, :, 1]] = state
    return np.moveaxis(full, c, 0).reshape(dims[c], -1)


def _template(l: int, spherical: bool):
    """One row's ops: the combination of the raised (source kind 0) and
    lowered (kind 1) terms for each direction and Cartesian component, then
    (spherical) the transform (kind 2: a node of this template).

    Returns per node (step, [(coef, kind, index)]) and the finals
    ``(node, direction, component of the index)``.
    """
    up = _cart_index(l + 1)
    down = _cart_index(l - 1) if l else {}
    nodes, combined = [], {}
    for x in range(3):
        for q, comp in enumerate(cart_components(l)):
            terms_ = [(1.0, 0, up[_plus(comp, x)])]
            if comp[x]:
                terms_.append((-float(comp[x]), 1, down[_minus(comp, x)]))
            combined[x, q] = len(nodes)
            nodes.append(('deriv', terms_))
    if not spherical:
        return nodes, [(combined[x, q], x, q) for x in range(3) for q in range(ir.ncart(l))]
    tr = transform_matrix(l)
    finals = []
    for x in range(3):
        for k in range(ir.nsph(l)):
            nodes.append((None, [(float(tr[q, k]), 2, combined[x, q])
                                 for q in range(ir.ncart(l)) if tr[q, k] != 0.0]))
            finals.append((len(nodes) - 1, x, k))
    return nodes, finals


def _combine(ls, c: int, n: int, cart: bool, raised, lowered: Optional[np.ndarray],
             first_id: int, level: int, shape) -> Tuple[ir.OpTable, ir.OpTable, int]:
    """The ``deriv`` and transform ops of centre ``c`` (the ``n``-th
    differentiated) over all rows, row-major, and their OUTPUT ops.

    ``raised`` / ``lowered``: :func:`_rows` of the two terms.  Returns
    (ops, outputs, next free temporary).
    """
    l = ls[c]
    nodes, finals = _template(l, not cart and l >= 2)
    nrow, T = raised.shape[1], len(nodes)
    ids = first_id + np.arange(nrow)[:, None] * T + np.arange(T)       # (rows, T)
    step = np.array([STEP['deriv'] if st else STEP['sph_' + 'abcd'[c]] for st, _ in nodes],
                    dtype=np.int8)
    lev = np.array([level + (1 if st else 2) for st, _ in nodes], dtype=np.int64)
    counts = np.array([len(terms_) for _, terms_ in nodes])
    flat = [t for _, terms_ in nodes for t in terms_]
    srcs = np.empty((nrow, len(flat)), dtype=np.int64)
    for k, (_, kind, idx) in enumerate(flat):
        srcs[:, k] = raised[idx] if kind == 0 else lowered[idx] if kind == 1 else ids[:, idx]
    tptr = np.zeros(nrow * T + 1, dtype=np.int64)
    np.cumsum(np.tile(counts, nrow), out=tptr[1:])
    ops = ir.OpTable(np.full(nrow * T, ir.LINCOMB, dtype=np.int8), np.tile(step, nrow),
                     ids.ravel(), np.full(nrow * T, -1, dtype=np.int64), np.tile(lev, nrow), tptr,
                     srcs.ravel(), np.tile([t[0] for t in flat], nrow).astype(float),
                     np.zeros(srcs.size, dtype=np.int8))
    # outputs: block index (3 n + x, ...) with the component at index c
    fnode, fx, fcomp = (np.array(v) for v in zip(*finals))
    rest = list(np.unravel_index(np.arange(nrow), [s for i, s in enumerate(shape[1:]) if i != c]))
    rest.insert(c, None)
    index = [3 * n + fx[None, :]] + [fcomp[None, :] if i == c else rest[i][:, None]
                                      for i in range(4)]
    flat_out = np.ravel_multi_index(np.broadcast_arrays(*index), shape).ravel()
    m = len(flat_out)
    outs = ir.OpTable(np.full(m, ir.OUTPUT, dtype=np.int8), np.full(m, STEP['output'], np.int8),
                      np.full(m, -1, dtype=np.int64), flat_out,
                      np.full(m, level + 3, dtype=np.int64), np.arange(m + 1, dtype=np.int64),
                      ids[:, fnode].ravel(), np.ones(m), np.zeros(m, dtype=np.int8))
    return ops, outs, first_id + nrow * T
