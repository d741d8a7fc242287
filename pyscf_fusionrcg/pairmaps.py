"""The contracted stage as two pair matrices (the ``pairmap`` contracted stage).

A program's contracted stage (HRR and the fused Cartesian->spherical
transforms, see :mod:`pyscf_fusionrcg.graph`) is linear in the accumulators
and works on the bra and the ket labels separately, each side's steps
depending on its own pair vector alone (``AB`` or ``CD``).  So for one quartet

    block[(i, j), (k, l)] = sum_{u, v} Mb(AB)[(i, j), u] acc[u, v] Mk(CD)[(k, l), v]

with ``acc`` the (bra start x ket start) accumulator matrix in the program's
order and the entries of ``Mb`` polynomials in ``AB`` of degree at most the
angular momentum the HRR moves (``Mk`` likewise in ``CD``).  A side's
polynomial coefficients are found once per class by running its graph steps
on monomials (:func:`side_map`); the matrices of a batch of pairs are then one
matrix product (:meth:`SideMap.matrices`).

On the GPU the largest classes (levels form, from ``tiers.PAIRMAP_ACC_MIN``
accumulators on) run only their primitive stage in the interpreter and hand
the accumulators to two dense batched products (``csrc/fusionrcg/pairmap.cu``,
launched by :mod:`pyscf_fusionrcg.launch`): the contracted stage is 61-72% of
the warp-tier classes' interpreter levels, and dense products have no per-op
decoding, though they do up to ~3x the multiplications of the graph's sparse
form.  Below the threshold the products, memory-latency bound as they stand,
cost more than the levels they replace (``benchmarks/rcg_pairmap_kernels.py``).
:func:`contract` is the same product in NumPy, for the CPU tests.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from . import ir
from .spherical import cart_components


@dataclass(frozen=True, eq=False)
class SideMap:
    """Polynomial coefficients of one side's matrix: ``coef[m, u, r]`` is the
    coefficient of monomial ``powers[m]`` (x^a y^b z^c of the pair vector) in
    the entry (start label u, final row r), rows in C order of the block's
    two indices of that side.  Stored start-label-major ("transposed"), the
    layout the GPU products read."""
    powers: np.ndarray      # (n_mono, 3) int
    coef: np.ndarray        # (n_mono, n_start, n_rows) float64

    @property
    def n_start(self) -> int:
        return self.coef.shape[1]

    @property
    def n_rows(self) -> int:
        return self.coef.shape[2]

    def matrices(self, r, xp=np, pad_rows: int = 1):
        """(n_pairs, n_start, n_rows padded up to a multiple of ``pad_rows``,
        zeros beyond n_rows) for pair vectors ``r`` (n_pairs, 3), with NumPy
        or CuPy (``xp``)."""
        r = xp.asarray(r, dtype=xp.float64)
        mono = xp.ones((len(r), len(self.powers)))
        for d in range(3):
            mono *= r[:, d:d + 1] ** xp.asarray(self.powers[:, d])[None, :]
        rows = _padded(self.n_rows, pad_rows)
        coef = np.zeros(self.coef.shape[:2] + (rows,))
        coef[:, :, :self.n_rows] = self.coef
        flat = mono @ xp.asarray(coef.reshape(len(self.powers), -1))
        return flat.reshape(len(r), self.n_start, rows)


def _padded(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _monomials(degree: int):
    """Exponent triples of total degree <= ``degree`` and, per direction, the
    index of each monomial times that coordinate (-1 past ``degree``)."""
    powers = [t for n in range(degree + 1) for t in cart_components(n)]
    index = {t: i for i, t in enumerate(powers)}
    up = np.full((3, len(powers)), -1, dtype=np.int64)
    for i, t in enumerate(powers):
        for d in range(3):
            u = tuple(v + (k == d) for k, v in enumerate(t))
            up[d, i] = index.get(u, -1)
    return np.array(powers, dtype=np.int64).reshape(-1, 3), up


_MAPS: dict = {}
_MAPS_LOCK = threading.Lock()


def _side_map(rcg, side: str) -> SideMap:
    syms = ir.AB if side == 'bra' else ir.CD
    start = rcg.bra_start if side == 'bra' else rcg.ket_start
    finals = rcg.bra_final if side == 'bra' else rcg.ket_final
    l1, l2 = rcg.ls[:2] if side == 'bra' else rcg.ls[2:]
    build = rcg.topology.bra_build if side == 'bra' else rcg.topology.ket_build
    moved = l2 if build in 'ac' else l1          # the HRR moves the other shell's l
    powers, up = _monomials(moved)
    n_mono, n_start = len(powers), len(start)
    values = {}
    for u, lab in enumerate(start):
        v = np.zeros((n_mono, n_start))
        v[0, u] = 1.0
        values[lab] = v
    for ph in rcg.phases:
        if ph.side != side:
            continue
        for lab, (_, terms) in ph.nodes.items():
            v = np.zeros((n_mono, n_start))
            for c, sym, child in terms:
                src = values[child]
                if sym == ir.Sym.ONE:
                    v += c * src
                    continue
                d = syms.index(sym)
                dst = up[d]
                if (dst < 0).any() and src[dst < 0].any():
                    raise AssertionError(f'{rcg.ls} {side}: degree beyond {moved}')
                ok = dst >= 0
                v[dst[ok]] += c * src[ok]
            values[lab] = v
    idx = rcg.final_index(side)
    n2 = (ir.ncart if rcg.cart else ir.nsph)(l2)
    rows = idx[:, 0] * n2 + idx[:, 1]
    coef = np.zeros((n_mono, n_start, len(finals)))
    for lab, row in zip(finals, rows):
        coef[:, :, row] = values[lab]
    return SideMap(powers, coef)


def side_map(program: ir.Program, side: str) -> SideMap:
    """The ``side`` ('bra' or 'ket') matrix polynomials of ``program``
    (cached per pair and that side's graph phases)."""
    rcg = program.rcg
    if rcg is None:
        raise ValueError(f'{program.name}: the program carries no graph to take pair matrices from')
    if rcg.n_acc != program.n_acc:
        raise AssertionError(f'{program.name}: graph and program disagree on the accumulators')
    # a side's matrix depends on its own phases only, so e.g. (gd|fd) and
    # (gd|dp) share the bra's
    key = (side, rcg.cart, rcg.ls[:2] if side == 'bra' else rcg.ls[2:],
           tuple(ph.key for ph in rcg.phases if ph.side == side))
    with _MAPS_LOCK:
        hit = _MAPS.get(key)
    if hit is None:
        hit = _side_map(rcg, side)
        with _MAPS_LOCK:
            _MAPS[key] = hit
    return hit


def contract(program: ir.Program, acc, ab, cd) -> np.ndarray:
    """Blocks (n, ni*nj*nk*nl in C order) of ``n`` quartets from their
    accumulators ``acc`` (n, n_acc) and pair vectors ``ab``, ``cd`` (n, 3),
    in NumPy: what the GPU's two products compute."""
    bra, ket = side_map(program, 'bra'), side_map(program, 'ket')
    mb = bra.matrices(ab)                          # (n, n_bra_start, n_bra_rows)
    mk = ket.matrices(cd)
    v = np.asarray(acc).reshape(len(acc), bra.n_start, ket.n_start)
    blocks = np.einsum('qub,quv,qvk->qbk', mb, v, mk)
    return blocks.reshape(len(acc), -1)


#: Rows of M a lane keeps in registers (FR_PM_ROWS of pairmap.cu): the
#: matrices' rows are padded to a multiple of it.
ROWS = 8


def batch_matrices(side: SideMap, coords, first, second, xp=np):
    """Matrices of the distinct pairs (``first[q]``, ``second[q]``) of a batch,
    k-major and padded to :data:`ROWS` (see pairmap.cu), and each quartet's
    pair index (int32).  ``coords``: (nbas, 3) shell centres."""
    nbas = len(coords)
    key = first.astype(xp.int64) * nbas + second
    pairs, index = xp.unique(key, return_inverse=True)
    r = coords[pairs // nbas] - coords[pairs % nbas]
    return side.matrices(r, xp, ROWS), index.reshape(-1).astype(xp.int32)


def product_steps(bra: SideMap, ket: SideMap, nq: int):
    """The two ``fr_pair_transform`` launches of a batch of ``nq`` quartets:
    per step ``(x, (xq, xk, xc), m, (nk, nr, nr_pad, nc), y, (yq, yr, yc))``
    with buffers named 'acc' ([quartet][bra start][ket start]), 'tmp'
    (per quartet, [ket start][bra row]) and 'out' ([element][quartet]), and
    matrices 'bra' / 'ket'.  The one description launch.py and the CPU tests
    both follow."""
    nbs, nks, nbf, nkf = bra.n_start, ket.n_start, bra.n_rows, ket.n_rows
    return [('acc', (nbs * nks, nks, 1), 'bra', (nbs, nbf, _padded(nbf, ROWS), nks), 'tmp', (nbf * nks, 1, nbf)),
            ('tmp', (nbf * nks, nbf, 1), 'ket', (nks, nkf, _padded(nkf, ROWS), nbf), 'out', (1, nq, nkf * nq))]


def tmp_doubles(program: ir.Program) -> int:
    """Doubles per quartet of the 'tmp' buffer of :func:`product_steps`."""
    return side_map(program, 'bra').n_rows * side_map(program, 'ket').n_start
