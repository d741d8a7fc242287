"""Schwarz and density screening, and the per-class task lists that J/K engines consume.

Task-list convention (shared by the CPU digestion in :mod:`pyscf_fusionrcg.jk`
and the GPU path in :mod:`pyscf_fusionrcg.gpu_jk`)
-------------------------------------------------------------------------------

:func:`build_tasks` returns a list of :class:`ClassTasks`.  Every unique shell
quartet ``(ij|kl)`` that survives screening appears exactly once, in exactly
one ``ClassTasks``, as a row ``(a, b, c, d)`` of ``quartets`` which is one of
its 8 equivalent orderings, chosen so that

* ``l_a >= l_b`` and ``l_c >= l_d``; for equal ``l`` the larger shell index
  comes first (``a >= b``, ``c >= d``);
* ``(l_a, l_b) >= (l_c, l_d)`` lexicographically; when the two pairs have the
  same ``(l, l)`` class the bra pair is the later one in the canonical pair
  order (pairs ordered by ``(a, b)``, i.e. ``a*nbas + b`` ascending).

All rows of one ``ClassTasks`` have the same ``key = (l_a, l_b, l_c, l_d)`` and
the same ``nctr`` (number of contracted functions of each shell, as PySCF's
general contraction), hence the same block shape
``((2l_a+1)*n_a, ...)`` (Cartesian: ``(l+1)(l+2)/2`` per function).  Several
``ClassTasks`` may share one ``key`` when their ``nctr`` differ, and one
``(key, nctr)`` comes in several when it has more than ``chunk`` quartets
(:func:`iter_tasks`).

``degeneracy[n] = 1/2^k`` where ``k`` counts which of ``a == b``, ``c == d``,
``(a, b) == (c, d)`` hold.  A digestion multiplies the integral block
``g[p, q, r, s] = (pq|rs)`` (AO indices ``p in a, q in b, r in c, s in d``) by
``degeneracy`` and then scatters all 8 permutations unconditionally; this is
the same as summing each distinct ordering once.  With a density ``D``
(PySCF's ``vj[r,s] = sum (pq|rs) D[q,p]``, ``vk[p,s] = sum (pq|rs) D[q,r]``)::

    Jh[p,q] += deg * sum_rs g (D[r,s] + D[s,r])
    Jh[r,s] += deg * sum_pq g (D[p,q] + D[q,p])          vj = Jh + Jh.T
    Kh[p,s] += deg * sum_qr g D[q,r]      Kh[q,s] += deg * sum_pr g D[p,r]
    Kh[p,r] += deg * sum_qs g D[q,s]      Kh[q,r] += deg * sum_ps g D[p,s]
    vk = Kh[D] + Kh[D].T  (hermitian D)     vk = Kh[D] + Kh[D.T].T  (any D)

Screening: a quartet is kept when ``q_ij q_kl d_max >= direct_scf_tol`` with
``q`` from :func:`schwarz_bounds` and ``d_max`` the largest ``|D|`` (over all
density matrices, both orientations) of the shell blocks the quartet reads:
``ij, kl`` for J and ``ik, il, jk, jl`` for K (evaluated in float32, as the
bound needs no more).  Rows come grouped by bra pair, bra pairs by descending
``q``.  ``build_tasks(..., xp=cupy)`` screens on the GPU and returns CuPy arrays
(the task list of a large molecule has 1e8 quartets and more);
:func:`iter_tasks` makes the same rows one chunk at a time, for consumers that
cannot hold them all at once ((H2O)20/def2-QZVP has more than fit in an H200).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

import numpy as np
from pyscf import gto
from pyscf.scf import _vhf

#: Candidate quartets screened per tile (NumPy / CuPy).
_TILE = {"numpy": 1 << 22, "cupy": 1 << 26}
#: Quartets per ClassTasks from :func:`iter_tasks` at most: 1 GiB of shell
#: indices, so a consumer that drops each chunk after use holds no more.
CHUNK_QUARTETS = 1 << 26


@dataclass
class ClassTasks:
    """Screened unique shell quartets of one class and one contraction shape."""
    key: tuple          # (la, lb, lc, ld)
    nctr: tuple         # contracted functions per shell (na, nb, nc, nd)
    quartets: np.ndarray    # int32 (n, 4) shell indices (a, b, c, d); CuPy if xp=cupy

    def __len__(self):
        return len(self.quartets)

    @property
    def degeneracy(self):
        """float64 (n,), see the module docstring; CuPy for CuPy quartets.  Made
        on demand: the GPU digestion derives it from the shells instead of
        reading 8 more bytes per quartet."""
        xp = array_module(self.quartets)
        a, b, c, d = self.quartets.T
        k = (a == b).astype(np.int32) + (c == d) + ((a == c) & (b == d))
        return xp.ldexp(xp.ones(len(self.quartets)), -k)


@dataclass
class TaskStream:
    """Screened tasks made one chunk at a time (:func:`iter_tasks`), iterable once.

    ``shapes``: every ``(key, nctr)`` a chunk can have, known before screening
    (from the Schwarz bounds alone, so it may hold a few that density
    screening then empties): a consumer compiles their kernels first.
    """
    shapes: set
    chunks: Iterator[ClassTasks]

    def __iter__(self):
        return self.chunks


def _cupy():
    import cupy
    return cupy


def on_gpu(a):
    """True for CuPy (CUDA-array) inputs, or a sequence of them."""
    if isinstance(a, (list, tuple)) and a:
        a = a[0]
    return hasattr(a, "__cuda_array_interface__")


def array_module(a):
    """CuPy for a CuPy array, else NumPy."""
    if on_gpu(a):
        import cupy
        return cupy
    return np


def to_host(a):
    """The NumPy array of a NumPy or CuPy array."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def schwarz_bounds(mol, omega=0.0):
    """``q[i, j] = sqrt(max |(ij|ij)|)`` for the operator of ``omega``, (nbas, nbas).

    O(nbas^2) diagonal integrals through libcint (PySCF's threaded C driver);
    callers cache the result per molecule and omega.  The Cauchy-Schwarz bound
    holds for the erf and erfc kernels too (both are positive definite).
    """
    with mol.with_range_coulomb(omega):
        # A tiny tolerance: the bound must not be cut by libcint's own screening.
        opt = _vhf._VHFOpt(mol, "int2e", "CVHFnoscreen", "CVHFnr_int2e_q_cond",
                           None, 1e-18)
    return np.asarray(opt.q_cond)


