"""``run_replicas``: a batched multi-replica MD run from start to result.

Sets up the force engine and the :class:`~.simulation.Simulation`, advances it
in blocks that end at frame, checkpoint and status-check steps, saves frames
and checkpoints, and turns a replica gone bad into a :class:`SimulationError`.
Over MPI ranks (``comm``) each rank runs its share of the replicas
(:mod:`.distributed`), and so does each of several devices of this process
(``devices``, :mod:`.devices`).
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from tqdm import tqdm

from ..calculator import ForceEngine, resolve_model
from .checkpoint import (CHECKPOINT_NAME, TrajectoryWriters, checkpoint_data, checkpoint_structures, load_checkpoint,
                         save_checkpoint, trajectory_paths)
from .config import MDConfig
from .devices import on_devices, resolve_devices
from .distributed import ReplicaShare
from .results import ReplicaResult, instability_error
from .simulation import Simulation

__all__ = ["run_replicas"]


def _replica_list(atoms_or_list, replicas, checkpoint) -> list[Atoms]:
    """The starting structures, one per replica, all with the same number of atoms."""
    if atoms_or_list is None:
        if checkpoint is None:
            raise ValueError("give the starting structure(s), or restart= a checkpoint")
        atoms_list = checkpoint_structures(checkpoint, replicas)
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


def _next_multiple(step: int, interval: int) -> int:
    return (step // interval + 1) * interval


def run_replicas(model, atoms_or_list=None, replicas=None, steps=1000, *, config: MDConfig | None = None,
                 comm=None, **options) -> ReplicaResult:
    """Run ``replicas`` copies of a structure (or one run per structure in a list)
    as one batch on one device, until step ``steps``, as ``config`` says.

    ``model``: a model, a model file or a shipped model's name. ``config``: an
    :class:`MDConfig` (default: all its defaults); keyword ``options`` name
    its fields and replace them, so ``run_replicas(model, atoms, replicas=4,
    steps=10, dt_fs=1.0)`` and ``run_replicas(model, atoms, replicas=4,
    steps=10, config=MDConfig(dt_fs=1.0))`` are the same run. With
    ``config.restart`` the run continues from the checkpoint's step up to
    ``steps`` (the structures may then be omitted).

    A replica whose coordinates go non-finite, or an atom faster than
    ``max_displacement`` A per step, stops the run with :class:`SimulationError`
    naming the step and replicas, after the frames so far are written. On a GPU
    the steps run in blocks of up to ``check_interval`` captured steps with a
    single host synchronisation per block (blocks also end at frame and
    checkpoint steps): instabilities are noticed at the end of the block but
    reported with the step they happened in, and no frame after it is saved.

    ``comm``: an mpi4py communicator whose ranks all make this call and share
    the replicas (:mod:`.distributed`): the trajectories are one process's,
    rank 0 writes the files, and every rank returns the whole run's result
    (neighbour-list builds and their time summed over the ranks, the wall
    time the longest rank's, the engines of all, the other statistics this
    rank's). ``config.devices`` shares them the same way among several devices
    of this process, one thread each (:mod:`.devices`; the other statistics
    are then the first device's); it does not combine with ``comm`` (under
    MPI, run one rank per GPU).
    """
    config = MDConfig.from_options(config, options)
    ckpt = load_checkpoint(config.restart) if config.restart is not None else None
    atoms_list = _replica_list(atoms_or_list, replicas, ckpt)
    steps = int(steps)
    if config.devices is None:
        share = ReplicaShare.of(len(atoms_list), comm)
        return _run_share(model, atoms_list, steps, config, ckpt, share,
                          share.device(config.device, config.precision))
    if comm is not None:
        raise ValueError("several devices in one process (devices) do not combine with MPI ranks (comm): "
                         "under MPI, run one rank per GPU (device 'auto' gives each rank a GPU of its node)")
    devices = resolve_devices(config.devices, config.precision)
    model = resolve_model(model)  # read once, copied to each device by its engine

    def run_on(member, device):
        share = ReplicaShare.of(len(atoms_list), member, "devices")
        return _run_share(model, atoms_list, steps, config, ckpt, share, device)

    return on_devices(run_on, devices)


def _run_share(model, atoms_list: list[Atoms], steps: int, config: MDConfig, ckpt: dict | None,
               share: ReplicaShare, device) -> ReplicaResult:
    """The part of ``run_replicas`` that ``share`` (this rank's replicas) runs on ``device``."""
    traj_interval, checkpoint_interval, out_dir = config.traj_interval, config.checkpoint_interval, config.out_dir
    engine = ForceEngine(model, device=device, precision=config.precision, backend=config.backend)
    sim = Simulation(engine, share.mine(atoms_list), share.config(config), checkpoint=share.checkpoint(ckpt),
                     share=share)
    start_step = sim.step
    if steps < start_step:
        raise ValueError(f"steps={steps} is before the checkpoint's step {start_step}")
    ckpt_path = None
    writers = None
    paths = []
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        ckpt_path = Path(out_dir) / CHECKPOINT_NAME
        paths = trajectory_paths(out_dir, len(atoms_list))
        if share.rank == 0:
            writers = TrajectoryWriters(out_dir, atoms_list, start_step if ckpt is not None else None)
    frames = []

    def save_frame():
        snap = share.gather(sim.snapshot())
        frames.append(snap)
        if writers is not None:
            writers.write(snap)
        return snap

    bar = tqdm(total=steps, initial=start_step, disable=not config.progress or share.rank != 0, unit="step", desc="MD",
               dynamic_ncols=True)
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
                bad = share.first_bad(sim.advance(min(stops) - before))
                if bad is not None:
                    raise instability_error(bad, frames, paths, config.max_displacement)
                if sim.step % traj_interval == 0:
                    snap = save_frame()
                    bar.set_postfix(T=f"{snap['temperature'].mean():.0f}K", refresh=False)
                if ckpt_path is not None and checkpoint_interval and (
                        sim.step % checkpoint_interval == 0 or sim.step == steps):
                    data = share.joined(checkpoint_data(sim), config)
                    if data is not None:
                        save_checkpoint(data, ckpt_path)
                bar.update(sim.step - before)
            if on_gpu:
                torch.cuda.synchronize(engine.device)
            wall = time.perf_counter() - t0
    finally:
        bar.close()
        if writers is not None:
            writers.close()

    final = share.gather(sim.snapshot())
    R, N = len(atoms_list), sim.N

    def stack(key, shape):
        return np.stack([f[key] for f in frames]) if frames else np.zeros(shape)

    return ReplicaResult(
        steps=np.array([f["step"] for f in frames], dtype=int),
        times_ps=np.array([f["step"] for f in frames], dtype=float) * sim.dt_fs * 1e-3,
        positions=stack("positions", (0, R, N, 3)),
        energies=stack("energy", (0, R)),
        kinetic_energies=stack("kinetic", (0, R)),
        temperatures=stack("temperature", (0, R)),
        final_positions=final["positions"], final_velocities=final["velocities"],
        numbers=np.stack([a.numbers for a in atoms_list]),
        dt_fs=sim.dt_fs, integrator=config.integrator, seed=sim.seed,
        engine=", ".join(dict.fromkeys(share.everyone(engine.name))),
        steps_run=steps - start_step, wall_time_s=max(share.everyone(wall)),
        neighbor_builds=sum(share.everyone(sim.neighbors.builds)),
        neighbor_time_s=sum(share.everyone(sim.neighbors.build_time)),
        cuda_graph=sim.control.enabled and sim.control.captured, neighbor_mode=sim.neighbor_mode,
        host_syncs=sim.host_syncs, edge_capacity=sim.nl.capacity, mean_edge_padding=sim.neighbors.mean_edge_padding,
        neighbor_overflows=sim.neighbors.overflows, neighbor_build_ms=1e3 * sim.neighbors.build_seconds,
        traj_files=paths,
        checkpoint_file=str(ckpt_path) if ckpt_path is not None and checkpoint_interval else None,
    )
