"""Recurrence computation graph (RCG) of one ERI class.

One vertex per intermediate, one edge per recurrence dependency:

* primitive stage: Obara-Saika vertical recurrence (VRR) from the Boys values
  ``[00|00]^(m)`` to ``[e0|f0]^(0)``, the angular momentum of each pair built
  on one of its centres (``Topology.bra_build`` / ``ket_build``; the higher-l
  shell by default): ``max(la, lb) <= |e| <= la+lb`` and likewise ``f``.
  These are the accumulators, summed over primitive quartets (contraction).
* contracted stage: horizontal recurrence (HRR) moving angular momentum to
  the other centre of each pair, giving ``(ab|cd)``, plus the
  Cartesian->spherical transforms (``spherical.contracted_steps`` decides
  where they go).

We use the full two-electron OS VRR, not HGP's bra-only VRR plus electron
transfer: the transfer relation's ``-zeta/eta [e+1, f-1]`` term cancels
against the others and costs digits at high l, which the OS terms (per-pair
quantities listed in ``ir.Sym``) do not; and OS can lower either electron at
every vertex, which is the freedom the scheduler needs to shape live sets.
For a vertex with ``e`` and ``f`` both non-zero the topology says which
electron is lowered; the lowered Cartesian direction is chosen by a rule (see
:data:`DIR_RULES`).

Vertex keys: primitive ``(e, f, m)`` with ``e, f`` exponent triples on the
build centres; contracted ``(bra_label, ket_label)`` where a pair label
``(x, y)`` holds per index either an exponent triple (Cartesian) or an int
(spherical component).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from typing import Dict, List, Optional, Tuple

from . import ir
import numpy as np

from .spherical import angular_factor, cart_components, contracted_steps, transform_matrix

#: Direction rules: which Cartesian direction a recurrence step lowers.
#: 'min' lowers the smallest non-zero exponent (drops the x-2 term most often),
#: 'max' the largest; a permutation such as 'zyx' the first non-zero
#: direction in that order.
DIR_RULES = ('min', 'max', 'xyz', 'xzy', 'yxz', 'yzx', 'zxy', 'zyx')


@lru_cache(maxsize=None)
def pick_direction(t, rule: str) -> int:
    nz = [i for i in range(3) if t[i] > 0]
    if rule == 'min':
        return min(nz, key=lambda i: t[i])
    if rule == 'max':
        return max(nz, key=lambda i: t[i])
    if rule not in DIR_RULES:
        raise ValueError(rule)
    return next('xyz'.index(c) for c in rule if t['xyz'.index(c)] > 0)


@dataclass(frozen=True)
class Topology:
    """Recurrence choices that leave the result unchanged but not the live sets.

    vrr_side: electron lowered at ``[e0|f0]^(m)`` when both are non-zero
    ('ket' builds ``[e0|00]`` first and raises the ket, 'bra' the reverse).
    hrr_first: side whose HRR (and, fused, transforms) runs first.
    bra_build / ket_build: centre on which the VRR builds the pair's angular
    momentum ('a' or 'b', 'c' or 'd'); the HRR then moves it to the other
    centre.  None picks the higher-l shell (fewest accumulators, libcint's
    choice).  Accuracy prefers the tighter shell (the HRR cancels least when
    the product centre lies near the build centre), which the host picks per
    quartet (``host.HostEngine.builds``).
    """
    vrr_side: str = 'ket'
    vrr_dir: str = 'min'
    hrr_first: str = 'ket'
    hrr_dir: str = 'min'
    bra_build: Optional[str] = None
    ket_build: Optional[str] = None

    def resolved(self, la, lb, lc, ld) -> 'Topology':
        return replace(self, bra_build=self.bra_build or ('b' if lb > la else 'a'),
                       ket_build=self.ket_build or ('d' if ld > lc else 'c'))

    def __str__(self):
        return (f'vrr:{self.vrr_side}/{self.vrr_dir} '
                f'hrr:{self.hrr_first}-first/{self.hrr_dir} '
                f'build:{self.bra_build or "?"}{self.ket_build or "?"}')


@lru_cache(maxsize=None)
def _minus(t, i):
    return tuple(v - 1 if j == i else v for j, v in enumerate(t))


@lru_cache(maxsize=None)
def _plus(t, i):
    return tuple(v + 1 if j == i else v for j, v in enumerate(t))


ZERO = (0, 0, 0)


class VrrRegistry:
    """Global integer numbering of the VRR vertices of one (vrr_side, vrr_dir,
    bra_build, ket_build).

    A vertex's recurrence does not depend on the class, only on the topology,
    so definitions are shared by all classes; integer ids keep the per-class
    depth-first search cheap.  Ids are assigned children first.
    """

    def __init__(self, side: str, rule: str, bra_build: str = 'a', ket_build: str = 'c'):
        self.side, self.rule = side, rule
        self.pa = ir.PA if bra_build == 'a' else ir.PB
        self.qc = ir.QC if ket_build == 'c' else ir.QD
        self.gid: Dict[tuple, int] = {}
        self.keys: List[tuple] = []
        self.kids: List[Tuple[int, ...]] = []
        self.coefs: List[Tuple[float, ...]] = []
        self.syms: List[Tuple[int, ...]] = []

    def node(self, key) -> int:
        """Id of vertex ``key = (e, f, m)``, defining its cone if needed."""
        g = self.gid.get(key)
        if g is not None:
            return g
        terms = self._terms(key)
        kids = tuple(self.node(t[2]) for t in terms)
        g = self.gid[key] = len(self.keys)
        self.keys.append(key)
        self.kids.append(kids)
        self.coefs.append(tuple(t[0] for t in terms))
        self.syms.append(tuple(int(t[1]) for t in terms))
        return g

    def _terms(self, key):
        """OS recurrence ``(coef, Sym, child_key)`` terms; none for Boys leaves."""
        e, f, m = key
        if e == ZERO and f == ZERO:
            return []
        if f == ZERO or (e != ZERO and self.side == 'bra'):
            return self._step(e, f, m, pick_direction(e, self.rule), self.pa, ir.WP,
                              ir.Sym.INV_2ZETA, ir.Sym.RHO_INV_2ZETA2, lambda g, o, n: (g, o, n))
        return self._step(f, e, m, pick_direction(f, self.rule), self.qc, ir.WQ,
                          ir.Sym.INV_2ETA, ir.Sym.RHO_INV_2ETA2, lambda g, o, n: (o, g, n))

    @staticmethod
    def _step(grown, other, m, i, centre, w, inv_2x, rho_inv_2x2, key):
        """One OS step lowering direction ``i`` of the side being built
        (``grown``; the bra with PA, WP and 1/2zeta, or the ket with QC, WQ and
        1/2eta), ``other`` the opposite side; ``key(g, o, m)`` puts the two back
        in (e, f, m) order."""
        g1 = _minus(grown, i)
        terms = [(1.0, centre[i], key(g1, other, m)), (1.0, w[i], key(g1, other, m + 1))]
        if g1[i] > 0:
            g2 = _minus(g1, i)
            terms.append((float(g1[i]), inv_2x, key(g2, other, m)))
            terms.append((-float(g1[i]), rho_inv_2x2, key(g2, other, m + 1)))
        if other[i] > 0:
            terms.append((float(other[i]), ir.Sym.INV_2ZETA_ETA, key(g1, _minus(other, i), m + 1)))
        return terms


_REGISTRIES: Dict[tuple, VrrRegistry] = {}


def vrr_registry(side: str, rule: str, bra_build: str = 'a', ket_build: str = 'c') -> VrrRegistry:
    key = (side, rule, bra_build, ket_build)
    reg = _REGISTRIES.get(key)
    if reg is None:
        reg = _REGISTRIES[key] = VrrRegistry(*key)
    return reg


def vrr_graph(targets, topo: Topology) -> Dict[tuple, tuple]:
    """The primitive sub-graph needed for ``targets``, children first:
    ``{key: (child_keys, coefs, syms)}`` (Boys leaves have no children)."""
    reg = vrr_registry(topo.vrr_side, topo.vrr_dir, topo.bra_build or 'a',
                       topo.ket_build or 'c')
    nodes: Dict[tuple, tuple] = {}

    def visit(g):
        for c in reg.kids[g]:
            if reg.keys[c] not in nodes:
                visit(c)
        nodes[reg.keys[g]] = (tuple(reg.keys[c] for c in reg.kids[g]), reg.coefs[g], reg.syms[g])

    for t in targets:
        if t not in nodes:
            visit(reg.node(t))
    return nodes


@dataclass
class PairPhase:
    """Consecutive contracted steps on one side, as a template over pair labels.

    The same template runs once for every ``spectator`` (current label of the
    other side); ``nodes`` maps label -> (step, terms) in topological order,
    terms ``(coef, Sym, child_label)``; ``inputs`` are labels produced earlier,
    ``outputs`` the labels this phase hands on.
    """
    side: str
    steps: Tuple[str, ...]
    nodes: Dict[tuple, tuple]
    inputs: List[tuple]
    outputs: List[tuple]
    spectators: List[tuple] = field(default_factory=list)
    key: tuple = ()          # identifies the template (equal keys, equal templates)


@lru_cache(maxsize=None)
def _hrr_template(l1, l2, side, rule, build_first: bool):
    """HRR on one pair, R = AB or CD, moving angular momentum off the build centre.

    Built on the first centre: (x, y+1_i) = (x+1_i, y) + R_i (x, y), leaves (e, 0);
    on the second: (x+1_i, y) = (x, y+1_i) - R_i (x, y), leaves (0, e).
    """
    sym = ir.AB if side == 'bra' else ir.CD
    nodes = {}
    leaves = {}

    def visit(lab):
        if lab in nodes or lab in leaves:
            return
        x, y = lab
        low = y if build_first else x
        if low == ZERO:
            leaves[lab] = None
            return
        i = pick_direction(low, rule)
        if build_first:
            y1 = _minus(y, i)
            kids, sign = ((_plus(x, i), y1), (x, y1)), 1.0
        else:
            x1 = _minus(x, i)
            kids, sign = ((x1, _plus(y, i)), (x1, y)), -1.0
        for k in kids:
            visit(k)
        nodes[lab] = ('hrr_' + side, ((1.0, ir.Sym.ONE, kids[0]), (sign, sym[i], kids[1])))

    finals = [(x, y) for x in cart_components(l1) for y in cart_components(l2)]
    for lab in finals:
        visit(lab)
    return nodes, sorted(leaves, reverse=True), finals


def _sph_template(labels, pos, l, step):
    """Transform index ``pos`` (0/1 of the pair) of every label to spherical."""
    c = transform_matrix(l)
    comps = cart_components(l)
    nodes = {}
    for other in dict.fromkeys(lab[1 - pos] for lab in labels):
        def pair(v):
            return (v, other) if pos == 0 else (other, v)
        for k in range(2 * l + 1):
            nodes[pair(k)] = (step, tuple((float(c[ci, k]), ir.Sym.ONE, pair(comp))
                                          for ci, comp in enumerate(comps)
                                          if c[ci, k] != 0.0))
    return nodes, list(nodes)


@lru_cache(maxsize=None)
def _cart_index(l):
    return {c: i for i, c in enumerate(cart_components(l))}


@dataclass
class RCG:
    """Whole-class graph.

    The primitive stage is the VRR cone (``vrr_graph(targets, topology)``)
    of the targets ``(e, f, 0)`` of the accumulators (:attr:`acc`, one per
    label pair in ``bra_start x ket_start``); the contracted stage is the list of phases,
    each a template run once per spectator.
    """
    ls: Tuple[int, int, int, int]
    cart: bool
    topology: Topology
    fused: bool
    bra_start: List[tuple]                  # accumulator bra labels (e, 0) or (0, e)
    ket_start: List[tuple]                  # accumulator ket labels (f, 0) or (0, f)
    phases: List[PairPhase]
    bra_final: List[tuple]
    ket_final: List[tuple]
    boys_const: float

    @property
    def n_acc(self) -> int:
        return len(self.bra_start) * len(self.ket_start)

    def built(self, side: str) -> List[tuple]:
        """Angular momentum on the build centre of each start label of a side."""
        if side == 'bra':
            return [lab[0 if self.topology.bra_build == 'a' else 1] for lab in self.bra_start]
        return [lab[0 if self.topology.ket_build == 'c' else 1] for lab in self.ket_start]

    @cached_property
    def acc(self) -> List[Tuple[tuple, tuple]]:
        """(contracted key, primitive target key) of every accumulator."""
        return [((b, k), (e, f, 0)) for b, e in zip(self.bra_start, self.built('bra'))
                for k, f in zip(self.ket_start, self.built('ket'))]

    def final_index(self, side: str):
        """(n, 2) component indices of the final labels of one side."""
        labels, ls = ((self.bra_final, self.ls[:2]) if side == 'bra'
                      else (self.ket_final, self.ls[2:]))
        return np.array([[v if isinstance(v, int) else _cart_index(l)[v]
                          for v, l in zip(lab, ls)] for lab in labels], dtype=np.int64)


def build_rcg(la, lb, lc, ld, topo: Topology = Topology(), cart=False, fused=True,
              keep='') -> RCG:
    """Contracted-stage templates for ``topo``; the VRR part is implied by
    ``topo.vrr_side/vrr_dir`` (see :func:`vrr_graph`).  The indices named in
    ``keep`` ('a'..'d') stay Cartesian (``spherical.contracted_steps``)."""
    ls = (la, lb, lc, ld)
    topo = topo.resolved(*ls)
    steps = contracted_steps(ls, cart, topo.hrr_first, fused, (topo.bra_build, topo.ket_build),
                             keep)
    start = {}
    hrr = {}
    for side, (l1, l2) in (('bra', (la, lb)), ('ket', (lc, ld))):
        first = (topo.bra_build if side == 'bra' else topo.ket_build) in 'ac'
        nodes, leaves, finals = _hrr_template(l1, l2, side, topo.hrr_dir, first)
        hrr[side] = (nodes, finals)
        start[side] = leaves
    current = dict(start)
    phases: List[PairPhase] = []
    for side, step in steps:
        if not phases or phases[-1].side != side:
            phases.append(PairPhase(side, (), {}, list(current[side]), []))
        ph = phases[-1]
        if step.startswith('hrr'):
            nodes, outs = hrr[side]
        else:
            idx = step[-1]
            nodes, outs = _sph_template(current[side], 0 if idx in 'ac' else 1,
                                        ls['abcd'.index(idx)], step)
        ph.nodes.update(nodes)
        ph.steps += (step,)
        current[side] = outs
        ph.outputs = list(outs)
    other = {'bra': 'ket', 'ket': 'bra'}
    labels = dict(start)
    for ph in phases:
        ph.spectators = list(labels[other[ph.side]])
        labels[ph.side] = ph.outputs
        pair = ls[:2] if ph.side == 'bra' else ls[2:]
        build = topo.bra_build if ph.side == 'bra' else topo.ket_build
        ph.key = (ph.side, pair, topo.hrr_dir, build, ph.steps, tuple(ph.inputs))
    const = 1.0
    for l in ls:
        const *= angular_factor(l)
    return RCG(ls, cart, topo, fused, start['bra'], start['ket'], phases,
               labels['bra'], labels['ket'], const)
