"""CPU path: interpret orchestrated, fused Programs with numpy.

The interpreter runs exactly the ops of ``get_program(...)``, vectorised over a
batch: the primitive stage over (shell quartets x primitive quartets), the
contracted stage over (shell quartets x contracted-function tuples).  Per-op
numpy calls would cost far more than their arithmetic, so at compile time the
ops are grouped by dependency level and symbol pattern (ops of one group are
independent) and each group runs as a few gathers over a temporaries buffer of
shape (temporaries, batch).  The orchestrated order matters for GPU registers,
not here; running by levels computes the same values.

Primitive quartets of a batch form one flat list (quartets may differ in
primitive counts); contraction (``Accumulate``) is a sparse product of the
primitive values with the weights ``W`` (outer products of the four shells'
``mol._env`` coefficients) of every contracted-function tuple, which handles
general contraction (nctr > 1) as libcint does.

Each quartet runs the class program whose VRR builds both pairs on their
tighter shells (:meth:`HostEngine.builds`): up to four programs per class,
but the HRR then loses no digits to cancellation (see ``graph.Topology``).

Nuclear derivatives (:meth:`HostEngine.derivative_blocks`) run the
derivative programs of ``derivative.py`` the same way; their raised terms'
accumulators take twice an exponent of the primitive quartet besides ``W``
(``ir.Accumulate.weight``).  They are kept in this process only, not in the
on-disk cache of :mod:`pyscf_fusionrcg.prepared`.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from math import pi
from typing import List, Tuple

import numpy as np
from scipy.sparse import csr_matrix

from . import ir, prepared
from .boys import boys
from .derivative import CENTRES, derivative_program
from .graph import Topology
from .schedule import orchestrate

# libcint slots of mol._bas / mol._atm
ATOM_OF, ANG_OF, NPRIM_OF, NCTR_OF, PTR_EXP, PTR_COEFF = 0, 1, 2, 3, 5, 6
PTR_COORD = 1

#: Doubles per temporaries buffer; batches are cut into chunks below it.
MEM_DOUBLES = 1 << 24

_PROGRAMS: dict = {}
#: Held while a class program is built: the graph builders (graph, schedule) share memoised
#: tables that one thread at a time may change.  Reentrant, for builders made of other programs.
GRAPH_LOCK = threading.RLock()
_COMPILED: dict = {}


def _key(la, lb, lc, ld, cart, builds):
    ls = (int(la), int(lb), int(lc), int(ld))
    if builds is None:
        topo = Topology().resolved(*ls)
        builds = (topo.bra_build, topo.ket_build)
    return ls + (bool(cart), tuple(builds))


def get_program(la, lb, lc, ld, cart=False, builds=None) -> ir.Program:
    """Orchestrated, fused program of a class (cached per (class, cart, builds)).

    ``builds = (bra, ket)`` in {'a', 'b'} x {'c', 'd'}: the centres the VRR
    builds on (see ``graph.Topology``); default: the higher-l shell of each
    pair, as libcint.  The host picks them per quartet (``HostEngine.builds``).
    A new process finds it in :mod:`pyscf_fusionrcg.prepared`'s disk cache.
    """
    with GRAPH_LOCK:    # the graph builders share memoised tables: one build at a time
        key = _key(la, lb, lc, ld, cart, builds)
        prog = _PROGRAMS.get(key)
        if prog is None:
            prog = _PROGRAMS[key] = prepared.program(key, lambda: orchestrate(
                *key[:4], cart=key[4], fused=True, builds=key[5]))
    return prog


def get_derivative_program(la, lb, lc, ld, cart=False, builds=None) -> ir.DerivProgram:
    """Derivative program of a class on shells a, b and c
    (``derivative.derivative_program``), cached as :func:`get_program`'s
    programs (in this process only)."""
    with GRAPH_LOCK:
        key = ('deriv',) + _key(la, lb, lc, ld, cart, builds)
        prog = _PROGRAMS.get(key)
        if prog is None:
            prog = _PROGRAMS[key] = derivative_program(*key[1:5], cart=key[5], builds=key[6])
    return prog


def clear_cache():
    """Drop cached programs (large classes hold ~10^5 ops each)."""
    _PROGRAMS.clear()
    _COMPILED.clear()


def _block_shape(shape, nctr):
    """Block shape of a program's ``shape`` for shells of ``nctr`` contracted
    functions (a derivative program's leading component axis kept)."""
    return tuple(shape[:-4]) + tuple(n * c for n, c in zip(shape[-4:], nctr))


@dataclass
class _Group:
    dst: np.ndarray                 # rows written
    src: np.ndarray                 # (n, terms) rows read
    coef: np.ndarray                # (n, terms)
    syms: Tuple[int, ...]           # symbol per term
    unit: Tuple[bool, ...]          # term coefficient is 1 for every op


@dataclass
class _Compiled:
    program: ir.Program
    n_prim: int
    n_ctr: int
    n_acc: int
    boys_rows: np.ndarray
    boys_m: np.ndarray
    boys_const: float
    prim_groups: List[_Group]
    acc_src: np.ndarray             # primitive row of each accumulator 0..n_acc-1
    acc_weight: np.ndarray          # its ir.Accumulate weight (-1: none, c: 2 * exponent of shell c)
    ctr_groups: List[_Group]
    out_src: np.ndarray
    out_flat: np.ndarray


def _groups(t: ir.OpTable, ops, row) -> List[_Group]:
    """Group LINCOMB ops ``ops`` of a table by (level, symbol pattern)."""
    if len(ops) == 0:
        return []
    counts = np.diff(t.ptr)[ops]
    K = int(counts.max())
    valid = np.arange(K) < counts[:, None]
    j = np.where(valid, t.ptr[ops][:, None] + np.arange(K), 0)
    sym = np.where(valid, t.sym[j], -1)
    src = np.where(valid, row[t.src[j]], 0)
    coef = np.where(valid, t.coef[j], 0.0)
    order = np.lexsort(tuple(sym.T[::-1]) + (t.level[ops],))
    key = np.column_stack([t.level[ops], sym])[order]
    starts = np.concatenate([[0], np.nonzero((key[1:] != key[:-1]).any(axis=1))[0] + 1,
                             [len(order)]])
    out = []
    for g0, g1 in zip(starts[:-1], starts[1:]):
        sel = order[g0:g1]
        n = int(counts[sel[0]])
        c = coef[sel, :n]
        out.append(_Group(row[t.dst[ops[sel]]], src[sel, :n], c,
                          tuple(int(y) for y in sym[sel[0], :n]),
                          tuple(bool((c[:, k] == 1.0).all()) for k in range(n))))
    return out


def _compile(prog: ir.Program) -> _Compiled:
    P, C = prog.prim, prog.ctr
    prow = np.full(prog.n_temps, -1, dtype=np.intp)
    writes = np.nonzero((P.kind == ir.BOYS) | (P.kind == ir.LINCOMB))[0]
    prow[P.dst[writes]] = np.arange(len(writes))
    boys_ops = np.nonzero(P.kind == ir.BOYS)[0]
    acc_ops = np.nonzero(P.kind == ir.ACCUMULATE)[0]
    acc_src = np.empty(prog.n_acc, dtype=np.intp)
    acc_src[P.dst[acc_ops]] = prow[P.src[P.ptr[acc_ops]]]
    acc_weight = np.full(prog.n_acc, -1, dtype=np.intp)
    acc_weight[P.dst[acc_ops]] = P.arg[acc_ops]
    prim_groups = _groups(P, np.nonzero(P.kind == ir.LINCOMB)[0], prow)

    crow = np.full(prog.n_temps, -1, dtype=np.intp)
    crow[:prog.n_acc] = np.arange(prog.n_acc)
    lin = np.nonzero(C.kind == ir.LINCOMB)[0]
    crow[C.dst[lin]] = prog.n_acc + np.arange(len(lin))
    outs = np.nonzero(C.kind == ir.OUTPUT)[0]
    out_flat = C.arg[outs]
    assert np.array_equal(np.sort(out_flat), np.arange(np.prod(prog.shape)))
    return _Compiled(prog, len(writes), prog.n_acc + len(lin), prog.n_acc,
                     prow[P.dst[boys_ops]], P.arg[boys_ops], prog.boys_const, prim_groups,
                     acc_src, acc_weight, _groups(C, lin, crow), crow[C.src[C.ptr[outs]]], out_flat)


def compiled(la, lb, lc, ld, cart=False, builds=None, derivative=False) -> _Compiled:
    """Interpreter form of ``get_program(...)`` or, with ``derivative``,
    ``get_derivative_program(...)`` (cached alongside it)."""
    key = _key(la, lb, lc, ld, cart, builds)
    ckey = ('deriv',) + key if derivative else key
    c = _COMPILED.get(ckey)
    if c is None:
        c = _COMPILED[ckey] = _compile((get_derivative_program if derivative else get_program)(*key))
    return c


def _run(buf, groups, sym):
    """Execute op groups in place; two work arrays are reused for every group
    (fresh large temporaries per group cost more in page faults than in flops)."""
    if not groups:
        return
    nmax = max(len(g.dst) for g in groups)
    v_all = np.empty((nmax, buf.shape[1]))
    w_all = np.empty_like(v_all)
    for g in groups:
        n = len(g.dst)
        v, w = v_all[:n], w_all[:n]
        for t, y in enumerate(g.syms):
            out = v if t == 0 else w
            np.take(buf, g.src[:, t], axis=0, out=out)
            if not g.unit[t]:
                out *= g.coef[:, t, None]
            if y != ir.Sym.ONE:
                out *= sym[y]
            if t:
                v += w
        buf[g.dst] = v


def _boys_values(mmax, t, rho, omega):
    """G_m of ir.Boys (plain, long-range or short-range Coulomb)."""
    if omega == 0.0:
        return boys(mmax, t)
    theta = omega * omega / (omega * omega + rho)
    scale = np.sqrt(theta) * theta ** np.arange(mmax + 1)[:, None]
    lr = scale * boys(mmax, theta * t)
    return lr if omega > 0 else boys(mmax, t) - lr


def shell_centres(mol) -> np.ndarray:
    """(nbas, 3) centre of each shell (its atom's coordinates in ``mol._env``)."""
    bas, atm, env = mol._bas, mol._atm, mol._env
    return env[atm[bas[:, ATOM_OF], PTR_COORD][:, None] + np.arange(3)]


def min_exponents(mol) -> np.ndarray:
    """The smallest primitive exponent of each shell: which shell of a pair is
    the tighter, the one its angular momentum is built on (:meth:`HostEngine.builds`)."""
    bas, env = mol._bas, mol._env
    return np.array([env[p:p + n].min() for p, n in zip(bas[:, PTR_EXP], bas[:, NPRIM_OF])])


class HostEngine:
    """Contracted ERI blocks of shell quartets on the CPU.

    ``omega``: range-separation parameter as PySCF's ``mol.omega`` (> 0:
    erf(omega r)/r, < 0: erfc(|omega| r)/r); 0 means use ``mol.omega``.
    """

    def __init__(self, mol, omega=0.0):
        self.mol = mol
        self.omega = float(omega) if omega else float(getattr(mol, 'omega', 0.0) or 0.0)
        self.cart = bool(mol.cart)
        bas, env = mol._bas, mol._env
        self._bas, self._env = bas, env
        self._centres = shell_centres(mol)
        self._min_exp = min_exponents(mol)

    def builds(self, shls):
        """Build centres per quartet: (on_b, on_d) boolean arrays.

        Each pair's angular momentum is built on its tighter shell (larger
        smallest exponent), ties going to the higher l.  The HRR that then
        moves it to the other shell amplifies rounding by roughly
        (beta/alpha)^l_moved (alpha, beta: exponents of the build / other
        shell), which stays below 1 this way; measured on (gf|gf) quartets
        the worst relative error fell from 6e-11 (always building on g) to
        2e-12.
        """
        shls = np.asarray(shls, dtype=np.intp).reshape(-1, 4)
        e, l = self._min_exp[shls], self._bas[shls, ANG_OF]
        on_b = (e[:, 1] > e[:, 0]) | ((e[:, 1] == e[:, 0]) & (l[:, 1] > l[:, 0]))
        on_d = (e[:, 3] > e[:, 2]) | ((e[:, 3] == e[:, 2]) & (l[:, 3] > l[:, 2]))
        return on_b, on_d

    def orient(self, shls):
        """Swap the shells of equal-l, equal-nctr pairs so that the first one
        is the tighter: :meth:`builds`' choice for such pairs, for a caller
        that only has default-build programs (which build equal-l pairs on
        their first shell).  Returns the oriented quartets and the bra / ket
        swap masks; swapped blocks must be transposed back.
        """
        shls = np.array(shls, dtype=np.intp).reshape(-1, 4)
        bas, e = self._bas, self._min_exp
        swaps = []
        for i, j in ((0, 1), (2, 3)):
            a, b = shls[:, i], shls[:, j]
            sw = ((bas[a, ANG_OF] == bas[b, ANG_OF]) & (bas[a, NCTR_OF] == bas[b, NCTR_OF])
                  & (e[b] > e[a]))
            shls[sw, i], shls[sw, j] = b[sw], a[sw]
            swaps.append(sw)
        return shls, swaps[0], swaps[1]

    def quartet_blocks(self, shls, program: ir.Program = None) -> np.ndarray:
        """(n, di, dj, dk, dl) integrals of n shell quartets of one class.

        All quartets must share, per index, the angular momentum and the number
        of contracted functions (which fix di..dl); primitive counts may vary.
        Each quartet runs the class program with the build centres of
        :meth:`builds`; ``program`` runs another program of the class (e.g. a
        naive one) for all of them instead.
        """
        shls, ls, nctr = self._one_class(shls)
        if len(shls) == 0:
            return np.empty((0, 1, 1, 1, 1))
        if program is not None:
            if program.ls != ls or program.cart != self.cart:
                raise ValueError('quartet_blocks: program is for another class')
            return self._blocks(_compile(program), shls, nctr)
        return self._by_builds(shls, ls, nctr, False)

    def derivative_blocks(self, shls) -> np.ndarray:
        """(n, 3, 3, di, dj, dk, dl) nuclear derivatives of the integrals of n
        shell quartets of one class: ``[q, s, x]`` is d/dX_x of quartet q's
        block, X the centre of its shell s (a, b, c; d's is minus their sum).
        ``-[q, 0]`` is libcint's ``int2e_ip1``.  Quartets as for
        :meth:`quartet_blocks`; each runs the derivative program
        (``derivative.py``) with the build centres of :meth:`builds`."""
        shls, ls, nctr = self._one_class(shls)
        if len(shls) == 0:
            return np.empty((0, 3, 3, 1, 1, 1, 1))
        blocks = self._by_builds(shls, ls, nctr, True)
        return blocks.reshape((len(shls), 3, 3) + blocks.shape[2:])

    def _one_class(self, shls):
        """(quartets, their class, their nctr per index), or a clear error
        unless all quartets share l and nctr per index."""
        shls = np.asarray(shls, dtype=np.intp).reshape(-1, 4)
        if len(shls) == 0:
            return shls, None, None
        ls = self._bas[shls, ANG_OF]
        nctr = self._bas[shls, NCTR_OF]
        if not ((ls == ls[0]).all() and (nctr == nctr[0]).all()):
            raise ValueError('quartet blocks: quartets must share l and nctr per index')
        return shls, tuple(int(v) for v in ls[0]), tuple(int(v) for v in nctr[0])

    def _by_builds(self, shls, ls, nctr, derivative):
        """Blocks of one class, each quartet run with the build centres of :meth:`builds`."""
        shape = tuple((ir.ncart if self.cart else ir.nsph)(l) for l in ls)
        if derivative:
            shape = (3 * len(CENTRES),) + shape
        out = np.empty((len(shls),) + _block_shape(shape, nctr))
        on_b, on_d = self.builds(shls)
        for bb, kb in ((False, False), (True, False), (False, True), (True, True)):
            idx = np.nonzero((on_b == bb) & (on_d == kb))[0]
            if len(idx):
                comp = compiled(*ls, cart=self.cart, builds=('ab'[bb], 'cd'[kb]),
                                derivative=derivative)
                out[idx] = self._blocks(comp, shls[idx], nctr)
        return out

    def _blocks(self, comp: _Compiled, shls, nctr):
        bas = self._bas
        nprimq = bas[shls, NPRIM_OF].prod(axis=1)
        out = np.empty((len(shls),) + _block_shape(comp.program.shape, nctr))
        # chunks of whole quartets with at most MEM_DOUBLES primitive temporaries
        budget = max(1, MEM_DOUBLES // max(comp.n_prim, 1))
        ends = np.cumsum(nprimq)
        q0 = 0
        while q0 < len(shls):
            q1 = max(q0 + 1, int(np.searchsorted(ends, ends[q0] - nprimq[q0] + budget, 'right')))
            acc = self._primitive_stage(comp, shls[q0:q1], nctr)
            out[q0:q1] = self._contracted_stage(comp, shls[q0:q1], acc, nctr)
            q0 = q1
        return out

    def _primitive_stage(self, comp, shls, nctr):
        """Accumulators (n_acc, nq * nctrq) of a chunk of quartets.

        Rows are primitive quartets, quartet-major; contraction is a sparse
        product with the weight of every row for every contracted tuple.
        """
        bas, env = self._bas, self._env
        nq = len(shls)
        npr = bas[shls, NPRIM_OF]                                  # (nq, 4)
        nprimq = npr.prod(axis=1)
        quartet = np.repeat(np.arange(nq), nprimq)
        r = np.arange(len(quartet)) - np.repeat(np.cumsum(nprimq) - nprimq, nprimq)
        exps, coefs, centres = [], [], []
        for i in range(4):                                           # unravel r per row
            inner = npr[:, i + 1:].prod(axis=1)[quartet]
            p = (r // inner) % npr[quartet, i]
            sh = shls[quartet, i]
            exps.append(env[bas[sh, PTR_EXP] + p])
            coefs.append(env[bas[sh, PTR_COEFF][:, None] + np.arange(nctr[i]) * npr[quartet, i][:, None]
                             + p[:, None]])
            centres.append(self._centres[sh])
        (a, b, c, d), (A, B, C, D) = exps, centres
        zeta, eta = a + b, c + d
        P = (a[:, None] * A + b[:, None] * B) / zeta[:, None]
        Q = (c[:, None] * C + d[:, None] * D) / eta[:, None]
        ze = zeta + eta
        rho = zeta * eta / ze
        W = (zeta[:, None] * P + eta[:, None] * Q) / ze[:, None]
        T = rho * ((P - Q) ** 2).sum(1)
        pref = (2 * pi ** 2.5) / (zeta * eta * np.sqrt(ze)) * np.exp(
            -a * b / zeta * ((A - B) ** 2).sum(1) - c * d / eta * ((C - D) ** 2).sum(1))
        nb = len(T)
        S = ir.Sym
        sym = np.empty((len(S), nb))
        sym[S.ONE] = 1.0
        sym[S.PA_X:S.PA_Z + 1] = (P - A).T
        sym[S.PB_X:S.PB_Z + 1] = (P - B).T
        sym[S.WP_X:S.WP_Z + 1] = (W - P).T
        sym[S.QC_X:S.QC_Z + 1] = (Q - C).T
        sym[S.QD_X:S.QD_Z + 1] = (Q - D).T
        sym[S.WQ_X:S.WQ_Z + 1] = (W - Q).T
        sym[S.INV_2ZETA] = 0.5 / zeta
        sym[S.INV_2ETA] = 0.5 / eta
        sym[S.RHO_INV_2ZETA2] = rho / zeta * sym[S.INV_2ZETA]
        sym[S.RHO_INV_2ETA2] = rho / eta * sym[S.INV_2ETA]
        sym[S.INV_2ZETA_ETA] = 0.5 / ze

        buf = np.empty((comp.n_prim, nb))
        g = _boys_values(comp.program.max_m, T, rho, self.omega)
        buf[comp.boys_rows] = g[comp.boys_m] * (pref * comp.boys_const)
        _run(buf, comp.prim_groups, sym)

        ca, cb, cc, cd = coefs
        w = np.einsum('ru,rv,rw,rx->ruvwx', ca, cb, cc, cd).reshape(nb, -1)
        nctrq = w.shape[1]
        cols = quartet[:, None] * nctrq + np.arange(nctrq)
        M = csr_matrix((w.ravel(), (np.repeat(np.arange(nb), nctrq), cols.ravel())),
                       shape=(nb, nq * nctrq))
        vals = buf[comp.acc_src]
        for shell in range(4):              # derivative programs' exponent weights
            rows = comp.acc_weight == shell
            if rows.any():
                vals[rows] *= 2.0 * exps[shell]
        return np.asarray((M.T @ vals.T).T)

    def _contracted_stage(self, comp, shls, acc, nctr):
        nq = len(shls)
        nctrq = int(np.prod(nctr))
        cen = self._centres
        ab = np.repeat(cen[shls[:, 0]] - cen[shls[:, 1]], nctrq, axis=0)
        cd = np.repeat(cen[shls[:, 2]] - cen[shls[:, 3]], nctrq, axis=0)
        nc = comp.program.shape
        lead = len(nc) - 4                  # a derivative program's components
        res = np.empty((nq,) + tuple(nctr) + nc)
        step = max(1, MEM_DOUBLES // (comp.n_ctr * nctrq))
        for q0 in range(0, nq, step):
            q1 = min(nq, q0 + step)
            b0, b1 = q0 * nctrq, q1 * nctrq
            sym = np.empty((len(ir.Sym), b1 - b0))
            sym[ir.Sym.ONE] = 1.0
            sym[ir.Sym.AB_X:ir.Sym.AB_Z + 1] = ab[b0:b1].T
            sym[ir.Sym.CD_X:ir.Sym.CD_Z + 1] = cd[b0:b1].T
            buf = np.empty((comp.n_ctr, b1 - b0))
            buf[:comp.n_acc] = acc[:, b0:b1]
            _run(buf, comp.ctr_groups, sym)
            blk = np.empty((int(np.prod(nc)), b1 - b0))
            blk[comp.out_flat] = buf[comp.out_src]
            res[q0:q1] = blk.T.reshape((q1 - q0,) + tuple(nctr) + nc)
        # (q, u, v, w, x, [n,] i, j, k, l) -> (q, [n,] u i, v j, w k, x l)
        res = res.transpose((0,) + tuple(range(5, 5 + lead))
                            + sum(((1 + k, 5 + lead + k) for k in range(4)), ()))
        return res.reshape((nq,) + _block_shape(nc, nctr))


def eri_full(mol, omega=0.0) -> np.ndarray:
    """(nao, nao, nao, nao) ERI tensor from the host path (small molecules only)."""
    eng = HostEngine(mol, omega)
    ao_loc = mol.ao_loc_nr()
    nbas = mol.nbas
    nao = ao_loc[-1]
    eri = np.empty((nao,) * 4)
    i, j = np.tril_indices(nbas)
    pairs = np.stack([i, j], axis=1)
    p, q = np.tril_indices(len(pairs))
    quartets = np.concatenate([pairs[p], pairs[q]], axis=1)
    kind = np.concatenate([mol._bas[quartets, ANG_OF], mol._bas[quartets, NCTR_OF]], axis=1)
    classes, inv = np.unique(kind, axis=0, return_inverse=True)
    for c in range(len(classes)):
        sel = quartets[inv.ravel() == c]
        blocks = eng.quartet_blocks(sel)
        for (a, b, c_, d), blk in zip(sel, blocks):
            sa, sb, sc, sd = (slice(ao_loc[x], ao_loc[x + 1]) for x in (a, b, c_, d))
            for (s1, s2, s3, s4), perm in (((sa, sb, sc, sd), (0, 1, 2, 3)),
                                           ((sb, sa, sc, sd), (1, 0, 2, 3)),
                                           ((sa, sb, sd, sc), (0, 1, 3, 2)),
                                           ((sb, sa, sd, sc), (1, 0, 3, 2))):
                t = blk.transpose(perm)
                eri[s1, s2, s3, s4] = t
                eri[s3, s4, s1, s2] = t.transpose(2, 3, 0, 1)
    return eri