def shell_density_max(mol, dms):
    """Largest ``|D|`` of each shell block over all matrices and both
    orientations, (nbas, nbas) float64; for CuPy ``dms`` computed on the
    device and returned as CuPy (:func:`device_shell_density_max`)."""
    if on_gpu(dms):
        return device_shell_density_max(mol, dms)
    d = np.abs(to_host(dms)).reshape(-1, mol.nao, mol.nao).max(axis=0)
    loc = mol.ao_loc[:-1]
    d = np.maximum.reduceat(np.maximum.reduceat(d, loc, axis=0), loc, axis=1)
    return np.maximum(d, d.T)


#: plan.cu's screening of a plan: threads per block, and rows per thread.
PLAN_BLOCK = 256
PLAN_ROUNDS = 8
#: The macros plan.cu leaves to its caller.
PLAN_DEFINES = {'FR_PLAN_ROUNDS': PLAN_ROUNDS}


#: plan.cu's fr_shell_block_max: threads per block (shell j, shell i).
_BLOCK_MAX_THREADS = (32, 8)


@lru_cache(maxsize=None)
def plan_kernel(name):
    """A kernel of csrc/fusionrcg/plan.cu."""
    from gpucore import compile_file
    return compile_file('fusionrcg/plan.cu', defines=PLAN_DEFINES).get_kernel(name)


