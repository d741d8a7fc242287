"""The state of one batched MD run and how it advances.

A step: the integrator's first half (see :mod:`.integrators`), then on the
device a status update (per replica: the first step an atom went non-finite
or moved more than ``max_displacement``; see :mod:`ase_flashschnet.step_status`)
and the rebuild flag (some atom moved more than skin/2 since the last build);
a neighbour-list rebuild if flagged (see :mod:`.neighbor_capacity`); the force
call; the closing half kick.

Two ways to drive it, for both force engines (fused and reference):

* in-graph (a GPU with the neighbour-list kernels, and an engine that reads
  the graph buffers in place): a whole step, rebuild included, is one
  captured CUDA graph (see :mod:`.graphs`), and steps run back to back in
  blocks with one host synchronisation at the end of each;
* host (CPU, or an engine that caches its graph): each step is split in two
  halves with a host decision, build or not, between them.

Langevin noise is drawn outside the graphs, one draw per step from a
generator whose state goes into checkpoints (and is restored on a roll-back),
so graph, eager and restarted runs draw the same numbers; a simulation that
is one rank's part of a run draws for the whole run and keeps its rows
(:mod:`.distributed`), so the ranks draw the numbers one process would.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch
from ase import units

from ..calculator import ForceEngine, check_finite_positions, check_periodic_cell
from ..static_neighbors import StaticNeighborList
from ..step_status import STAT_BUILDS, STAT_ERROR, STAT_MAX_TOTAL, STAT_OVERFLOW, STAT_STEP, STAT_TOTAL
from ..step_status import first_bad_step, new_md_status
from .checkpoint import check_matches, restore_dynamics
from .graphs import GraphControl, GraphedCall
from .config import MDConfig, fresh_seed
from .distributed import ReplicaShare
from .integrators import Integrator
from .neighbor_capacity import BlockStart, NeighborManager
from .profiling import profile_steps

__all__ = ["Simulation"]

log = logging.getLogger(__name__)

# What a roll-back restores (besides the noise generator's state).
_BLOCK_STATE = ("x", "v", "f", "e", "x_ref", "stat")


def _host(t: torch.Tensor) -> np.ndarray:
    """A float64 NumPy copy (never a view of live state, which the next step overwrites)."""
    return t.detach().to("cpu", torch.float64, copy=True).numpy()


class Simulation:
    """State and step of one batched run: ``R`` replicas of ``N`` atoms, as
    consecutive blocks of atoms (see the module docstring).

    Uses the dynamics, neighbour-list, graph and check settings of ``config``
    (an :class:`MDConfig`, whose fields ``options`` may replace); starts from
    ``checkpoint`` (a loaded one, see :func:`.checkpoint.load_checkpoint`) if given.
    ``share``: where these replicas lie in a run split over MPI ranks or devices
    (:class:`~.distributed.ReplicaShare`; default: the whole run), whose noise
    is drawn for the whole run's batch, of which this one takes its rows.
    """

    def __init__(self, engine: ForceEngine, atoms_list, config: MDConfig | None = None, *, checkpoint=None,
                 share: ReplicaShare | None = None, **options):
        self.config = config = MDConfig.from_options(config, options)
        self.engine = engine
        self.dt_fs = float(config.dt_fs)
        self.check_interval = int(config.check_interval)
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
        self.integrator = Integrator(config.integrator, self.dt_fs, masses, config.temperature_K,
                                     config.friction_per_fs, R, N, config.max_displacement, tensor)

        seed = config.seed
        self.seed = fresh_seed() if seed is None else int(seed)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(self.seed)
        if checkpoint is not None:
            check_matches(checkpoint, R, N, self.numbers, config)
        start = checkpoint["positions"] if checkpoint is not None else np.concatenate([a.positions for a in atoms_list])
        self.x = torch.as_tensor(start).to(device=device, dtype=dtype).reshape(R * N, 3).clone()
        share = share or ReplicaShare.of(R)
        if share.count != R:
            raise ValueError(f"the share holds {share.count} replicas, but {R} structures were given")
        rows = share.atom_rows(N)
        self.noise_all = torch.zeros((share.replicas * N, 3), dtype=dtype, device=device)
        self.noise = self.noise_all[rows]
        self.stat = new_md_status(device, R)
        self.gate = torch.zeros(1, dtype=torch.int32, device=device)  # rebuild the neighbour list in this step
        self.nl = StaticNeighborList(engine.cutoff, config.skin, self.batch, R, cell=self.cell, pbc=self.pbc,
                                     dtype=dtype, device=device, index_dtype=engine.graph_index_dtype,
                                     margin=config.edge_margin, backend=config.neighbor_backend)
        self.neighbors = NeighborManager(self.nl, config.skin)
        self.host_syncs = 0
        self.x_ref = self.x.clone()

        if checkpoint is None:
            self.step = 0
            self._build_now()
            velocities = np.concatenate([a.get_velocities() for a in atoms_list])
            if share.anywhere(np.any(velocities)):  # one choice for the whole run, as in one process
                self.v = tensor(velocities)
            else:  # Maxwell-Boltzmann at each replica's temperature
                self.v = self.integrator.thermal_velocities(self.noise_all.shape, self.generator, dtype, device,
                                                            rows)
            energy, forces = engine.energy_and_forces(self.types, self.x, self.graph)
            self.e, self.f = energy.detach().clone(), forces.detach().clone()
        else:
            self.step = int(checkpoint["step"])
            self._build_now()
            self.v, self.f, self.e, self.seed = restore_dynamics(checkpoint, self.generator, device, dtype)
        self.stat[STAT_STEP] = self.step
        self.control = GraphControl(config.cuda_graph, device)
        self.step_graph = GraphedCall(self.device_step, self.control)
        self.part1 = GraphedCall(self.first_half, self.control)
        self.part2 = GraphedCall(self.second_half, self.control)
        self.in_place = engine.reads_graph_in_place(self.graph, R * N)
        self.device_mode = self.nl.gated and self.in_place
        if self.nl.gated and not self.in_place:
            log.warning("the force engine does not read the neighbour graph in place; neighbour lists are rebuilt "
                        "from the host, with one synchronisation per step")
        self._block_start = None  # made on the first block
        if self.device_mode:
            self.neighbors.time_build(self.x_ref)

    @property
    def graph(self):
        return self.nl.graph

    @property
    def neighbor_mode(self) -> str:
        return "in-graph" if self.device_mode else "host"

    # -- one step, in pieces that only update pre-allocated tensors in place (they may be captured) --
    def first_half(self):
        x, v, stat = self.x, self.v, self.stat
        stat[STAT_STEP:STAT_STEP + 1].add_(1)
        self.integrator.kick_and_drift(x, v, self.f, self.noise)
        moved = (x - self.x_ref).square().sum(1).max()
        self.gate.copy_(moved > self.neighbors.rebuild_threshold)
        self.integrator.record_instabilities(x, v, stat)

    def second_half(self):
        energy, forces = self.engine.energy_and_forces(self.types, self.x, self.graph)
        self.e.copy_(energy)
        self.f.copy_(forces)
        self.integrator.kick(self.v, self.f)

    def device_step(self):
        self.first_half()
        self.nl.build_gated(self.x, self.x_ref, self.gate, self.stat)
        self.second_half()

    def _draw_noise(self):
        if self.integrator.uses_noise:
            self.noise_all.normal_(generator=self.generator)

    # -- neighbour-list buffers and the graphs that read them --
    def _build_now(self) -> bool:
        """Host-driven build at the current positions (x_ref follows); True if the buffers moved."""
        return self.neighbors.build_now(self.x, self.x_ref, self.stat)

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
        """Reallocate when the edge count left the capacity's band; the list itself is
        rebuilt from x_ref, i.e. unchanged."""
        capacity = self.neighbors.capacity_wanted(total, max_total)
        if capacity is not None:
            self.neighbors.reallocate(capacity, self.x_ref)
            self._graph_changed()

    # -- advancing --
    def advance(self, n_steps: int):
        """Up to ``n_steps`` steps; returns None, or (step, codes) for the first step
        in which a replica went bad (codes per replica: 0 fine, else how, see
        :mod:`ase_flashschnet.step_status`). ``self.step`` then stays at the last
        good check point."""
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
        self._draw_noise()
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
        self.neighbors.count_padding(1, self.nl.num_edges)
        return None

    def _device_block(self, n_steps: int):
        """``n_steps`` captured steps back to back, then one status read. A rebuild
        that did not fit the buffers is undone: back to the block's start, larger
        buffers, the block again (same noise)."""
        if self._block_start is None:
            self._block_start = BlockStart(self, _BLOCK_STATE, self.generator)
        self._block_start.save()
        while True:
            for _ in range(n_steps):
                self._draw_noise()
                self.step_graph()
            st = self.stat.cpu().numpy()
            self.host_syncs += 1
            if st[STAT_ERROR]:
                raise RuntimeError("neighbour-list kernels produced an asymmetric list (internal error)")
            bad = first_bad_step(st, self.R)
            overflow = int(st[STAT_OVERFLOW])
            if overflow >= 0 and (bad is None or bad[0] >= overflow):
                need = int(st[STAT_MAX_TOTAL])
                capacity = self.neighbors.record_overflow(need)
                log.info("neighbour list outgrew its %d slots at step %d (%d edges); redoing steps %d-%d",
                         self.nl.capacity, overflow, need, self.step + 1, self.step + n_steps)
                self._block_start.restore()
                self.neighbors.reallocate(capacity, self.x_ref)  # the list of the block's start, in larger buffers
                self._graph_changed()
                continue
            break
        if bad is not None:
            return bad
        self.step += n_steps
        self.neighbors.builds_in_graph = int(st[STAT_BUILDS])
        total = int(st[STAT_TOTAL])
        self.neighbors.count_padding(n_steps, total)
        self._resize_if_needed(total, int(st[STAT_MAX_TOTAL]))
        self.stat[STAT_MAX_TOTAL] = total
        return None

    # -- observables --
    def kinetic_energies(self) -> np.ndarray:
        return _host(self.integrator.kinetic_energies(self.v))

    def snapshot(self) -> dict:
        ke = self.kinetic_energies()
        shape = (self.R, self.N, 3)
        return dict(step=self.step, positions=_host(self.x).reshape(shape), velocities=_host(self.v).reshape(shape),
                    forces=_host(self.f).reshape(shape), energy=_host(self.e), kinetic=ke,
                    temperature=2.0 * ke / (3 * self.N * units.kB))

    def profile(self, repeats: int = 20) -> dict:
        """Milliseconds per piece of a step; see :func:`.profiling.profile_steps`."""
        return profile_steps(self, repeats)
