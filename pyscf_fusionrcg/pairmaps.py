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
on monomials (:func:`side_map`).

On the GPU the large classes (levels form, where ``tiers.pairmap_pays``)
run only their primitive stage in the interpreter and hand the
accumulators to the side passes (``launch.SidePasses``: generated code that
runs the graph's bra steps on each ket column, then its ket steps on each
row, :func:`side_nodes`), or, for a class whose passes do not fit their
shared memory, to :class:`PairProducts`: each quartet's two matrices from one GEMM over its
pair vectors' monomials, then two batched GEMMs (cuBLAS, through CuPy).  The contracted
stage is 61-72% of the warp-tier classes' interpreter levels; dense products
have no per-op decoding, though they do up to ~3x the multiplications of the
graph's sparse form.  The CPU tests run the same :class:`PairProducts` with
NumPy.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from . import ir, prepared
from .spherical import cart_components


@dataclass(frozen=True, eq=False)
class SideMap:
    """Polynomial coefficients of one side's matrix: ``coef[m, u, r]`` is the
    coefficient of monomial ``powers[m]`` (x^a y^b z^c of the pair vector) in
    the entry (start label u, final row r), rows in C order of the block's
    two indices of that side."""
    powers: np.ndarray      # (n_mono, 3) int
    coef: np.ndarray        # (n_mono, n_start, n_rows) float64

    @property
    def n_start(self) -> int:
        return self.coef.shape[1]

    @property
    def n_rows(self) -> int:
        return self.coef.shape[2]


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


def side_nodes(rcg, side: str):
    """(label, terms) of one side's contracted steps (HRR and spherical
    transforms) in the order they run, terms ``(coef, Sym, child label)``:
    the graph's phases of that side, which compose to the side's linear map
    whatever the other side's phases do in between."""
    for ph in rcg.phases:
        if ph.side == side:
            for lab, (_, terms) in ph.nodes.items():
                yield lab, terms


def final_rows(rcg, side: str) -> np.ndarray:
    """Row of each final label of a side: C order of the block's two indices
    of that side."""
    l2 = rcg.ls[1] if side == 'bra' else rcg.ls[3]
    idx = rcg.final_index(side)
    return idx[:, 0] * (ir.ncart if rcg.cart else ir.nsph)(l2) + idx[:, 1]


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
    for lab, terms in side_nodes(rcg, side):
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
    coef = np.zeros((n_mono, n_start, len(finals)))
    for lab, row in zip(finals, final_rows(rcg, side)):
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
    if hit is None:     # from disk in a new process: (gg|gg)'s maps take a tenth of a second
        hit = prepared.cached('sidemap', f'sidemap|{key!r}', lambda: _side_map(rcg, side),
                              lambda m: isinstance(m, SideMap))
        with _MAPS_LOCK:
            _MAPS[key] = hit
    return hit


def matrix_doubles(program: ir.Program) -> int:
    """Doubles of one quartet's two pair matrices (bra starts x bra rows plus
    ket starts x ket rows), from the graph's labels without building them;
    0 for a program without its graph."""
    rcg = program.rcg
    if rcg is None:
        return 0
    ni, nj, nk, nl = program.shape
    return len(rcg.bra_start) * ni * nj + len(rcg.ket_start) * nk * nl


def monomials(powers, r, xp=np):
    """(n, n_mono) values x^a y^b z^c of the vectors ``r`` (n, 3), for the
    exponent triples ``powers`` (n_mono, 3), NumPy or already on ``xp``."""
    r = xp.asarray(r, dtype=xp.float64)
    mono = xp.ones((len(r), len(powers)))
    for d in range(3):
        mono *= r[:, d:d + 1] ** xp.asarray(powers[:, d])[None, :]
    return mono


