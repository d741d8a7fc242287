"""Batched multi-replica molecular dynamics on one device, or a batch on each of several.

All replicas form one disconnected graph (consecutive blocks of atoms, the
layout the bonded priors expect) and advance together: one force call per
step for the whole batch. :func:`run_replicas` is the entry point, with its
settings in an :class:`MDConfig`; it returns a :class:`ReplicaResult` and
raises :class:`SimulationError` when a replica becomes unstable.

Modules:

* :mod:`.run`: ``run_replicas``, from the structures to the result;
* :mod:`.config`: ``MDConfig``, the settings of a run, checked;
* :mod:`.simulation`: the state of a run and how it advances, in captured
  blocks of steps on a GPU or step by step from the host;
* :mod:`.integrators`: BAOAB Langevin and velocity-Verlet NVE, and the guard
  against replicas that go non-finite or too fast;
* :mod:`.neighbor_capacity`: neighbour-list builds, buffer capacity and the
  roll-back of a block whose rebuild did not fit;
* :mod:`.graphs`: CUDA-graph capture of the pieces of a step;
* :mod:`.checkpoint`: checkpoints and trajectory files;
* :mod:`.distributed`: the replicas shared by MPI ranks (``run_replicas(..., comm=)``);
* :mod:`.devices`: the replicas shared by several devices of one process
  (``run_replicas(..., devices=)``), as by ranks;
* :mod:`.results`: the result and the error;
* :mod:`.profiling`: the time of each piece of a step.

The device-side status vector that ties the step to the neighbour-list
kernels is laid out in :mod:`ase_flashschnet.step_status`.
"""
from .checkpoint import CHECKPOINT_NAME
from .config import MDConfig
from .results import ReplicaResult, SimulationError
from .run import run_replicas

__all__ = ["run_replicas", "MDConfig", "ReplicaResult", "SimulationError", "CHECKPOINT_NAME"]
