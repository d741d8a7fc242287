"""The settings of a batched MD run, in one validated object."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from .integrators import INTEGRATORS

__all__ = ["MDConfig", "fresh_seed", "device_entries"]


def fresh_seed() -> int:
    """A seed from fresh entropy, for a run given none (the result reports it)."""
    return int(np.random.SeedSequence().entropy % (1 << 63))


def device_entries(devices) -> list:
    """The devices of ``MDConfig.devices`` other than 'all', as given: a list (or
    tuple) as it is, a comma-separated string split up; a GPU index (a number,
    or digits in a string) stands for that CUDA device. Whether they exist is
    the force engine's to check."""
    if isinstance(devices, str):
        devices = [name.strip() for name in devices.split(",") if name.strip()]
    elif not isinstance(devices, (list, tuple)):
        raise ValueError(f"devices must be 'all', a list of devices or a comma-separated string, got {devices!r}")
    return [f"cuda:{d}" if _gpu_index(d) else d for d in devices]


def _gpu_index(device) -> bool:
    """Whether a device is given as a GPU index: a number, or a string of digits."""
    return isinstance(device, int) and not isinstance(device, bool) or isinstance(device, str) and device.isdigit()


@dataclass(frozen=True)
class MDConfig:
    """How :func:`~ase_flashschnet.md.run_replicas` runs: everything but the model,
    the structures, the number of replicas and the step to run to.

    Dynamics: ``dt_fs`` (time step, fs); ``temperature_K`` and
    ``friction_per_fs`` (Langevin, 1/fs), each one number or one per replica;
    ``integrator`` 'baoab' (Langevin) or 'nve' (velocity Verlet; the
    temperature then only seeds velocities, used when the structures carry
    none); ``seed`` of the initial velocities and the Langevin noise (None:
    fresh entropy, reported in the result).

    Force engine: ``device`` ('auto', 'cpu', 'cuda', 'cuda:N'), ``precision``
    and ``backend``, as :class:`~ase_flashschnet.calculator.ForceEngine` takes
    them; ``cuda_graph``: replay the steps as captured CUDA graphs on a GPU.
    ``devices``: run on several devices of this process at once, each with a
    contiguous block of the replicas (:mod:`.devices`; ``device`` then stays
    'auto'): 'all' (every CUDA GPU PyTorch sees), or a list of devices ('cpu',
    'cuda:N', torch devices, GPU indices), also as a comma-separated string
    ('cuda:0,cuda:1'); None (default): one device, ``device``.

    Neighbour list: pairs within cutoff + ``skin`` (A), rebuilt when an atom has
    moved more than skin/2, in buffers with ``edge_margin`` spare slots;
    ``neighbor_backend``: 'auto', or 'torch', 'vesin', 'ase' for host-driven
    builds (see :class:`~ase_flashschnet.static_neighbors.StaticNeighborList`).

    Output: a frame every ``traj_interval`` steps (and at step 0), also written
    to ``out_dir`` as ``replica_NNN.traj`` when it is given, with a checkpoint
    there every ``checkpoint_interval`` steps and at the end (None or 0: no
    checkpoints); ``restart``: a checkpoint file, or the folder holding one, to
    continue from (with this config's dynamics: a setting that differs from the
    checkpointed run's is logged as a warning); ``progress``: show a progress bar.

    Checks: an atom moving more than ``max_displacement`` A in one step stops
    the run (as does a non-finite coordinate); on a GPU the status is read
    every ``check_interval`` steps (blocks also end at frame and checkpoint
    steps).

    Values are checked here where the check needs no structure or device; the
    force engine and the neighbour list check their own settings.
    """

    dt_fs: float = 2.0
    temperature_K: Any = 300.0
    friction_per_fs: Any = 0.01
    integrator: str = "baoab"
    device: Any = "auto"
    precision: str = "fp32"
    skin: float = 1.0
    traj_interval: int = 100
    out_dir: Any = None
    checkpoint_interval: int | None = None
    restart: Any = None
    progress: bool = True
    seed: int | None = None
    cuda_graph: bool = True
    backend: str = "auto"
    max_displacement: float = 1.0
    check_interval: int = 20
    edge_margin: float = 0.05
    neighbor_backend: str = "auto"
    devices: Any = None

    def __post_init__(self):
        if self.integrator not in INTEGRATORS:
            raise ValueError(f"integrator must be 'baoab' or 'nve', got {self.integrator!r}")
        if not self.dt_fs > 0:
            raise ValueError(f"dt_fs must be positive, got {self.dt_fs}")
        if self.traj_interval is None or int(self.traj_interval) < 1:
            raise ValueError(f"traj_interval must be a positive number of steps, got {self.traj_interval!r}")
        if int(self.check_interval) < 1:
            raise ValueError(f"check_interval must be a positive number of steps, got {self.check_interval!r}")
        if self.checkpoint_interval is not None and int(self.checkpoint_interval) < 0:
            raise ValueError(f"checkpoint_interval must be a number of steps (0 or None: no checkpoints), "
                             f"got {self.checkpoint_interval!r}")
        if self.checkpoint_interval and self.out_dir is None:
            raise ValueError("checkpoint_interval needs out_dir, the folder the checkpoint is written to")
        if not self.max_displacement > 0:
            raise ValueError(f"max_displacement must be a positive distance in A, got {self.max_displacement!r}")
        if self.devices is not None:
            if str(self.devices) != "all" and not device_entries(self.devices):
                raise ValueError(f"devices must name at least one device (or be 'all'), got {self.devices!r}")
            if str(self.device) != "auto":
                raise ValueError(f"give device (one) or devices (several), not both: device={self.device!r}, "
                                 f"devices={self.devices!r}")

    @classmethod
    def from_options(cls, config: MDConfig | None, options: dict) -> MDConfig:
        """``config`` (default: all defaults) with the fields in ``options`` replaced;
        a key that names no field is a TypeError, as for any unknown keyword argument."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {', '.join(map(repr, unknown))}: "
                            f"not MDConfig fields ({', '.join(sorted(fields))})")
        if config is None:
            return cls(**options)
        if not isinstance(config, cls):
            raise TypeError(f"config must be an MDConfig, got {type(config).__name__}")
        return dataclasses.replace(config, **options) if options else config
