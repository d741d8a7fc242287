"""Boys function F_m(T) = int_0^1 t^(2m) exp(-T t^2) dt, vectorised.

Returns all orders 0..mmax at once, since the VRR needs every one.

* ``T < T_SWITCH``: the series ``F_M(T) = exp(-T) sum_k (2T)^k / ((2M+1)(2M+3)
  ...(2M+2k+1))`` (all terms positive, so no cancellation) for the top order
  ``M``, then the downward recursion ``F_m = (2T F_{m+1} + exp(-T))/(2m+1)``,
  which is stable (positive terms again).
* ``T >= T_SWITCH``: ``F_0 = sqrt(pi/T)/2 erf(sqrt T)`` and the upward
  recursion ``F_{m+1} = ((2m+1) F_m - exp(-T))/(2T)``; with ``T`` above
  ``mmax`` the subtracted term is tiny, so upward is stable there.
Both branches are accurate to a few ulp (about 1e-15 relative).
"""
from __future__ import annotations

import numpy as np
from scipy.special import erf

#: Upward recursion is used for T >= max(T_SWITCH, 2*mmax).
T_SWITCH = 30.0


def boys(mmax: int, t) -> np.ndarray:
    """F_m(t) for m = 0..mmax; returns shape (mmax+1,) + t.shape."""
    t = np.asarray(t, dtype=float)
    out = np.empty((mmax + 1,) + t.shape)
    flat_t = t.ravel()
    flat = out.reshape(mmax + 1, -1)
    switch = max(T_SWITCH, 2.0 * mmax)
    small = flat_t < switch
    if small.any():
        flat[:, small] = _series_down(mmax, flat_t[small])
    if not small.all():
        flat[:, ~small] = _upward(mmax, flat_t[~small])
    return out


#: boys.cuh's Taylor tables (FrBoysTaylor): grid points per unit of T and
#: terms kept, and its switch point between the series (table) branch and erf.
TAYLOR_STEPS = 16
TAYLOR_TERMS = 8


def series_limit(mmax: int) -> float:
    """boys.cuh's switch point: the series (or its table) below, erf above."""
    return 1.35 * mmax + 1.5


def taylor_table(order: int) -> np.ndarray:
    """``F_{order+k}(i / TAYLOR_STEPS)`` for ``k < TAYLOR_TERMS`` and every grid
    point ``i`` that a ``T`` below ``series_limit(order)`` rounds to, shape
    (points, TAYLOR_TERMS): the table of boys.cuh's ``boys<order>``, from the
    series in extended precision (NumPy's long double) rounded once."""
    points = int(series_limit(order) * TAYLOR_STEPS + 0.5) + 1
    t = np.arange(points, dtype=np.longdouble) / TAYLOR_STEPS
    top = order + TAYLOR_TERMS - 1
    return np.ascontiguousarray(_series_down(top, t)[order:].T.astype(np.float64))


def _series_down(mmax: int, t: np.ndarray) -> np.ndarray:
    out = np.empty((mmax + 1, t.size), dtype=t.dtype)
    e = np.exp(-t)
    two_t = 2 * t
    term = np.ones_like(t)
    acc = np.ones_like(t)
    # terms grow until k ~ T - M and then fall geometrically; stop when the
    # largest remaining term is below the precision of the sum
    denom = 2 * mmax + 1
    for _ in range(400):
        denom += 2
        term *= two_t / denom
        acc += term
        if (term < 0.01 * np.finfo(t.dtype).eps * acc).all():
            break
    out[mmax] = e * acc / (2 * mmax + 1)
    for m in range(mmax - 1, -1, -1):
        out[m] = (two_t * out[m + 1] + e) / (2 * m + 1)
    return out


def _upward(mmax: int, t: np.ndarray) -> np.ndarray:
    out = np.empty((mmax + 1, t.size))
    e = np.exp(-t)
    inv_2t = 0.5 / t
    st = np.sqrt(t)
    out[0] = 0.5 * np.sqrt(np.pi) / st * erf(st)
    for m in range(mmax):
        out[m + 1] = ((2 * m + 1) * out[m] - e) * inv_2t
    return out
