"""Checkpoints and trajectory files of batched MD.

A checkpoint (``checkpoint.pt`` in the output folder, written atomically)
holds everything the continuation depends on: positions, velocities, forces,
energies, the step, the state of the Langevin noise generator, the structures
(elements, masses, cells) and the settings that define the dynamics
(:data:`DYNAMICS`). A run restarted from it with those settings draws the same
noise and so repeats the original bit for bit; a restart that changes one is
logged as a warning. Trajectories are one ASE file per replica
(``replica_NNN.traj``); on a restart the frames after the checkpoint's step are
dropped, so the files continue where the checkpoint does.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import Trajectory, read

from ..model import read_tagged_file

__all__ = ["CHECKPOINT_NAME", "DYNAMICS", "load_checkpoint", "checkpoint_structures", "recorded_dynamics",
           "check_matches", "dynamics_settings", "checkpoint_data", "save_checkpoint", "restore_dynamics",
           "trajectory_paths", "TrajectoryWriters"]

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "flashschnet-md-checkpoint"
#: The versions this code reads; it writes the last.  Version 1 records no
#: temperature or friction (:func:`recorded_dynamics`).
CHECKPOINT_VERSIONS = (1, 2)

# The MDConfig fields that define the dynamics, recorded in checkpoints.
DYNAMICS = ("dt_fs", "temperature_K", "friction_per_fs", "integrator")


def load_checkpoint(restart) -> dict:
    """The checkpoint in file ``restart``, or in the folder ``restart``; its ``path`` added."""
    path = Path(restart)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    data = read_tagged_file(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSIONS, "FlashSchNet MD checkpoint")
    data["path"] = str(path)
    return data


def checkpoint_structures(ckpt: dict, replicas) -> list[Atoms]:
    """The replicas' structures (no positions) as the checkpoint records them."""
    R = ckpt["replicas"]
    if replicas is not None and int(replicas) != R:
        raise ValueError(f"replicas={replicas} but the checkpoint holds {R}")
    numbers = ckpt["numbers"].numpy().reshape(R, -1)
    masses = ckpt["masses"].numpy().reshape(R, -1)
    cells, pbc = ckpt["cells"].numpy(), ckpt["pbc"].numpy()
    return [Atoms(numbers=numbers[r], masses=masses[r], cell=cells[r], pbc=pbc[r]) for r in range(R)]


def _plain(value):
    """A setting as a string, a float or a list of floats (what ``torch.load`` reads back safely)."""
    return value if isinstance(value, str) else np.asarray(value, dtype=float).tolist()


def _same(recorded, given) -> bool:
    """Whether two values of a setting mean the same (one value equals the same value per replica)."""
    if isinstance(recorded, str) or isinstance(given, str):
        return recorded == given
    return bool(np.all(np.asarray(recorded, dtype=float) == np.asarray(given, dtype=float)))


def recorded_dynamics(ckpt: dict) -> dict:
    """The dynamics settings (:data:`DYNAMICS`) the checkpoint records, by MDConfig
    field; a checkpoint of format version 1 records ``dt_fs`` and ``integrator`` only."""
    return {name: ckpt[name] for name in DYNAMICS if name in ckpt}


def check_matches(ckpt: dict, replicas: int, n_atoms: int, numbers: np.ndarray, config) -> None:
    """Refuse a checkpoint of other replicas or elements; warn about each dynamics
    setting of ``config`` (an MDConfig) that differs from the checkpointed run's."""
    if ckpt["replicas"] != replicas or ckpt["positions"].shape[0] != replicas * n_atoms:
        per_replica = ckpt["positions"].shape[0] // ckpt["replicas"]
        raise ValueError(f"checkpoint {ckpt['path']} has {ckpt['replicas']} replicas of {per_replica} atoms; "
                         f"this run has {replicas} of {n_atoms}")
    if not np.array_equal(ckpt["numbers"].numpy().reshape(replicas, n_atoms), numbers):
        raise ValueError(f"checkpoint {ckpt['path']} holds different elements than the given structures")
    for name, recorded in recorded_dynamics(ckpt).items():
        given = getattr(config, name)
        if not _same(recorded, given):
            log.warning("checkpoint %s was run with %s=%s; continuing with %s=%s", ckpt["path"], name, recorded,
                        name, _plain(given))