class PairProducts:
    """A class's contracted stage as four (batched) matrix products, with
    NumPy or CuPy (``xp``; cuBLAS on the GPU).  For each quartet q::

        Mb_q = mono(AB_q) . Cb     (bra rows x bra starts)
        Y_q  = Mb_q . acc_q        (bra rows x ket starts)
        Mk_q = mono(CD_q) . Ck     (ket starts x ket rows)
        block_q = Y_q . Mk_q

    Every quartet gets its own matrices from one plain GEMM over the
    monomials, so no pair bookkeeping (sorting, unique) is needed.  On the
    H200 the whole step ran at 1.1-9 TFLOP/s of the two products' work
    (``benchmarks/rcg_pairmap_kernels.py``, the skinny shapes of classes with
    an s shell at the low end), where the hand-written per-quartet kernel
    before it reached 1.2-2.2."""

    def __init__(self, program: ir.Program, xp=np):
        self.xp = xp
        self.bra, self.ket = bra, ket = side_map(program, 'bra'), side_map(program, 'ket')
        if bra.n_start * ket.n_start != program.n_acc:
            raise AssertionError(f'{program.name}: the side maps do not span the accumulators')
        #: (bra rows, bra starts, ket starts, ket rows)
        self.dims = (bra.n_rows, bra.n_start, ket.n_start, ket.n_rows)
        # on the device once: every batch evaluates the monomials
        self._bra_powers, self._ket_powers = xp.asarray(bra.powers), xp.asarray(ket.powers)
        # the bra's matrices are used transposed (rows x starts), the ket's as stored
        self._bra_coef = xp.asarray(np.ascontiguousarray(bra.coef.transpose(0, 2, 1)).reshape(len(bra.powers), -1))
        self._ket_coef = xp.asarray(ket.coef.reshape(len(ket.powers), -1))

    @property
    def work_doubles(self) -> int:
        """Doubles per quartet of the products' temporaries (one matrix at a
        time, the half-transformed Y and the blocks before their transpose)."""
        nbf, nbs, nks, nkf = self.dims
        return max(nbf * nbs, nks * nkf) + nbf * nks + nbf * nkf

    def cost(self) -> dict:
        """Static cost of one quartet: multiply-adds of the four products, and
        device-memory bytes (each matrix, the half-transformed Y and the blocks
        written and read back, the accumulators read, the transposed blocks
        written)."""
        nbf, nbs, nks, nkf = self.dims
        fma = (len(self.bra.powers) * nbf * nbs + nbf * nbs * nks + len(self.ket.powers) * nks * nkf
               + nbf * nks * nkf)
        return dict(fma=fma, bytes=8 * (2 * nbf * nbs + nbs * nks + 2 * nbf * nks + 2 * nks * nkf + 3 * nbf * nkf))

    def __call__(self, acc, ab, cd, out, work=None):
        """Blocks of ``nq = len(ab)`` quartets into ``out`` (n_elem, nq), the
        ``[element][quartet]`` layout the digestion reads, from their
        accumulators ``acc`` (``[quartet][bra start][ket start]``, at least
        nq * n_acc doubles) and pair vectors ``ab``, ``cd`` (nq, 3).
        ``work``: at least nq * :attr:`work_doubles` doubles (allocated if None)."""
        xp = self.xp
        nbf, nbs, nks, nkf = self.dims
        nq = len(ab)
        if work is None:
            work = xp.empty(nq * self.work_doubles)
        n_mat, n_half = nq * max(nbf * nbs, nks * nkf), nq * nbf * nks
        mat = work[:n_mat]
        half = work[n_mat:n_mat + n_half].reshape(nq, nbf, nks)
        blocks = work[n_mat + n_half:n_mat + n_half + nq * nbf * nkf].reshape(nq, nbf, nkf)
        mb = mat[:nq * nbf * nbs].reshape(nq, nbf, nbs)
        xp.matmul(monomials(self._bra_powers, ab, xp), self._bra_coef, out=mb.reshape(nq, -1))
        xp.matmul(mb, acc[:nq * nbs * nks].reshape(nq, nbs, nks), out=half)
        mk = mat[:nq * nks * nkf].reshape(nq, nks, nkf)
        xp.matmul(monomials(self._ket_powers, cd, xp), self._ket_coef, out=mk.reshape(nq, -1))
        xp.matmul(half, mk, out=blocks)
        out[...] = blocks.reshape(nq, -1).T
        return out