def device_shell_density_max(mol, dms):
    """:func:`shell_density_max` of CuPy ``dms``,
    on the device (CuPy float64 (nbas, nbas), the same numbers): a build
    screens its density without copying it to the host."""
    cp = _cupy()
    nao, nbas = mol.nao, mol.nbas
    d = cp.asarray(dms).reshape(-1, nao, nao)
    if d.dtype.kind == 'c':
        d = cp.abs(d)       # the modulus bounds both parts, as the host's np.abs does
    d = cp.ascontiguousarray(d, dtype=cp.float64)
    out = cp.empty((nbas, nbas))
    if nbas:
        ao_loc = cp.asarray(np.asarray(mol.ao_loc, dtype=np.int32))
        tx, ty = _BLOCK_MAX_THREADS
        grid = (-(-nbas // tx), -(-nbas // ty))
        plan_kernel('fr_shell_block_max')(
            grid, _BLOCK_MAX_THREADS, (d, np.int32(len(d)), np.int32(nao), ao_loc, np.int32(nbas), out))
    return cp.maximum(out, out.T)



@dataclass
class _Pairs:
    """Canonical shell pairs of one (l_a, l_b, n_a, n_b) sub-class, by descending q."""
    n: tuple            # (n_a, n_b)
    a: np.ndarray
    b: np.ndarray
    q: np.ndarray
    rank: np.ndarray    # position in the canonical pair order

    def to(self, xp):
        return _Pairs(self.n, *(xp.asarray(x) for x in
                                         (self.a, self.b, self.q.astype(np.float32), self.rank)))


def _pair_classes(ls, nctr, q, keep):
    """Canonical pairs (l_a > l_b, or l_a == l_b and a >= b) grouped per l-class, then nctr."""
    a, b = np.nonzero(keep)             # row by row: the canonical pair order, (a, b) ascending
    sel = (ls[a] > ls[b]) | ((ls[a] == ls[b]) & (a >= b))
    a, b = a[sel], b[sel]
    rank = np.arange(len(a))
    # (l_a, l_b, n_a, n_b) as one integer ordered as the tuples: one stable
    # sort groups the pairs (np.unique over rows, then a comparison of every
    # pair per sub-class, was most of the host's screening prelude)
    width = int(max(ls.max(), nctr.max())) + 1 if len(ls) else 1
    sub = ((ls[a] * width + ls[b]) * width + nctr[a]) * width + nctr[b]
    by_sub = np.argsort(sub, kind="stable")
    keys, starts = np.unique(sub[by_sub], return_index=True)
    groups = {}
    for key, idx in zip(keys, np.split(by_sub, starts[1:])):
        idx = idx[np.argsort(-q[a[idx], b[idx]], kind="stable")]
        la, lb, na, nb = (int(x) for x in np.unravel_index(key, (width,) * 4))
        groups.setdefault((la, lb), []).append(
            _Pairs((na, nb), a[idx].astype(np.int32), b[idx].astype(np.int32),
                   q[a[idx], b[idx]], rank[idx].astype(np.int32)))
    return groups


def build_tasks(mol, dms, omega=0.0, direct_scf_tol=1e-13, q_cond=None,
                with_j=True, with_k=True, xp=np, density_bound=None):
    """Screened unique shell quartets grouped per class (see the module docstring).

    ``dms``: (nao, nao) or (nset, nao, nao), NumPy or CuPy.  ``q_cond``: the
    cached :func:`schwarz_bounds` for ``omega`` (computed when None).
    ``with_j``/``with_k`` narrow the density screening to the blocks read.
    ``xp``: ``numpy`` (default) or ``cupy``: where the quartets are screened
    and where the returned arrays live.  ``density_bound``: a number that
    replaces every block's ``|D|`` maximum (``dms`` is then not read): the
    tasks then hold for every density whose elements stay within it.
    """
    return list(iter_tasks(mol, dms, omega, direct_scf_tol, q_cond, with_j, with_k, xp,
                           density_bound, chunk=None))


def iter_tasks(mol, dms, omega=0.0, direct_scf_tol=1e-13, q_cond=None,
               with_j=True, with_k=True, xp=np, density_bound=None,
               chunk=CHUNK_QUARTETS, block_max=None) -> TaskStream:
    """:func:`build_tasks`' quartets, in the same order, as a :class:`TaskStream`
    of ClassTasks of at most ``chunk`` quartets each (None: one per class),
    each screened when the consumer asks for it.  ``block_max``: the
    :func:`shell_density_max` of ``dms`` when the caller has it already."""
    if q_cond is None:
        q_cond = schwarz_bounds(mol, omega)
    q_cond = to_host(q_cond)
    if density_bound is not None:
        dcond = np.full((mol.nbas, mol.nbas), float(density_bound))
    elif block_max is not None:
        dcond = block_max
    else:
        dcond = shell_density_max(mol, dms)
    dmax = float(dcond.max()) if dcond.size else 0.0
    if not np.isfinite(dmax):
        # NaN would pass no bound: every quartet screened away, J = K = 0
        raise ValueError(f"FusionRCG: the density matrix has NaN or infinite elements (largest |D| = {dmax}); "
                         "its J and K are undefined")
    if dmax == 0.0 or not (with_j or with_k):
        return TaskStream(set(), iter(()))
    ls = mol._bas[:, gto.ANG_OF].astype(np.int64)
    nctr = mol._bas[:, gto.NCTR_OF].astype(np.int64)
    groups = _pair_classes(ls, nctr, q_cond,
                           q_cond * (float(q_cond.max()) * dmax) >= direct_scf_tol)
    lkeys = sorted(groups, reverse=True)
    # (bra l-class, ket l-class, bra sub-class, ket sub-class) with Schwarz
    # survivors, and within one l-class a ket pair not after every bra pair
    combos = [(lb, lk, ib, ik)
              for n, lb in enumerate(lkeys) for lk in lkeys[n:]
              for ib, bra in enumerate(groups[lb]) for ik, ket in enumerate(groups[lk])
              if _ket_counts(bra.q[:1], ket, dmax, direct_scf_tol)[0] > 0   # the largest bra q
              and (lb != lk or ket.rank.min() <= bra.rank.max())]
    shapes = {(lb + lk, groups[lb][ib].n + groups[lk][ik].n) for lb, lk, ib, ik in combos}

    def chunks():
        dev = {key: [p.to(xp) for p in subs] for key, subs in groups.items()}
        d32 = dcond.astype(np.float32)
        d32 = to_host(d32) if xp is np else xp.asarray(d32)
        tile = _TILE.get(xp.__name__, _TILE["numpy"])
        for lb, lk, ib, ik in combos:
            bra, ket = dev[lb][ib], dev[lk][ik]
            tiles = _screen(groups[lb][ib], groups[lk][ik], bra, ket, lb == lk, d32, dmax,
                            direct_scf_tol, with_j, with_k, tile, xp)
            for q in joined_rows(tiles, chunk, xp):
                yield ClassTasks(lb + lk, bra.n + ket.n, q)

    return TaskStream(shapes, chunks())


def _ket_counts(bra_q, ket_h, dmax, tol):
    """For bra pairs of Schwarz bounds ``bra_q``, how many of the kets (by
    descending q) pass the bound with the density maximum ``dmax``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        limit = tol / (bra_q * dmax)
    return np.searchsorted(-ket_h.q, -limit, side="right")


def joined_rows(pieces, chunk, xp):
    """The rows of the (n_i, 4) int32 arrays ``pieces``, in order, as contiguous
    arrays of ``chunk`` rows (the last one shorter; None: all in one)."""
    held, n = [], 0
    for p in pieces:
        if not len(p):
            continue
        held.append(p)
        n += len(p)
        while chunk is not None and n >= chunk:
            rows = xp.concatenate(held) if len(held) > 1 else held[0]
            yield xp.ascontiguousarray(rows[:chunk])
            held, n = [rows[chunk:]], n - chunk
    if n:
        yield xp.ascontiguousarray(xp.concatenate(held) if len(held) > 1 else held[0])


def _screen(bra_h, ket_h, bra, ket, same_lclass, d32, dmax, tol, with_j, with_k, tile, xp):
    """Quartets (bra pair x ket pair) passing ``q_ij q_kl d_max >= tol``, as (n, 4)
    int32 arrays, one per tile.

    Pairs come by descending q, so the Schwarz survivors (with the global
    density maximum) of each bra pair are a prefix of the kets, and shrink
    from one bra pair to the next: the candidates are screened in rectangular
    tiles of (bra rows) x (longest prefix among them).
    """
    counts = _ket_counts(bra_h.q, ket_h, dmax, tol)
    start = 0
    while start < len(counts) and counts[start] > 0:
        ncol = int(counts[start])
        stop = min(len(counts), start + max(1, tile // max(ncol, len(d32))))
        rows = slice(start, stop)
        a, b, c, d = bra.a[rows], bra.b[rows], ket.a[:ncol], ket.b[:ncol]
        dm = None
        if with_j:
            dm = xp.maximum(d32[a, b][:, None], d32[c, d][None, :])
        if with_k:
            row = xp.maximum(d32[a], d32[b])            # max over {a, b} x all shells
            dk = xp.maximum(xp.take(row, c, axis=1), xp.take(row, d, axis=1))
            dm = dk if dm is None else xp.maximum(dm, dk)
        keep = _passes(dm, bra.q[rows, None], ket.q[None, :ncol], tol)
        if same_lclass:
            keep &= ket.rank[None, :ncol] <= bra.rank[rows, None]
        r, col = xp.nonzero(keep)
        yield xp.stack((a[r], b[r], c[col], d[col]), axis=1).astype(np.int32, copy=False)
        start = stop


def _passes(dm, q_bra, q_ket, tol):
    """The bound ``q_ij q_kl d_max >= tol`` in float32 (``dm`` is overwritten),
    evaluated the same way for the tiles of :func:`_screen` and the quartets
    of :func:`kept_quartets`, so that both keep the same ones."""
    dm *= q_ket
    dm *= q_bra
    return dm >= tol


def kept_quartets(quartets, q32, d32, tol, with_j=True, with_k=True, xp=np):
    """Mask of the rows of ``quartets`` ((n, 4) shell indices, any of the 8
    orderings) that pass the screening of :func:`build_tasks` for the shell
    block maxima ``d32`` (float32 (nbas, nbas), :func:`shell_density_max`)
    and the float32 Schwarz bounds ``q32``.  Filtering a plan screened with a
    larger density bound this way keeps exactly the quartets that screening
    the smaller density itself would: a build reuses the plan's ordered
    quartets instead of sorting its own (``gpu_jk.RestrictedPlan`` runs
    this test in one kernel, ``csrc/fusionrcg/plan.cu``)."""
    a, b, c, d = (quartets[:, i] for i in range(4))
    dm = None
    if with_j:
        dm = xp.maximum(d32[a, b], d32[c, d])
    if with_k:
        dk = xp.maximum(xp.maximum(d32[a, c], d32[a, d]), xp.maximum(d32[b, c], d32[b, d]))
        dm = dk if dm is None else xp.maximum(dm, dk)
    if dm is None:
        return xp.zeros(len(quartets), dtype=bool)
    return _passes(dm, q32[a, b], q32[c, d], tol)


def sorted_pair_bounds(q_cond) -> np.ndarray:
    """The Schwarz bounds of the unique shell pairs, ascending: what
    :func:`schwarz_candidates` counts from, the same for every density of a
    geometry (a plan keeps them)."""
    q = to_host(q_cond)
    return np.sort(q[np.tril_indices(len(q))])


def schwarz_candidates(pair_bounds, density_max, tol) -> int:
    """How many unique shell quartets pass ``q_ij q_kl density_max >= tol``,
    from the :func:`sorted_pair_bounds` ``pair_bounds``: what screening a
    density of that largest element has to look at."""
    q = pair_bounds
    if density_max <= 0 or not len(q):
        return 0
    with np.errstate(divide="ignore"):
        limit = tol / (q * density_max)
    ordered = int((len(q) - np.searchsorted(q, limit, side="left")).sum())
    diagonal = int((q * q * density_max >= tol).sum())
    return (ordered + diagonal) // 2
