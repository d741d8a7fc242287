"""The integrators of batched MD and the instability guard, as in-place updates.

BAOAB Langevin (per-replica temperature and friction) and velocity-Verlet NVE.
Units are ASE's: positions in A, masses in amu, velocities in A / ase-time,
energies in eV; ``dt_fs`` and ``friction_per_fs`` are converted with
``ase.units.fs``. A step is B (half kick with the stored forces), then A O A
(BAOAB) or a full drift (NVE), then, after the force call, B again. Every
update writes pre-allocated tensors in place, so a step can be captured in a
CUDA graph. The Langevin noise is not drawn here: the caller draws it outside
any graph, from a generator whose state it checkpoints.
"""
from __future__ import annotations

import numpy as np
import torch
from ase import units

from ..step_status import NON_FINITE, STAT_STEP, replica_slots

__all__ = ["INTEGRATORS", "Integrator", "per_replica"]

INTEGRATORS = ("baoab", "nve")


def per_replica(value, replicas: int, name: str) -> np.ndarray:
    """``value`` (one number, or one per replica) as one non-negative number per replica."""
    arr = np.asarray(value, dtype=float).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, replicas)
    if arr.size != replicas or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must be one non-negative number or one per replica ({replicas}), got {value!r}")
    return arr


class Integrator:
    """Per-atom coefficients of one integrator for ``replicas`` blocks of ``n_atoms``
    atoms, and the updates of a step. ``tensor`` makes a device tensor of the
    engine's dtype from an array."""

    def __init__(self, kind: str, dt_fs: float, masses: np.ndarray, temperature_K, friction_per_fs,
                 replicas: int, n_atoms: int, max_displacement: float, tensor):
        self.kind = kind
        self.dt = float(dt_fs) * units.fs
        self.max_displacement = float(max_displacement)
        self.R, self.N = replicas, n_atoms
        R, N = replicas, n_atoms
        self.masses = tensor(masses)[:, None]
        self.inv_m = 1.0 / self.masses
        self.kT = tensor(np.repeat(per_replica(temperature_K, R, "temperature_K") * units.kB, N))[:, None]
        gamma = per_replica(friction_per_fs, R, "friction_per_fs") / units.fs
        c1 = np.exp(-gamma * self.dt)
        self.c1 = tensor(np.repeat(c1, N))[:, None]
        self.sigma = torch.sqrt(tensor(np.repeat(1.0 - c1 ** 2, N))[:, None] * self.kT * self.inv_m)

    @property
    def uses_noise(self) -> bool:
        """Whether each step needs a fresh normal draw in the noise tensor."""
        return self.kind == "baoab"

    def thermal_velocities(self, shape, generator, dtype, device, rows=slice(None)) -> torch.Tensor:
        """Maxwell-Boltzmann velocities at each replica's temperature, from the
        ``rows`` of a normal draw of ``shape`` (a batch of which these replicas
        are a part draws for all of it)."""
        v = torch.randn(shape, generator=generator, dtype=dtype, device=device)[rows].clone()
        return v.mul_(torch.sqrt(self.kT * self.inv_m))

    def kick_and_drift(self, x, v, f, noise) -> None:
        """B, then A O A (BAOAB) or a full drift (NVE)."""
        hdt = 0.5 * self.dt
        v.addcmul_(f, self.inv_m, value=hdt)
        if self.kind == "baoab":
            x.add_(v, alpha=hdt)
            v.mul_(self.c1).addcmul_(self.sigma, noise)
            x.add_(v, alpha=hdt)
        else:
            x.add_(v, alpha=self.dt)

    def kick(self, v, f) -> None:
        """The closing B, with the new forces."""
        v.addcmul_(f, self.inv_m, value=0.5 * self.dt)

    def record_instabilities(self, x, v, stat) -> None:
        """For each replica not yet marked in the status vector ``stat``: if an atom
        went non-finite or moves more than ``max_displacement`` per step, mark the
        current step (``stat[STAT_STEP]``) and how."""
        finite = torch.isfinite(x).all(1) & torch.isfinite(v).all(1)
        fast = v.square().sum(1) * self.dt ** 2 > self.max_displacement ** 2
        # per atom: NON_FINITE, TOO_FAST (1) or 0 = fine; per replica: the worst
        code = torch.where(finite, fast.to(x.dtype), float(NON_FINITE)).view(self.R, self.N).amax(1).long()
        first, kind = replica_slots(stat, self.R)
        newly = (code > 0) & (first < 0)
        first.copy_(torch.where(newly, stat[STAT_STEP], first))
        kind.copy_(torch.where(newly, code, kind))

    def kinetic_energies(self, v) -> torch.Tensor:
        """Per replica (on the device)."""
        ke = 0.5 * (self.masses * v.square()).sum(1)
        return ke.view(self.R, self.N).sum(1)
