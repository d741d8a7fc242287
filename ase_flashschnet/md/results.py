"""What a batched MD run returns, and the error that stops an unstable one."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from ase import Atoms

from ..step_status import NON_FINITE

__all__ = ["ReplicaResult", "SimulationError", "instability_error"]


class SimulationError(RuntimeError):
    """A replica became unstable; ``step``, ``replicas`` and ``traj_files`` say
    where, which, and where the frames written so far are."""

    def __init__(self, message, step, replicas, traj_files=()):
        super().__init__(message)
        self.step = step
        self.replicas = list(replicas)
        self.traj_files = list(traj_files)


@dataclass
class ReplicaResult:
    """Saved frames (NumPy, ASE units) and how the run went.

    ``positions`` (frames, replicas, atoms, 3); ``energies`` (potential, eV),
    ``kinetic_energies`` and ``temperatures`` (K) are (frames, replicas);
    ``steps`` and ``times_ps`` label the frames. ``ns_per_day`` is aggregate
    over replicas, for the steps run in this call. ``neighbor_builds`` counts
    all builds (``neighbor_time_s``: measured for host-driven builds, estimated
    as builds x ``neighbor_build_ms`` for those inside CUDA graphs);
    ``neighbor_mode`` is 'in-graph' or 'host'; ``host_syncs`` the status reads;
    ``mean_edge_padding`` the mean fraction of padding edge slots.
    """

    steps: np.ndarray
    times_ps: np.ndarray
    positions: np.ndarray
    energies: np.ndarray
    kinetic_energies: np.ndarray
    temperatures: np.ndarray
    final_positions: np.ndarray
    final_velocities: np.ndarray
    numbers: np.ndarray
    dt_fs: float
    integrator: str
    engine: str
    seed: int
    steps_run: int
    wall_time_s: float
    neighbor_builds: int
    neighbor_time_s: float
    cuda_graph: bool
    traj_files: list = field(default_factory=list)
    checkpoint_file: str | None = None
    neighbor_mode: str = "host"
    host_syncs: int = 0
    edge_capacity: int = 0
    mean_edge_padding: float = 0.0
    neighbor_overflows: int = 0
    neighbor_build_ms: float = float("nan")

    @property
    def replicas(self) -> int:
        return self.final_positions.shape[0]

    @property
    def steps_per_second(self) -> float:
        return self.steps_run / self.wall_time_s if self.wall_time_s > 0 else float("nan")

    @property
    def ns_per_day(self) -> float:
        """Aggregate simulated ns per wall-clock day over all replicas."""
        return self.replicas * self.steps_per_second * self.dt_fs * 1e-6 * 86400.0

    def atoms(self, replica: int = 0, frame: int = -1) -> Atoms:
        """One saved frame of one replica as ASE Atoms."""
        return Atoms(numbers=self.numbers[replica], positions=self.positions[frame, replica])


def instability_error(bad, frames, paths, max_displacement) -> SimulationError:
    """The error for the first step in which replicas went bad: ``bad`` is (step,
    per-replica codes), see ``Simulation.advance``; ``frames`` the frames saved so
    far and ``paths`` the trajectory files they were written to."""
    step, codes = bad
    failed = np.flatnonzero(codes).tolist()
    what = "; ".join(f"replica {r}: " + ("non-finite coordinates or velocities" if codes[r] >= NON_FINITE else
                                         f"an atom moving more than {max_displacement} A per step") for r in failed)
    kept = f"; frames up to step {frames[-1]['step']} are kept" if frames else ""
    files = f" in {', '.join(paths)}" if paths else ""
    return SimulationError(f"MD became unstable at step {step} ({what}){kept}{files}", step, failed, paths)
