"""Batched multi-replica molecular dynamics on one device.

All replicas form one disconnected graph (consecutive blocks of atoms, the
layout the bonded priors expect) and advance together: one force call per
step for the whole batch. Integrators: BAOAB Langevin (per-replica temperature
and friction) and velocity-Verlet NVE. Units are ASE's: positions in A,
masses in amu, velocities in A / ase-time, energies in eV; ``dt_fs`` and
``friction_per_fs`` are converted with ``ase.units.fs``.

A step: B (half kick with the stored forces), A O A (BAOAB) or a full drift
(NVE); then on the device a status update (per replica: the first step an
atom went non-finite or moved more than ``max_displacement``; the largest
displacement since the last neighbour-list build); a neighbour-list rebuild
when some atom moved more than skin/2; the force call; B.

On a GPU the neighbour list is a :class:`~.neighbors.StaticNeighborList`: fixed
capacity, tensors that never move, rebuilt by kernels that read the rebuild
flag on the device. So a whole step, rebuild included, is one captured CUDA
graph, and steps run back to back with one host synchronisation every
``check_interval`` steps (and at frame and checkpoint steps). The criterion is
the exact one of a per-step check (max displacement > skin/2, evaluated every
step on the device): no missed neighbour, no extra margin. If a rebuild finds
more edges than fit, it leaves the old list untouched and records the step;
the host then rolls the block back (positions, velocities, forces, RNG state),
grows the buffers and runs the block again, so nothing computed with an
incomplete list survives. The capacity also follows the edge count between
blocks (grown early, shrunk when padding exceeds 2 x ``edge_margin``), which
needs a recapture. Without the GPU kernels (CPU, or an engine that caches its
graph), each step is split in two halves with a host decision between them.
Both engines, fused and reference, are driven by the same code.

Langevin noise is drawn outside the graphs, one draw per step from a generator
whose state goes into checkpoints (and is restored on a roll-back), so graph,
eager and restarted runs draw the same numbers.
"""
from __future__ import annotations

