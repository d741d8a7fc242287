"""Cartesian -> spherical coefficients in PySCF's conventions, and the fusion plan.

PySCF (libcint) Cartesian functions are ``x^i y^j z^k exp(-a r^2)`` times the
radial normalisation ``gto_norm(l, a)`` that ``mol._env`` already holds; for
``l <= 1`` the integrals also carry the angular factor 1/sqrt(4 pi) (s) or
sqrt(3/(4 pi)) (p), in Cartesian and spherical mode alike.  A spherical
function is ``r^l Y_lm`` with ``Y_lm`` the unit-normalised real spherical
harmonic (no Condon-Shortley phase), ordered ``m = -l..l`` (sine-type first),
except that p is ordered x, y, z.  :func:`cart2sph` reproduces
``pyscf.gto.cart2sph(l)``; programs put the l<=1 factor into the Boys constant
(:func:`angular_factor`) and only transform indices with ``l >= 2``
(:func:`transform_matrix`).

Stepwise fusion (:func:`contracted_steps`): an index is transformed as soon as
the horizontal recurrence no longer changes it, so every later step works on
``2l+1`` instead of ``(l+1)(l+2)/2`` components.
"""
from __future__ import annotations

from functools import lru_cache
from math import comb, factorial, pi, sqrt

import numpy as np


@lru_cache(maxsize=None)
def cart_components(l: int):
    """PySCF order of Cartesian exponents: x-power descending, then y."""
    return tuple((lx, ly, l - lx - ly) for lx in range(l, -1, -1)
                 for ly in range(l - lx, -1, -1))


def angular_factor(l: int) -> float:
    """Factor libcint applies to s and p functions (and only to them)."""
    return {0: 1 / sqrt(4 * pi), 1: sqrt(3 / (4 * pi))}.get(l, 1.0)


def _poly_mul(p, q):
    out = {}
    for ka, ca in p.items():
        for kb, cb in q.items():
            k = (ka[0] + kb[0], ka[1] + kb[1], ka[2] + kb[2])
            out[k] = out.get(k, 0.0) + ca * cb
    return out


def _real_solid_harmonic(l: int, m: int):
    """r^l Y_lm (unit-normalised real harmonic) as {(i,j,k): coefficient}.

    Built as Re/Im (x + i y)^|m| times the |m|-th derivative of the Legendre
    polynomial written in z and r^2, which avoids any angle algebra.
    """
    am = abs(m)
    xy = {}
    for k in range(am + 1):           # (x + i y)^|m| = sum C(|m|,k) x^(|m|-k) (i y)^k
        if (k % 2 == 0) == (m >= 0):  # real part for m >= 0, imaginary for m < 0
            sign = (-1) ** (k // 2)
            xy[(am - k, k, 0)] = sign * comb(am, k)
    zr = {}
    for k in range((l - am) // 2 + 1):
        c = (-1) ** k * factorial(2 * l - 2 * k) / (
            2 ** l * factorial(k) * factorial(l - k) * factorial(l - am - 2 * k))
        r2k = {(0, 0, l - am - 2 * k): c}
        for _ in range(k):
            r2k = _poly_mul(r2k, {(2, 0, 0): 1.0, (0, 2, 0): 1.0, (0, 0, 2): 1.0})
        for key, v in r2k.items():
            zr[key] = zr.get(key, 0.0) + v
    norm = sqrt((2 * l + 1) / (4 * pi))
    if m != 0:
        norm *= sqrt(2 * factorial(l - am) / factorial(l + am))
    return {k: norm * v for k, v in _poly_mul(xy, zr).items()}


@lru_cache(maxsize=None)
def _cart2sph(l: int) -> np.ndarray:
    comps = cart_components(l)
    if l == 1:                        # PySCF orders p as x, y, z
        return np.eye(3) * angular_factor(1)
    c = np.zeros((len(comps), 2 * l + 1))
    for col, m in enumerate(range(-l, l + 1)):
        for key, v in _real_solid_harmonic(l, m).items():
            c[comps.index(key), col] = v
    c[abs(c) < 1e-15] = 0.0
    c.setflags(write=False)
    return c


def cart2sph(l: int) -> np.ndarray:
    """(ncart, nsph) matrix equal to ``pyscf.gto.cart2sph(l)``."""
    return _cart2sph(l).copy()


@lru_cache(maxsize=None)
def transform_matrix(l: int) -> np.ndarray:
    """cart2sph(l) without the l<=1 factor (identity for s, p): what programs apply."""
    c = _cart2sph(l) / angular_factor(l)
    c.setflags(write=False)
    return c


def contracted_steps(ls, cart: bool, first: str, fused: bool, builds=('a', 'c'), keep=''):
    """Order of the contracted-stage steps as (side, step) pairs.

    ``first`` is the side whose HRR runs first ('ket' or 'bra').  Fused: each
    side's transforms follow its own HRR at once (ket HRR, d, c, bra HRR, b, a
    for ``first='ket'``); unfused: both HRRs, then all transforms.  Steps that
    do nothing (HRR onto an s shell, transforms of l<=1 or Cartesian output)
    are omitted; ``builds`` names the centres the VRR builds on; the indices
    named in ``keep`` stay Cartesian (a derivative term's differentiated
    index, transformed once the terms are combined).
    """
    la, lb, lc, ld = ls
    moved = {'bra': lb if builds[0] == 'a' else la, 'ket': ld if builds[1] == 'c' else lc}

    def side(s):
        hrr = [(s, 'hrr_' + s)] if moved[s] > 0 else []
        l1, l2 = (la, lb) if s == 'bra' else (lc, ld)
        n1, n2 = ('a', 'b') if s == 'bra' else ('c', 'd')
        sph = [] if cart else [(s, 'sph_' + n) for n, l in ((n2, l2), (n1, l1))
                               if l >= 2 and n not in keep]
        return hrr, sph

    second = 'bra' if first == 'ket' else 'ket'
    h1, s1 = side(first)
    h2, s2 = side(second)
    return h1 + s1 + h2 + s2 if fused else h1 + h2 + s1 + s2
