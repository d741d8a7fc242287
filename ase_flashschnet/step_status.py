"""The device-side status vector of batched MD: its layout, in one place.

One int64 tensor that the captured MD step and the neighbour-list kernels
update without any host synchronisation; the host reads it once per block of
steps. Layout:

* ``[0, STAT_SIZE)``: the neighbour-list slots (``NBR_STAT_*`` in
  ``csrc/flashschnet/geometry.cu`` must match): committed builds, edges of the
  last attempted build, the most edges any attempted build found (since the
  caller last reset it), the first step whose build did not fit (-1: none), an
  internal-error flag, and the current MD step (kept by the MD step; read by
  the kernels to date an overflow). A
  :class:`~.static_neighbors.StaticNeighborList` uses a vector of just these
  slots for its own host-driven builds.
* ``[STAT_SIZE, STAT_SIZE + R)``: per replica, the first step in which it went
  bad (-1: none);
* ``[STAT_SIZE + R, STAT_SIZE + 2 R)``: per replica, how (:data:`TOO_FAST` or
  :data:`NON_FINITE`; 0 while fine).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["STAT_BUILDS", "STAT_TOTAL", "STAT_MAX_TOTAL", "STAT_OVERFLOW", "STAT_ERROR", "STAT_STEP", "STAT_SIZE",
           "TOO_FAST", "NON_FINITE", "new_stat", "new_md_status", "replica_slots", "first_bad_step"]

STAT_BUILDS, STAT_TOTAL, STAT_MAX_TOTAL, STAT_OVERFLOW, STAT_ERROR, STAT_STEP = range(6)
STAT_SIZE = 6

# How a replica went bad; a larger code wins when both happen in one step.
TOO_FAST = 1  # an atom moved more than the allowed displacement in one step
NON_FINITE = 2  # a coordinate or velocity became NaN or infinite


def new_stat(device, extra: int = 0) -> Tensor:
    """A fresh status vector: the neighbour-list slots, then ``extra`` zeros."""
    stat = torch.zeros(STAT_SIZE + extra, dtype=torch.long, device=device)
    stat[STAT_OVERFLOW] = -1
    return stat


def new_md_status(device, replicas: int) -> Tensor:
    """A fresh status vector for an MD run of ``replicas`` replicas, none gone bad."""
    stat = new_stat(device, 2 * replicas)
    stat[STAT_SIZE:STAT_SIZE + replicas] = -1
    return stat


def replica_slots(stat, replicas: int):
    """Views (or slices, for a NumPy copy) of the per-replica slots: (first bad step, how)."""
    return stat[STAT_SIZE:STAT_SIZE + replicas], stat[STAT_SIZE + replicas:]


def first_bad_step(st: np.ndarray, replicas: int):
    """From a host copy of the status: (first bad step, per-replica codes of the
    replicas that went bad in that step, 0 elsewhere), or None."""
    first, kind = replica_slots(st, replicas)
    if np.all(first < 0):
        return None
    step = int(first[first >= 0].min())
    return step, np.where(first == step, kind, 0)