import contextlib
import dataclasses
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
from .neighbors import StaticNeighborList, capacity_for
from .step_status import (NON_FINITE, STAT_BUILDS, STAT_ERROR, STAT_MAX_TOTAL, STAT_OVERFLOW, STAT_STEP, STAT_TOTAL,
                          first_bad_step, new_md_status, replica_slots)

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
    """State and step of one batched run (see the module docstring)."""

    def __init__(self, engine: ForceEngine, atoms_list, *, dt_fs, temperature_K, friction_per_fs, integrator,
                 skin, seed, cuda_graph, max_displacement, checkpoint, check_interval=20, edge_margin=0.05,
                 neighbor_backend="auto"):
        if integrator not in ("baoab", "nve"):
            raise ValueError(f"integrator must be 'baoab' or 'nve', got {integrator!r}")
        if not dt_fs > 0:
            raise ValueError(f"dt_fs must be positive, got {dt_fs}")
        if int(check_interval) < 1:
            raise ValueError(f"check_interval must be a positive number of steps, got {check_interval!r}")
        self.engine = engine
        self.integrator = integrator
        self.dt_fs = float(dt_fs)
        self.dt = self.dt_fs * units.fs
        self.max_displacement = float(max_displacement)
        self.skin = float(skin)
        self.check_interval = int(check_interval)
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
        self.stat = new_md_status(device, R)  # device-side status, see step_status
        self.gate = torch.zeros(1, dtype=torch.int32, device=device)  # rebuild the neighbour list in this step
        self.rebuild_threshold = (0.5 * self.skin) ** 2
        self.nl = StaticNeighborList(engine.cutoff, skin, self.batch, R, cell=self.cell, pbc=self.pbc, dtype=dtype,
                                     device=device, index_dtype=engine.graph_index_dtype, margin=edge_margin,
                                     backend=neighbor_backend)
        self.neighbor_builds, self.neighbor_time = 0, 0.0  # host-driven builds and their time
        self.builds_in_graph, self.build_seconds = 0, float("nan")
        self.host_syncs, self.overflows, self.reallocations = 0, 0, 0
        self.padding_steps, self.steps_counted = 0.0, 0
        self.x_ref = self.x.clone()

        if checkpoint is None:
            self.step = 0
            self._build_now()
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
        self.stat[STAT_STEP] = self.step
        self.control = _GraphControl(cuda_graph, device)
        self.step_graph = _Graphed(self._device_step, self.control)
        self.part1 = _Graphed(self._first_half, self.control)
        self.part2 = _Graphed(self._second_half, self.control)
        self.in_place = engine.reads_graph_in_place(self.graph, R * N)
        self.device_mode = self.nl.gated and self.in_place
        if self.nl.gated and not self.in_place:
            log.warning("the force engine does not read the neighbour graph in place; neighbour lists are rebuilt "
                        "from the host, with one synchronisation per step")
        self._saved = None
        if self.device_mode:
            self._time_build()

    @property
    def graph(self):
        return self.nl.graph

    @property
    def neighbor_mode(self) -> str:
        return "in-graph" if self.device_mode else "host"

    # -- one step, in pieces that only update pre-allocated tensors in place (they may be captured) --
    def _first_half(self):
        x, v, hdt, stat, R = self.x, self.v, 0.5 * self.dt, self.stat, self.R
        stat[STAT_STEP:STAT_STEP + 1].add_(1)
        v.addcmul_(self.f, self.inv_m, value=hdt)
        if self.integrator == "baoab":
            x.add_(v, alpha=hdt)
            v.mul_(self.c1).addcmul_(self.sigma, self.noise)
            x.add_(v, alpha=hdt)
        else:
            x.add_(v, alpha=self.dt)
        moved = (x - self.x_ref).square().sum(1).max()
        self.gate.copy_(moved > self.rebuild_threshold)
        finite = torch.isfinite(x).all(1) & torch.isfinite(v).all(1)
        fast = v.square().sum(1) * self.dt ** 2 > self.max_displacement ** 2
        # per atom: NON_FINITE, TOO_FAST (1) or 0 = fine; per replica: the worst
        code = torch.where(finite, fast.to(x.dtype), float(NON_FINITE)).view(R, self.N).amax(1).long()
        first, kind = replica_slots(stat, R)
        newly = (code > 0) & (first < 0)
        first.copy_(torch.where(newly, stat[STAT_STEP], first))
        kind.copy_(torch.where(newly, code, kind))

    def _second_half(self):
        energy, forces = self.engine.energy_and_forces(self.types, self.x, self.graph)
        self.e.copy_(energy)
        self.f.copy_(forces)
        self.v.addcmul_(self.f, self.inv_m, value=0.5 * self.dt)

    def _device_step(self):
        self._first_half()
        self.nl.build_gated(self.x, self.x_ref, self.gate, self.stat)
        self._second_half()

    # -- neighbour lists --
    def _build_now(self) -> bool:
        """Host-driven build at the current positions (x_ref follows); True if the buffers moved."""
        start = time.perf_counter()
        grown = self.nl.rebuild(self.x, self.x_ref)
        if self.x.is_cuda:
            torch.cuda.synchronize(self.x.device)
        self.neighbor_builds += 1
        self.neighbor_time += time.perf_counter() - start
        self.stat[STAT_TOTAL] = self.nl.num_edges
        self.stat[STAT_MAX_TOTAL] = self.nl.num_edges
        return grown

    def _time_build(self) -> None:
        """Seconds per in-graph rebuild, timed once on an identical rebuild from x_ref."""
        nl = self.nl

        def sync():
            if self.x.is_cuda:
                torch.cuda.synchronize(self.x.device)

        for _ in range(2):  # the first call may still load the module
            sync()
            start = time.perf_counter()
            nl.build_gated(self.x_ref, None, nl.ones, nl.stat)
            sync()
            self.build_seconds = time.perf_counter() - start

    def _graph_changed(self) -> None:
        """The graph buffers were reallocated: recapture, and check the engine still reads them in place."""
        self.in_place = self.engine.reads_graph_in_place(self.graph, self.R * self.N)
        if self.device_mode and not self.in_place:
            log.warning("the force engine no longer reads the neighbour graph in place; switching to host-driven "
                        "neighbour-list rebuilds")
            self.device_mode = False
        self.step_graph.reset()
        self.part2.reset()

    def _renew_graph(self) -> None:
        """A new graph object over the same tensors, for engines that cache per graph object."""
        self.nl.graph = dataclasses.replace(self.nl.graph)
        self.part2.reset()

    def _resize_if_needed(self, total: int, max_total: int) -> None:
        """Keep the capacity within [1 + margin/2, 1 + 2 margin] x the edge count:
        grow before a build can overflow, shrink so that padding stays cheap for
        consumers that process every slot. The list itself is rebuilt from x_ref,
        i.e. unchanged."""
        cap, margin = self.nl.capacity, self.nl.margin
        if max_total * (1.0 + 0.5 * margin) > cap:
            new = capacity_for(max_total, margin)
        elif total * (1.0 + 2.0 * margin) < cap:
            new = capacity_for(total, margin)
        else:
            return
        if new == cap:
            return
        self.reallocations += 1
        self.nl.allocate(new)
        self.nl.rebuild(self.x_ref)
        self._graph_changed()

    def _count_padding(self, n_steps: int, total: int) -> None:
        self.padding_steps += n_steps * (1.0 - total / self.nl.capacity)
        self.steps_counted += n_steps

    @property
    def mean_edge_padding(self) -> float:
        """Mean fraction of the edge slots that were padding, over the steps run."""
        return self.padding_steps / self.steps_counted if self.steps_counted else 0.0

    # -- advancing --
    def advance(self, n_steps: int):
        """Up to ``n_steps`` steps; returns None, or (step, codes) for the first step
        in which a replica went bad (codes per replica: 0 fine, 1 too fast, 2
        non-finite). ``self.step`` then stays at the last good check point."""
        if self.device_mode:
            return self._device_block(n_steps)
        for _ in range(n_steps):
            bad = self._host_step()
            if bad is not None:
                return bad
        return None

    def _host_step(self):
        """One step with a host decision in the middle (no GPU kernels for the list,
        or an engine that caches the graph)."""
        if self.integrator == "baoab":
            self.noise.normal_(generator=self.generator)
        self.part1()
        st = self.stat.cpu().numpy()
        self.host_syncs += 1
        bad = first_bad_step(st, self.R)
        if bad is not None:
            return bad
        if bool(self.gate.item()):
            if self._build_now():
                self._graph_changed()
            elif not self.in_place:
                self._renew_graph()
            self._resize_if_needed(self.nl.num_edges, self.nl.num_edges)
        self.part2()
        self.step += 1
        self._count_padding(1, self.nl.num_edges)
        return None

    def _device_block(self, n_steps: int):
        """``n_steps`` captured steps back to back, then one status read. A rebuild
        that did not fit the buffers is undone: back to the block's start, larger
        buffers, the block again (same noise)."""
        self._save_block()
        while True:
            for _ in range(n_steps):
                if self.integrator == "baoab":
                    self.noise.normal_(generator=self.generator)
                self.step_graph()
            st = self.stat.cpu().numpy()
            self.host_syncs += 1
            if st[STAT_ERROR]:
                raise RuntimeError("neighbour-list kernels produced an asymmetric list (internal error)")
            bad = first_bad_step(st, self.R)
            overflow = int(st[STAT_OVERFLOW])
            if overflow >= 0 and (bad is None or bad[0] >= overflow):
                self.overflows += 1
                need = int(st[STAT_MAX_TOTAL])
                log.info("neighbour list outgrew its %d slots at step %d (%d edges); redoing steps %d-%d",
                         self.nl.capacity, overflow, need, self.step + 1, self.step + n_steps)
                self._rollback(capacity_for(need, self.nl.margin))
                continue
            break
        if bad is not None:
            return bad
        self.step += n_steps
        self.builds_in_graph = int(st[STAT_BUILDS])
        total = int(st[STAT_TOTAL])
        self._count_padding(n_steps, total)
        self._resize_if_needed(total, int(st[STAT_MAX_TOTAL]))
        self.stat[STAT_MAX_TOTAL] = total
        return None

    def _save_block(self) -> None:
        if self._saved is None:
            self._saved = {k: torch.empty_like(getattr(self, k)) for k in ("x", "v", "f", "e", "x_ref", "stat")}
        for k, t in self._saved.items():
            t.copy_(getattr(self, k))
        self._saved_rng = self.generator.get_state()

    def _rollback(self, capacity: int) -> None:
        for k, t in self._saved.items():
            getattr(self, k).copy_(t)
        self.generator.set_state(self._saved_rng)
        self.reallocations += 1
        self.nl.allocate(capacity)
        self.nl.rebuild(self.x_ref)  # the list of the block's start, in the larger buffers
        self._graph_changed()

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
        self._build_now()
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

    # -- profiling (benchmarks/md_throughput.py --profile) --
    def profile(self, repeats: int = 20) -> dict:
        """Milliseconds per piece of a step, each timed on its own with CUDA events
        (eager, synchronised), and per step of back-to-back captured steps. Advances
        the simulation; for measurements only."""
        if self.x.device.type != "cuda":
            raise RuntimeError("profiling needs a CUDA device")

        def timed(fn, n=repeats):
            torch.cuda.synchronize()
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(n):
                fn()
            end.record()
            torch.cuda.synchronize()
            return begin.elapsed_time(end) / n

        def wall(fn, n=repeats):
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(n):
                fn()
            torch.cuda.synchronize()
            return 1e3 * (time.perf_counter() - start) / n

        out = {"neighbor_mode": self.neighbor_mode, "edge_capacity": self.nl.capacity,
               "edges": int(self.graph.dst_ptr[-1])}
        out["noise_ms"] = timed(lambda: self.noise.normal_(generator=self.generator))
        out["first_half_ms"] = timed(self._first_half)
        out["force_call_ms"] = timed(self._second_half)
        out["force_call_wall_ms"] = wall(self._second_half)
        if self.nl.use_kernels:
            nl = self.nl
            out["rebuild_ms"] = timed(lambda: nl.build_gated(self.x_ref, None, nl.ones, nl.stat))
            out["rebuild_skipped_ms"] = timed(lambda: nl.build_gated(self.x_ref, None, self.gate.mul(0), nl.stat))
        out["status_read_ms"] = wall(lambda: self.stat.cpu())
        if self.device_mode:
            steps = max(1, self.check_interval)
            out["block_steps"] = steps
            self.advance(steps)  # warm-up and capture
            out["step_ms_in_blocks"] = wall(lambda: self.advance(steps), n=max(1, repeats // steps)) / steps
        out["cuda_graph"] = bool(self.control.enabled and self.control.captured)
        return out


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


def _instability(bad, frames, writers, max_displacement) -> SimulationError:
    """The error for the first step in which replicas went bad: ``bad`` is (step,
    per-replica codes), see ``_Simulation.advance``."""
    step, codes = bad
    failed = np.flatnonzero(codes).tolist()
    what = "; ".join(f"replica {r}: " + ("non-finite coordinates or velocities" if codes[r] >= NON_FINITE else
                                         f"an atom moving more than {max_displacement} A per step") for r in failed)
    paths = writers.paths if writers is not None else []
    kept = f"; frames up to step {frames[-1]['step']} are kept" if frames else ""
    files = f" in {', '.join(paths)}" if paths else ""
    return SimulationError(f"MD became unstable at step {step} ({what}){kept}{files}", step, failed, paths)


def _next_multiple(step: int, interval: int) -> int:
    return (step // interval + 1) * interval


def run_replicas(model, atoms_or_list=None, replicas=None, steps=1000, dt_fs=2.0, temperature_K=300.0,
                 friction_per_fs=0.01, integrator="baoab", device="auto", precision="fp32", skin=1.0,
                 traj_interval=100, out_dir=None, checkpoint_interval=None, restart=None, progress=True,
                 seed=None, cuda_graph=True, backend="auto", max_displacement=1.0, check_interval=20,
                 edge_margin=0.05, neighbor_backend="auto") -> ReplicaResult:
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

    On a GPU the steps run in blocks of up to ``check_interval`` captured steps
    with a single host synchronisation per block (blocks also end at frame and
    checkpoint steps): instabilities are noticed at the end of the block but
    reported with the step they happened in, and no frame after it is saved.
    The neighbour list (``neighbor_backend``: 'auto', or 'torch', 'vesin', 'ase'
    for host-driven builds) holds pairs within cutoff + ``skin`` in buffers with
    ``edge_margin`` spare slots; see :class:`~ase_flashschnet.neighbors.StaticNeighborList`.
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
                      cuda_graph=cuda_graph, max_displacement=max_displacement, checkpoint=ckpt,
                      check_interval=check_interval, edge_margin=edge_margin, neighbor_backend=neighbor_backend)
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
                before = sim.step
                stops = [steps, _next_multiple(before, traj_interval), _next_multiple(before, sim.check_interval)]
                if ckpt_path is not None and checkpoint_interval:
                    stops.append(_next_multiple(before, int(checkpoint_interval)))
                bad = sim.advance(min(stops) - before)
                if bad is not None:
                    raise _instability(bad, frames, writers, max_displacement)
                if sim.step % traj_interval == 0:
                    snap = save_frame()
                    bar.set_postfix(T=f"{snap['temperature'].mean():.0f}K", refresh=False)
                if ckpt_path is not None and checkpoint_interval and (
                        sim.step % checkpoint_interval == 0 or sim.step == steps):
                    sim.checkpoint(ckpt_path)
                bar.update(sim.step - before)
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
        steps_run=steps - start_step, wall_time_s=wall, neighbor_builds=sim.neighbor_builds + sim.builds_in_graph,
        neighbor_time_s=sim.neighbor_time + (sim.builds_in_graph * sim.build_seconds if sim.builds_in_graph else 0.0),
        cuda_graph=sim.control.enabled and sim.control.captured, neighbor_mode=sim.neighbor_mode,
        host_syncs=sim.host_syncs, edge_capacity=sim.nl.capacity, mean_edge_padding=sim.mean_edge_padding,
        neighbor_overflows=sim.overflows, neighbor_build_ms=1e3 * sim.build_seconds,
        traj_files=list(writers.paths) if writers is not None else [],
        checkpoint_file=str(ckpt_path) if ckpt_path is not None and checkpoint_interval else None,
    )
