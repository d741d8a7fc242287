"""A J engine for pure functionals: the class programs with the density folded in.

Coulomb without exchange needs, per shell quartet, only ``J_ab = sum_cd (ab|cd)
D_cd`` (and, by the bra-ket symmetry, ``J_cd = sum_ab (ab|cd) D_ab``).  A
class program (:mod:`pyscf_fusionrcg.graph`) sums the primitive ``[e0|f0]``
into ``n_e * n_f`` accumulators and then maps them to the block with the
bra's and the ket's contracted stages, each linear and depending on its own
pair vector alone (:mod:`pyscf_fusionrcg.pairmaps`: ``block = Mb(AB) acc
Mk(CD)^T``).  So the ket's stage can run on the density instead of on the
integrals, once per ket pair::

    D~_f(cd) = sum_{k, l} Mk(CD)[(k, l), f] D[c_k, d_l]       (pair_densities)
    V_e      = sum_prim W sum_f [e0|f0] D~_f(cd)                (n_e accumulators)
    J_ab     = Mb(AB) V                                        (the bra's stage)

and, two-sided, ``W_f = sum_prim W sum_e [e0|f0] D~_e(ab)`` and ``J_cd =
Mk(CD) W`` from the same primitive values: ``n_e + n_f`` accumulators instead
of ``n_e * n_f``.

:class:`JProgram` is that program, made from the class program's tables
(:func:`j_program`): the same primitive stage with each accumulation
retargeted (or, where the VRR lowering the other electron first peaks lower,
that one: :func:`vrr_program`), and the contracted stages of ``(ab|ss)`` and
``(ss|cd)`` (with an s pair on the other side there is one start label there,
so the orchestrated contracted stage of such a class runs the pair's own steps
once).

Bra-ket symmetry (:data:`SIDES`): the two-sided program serves the task lists
of :mod:`pyscf_fusionrcg.screening` as they are, every unique quartet once with
its 8-fold degeneracy, both J blocks from one primitive stage; the digestion
then adds into the rows of both pairs (atomics on a GPU).  The one-sided
program over ordered (bra pair, ket pair) combinations with 4-fold pair
symmetry reduces each bra pair's row without a scatter (on a GPU one block per
bra pair, no atomics) and holds ``n_e`` accumulators, but runs the primitive
stage of every quartet with distinct pairs twice.

On the host (:class:`HostJEngine`) the primitive stage is that of
``JProgram.eri``, interpreted by :class:`~pyscf_fusionrcg.host.HostEngine`; the
density-weighted accumulations run on its contracted sums, which equals
running them per primitive quartet because they are linear in the weights
``W`` (the other pair's contraction coefficients then sit in the pair density
instead: ``D^_f(c_p, d_q) = sum_{w, x} c_{p w} d_{q x} D~_f(c_w, d_x)`` is what
a per-primitive kernel reads).  The contracted stages run op by op.

On the GPU (docs/jengine-gpu.md), ``codegen.jkernel`` emits the two-sided
program as a kernel that reads those per-primitive pair densities,
:func:`quartet_densities` makes them where the density is (the device), and ``launch.GPUJEngine``
runs it behind :class:`HostJEngine`'s interface; ``jdigest`` digests its
blocks on the device and serves the GPU path's J-only builds with
``Options.j_engine='on'``.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Tuple

import numpy as np
from scipy.sparse import csr_matrix

from . import host, ir, pairmaps
from .host import ANG_OF, MEM_DOUBLES, NCTR_OF, NPRIM_OF
from .schedule import _concat, _frozen, _peak, _prim_stage, _take, peak_live, stage_peaks
from .screening import array_module

#: The accumulator sides of a J program: both (8-fold bra-ket symmetry, the
#: screened task lists as they are) or the bra alone (ordered pair pairs).
SIDES = (('bra', 'ket'), ('bra',))
_OTHER = {'bra': 'ket', 'ket': 'bra'}


@dataclass(frozen=True, eq=False)
class JProgram:
    """The J contributions of one shell quartet of a class, as op tables.

    Temporaries ``0 .. n_acc-1`` are the accumulators, one per start label of
    each side in :attr:`sides` (in that order, a side's labels in the class
    program's start order, :meth:`acc_range`).  Each quartet has a density
    vector ``rho``: per side in :attr:`sides` order, the pair density
    (:func:`pair_densities`) of the *other* pair, ``D~(cd)`` for the bra's
    accumulators and ``D~(ab)`` for the ket's (:meth:`rho_range`).

    ``prim``: the primitive stage of :attr:`eri` (:func:`vrr_program`), the
    same Boys and LinComb ops; an ``ACCUMULATE`` op here means
    ``t[dst] += W * rho[density[i]] * t[src]``, one per side for each of the
    class program's accumulations (:attr:`target` names the one it replaces,
    ``bra start * n_ket_start + ket start``; -1 for other ops), with ``arg``
    as in the class program.  ``ctr``: the sides' contracted stages one after
    the other (side ``s`` from op ``ctr_starts[s]``), each reading only its own
    accumulators; an ``OUTPUT``'s ``arg`` is the flat C-order index into that
    side's ``(n1, n2)`` J block.  With general contraction the program runs
    once per contracted-function pair of each side, ``rho`` holding the other
    pair's contraction folded in.  ``eri`` is the class program of
    ``host.get_program``, or that program with the other electron's VRR when
    that lowers the peak (:func:`vrr_program`); its contracted stage is the
    class program's either way (it gives the pair maps).
    """
    ls: Tuple[int, int, int, int]
    cart: bool
    sides: Tuple[str, ...]
    n_temps: int
    n_acc: int
    prim: ir.OpTable
    density: np.ndarray
    target: np.ndarray
    ctr: ir.OpTable
    ctr_starts: Tuple[int, ...]
    eri: ir.Program

    @property
    def name(self) -> str:
        return ir.class_name(self.ls)

    @property
    def builds(self) -> Tuple[str, str]:
        topo = self.eri.rcg.topology
        return topo.bra_build, topo.ket_build

    def n_start(self, side: str) -> int:
        """Start labels of a side: its accumulators, and the length of the
        pair density the other side reads."""
        rcg = self.eri.rcg
        return len(rcg.bra_start if side == 'bra' else rcg.ket_start)

    def acc_range(self, side: str) -> range:
        k = self.sides.index(side)
        base = sum(self.n_start(s) for s in self.sides[:k])
        return range(base, base + self.n_start(side))

    def rho_range(self, side: str) -> range:
        """Where the density the accumulators of ``side`` read sits in ``rho``."""
        k = self.sides.index(side)
        base = sum(self.n_start(_OTHER[s]) for s in self.sides[:k])
        return range(base, base + self.n_start(_OTHER[side]))

    def ctr_ops(self, side: str) -> ir.OpTable:
        """The contracted stage of one side (op indices ``ctr_starts[k]`` on)."""
        k = self.sides.index(side)
        stop = self.ctr_starts[k + 1] if k + 1 < len(self.sides) else len(self.ctr)
        return _take(self.ctr, np.arange(self.ctr_starts[k], stop))


def _relabelled(t: ir.OpTable, lut) -> ir.OpTable:
    """A table with its temporaries renamed by ``lut`` (OUTPUT's dst stays -1)."""
    return replace(t, dst=np.where(t.dst >= 0, lut[np.maximum(t.dst, 0)], -1), src=lut[t.src])


def _side_stage(ls, cart, side, build, first_acc, first_temp):
    """The contracted stage of one pair of class ``ls`` as the orchestrated
    contracted stage of the pair against an s pair, its accumulators renamed
    from ``first_acc`` and its other temporaries from ``first_temp``.
    Returns (table, start labels, temporaries used)."""
    la, lb, lc, ld = ls
    if side == 'bra':
        sub = host.get_program(la, lb, 0, 0, cart, (build, 'c'))
        starts = sub.rcg.bra_start
    else:
        sub = host.get_program(0, 0, lc, ld, cart, ('a', build))
        starts = sub.rcg.ket_start
    t = sub.ctr
    written = t.dst[t.dst >= 0]
    first = int(written.min()) if len(written) else sub.n_temps
    lut = np.full(sub.n_temps, -1, dtype=np.int64)
    lut[:sub.n_acc] = first_acc + np.arange(sub.n_acc)
    lut[first:] = first_temp + np.arange(sub.n_temps - first)
    return _relabelled(t, lut), starts, sub.n_temps - first


_PROGRAMS: dict = {}


def j_program(la, lb, lc, ld, cart=False, builds=None, sides=SIDES[0]) -> JProgram:
    """The J program of a class (cached), from ``host.get_program``'s class
    program with the same ``builds`` and the contracted stages of the
    ``(ab|ss)`` and ``(ss|cd)`` programs; see :class:`JProgram`."""
    sides = tuple(sides)
    if sides not in SIDES:
        raise ValueError(f'sides must be one of {SIDES}, not {sides!r}')
    eri = host.get_program(la, lb, lc, ld, cart, builds)
    key = (eri.ls, eri.cart, (eri.rcg.topology.bra_build, eri.rcg.topology.ket_build), sides)
    with host.GRAPH_LOCK:   # _build runs the schedule's memoised stages
        prog = _PROGRAMS.get(key)
        if prog is None:
            prog = _PROGRAMS[key] = _build(vrr_program(eri), sides)
    return prog


def vrr_program(eri: ir.Program) -> ir.Program:
    """The class program ``eri``, or the same program with the VRR lowering
    the other electron first (``Topology.vrr_side``) when that primitive
    stage has the lower live-set peak.

    The J programs' primitive stage is the class program's, each accumulation
    retargeted, so it keeps its temporaries' live ranges: the depth-first VRR
    already accumulates every target as soon as it exists (a target outlives
    that only where another target's recurrence reads it), and what peaks is
    the recurrence's shared intermediates, not the targets.  Only the VRR's
    own choices move that peak, and the side (``schedule.vrr_side`` is a
    rule) is the one searched here (docs/history.md has the counts).  The
    class program keeps its choice: there the accumulators dominate.
    """
    rcg = eri.rcg
    topo = rcg.topology
    other = replace(rcg, topology=replace(topo, vrr_side=_OTHER[topo.vrr_side]))
    prim, n = _prim_stage(other)
    if _peak(prim, n, fixed=eri.n_acc) >= stage_peaks(eri)[0]:
        return eri
    # the contracted stage's temporaries follow the new primitive stage's
    first = eri.n_acc + int((eri.prim.kind != ir.ACCUMULATE).sum())
    lut = np.concatenate([np.arange(eri.n_acc), np.full(first - eri.n_acc, -1),
                          n + np.arange(eri.n_temps - first)])
    return replace(eri, n_temps=n + eri.n_temps - first, prim=_frozen(prim),
                   ctr=_frozen(_relabelled(eri.ctr, lut)),
                   topology=eri.topology.replace(str(topo), str(other.topology)), rcg=other)


def _build(eri: ir.Program, sides) -> JProgram:
    rcg = eri.rcg
    n_start = {'bra': len(rcg.bra_start), 'ket': len(rcg.ket_start)}
    n_acc = sum(n_start[s] for s in sides)
    acc_base = dict(zip(sides, np.cumsum([0] + [n_start[s] for s in sides])))
    rho_base = dict(zip(sides, np.cumsum([0] + [n_start[_OTHER[s]] for s in sides])))
    # each accumulation once per side, the copies next to each other
    P = eri.prim
    perm = np.repeat(np.arange(len(P)), np.where(P.kind == ir.ACCUMULATE, len(sides), 1))
    copy = np.arange(len(perm)) - np.searchsorted(perm, perm)
    prim = _take(P, perm)
    acc = prim.kind == ir.ACCUMULATE
    target = np.where(acc, prim.dst, -1)
    start = {'bra': target // n_start['ket'], 'ket': target % n_start['ket']}
    # the primitive temporaries (never an accumulator) follow the new accumulators
    dst = prim.dst - eri.n_acc + n_acc
    density = np.full(len(prim), -1, dtype=np.int64)
    for k, side in enumerate(sides):
        sel = acc & (copy == k)
        dst[sel] = acc_base[side] + start[side][sel]
        density[sel] = rho_base[side] + start[_OTHER[side]][sel]
    prim = _frozen(replace(prim, dst=dst, src=prim.src - eri.n_acc + n_acc))
    for a in (density, target):
        a.setflags(write=False)

    n_temps = n_acc + int((~acc).sum())
    tables, ctr_starts = [], []
    builds = {'bra': rcg.topology.bra_build, 'ket': rcg.topology.ket_build}
    for side in sides:
        table, starts, used = _side_stage(rcg.ls, rcg.cart, side, builds[side], int(acc_base[side]), n_temps)
        if starts != (rcg.bra_start if side == 'bra' else rcg.ket_start):
            raise AssertionError(f'{eri.name}: the {side} stage starts from other labels')
        ctr_starts.append(sum(len(t) for t in tables))
        tables.append(table)
        n_temps += used
    return JProgram(rcg.ls, rcg.cart, sides, n_temps, n_acc, prim, density, target,
                    _frozen(_concat(tables)), tuple(ctr_starts), eri)


def pair_densities(mol, pairs, dms, smap: pairmaps.SideMap):
    """``D~`` of shell pairs ``(x, y)`` (rows of ``pairs``, one (l, nctr) per
    index): ``(nset, n, n_x, n_y, n_start)`` with ``n_x, n_y`` the shells'
    contracted functions, ``D~[s, p, u, v, f] = sum_{i, j} M(X - Y)[(i, j), f]
    dms[s, x_u i, y_v j]``, where ``M`` is the pair's contracted-stage matrix
    ``smap`` (:func:`pairmaps.side_map` of the side the pair is on, bra or
    ket: one polynomial either way) and ``x_u i`` the AO of component ``i`` of
    function ``u`` of shell ``x``.  In the array module of ``dms`` (NumPy or
    CuPy): the small per-pair matrices are made on the host and moved, the
    gathers and contractions run where the density is."""
    xp = array_module(dms)
    pairs = np.asarray(pairs, dtype=np.intp).reshape(-1, 2)
    x, y = pairs[:, 0], pairs[:, 1]
    bas, ao_loc = mol._bas, mol.ao_loc
    ncomp = ir.ncart if mol.cart else ir.nsph
    (l1, l2), (n1, n2) = bas[pairs[0], ANG_OF], bas[pairs[0], NCTR_OF]
    d1, d2 = ncomp(int(l1)), ncomp(int(l2))
    ix = xp.asarray(ao_loc[x][:, None] + np.arange(n1 * d1))
    iy = xp.asarray(ao_loc[y][:, None] + np.arange(n2 * d2))
    nset, n = len(dms), len(pairs)
    blk = dms[:, ix[:, :, None], iy[:, None, :]].reshape(nset, n, n1, d1, n2, d2)
    blk = blk.transpose(0, 1, 2, 4, 3, 5).reshape(nset, n, n1, n2, d1 * d2)
    cen = host.shell_centres(mol)
    m = pairmaps.monomials(smap.powers, cen[x] - cen[y]) @ smap.coef.reshape(len(smap.powers), -1)
    return xp.einsum('npr,snuvr->snuvp', xp.asarray(m.reshape(n, smap.n_start, smap.n_rows)), blk)


def primitive_pair_densities(mol, pairs, dms, smap: pairmaps.SideMap):
    """``D^`` of shell pairs ``(x, y)`` of one (l, nctr, nprim) per index:
    ``(nset, n, np_x * np_y * n_start)``, ``[s, p, (i * np_y + j) * n_start + f]
    = sum_{u, v} c_x[u, i] c_y[v, j] D~[s, p, u, v, f]`` (:func:`pair_densities`,
    ``c`` the shells' ``[nctr][nprim]`` coefficients in ``mol._env``): the
    pair's contraction folded into its density, what a J kernel's
    accumulations of the other side read per primitive pair
    (:mod:`pyscf_fusionrcg.codegen.jkernel`).  In the array module of ``dms``."""
    xp = array_module(dms)
    pairs = np.asarray(pairs, dtype=np.intp).reshape(-1, 2)
    bas, env = mol._bas, mol._env

    def coefficients(shells):
        nprim, nctr = int(bas[shells[0], NPRIM_OF]), int(bas[shells[0], NCTR_OF])
        ptr = bas[shells, host.PTR_COEFF][:, None] + np.arange(nprim * nctr)
        return xp.asarray(env[ptr].reshape(len(shells), nctr, nprim))

    dt = pair_densities(mol, pairs, dms, smap)
    cx, cy = coefficients(pairs[:, 0]), coefficients(pairs[:, 1])
    d = xp.einsum('pui,pvj,spuvf->spijf', cx, cy, dt, optimize=True)
    return d.reshape(len(dms), len(pairs), -1)


def quartet_densities(mol, prog: JProgram, quartets, dms, swaps=(None, None)):
    """The pair-density step of the J kernels: ``(rho, rho_off)`` for
    quartets of one class and contraction shape with ``dms`` (nset, nao, nao):
    ``rho`` (nset, m), in the array module of ``dms`` (the device's for a
    CuPy density), the :func:`primitive_pair_densities` rows of the quartets'
    distinct bra pairs (``rab``, read by the ket's accumulators) and ket pairs
    (``rcd``, read by the bra's), on the side maps of ``prog.eri``;
    ``rho_off`` (nq, 2) int64 on the host, each quartet's two rows.  The
    bookkeeping of distinct pairs runs on the host quartets.  ``swaps`` (bra,
    ket masks, :func:`launch.orient`'s): a swapped pair's density is taken
    from ``dms`` transposed, so that the J blocks are those of the quartets
    before the swap (transposed where the bra was swapped)."""
    xp = array_module(dms)
    quartets = np.asarray(quartets, dtype=np.intp).reshape(-1, 4)
    nq, nset = len(quartets), len(dms)
    off = np.zeros((nq, 2), dtype=np.int64)
    tables, size = [], 0
    for k, (pair_side, reader) in enumerate((('bra', 'ket'), ('ket', 'bra'))):
        if reader not in prog.sides:
            continue
        pairs = quartets[:, 2 * k:2 * k + 2]
        swapped = np.zeros(nq, dtype=bool) if swaps[k] is None else np.asarray(swaps[k], dtype=bool)
        smap = pairmaps.side_map(prog.eri, pair_side)
        keys, inv = np.unique(np.column_stack([pairs, swapped]), axis=0, return_inverse=True)
        inv = inv.ravel()
        nprim = mol._bas[keys[:, :2], NPRIM_OF]
        _, group = np.unique(nprim, axis=0, return_inverse=True)
        row_off = np.zeros(len(keys), dtype=np.int64)
        for g in np.unique(group):
            rows = np.nonzero(group == g)[0]
            block = xp.empty((nset, len(rows), int(nprim[rows[0]].prod()) * smap.n_start))
            for flag in (False, True):
                sel = np.nonzero(keys[rows, 2] == flag)[0]
                if len(sel):
                    dm = dms.transpose(0, 2, 1) if flag else dms
                    block[:, xp.asarray(sel)] = primitive_pair_densities(mol, keys[rows[sel], :2], dm, smap)
            row_off[rows] = size + np.arange(len(rows)) * block.shape[2]
            tables.append(block.reshape(nset, -1))
            size += block[0].size
        off[:, k] = row_off[inv]
    rho = xp.concatenate(tables, axis=1) if tables else xp.zeros((nset, 1))
    return xp.ascontiguousarray(rho), off


@dataclass
class _SideStage:
    """Interpreter form of one side's contracted stage (``host._run`` groups)."""
    groups: list
    n_rows: int
    out_src: np.ndarray
    out_flat: np.ndarray


def _side_compiled(prog: JProgram, side: str) -> _SideStage:
    t = prog.ctr_ops(side)
    accs = prog.acc_range(side)
    lin = np.nonzero(t.kind == ir.LINCOMB)[0]
    outs = np.nonzero(t.kind == ir.OUTPUT)[0]
    row = np.full(prog.n_temps, -1, dtype=np.intp)
    row[accs.start:accs.stop] = np.arange(len(accs))
    row[t.dst[lin]] = len(accs) + np.arange(len(lin))
    return _SideStage(host._groups(t, lin, row), len(accs) + len(lin), row[t.src[t.ptr[outs]]], t.arg[outs])


_COMPILED: dict = {}


def _compiled(prog: JProgram):
    """Interpreter form of ``prog.eri``: ``host.compiled``'s when it is the
    class program, else compiled here once (the program's primitive stage is
    what the host runs)."""
    ls, cart, builds = prog.ls, prog.cart, prog.builds
    if prog.eri is host.get_program(*ls, cart, builds):
        return host.compiled(*ls, cart=cart, builds=builds)
    key = (ls, cart, builds)
    with host.GRAPH_LOCK:
        comp = _COMPILED.get(key)
        if comp is None:
            comp = _COMPILED[key] = host._compile(prog.eri)
    return comp


class HostJEngine:
    """J blocks of shell quartets on the CPU through :class:`JProgram`\\ s.

    ``engine``: the :class:`~pyscf_fusionrcg.host.HostEngine` whose primitive
    stage (and operator, ``omega``) the programs use; ``sides``: one of
    :data:`SIDES`.  Each quartet runs the program of :meth:`HostEngine.builds`'
    build centres, whose pair densities take the matching side maps.
    """

    def __init__(self, engine: host.HostEngine, sides=SIDES[0]):
        if not isinstance(engine, host.HostEngine):
            raise TypeError(f'the J engine runs on the host engine, not on {type(engine).__name__}')
        self.engine = engine
        self.mol = engine.mol
        self.sides = tuple(sides)
        self._stages: dict = {}

    def quartet_j(self, shls, dms) -> dict:
        """J blocks of ``n`` quartets of one class (l and nctr per index) for
        the densities ``dms`` (nset, nao, nao): ``{'bra': (nset, n, da, db),
        'ket': (nset, n, dc, dd)}`` (the sides of :attr:`sides`), ``bra[s, q]
        = sum_{kl} (ab|cd)[:, :, k, l] dms[s, k, l]`` and ``ket[s, q] =
        sum_{ij} (ab|cd)[i, j] dms[s, i, j]`` (AO indices of quartet q)."""
        shls = np.asarray(shls, dtype=np.intp).reshape(-1, 4)
        bas = self.mol._bas
        ls, nctr = bas[shls, ANG_OF], bas[shls, NCTR_OF]
        if not ((ls == ls[0]).all() and (nctr == nctr[0]).all()):
            raise ValueError('quartet_j: quartets must share l and nctr per index')
        ls, nctr = tuple(int(v) for v in ls[0]), tuple(int(v) for v in nctr[0])
        ncomp = ir.ncart if self.mol.cart else ir.nsph
        dims = [ncomp(l) * c for l, c in zip(ls, nctr)]
        out = {side: np.empty((len(dms), len(shls)) + tuple(dims[:2] if side == 'bra' else dims[2:]))
               for side in self.sides}
        on_b, on_d = self.engine.builds(shls)
        for bb, kb in itertools.product((False, True), repeat=2):
            idx = np.nonzero((on_b == bb) & (on_d == kb))[0]
            if not len(idx):
                continue
            builds = ('ab'[bb], 'cd'[kb])
            prog = j_program(*ls, self.mol.cart, builds, self.sides)
            comp = _compiled(prog)
            for part in self._chunks(comp, shls[idx]):
                got = self._blocks(prog, comp, shls[idx[part]], dms, nctr)
                for side in self.sides:
                    out[side][:, idx[part]] = got[side]
        return out

    def _chunks(self, comp, shls):
        """Slices of whole quartets with at most ``host.MEM_DOUBLES``
        primitive temporaries each (as ``HostEngine`` cuts its batches)."""
        nprimq = self.mol._bas[shls, NPRIM_OF].prod(axis=1)
        budget = max(1, MEM_DOUBLES // max(comp.n_prim, 1))
        ends = np.cumsum(nprimq)
        q0 = 0
        while q0 < len(shls):
            q1 = max(q0 + 1, int(np.searchsorted(ends, ends[q0] - nprimq[q0] + budget, 'right')))
            yield slice(q0, q1)
            q0 = q1

    def _blocks(self, prog: JProgram, comp, shls, dms, nctr):
        """One chunk: the class program's accumulators, the program's
        density-weighted accumulations on them, then each side's stage."""
        nq = len(shls)
        acc = self.engine._primitive_stage(comp, shls, nctr).reshape((-1, nq) + nctr)
        pairs = {'bra': shls[:, :2], 'ket': shls[:, 2:]}
        smaps = {side: pairmaps.side_map(prog.eri, side) for side in ('bra', 'ket')}
        rho = {}
        for side in self.sides:
            other = _OTHER[side]
            keys, inv = np.unique(pairs[other], axis=0, return_inverse=True)
            rho[side] = pair_densities(self.mol, keys, dms, smaps[other])[:, inv.ravel()]
        P = prog.prim
        accs = np.nonzero(P.kind == ir.ACCUMULATE)[0]
        cen = host.shell_centres(self.mol)
        out = {}
        for side in self.sides:
            rng = prog.acc_range(side)
            ops = accs[(P.dst[accs] >= rng.start) & (P.dst[accs] < rng.stop)]
            dens = rho[side][..., prog.density[ops] - prog.rho_range(side).start]
            # sum over the other side's contracted functions and the
            # accumulations of each accumulator
            spec = 'kquvwx,sqwxk->ksquv' if side == 'bra' else 'kquvwx,squvk->ksqwx'
            terms = np.einsum(spec, acc[prog.target[ops]], dens, optimize=True)
            onehot = csr_matrix((np.ones(len(ops)), (P.dst[ops] - rng.start, np.arange(len(ops)))),
                                shape=(len(rng), len(ops)))
            v = onehot @ terms.reshape(len(ops), -1)
            x, y = pairs[side].T
            out[side] = self._contracted(prog, side, v, cen[x] - cen[y], len(dms), nq, nctr)
        return out

    def _contracted(self, prog, side, v, r, nset, nq, nctr):
        """A side's contracted stage on its accumulators ``v`` (n_start,
        nset * nq * n1 * n2) and pair vectors ``r`` (nq, 3): (nset, nq, d1, d2)."""
        key = (prog.ls, prog.cart, prog.builds, prog.sides, side)
        stage = self._stages.get(key)
        if stage is None:
            stage = self._stages[key] = _side_compiled(prog, side)
        n1, n2 = nctr[:2] if side == 'bra' else nctr[2:]
        la, lb = prog.ls[:2] if side == 'bra' else prog.ls[2:]
        ncomp = ir.ncart if prog.cart else ir.nsph
        d1, d2 = ncomp(la), ncomp(lb)
        cols = v.shape[1]
        sym = np.empty((len(ir.Sym), cols))
        sym[ir.Sym.ONE] = 1.0
        vec = np.broadcast_to(r[None, :, None, None, :], (nset, nq, n1, n2, 3)).reshape(-1, 3)
        first = ir.Sym.AB_X if side == 'bra' else ir.Sym.CD_X
        sym[first:first + 3] = vec.T
        buf = np.empty((stage.n_rows, cols))
        buf[:v.shape[0]] = v
        host._run(buf, stage.groups, sym)
        blk = np.empty((d1 * d2, cols))
        blk[stage.out_flat] = buf[stage.out_src]
        # (i j, s, q, u, v) -> (s, q, u i, v j)
        blk = blk.reshape(d1, d2, nset, nq, n1, n2).transpose(2, 3, 4, 0, 5, 1)
        return blk.reshape(nset, nq, n1 * d1, n2 * d2)


def canonical_classes(lmax: int):
    """Classes ``(la, lb, lc, ld)`` with ``la >= lb``, ``lc >= ld`` and
    ``(la, lb) >= (lc, ld)``, every l up to ``lmax``: the task lists' classes."""
    pairs = [(a, b) for a in range(lmax + 1) for b in range(a + 1)]
    return [p + q for n, p in enumerate(pairs) for q in pairs[:n + 1]]


def reduction_row(ls, cart=False) -> dict:
    """Accumulators and peak live intermediates per quartet
    (``schedule.peak_live``) of a class program and of its J programs,
    two-sided and bra-only, default build centres: ``peak_j*`` with the class
    program's primitive stage retargeted, ``peak_j*_ordered`` with the J
    programs' own (:func:`vrr_program`)."""
    eri = host.get_program(*ls, cart)
    two, one = (j_program(*ls, cart, sides=s) for s in SIDES)
    return {'class': ir.class_name(ls), 'acc': eri.n_acc, 'acc_j': two.n_acc, 'acc_j_bra': one.n_acc,
            'peak': peak_live(eri), 'peak_j': _class_order_peak(two, eri),
            'peak_j_ordered': peak_live(two), 'peak_j_bra': _class_order_peak(one, eri),
            'peak_j_bra_ordered': peak_live(one)}


def _class_order_peak(prog: JProgram, eri: ir.Program) -> int:
    """``peak_live`` of ``prog`` were its primitive stage the class program
    ``eri``'s retargeted: the same temporaries live, other accumulators."""
    return max(stage_peaks(eri)[0] - eri.n_acc + prog.n_acc, stage_peaks(prog)[1])


def reduction_report(lmax=4, cart=False):
    """:func:`reduction_row` of every canonical class up to ``lmax``."""
    return [reduction_row(ls, cart) for ls in canonical_classes(lmax)]


def main(argv=None):
    """``python -m pyscf_fusionrcg.jengine [--lmax L] [--cart]``: the
    reduction report as a Markdown table."""
    import argparse
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument('--lmax', type=int, default=4)
    parser.add_argument('--cart', action='store_true')
    args = parser.parse_args(argv)
    rows = reduction_report(args.lmax, args.cart)
    keys = list(rows[0])
    print('| ' + ' | '.join(keys) + ' |')
    print('|' + '---|' * len(keys))
    for row in rows:
        print('| ' + ' | '.join(str(row[k]) for k in keys) + ' |')


if __name__ == '__main__':
    main()
