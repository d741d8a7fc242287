"""Replica MD over MPI ranks: which replicas each rank runs, and what the ranks exchange.

``run_replicas(..., comm=MPI.COMM_WORLD)`` gives each rank one contiguous block
of the replicas (:class:`ReplicaShare`), which it runs as its own batch; the
ranks meet only where the run is saved:

* the Langevin noise and the initial velocities come from one stream for the
  whole run, as in one process: every rank draws the whole batch's numbers
  and keeps its replicas' rows (:class:`~.simulation.Simulation`), so a
  replica's trajectory does not depend on the number of ranks (the draw is
  cheap next to the force call);
* frames and the final state are gathered on every rank (every rank returns
  the whole run's result); rank 0 writes the trajectory files;
* the checkpoint is joined on rank 0 into the one a single process writes,
  so a restart may use another number of ranks;
* an unstable replica stops every rank at the same point, with the same error.

With ``comm`` None a run is one rank of one, and nothing here communicates.
The devices of one process (``run_replicas(..., devices=)``) share the
replicas the same way, each a thread that is a rank of a
:class:`~.devices.ThreadGroup`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .checkpoint import dynamics_settings
from .config import MDConfig, fresh_seed

__all__ = ["ReplicaShare"]

#: Checkpoint entries with one row per atom, and with one per replica (in replica order).
PER_ATOM = ("positions", "velocities", "forces", "masses")
PER_REPLICA = ("energies", "numbers", "cells", "pbc")
#: Settings that may hold one value per replica.
PER_REPLICA_SETTINGS = ("temperature_K", "friction_per_fs")


def replica_bounds(replicas: int, rank: int, size: int) -> tuple[int, int]:
    """The replicas ``[start, stop)`` of rank ``rank`` of ``size``: consecutive
    blocks in rank order, the first ``replicas % size`` ranks one replica more."""
    base, extra = divmod(replicas, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


@dataclass(frozen=True)
class ReplicaShare:
    """The replicas ``[start, stop)`` of a run of ``replicas`` that rank ``rank``
    of ``size`` runs, and the communicator ``comm`` of the ranks (None: one process)."""

    replicas: int
    start: int
    stop: int
    rank: int = 0
    size: int = 1
    comm: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, replicas: int, comm=None, ranks: str = "MPI ranks") -> ReplicaShare:
        """This rank's share of ``replicas`` (all of them without ``comm``);
        ``ranks``: what the ranks are, for the error when there are too many."""
        rank, size = (0, 1) if comm is None else (comm.Get_rank(), comm.Get_size())
        if size > replicas:
            raise ValueError(f"{size} {ranks} for {replicas} replica(s): each needs one replica at least")
        return cls(replicas, *replica_bounds(replicas, rank, size), rank, size, comm)

    @property
    def count(self) -> int:
        return self.stop - self.start

    def atom_rows(self, n_atoms: int) -> slice:
        """This share's rows of a whole-run array with one row per atom."""
        return slice(self.start * n_atoms, self.stop * n_atoms)

    def _part(self, value):
        """A setting given per replica: this share's values; one value for all: as it is."""
        arr = np.asarray(value, dtype=float).reshape(-1)
        return arr[self.start:self.stop].tolist() if arr.size == self.replicas > 1 else value

    def mine(self, atoms_list: list) -> list:
        """This share's structures of the whole run's."""
        return atoms_list[self.start:self.stop]

    def config(self, config: MDConfig) -> MDConfig:
        """``config`` for this share's replicas: per-replica settings cut to them,
        and on several ranks a seed (rank 0's fresh one when none is given)."""
        if self.size == 1:
            return config
        seed = config.seed if config.seed is not None else self.comm.bcast(fresh_seed() if self.rank == 0 else None)
        return dataclasses.replace(config, seed=seed,
                                   **{name: self._part(getattr(config, name)) for name in PER_REPLICA_SETTINGS})

    def checkpoint(self, ckpt: dict | None) -> dict | None:
        """This share's part of a whole-run checkpoint (None stays None)."""
        if ckpt is None or self.size == 1:
            return ckpt
        n_atoms = ckpt["positions"].shape[0] // ckpt["replicas"]
        part = dict(ckpt, replicas=self.count)
        part.update({k: ckpt[k][self.atom_rows(n_atoms)] for k in PER_ATOM})
        part.update({k: ckpt[k][self.start:self.stop] for k in PER_REPLICA})
        part.update({k: self._part(ckpt[k]) for k in PER_REPLICA_SETTINGS if k in ckpt})
        return part

    def everyone(self, value) -> list:
        """``value`` of every rank, in rank order, on every rank."""
        return [value] if self.size == 1 else self.comm.allgather(value)

    def anywhere(self, flag) -> bool:
        """Whether ``flag`` holds on some rank (the same answer on every rank)."""
        return any(self.everyone(bool(flag)))

    def gather(self, snap: dict) -> dict:
        """The whole run's snapshot (``Simulation.snapshot``) from every rank's, on every rank."""
        if self.size == 1:
            return snap
        parts = self.comm.allgather(snap)
        return {k: np.concatenate([p[k] for p in parts]) if isinstance(v, np.ndarray) else v
                for k, v in snap.items()}

    def first_bad(self, bad):
        """The whole run's first bad step from every rank's (``Simulation.advance``):
        None, or (step, per-replica codes of all replicas), the same on every rank."""
        if self.size == 1:
            return bad
        parts = self.comm.allgather(bad)
        steps = [p[0] for p in parts if p is not None]
        if not steps:
            return None
        step = min(steps)
        counts = [stop - start for start, stop in (replica_bounds(self.replicas, r, self.size)
                                                   for r in range(self.size))]
        codes = [p[1] if p is not None and p[0] == step else np.zeros(n, dtype=int) for p, n in zip(parts, counts)]
        return step, np.concatenate(codes)

    def joined(self, data: dict, config: MDConfig) -> dict | None:
        """The whole run's checkpoint from every rank's part (``checkpoint_data``),
        on rank 0 (None on the others): what one process writes, with the dynamics
        settings of the whole run's ``config``."""
        if self.size == 1:
            return data
        parts = self.comm.gather(data)
        if self.rank != 0:
            return None
        whole = dict(parts[0], replicas=self.replicas, **dynamics_settings(config))
        whole.update({k: torch.cat([p[k] for p in parts]) for k in PER_ATOM + PER_REPLICA})
        return whole

    def device(self, device, precision: str):
        """The device of this rank: on several ranks with GPUs, 'auto' and 'cuda'
        mean the GPU of the rank's place on its node, round robin (not yet run
        on a machine with several GPUs); anything else as given."""
        if self.size == 1 or str(device) not in ("auto", "cuda"):
            return device
        from ..calculator import resolve_device
        resolved = resolve_device(device, precision)
        if resolved.type != "cuda":
            return resolved
        from mpi4py import MPI
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        local_rank = node.Get_rank()
        node.Free()
        return torch.device("cuda", local_rank % torch.cuda.device_count())