def dynamics_settings(config) -> dict:
    """The dynamics settings (:data:`DYNAMICS`) of ``config`` (an MDConfig) as a checkpoint records them."""
    return {name: _plain(getattr(config, name)) for name in DYNAMICS}


def checkpoint_data(sim) -> dict:
    """Everything the continuation of the simulation ``sim`` depends on, as a checkpoint holds it."""
    return {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSIONS[-1], "step": sim.step, "replicas": sim.R,
        "positions": sim.x.cpu(), "velocities": sim.v.cpu(), "forces": sim.f.cpu(),
        "energies": sim.e.cpu(), "rng_state": sim.generator.get_state(), "seed": sim.seed,
        "numbers": torch.as_tensor(sim.numbers), "masses": torch.as_tensor(sim.masses_np),
        "cells": torch.as_tensor(sim.cells), "pbc": torch.as_tensor(sim.pbc_np),
        "engine": sim.engine.name, **dynamics_settings(sim.config),
    }


def save_checkpoint(data: dict, path: Path) -> None:
    """Write a checkpoint (:func:`checkpoint_data`) atomically."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)


def restore_dynamics(ckpt: dict, generator: torch.Generator, device, dtype):
    """Velocities, forces and energies on ``device``, and the seed; ``generator``
    continues the checkpointed noise stream."""
    v = ckpt["velocities"].to(device=device, dtype=dtype)
    f = ckpt["forces"].to(device=device, dtype=dtype)
    e = ckpt["energies"].to(device=device, dtype=dtype)
    seed, step = int(ckpt["seed"]), int(ckpt["step"])
    try:
        generator.set_state(ckpt["rng_state"])
    except RuntimeError:  # a CPU generator's state on a GPU or the reverse
        log.warning("checkpoint RNG state is from another device type; the noise continues from a new "
                    "stream (seed %d, step %d), so the run will not repeat the original bit for bit", seed, step)
        generator.manual_seed(seed + step)
    return v, f, e, seed


def trajectory_paths(out_dir, replicas: int) -> list[str]:
    """The trajectory file of each replica in ``out_dir``."""
    return [str(Path(out_dir) / f"replica_{r:03d}.traj") for r in range(replicas)]


class TrajectoryWriters:
    """One ASE trajectory per replica in ``out_dir``; with ``restart_step``, frames
    after it are dropped and the files appended to."""

    def __init__(self, out_dir, atoms_list, restart_step):
        self.templates = atoms_list
        self.paths = trajectory_paths(out_dir, len(atoms_list))
        self.files = []
        for path in self.paths:
            if restart_step is not None and os.path.exists(path):
                kept = [a for a in read(path, ":") if a.info.get("step", 0) <= restart_step]
                with Trajectory(path, "w") as traj:
                    for a in kept:
                        traj.write(a)
                self.files.append(Trajectory(path, "a"))
            else:
                self.files.append(Trajectory(path, "w"))

    def write(self, snap: dict) -> None:
        """One frame per replica from a snapshot (see ``Simulation.snapshot``)."""
        for r, (traj, template) in enumerate(zip(self.files, self.templates)):
            atoms = template.copy()
            atoms.positions = snap["positions"][r]
            atoms.set_velocities(snap["velocities"][r])
            atoms.info["step"] = snap["step"]
            atoms.calc = SinglePointCalculator(atoms, energy=float(snap["energy"][r]), forces=snap["forces"][r])
            traj.write(atoms)

    def close(self) -> None:
        for traj in self.files:
            traj.close()
