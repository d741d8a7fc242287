"""Batched multi-replica molecular dynamics on one device.

All replicas form one disconnected graph (consecutive blocks of atoms, the
layout the bonded priors expect) and advance together: one force call per
step for the whole batch. Integrators: BAOAB Langevin (per-replica temperature
and friction) and velocity-Verlet NVE. Units are ASE's: positions in A,
masses in amu, velocities in A / ase-time, energies in eV; ``dt_fs`` and
``friction_per_fs`` are converted with ``ase.units.fs``.

A step is split in two halves so that the only host synchronisation is one
small status read between them:

* first half: B (half kick with the stored forces), A O A (BAOAB) or a full
  drift (NVE), then a status vector: the largest displacement since the last
  neighbour-list build and, per replica, whether a coordinate went non-finite
  or an atom is moving more than ``max_displacement`` per step;
* host: stop on a bad replica, rebuild the neighbour list when some atom moved
  more than skin/2;
* second half: force call, then B.

On a GPU each half is captured as a CUDA graph and replayed; the second half
is recaptured after each neighbour-list rebuild (its edge tensors change).
Langevin noise is drawn outside the graphs, from a generator whose state goes
into checkpoints, so graph and eager runs draw the same numbers.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import Trajectory, read
from tqdm import tqdm

from .calculator import ForceEngine, check_finite_positions, check_periodic_cell
from .neighbors import NeighborList

__all__ = ["run_replicas", "ReplicaResult", "SimulationError", "CHECKPOINT_NAME"]

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
_CHECKPOINT_FORMAT = "flashschnet-md-checkpoint"
# Eager calls on a side stream before each capture: lazy initialisation (cuBLAS
# workspaces, the fused kernels' per-graph CSR cache) needs host syncs, which a
# capture forbids.
_WARMUP_CALLS = 1


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
    over replicas, for the steps run in this call.
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


def _per_replica(value, replicas: int, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=float).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, replicas)
    if arr.size != replicas or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must be one non-negative number or one per replica ({replicas}), got {value!r}")
    return arr


def _replica_list(atoms_or_list, replicas, checkpoint) -> list[Atoms]:
    """The starting structures, one per replica, all with the same number of atoms."""
    if atoms_or_list is None:
        if checkpoint is None:
            raise ValueError("give the starting structure(s), or restart= a checkpoint")
        R = checkpoint["replicas"]
        if replicas is not None and int(replicas) != R:
            raise ValueError(f"replicas={replicas} but the checkpoint holds {R}")
        numbers = checkpoint["numbers"].numpy().reshape(R, -1)
        masses = checkpoint["masses"].numpy().reshape(R, -1)
        cells, pbc = checkpoint["cells"].numpy(), checkpoint["pbc"].numpy()
        atoms_list = [Atoms(numbers=numbers[r], masses=masses[r], cell=cells[r], pbc=pbc[r]) for r in range(R)]
    elif isinstance(atoms_or_list, Atoms):
        atoms_list = [atoms_or_list.copy() for _ in range(1 if replicas is None else int(replicas))]
    else:
        atoms_list = [a.copy() for a in atoms_or_list]
        if replicas is not None and int(replicas) != len(atoms_list):
            raise ValueError(f"replicas={replicas} but {len(atoms_list)} structures were given")
    if not atoms_list:
        raise ValueError("need at least one replica")
    sizes = {len(a) for a in atoms_list}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"all replicas need the same, non-zero number of atoms; got sizes {sorted(sizes)}")
    return atoms_list


def _load_checkpoint(restart) -> dict:
    path = Path(restart)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a FlashSchNet MD checkpoint")
    data["path"] = str(path)
    return data


class _GraphControl:
    """Whether CUDA graphs are in use, shared by both step halves; turned off
    for good (with a warning) the first time a capture fails."""

    def __init__(self, enabled: bool, device: torch.device):
        self.enabled = enabled and device.type == "cuda"
        if enabled and device.type != "cuda":
            log.info("CUDA graphs need a CUDA device; running the steps eagerly on %s", device)
        if self.enabled:
            self.side_stream = torch.cuda.Stream(device)
        self.captured = False

    def disable(self, exc: BaseException) -> None:
        self.enabled = False
        torch.cuda.synchronize()
        log.warning("CUDA graph capture failed (%s: %s); continuing without CUDA graphs", type(exc).__name__, exc)


class _Graphed:
    """Calls ``fn`` eagerly, or replays it as a captured CUDA graph.

    ``fn`` must only update pre-allocated tensors in place. Before each
    capture it runs eagerly on a side stream (see ``_WARMUP_CALLS``); after
    :meth:`reset` (new neighbour list) it warms up and captures again.
    Capture executes nothing, so a failed capture leaves the state untouched
    and the call simply runs eagerly.
    """

    def __init__(self, fn, control: _GraphControl):
        self.fn = fn
        self.control = control
        self.graph = None
        self.warm_calls = 0

    def reset(self) -> None:
        # Drops the graph and its private memory pool. Each capture gets a fresh pool:
        # re-capturing into the pool of a destroyed graph trips an internal assert of
        # PyTorch's caching allocator (seen with torch 2.11 on an H200).
        self.graph = None
        self.warm_calls = 0

    def __call__(self) -> None:
        control = self.control
        if not control.enabled:
            self.fn()
        elif self.graph is not None:
            self.graph.replay()
        elif self.warm_calls < _WARMUP_CALLS:
            self.warm_calls += 1
            current = torch.cuda.current_stream()
            control.side_stream.wait_stream(current)
            with torch.cuda.stream(control.side_stream):
                self.fn()
            current.wait_stream(control.side_stream)
        else:
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    self.fn()
            except Exception as exc:  # anything not capturable: fall back, never fail the run
                control.disable(exc)
                self.fn()
                return
            self.graph = graph
            control.captured = True
            graph.replay()


def _host(t: torch.Tensor) -> np.ndarray:
    """A float64 NumPy copy (never a view of live state, which the next step overwrites)."""
    return t.detach().to("cpu", torch.float64, copy=True).numpy()


class _Simulation:
    """State and step halves of one batched run (see the module docstring)."""

    def __init__(self, engine: ForceEngine, atoms_list, *, dt_fs, temperature_K, friction_per_fs, integrator,
                 skin, seed, cuda_graph, max_displacement, checkpoint):
        if integrator not in ("baoab", "nve"):
            raise ValueError(f"integrator must be 'baoab' or 'nve', got {integrator!r}")
        if not dt_fs > 0:
            raise ValueError(f"dt_fs must be positive, got {dt_fs}")
        self.engine = engine
        self.integrator = integrator
        self.dt_fs = float(dt_fs)
        self.dt = self.dt_fs * units.fs
        self.max_displacement = float(max_displacement)
        self.skin = float(skin)
        self.atoms_list = atoms_list
        R, N = len(atoms_list), len(atoms_list[0])
        self.R, self.N = R, N
        device, dtype = engine.device, engine.dtype

        for r, atoms in enumerate(atoms_list):
            try:
                check_finite_positions(atoms.positions)
                check_periodic_cell(atoms.cell, atoms.pbc, engine.cutoff)
            except ValueError as exc:
                raise ValueError(f"replica {r}: {exc}") from None
        self.numbers = np.stack([a.numbers for a in atoms_list])
        masses = np.concatenate([a.get_masses() for a in atoms_list])
        if not np.all(masses > 0):
            raise ValueError("all masses must be positive")
        self.masses_np = masses
        self.cells = np.stack([a.cell.array for a in atoms_list])
        self.pbc_np = np.stack([a.pbc for a in atoms_list])

        def tensor(a):
            return torch.as_tensor(np.asarray(a), dtype=dtype, device=device)

        self.types = torch.cat([engine.types(a.numbers) for a in atoms_list])
        self.batch = torch.arange(R, device=device).repeat_interleave(N)
        self.cell = tensor(self.cells) if self.pbc_np.any() else None
        self.pbc = torch.as_tensor(self.pbc_np, device=device) if self.pbc_np.any() else None
        self.masses = tensor(masses)[:, None]
        self.inv_m = 1.0 / self.masses
        self.kT = tensor(np.repeat(_per_replica(temperature_K, R, "temperature_K") * units.kB, N))[:, None]
        gamma = _per_replica(friction_per_fs, R, "friction_per_fs") / units.fs
        c1 = np.exp(-gamma * self.dt)
        self.c1 = tensor(np.repeat(c1, N))[:, None]
        self.sigma = torch.sqrt(tensor(np.repeat(1.0 - c1 ** 2, N))[:, None] * self.kT * self.inv_m)

        self.seed = int(np.random.SeedSequence().entropy % (1 << 63)) if seed is None else int(seed)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(self.seed)
        if checkpoint is not None:
            self._check_checkpoint(checkpoint)
        start = checkpoint["positions"] if checkpoint is not None else np.concatenate([a.positions for a in atoms_list])
        self.x = torch.as_tensor(start).to(device=device, dtype=dtype).reshape(R * N, 3).clone()
        self.noise = torch.zeros_like(self.x)
        self.status = torch.zeros(1 + R, dtype=dtype, device=device)
        self.neighbors = NeighborList(engine.cutoff, skin)
        self.neighbor_builds, self.neighbor_time = 0, 0.0
        self.x_ref = self.x.clone()

        if checkpoint is None:
            self._build_neighbors()
            self.step = 0
            velocities = np.concatenate([a.get_velocities() for a in atoms_list])
            if np.any(velocities):
                self.v = tensor(velocities)
            else:  # Maxwell-Boltzmann at each replica's temperature
                self.v = torch.randn(self.x.shape, generator=self.generator, dtype=dtype, device=device)
                self.v.mul_(torch.sqrt(self.kT * self.inv_m))
            energy, forces = engine.energy_and_forces(self.types, self.x, self.graph)
            self.e, self.f = energy.detach().clone(), forces.detach().clone()
        else:
            self._restore(checkpoint)
        self.control = _GraphControl(cuda_graph, device)
        self.first_half = _Graphed(self._first_half, self.control)
        self.second_half = _Graphed(self._second_half, self.control)

    # -- the two halves of a step (in-place updates only: they may be captured) --
    def _first_half(self):
        x, v, hdt = self.x, self.v, 0.5 * self.dt
        v.addcmul_(self.f, self.inv_m, value=hdt)
        if self.integrator == "baoab":
            x.add_(v, alpha=hdt)
            v.mul_(self.c1).addcmul_(self.sigma, self.noise)
            x.add_(v, alpha=hdt)
        else:
            x.add_(v, alpha=self.dt)
        moved = (x - self.x_ref).square().sum(1).max()
        finite = torch.isfinite(x).all(1) & torch.isfinite(v).all(1)
        fast = v.square().sum(1) * self.dt ** 2 > self.max_displacement ** 2
        # per atom: 2 = non-finite, 1 = too fast, 0 = fine; per replica: the worst
        code = torch.where(finite, fast.to(x.dtype), 2.0)
        self.status[0] = moved
        self.status[1:] = code.view(self.R, self.N).amax(1)

    def _second_half(self):
        energy, forces = self.engine.energy_and_forces(self.types, self.x, self.graph)
        self.e.copy_(energy)
        self.f.copy_(forces)
        self.v.addcmul_(self.f, self.inv_m, value=0.5 * self.dt)

    def _build_neighbors(self):
        start = time.perf_counter()
        self.graph = self.neighbors.build(self.x, batch=self.batch, cell=self.cell, pbc=self.pbc, n_systems=self.R)
        self.x_ref.copy_(self.x)
        self.neighbor_builds += 1
        self.neighbor_time += time.perf_counter() - start

    def advance(self) -> np.ndarray | None:
        """One step; returns the per-replica status codes when a replica went bad."""
        if self.integrator == "baoab":
            self.noise.normal_(generator=self.generator)
        self.first_half()
        status = self.status.cpu().numpy().copy()
        if np.any(status[1:] > 0):
            return status[1:]
        if status[0] > (0.5 * self.skin) ** 2:
            self._build_neighbors()
            self.second_half.reset()
        self.second_half()
        self.step += 1
        return None

    # -- observables, checkpoints --
    def kinetic_energies(self) -> np.ndarray:
        ke = 0.5 * (self.masses * self.v.square()).sum(1)
        return _host(ke.view(self.R, self.N).sum(1))

    def snapshot(self) -> dict:
        ke = self.kinetic_energies()
        shape = (self.R, self.N, 3)
        return dict(step=self.step, positions=_host(self.x).reshape(shape), velocities=_host(self.v).reshape(shape),
                    forces=_host(self.f).reshape(shape), energy=_host(self.e), kinetic=ke,
                    temperature=2.0 * ke / (3 * self.N * units.kB))

    def checkpoint(self, path: Path) -> None:
        """Everything the continuation depends on, written atomically."""
        data = {
            "format": _CHECKPOINT_FORMAT, "version": 1, "step": self.step, "replicas": self.R,
            "positions": self.x.cpu(), "velocities": self.v.cpu(), "forces": self.f.cpu(),
            "energies": self.e.cpu(), "rng_state": self.generator.get_state(), "seed": self.seed,
            "numbers": torch.as_tensor(self.numbers), "masses": torch.as_tensor(self.masses_np),
            "cells": torch.as_tensor(self.cells), "pbc": torch.as_tensor(self.pbc_np),
            "integrator": self.integrator, "dt_fs": self.dt_fs, "engine": self.engine.name,
        }
        tmp = path.with_name(path.name + ".tmp")
        torch.save(data, tmp)
        os.replace(tmp, path)

    def _check_checkpoint(self, ckpt: dict) -> None:
        if ckpt["replicas"] != self.R or ckpt["positions"].shape[0] != self.R * self.N:
            per_replica = ckpt["positions"].shape[0] // ckpt["replicas"]
            raise ValueError(f"checkpoint {ckpt['path']} has {ckpt['replicas']} replicas of {per_replica} atoms; "
                             f"this run has {self.R} of {self.N}")
        if not np.array_equal(ckpt["numbers"].numpy().reshape(self.R, self.N), self.numbers):
            raise ValueError(f"checkpoint {ckpt['path']} holds different elements than the given structures")
        if ckpt["integrator"] != self.integrator:
            log.warning("restarting a %s run with integrator %s", ckpt["integrator"], self.integrator)

    def _restore(self, ckpt: dict) -> None:
        device, dtype = self.engine.device, self.engine.dtype
        self.step = int(ckpt["step"])
        self._build_neighbors()
        self.v = ckpt["velocities"].to(device=device, dtype=dtype)
        self.f = ckpt["forces"].to(device=device, dtype=dtype)
        self.e = ckpt["energies"].to(device=device, dtype=dtype)
        self.seed = int(ckpt["seed"])
        try:
            self.generator.set_state(ckpt["rng_state"])
        except RuntimeError:  # a CPU generator's state on a GPU or the reverse
            log.warning("checkpoint RNG state is from another device type; the noise continues from a new "
                        "stream (seed %d, step %d), so the run will not repeat the original bit for bit",
                        self.seed, self.step)
            self.generator.manual_seed(self.seed + self.step)


class _Writers:
    """One ASE trajectory per replica; on restart, frames after the checkpoint step are dropped."""

    def __init__(self, out_dir, atoms_list, restart_step):
        self.templates = atoms_list
        self.paths = [str(Path(out_dir) / f"replica_{r:03d}.traj") for r in range(len(atoms_list))]
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


def _instability(sim, bad, frames, writers, max_displacement) -> SimulationError:
    """The error for replicas flagged bad in the step being taken (see ``_first_half``)."""
    failed = np.flatnonzero(bad).tolist()
    what = "; ".join(f"replica {r}: " + ("non-finite coordinates or velocities" if bad[r] >= 2 else
                                         f"an atom moving more than {max_displacement} A per step") for r in failed)
    paths = writers.paths if writers is not None else []
    kept = f"; frames up to step {frames[-1]['step']} are kept" if frames else ""
    files = f" in {', '.join(paths)}" if paths else ""
    step = sim.step + 1
    return SimulationError(f"MD became unstable at step {step} ({what}){kept}{files}", step, failed, paths)


def run_replicas(model, atoms_or_list=None, replicas=None, steps=1000, dt_fs=2.0, temperature_K=300.0,
                 friction_per_fs=0.01, integrator="baoab", device="auto", precision="fp32", skin=1.0,
                 traj_interval=100, out_dir=None, checkpoint_interval=None, restart=None, progress=True,
                 seed=None, cuda_graph=True, backend="auto", max_displacement=1.0) -> ReplicaResult:
    """Run ``replicas`` copies of a structure (or one run per structure in a list)
    as one batch on one device, until step ``steps``.

    ``temperature_K`` and ``friction_per_fs`` are scalars or one value per
    replica; with 'nve' the temperature only seeds velocities (used when the
    structures carry none). Frames are saved every ``traj_interval`` steps
    (and at step 0); with ``out_dir`` they go to ``replica_NNN.traj`` too, and
    a checkpoint (positions, velocities, forces, RNG state, step) to
    ``checkpoint.pt`` every ``checkpoint_interval`` steps and at the end.
    ``restart``: a checkpoint file or the folder holding one; the run then
    continues from its step up to ``steps`` (the structures may be omitted).
    A replica whose coordinates go non-finite, or an atom faster than
    ``max_displacement`` A per step, stops the run with :class:`SimulationError`
    naming the step and replicas, after the frames so far are written.
    """
    if traj_interval is None or int(traj_interval) < 1:
        raise ValueError(f"traj_interval must be a positive number of steps, got {traj_interval!r}")
    if checkpoint_interval and out_dir is None:
        raise ValueError("checkpoint_interval needs out_dir, the folder the checkpoint is written to")
    ckpt = _load_checkpoint(restart) if restart is not None else None
    atoms_list = _replica_list(atoms_or_list, replicas, ckpt)
    engine = ForceEngine(model, device=device, precision=precision, backend=backend)
    sim = _Simulation(engine, atoms_list, dt_fs=dt_fs, temperature_K=temperature_K,
                      friction_per_fs=friction_per_fs, integrator=integrator, skin=skin, seed=seed,
                      cuda_graph=cuda_graph, max_displacement=max_displacement, checkpoint=ckpt)
    start_step, steps = sim.step, int(steps)
    if steps < start_step:
        raise ValueError(f"steps={steps} is before the checkpoint's step {start_step}")
    ckpt_path = None
    writers = None
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        ckpt_path = Path(out_dir) / CHECKPOINT_NAME
        writers = _Writers(out_dir, atoms_list, start_step if ckpt is not None else None)
    frames = []

    def save_frame():
        snap = sim.snapshot()
        frames.append(snap)
        if writers is not None:
            writers.write(snap)
        return snap

    bar = tqdm(total=steps, initial=start_step, disable=not progress, unit="step", desc="MD", dynamic_ncols=True)
    on_gpu = engine.device.type == "cuda"
    try:
        # the current device decides where CUDA graphs and their streams live
        with torch.cuda.device(engine.device) if on_gpu else contextlib.nullcontext():
            if ckpt is None:
                save_frame()
            t0 = time.perf_counter()
            while sim.step < steps:
                bad = sim.advance()
                if bad is not None:
                    raise _instability(sim, bad, frames, writers, max_displacement)
                if sim.step % traj_interval == 0:
                    snap = save_frame()
                    bar.set_postfix(T=f"{snap['temperature'].mean():.0f}K", refresh=False)
                if ckpt_path is not None and checkpoint_interval and (
                        sim.step % checkpoint_interval == 0 or sim.step == steps):
                    sim.checkpoint(ckpt_path)
                bar.update(1)
            if on_gpu:
                torch.cuda.synchronize(engine.device)
            wall = time.perf_counter() - t0
    finally:
        bar.close()
        if writers is not None:
            writers.close()

    final = sim.snapshot()

    def stack(key, shape):
        return np.stack([f[key] for f in frames]) if frames else np.zeros(shape)

    return ReplicaResult(
        steps=np.array([f["step"] for f in frames], dtype=int),
        times_ps=np.array([f["step"] for f in frames], dtype=float) * sim.dt_fs * 1e-3,
        positions=stack("positions", (0, sim.R, sim.N, 3)),
        energies=stack("energy", (0, sim.R)),
        kinetic_energies=stack("kinetic", (0, sim.R)),
        temperatures=stack("temperature", (0, sim.R)),
        final_positions=final["positions"], final_velocities=final["velocities"], numbers=sim.numbers,
        dt_fs=sim.dt_fs, integrator=integrator, engine=engine.name, seed=sim.seed,
        steps_run=steps - start_step, wall_time_s=wall, neighbor_builds=sim.neighbor_builds,
        neighbor_time_s=sim.neighbor_time, cuda_graph=sim.control.enabled and sim.control.captured,
        traj_files=list(writers.paths) if writers is not None else [],
        checkpoint_file=str(ckpt_path) if ckpt_path is not None and checkpoint_interval else None,
    )
