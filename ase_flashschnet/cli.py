"""``flashschnet-md``: batched multi-replica MD from the command line.

    flashschnet-md --model model.pt --structure protein.pdb --replicas 64 \\
        --steps 100000 --dt 4 --temperature 300 --device auto --out run1

``--model`` is a saved model file or a shipped model name; ``--structure`` any
file ASE reads (a shipped model may bring a default structure, which is used
when it is left out). ``--restart DIR`` continues the run checkpointed in DIR
up to ``--steps``, with that run's time step, temperatures, friction and
integrator unless the command line gives them (a change is logged as a
warning). ``--mpi`` shares the replicas among the MPI ranks the command was
started on (``mpiexec -n 4 flashschnet-md --mpi ...``); rank 0 writes the
files and prints the summary. ``--devices all`` (or a list, ``cuda:0,cuda:1``)
shares them among several GPUs of this one process instead. Exit status: 0
done, 1 the dynamics became unstable, 2 bad input.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
from ase.io import read
from ase.io.formats import UnknownFileTypeError

from gpucore import GPUUnavailableError

from . import shipped
from .calculator import PRECISIONS, resolve_model
from .md import MDConfig, SimulationError, run_replicas
from .md.checkpoint import load_checkpoint, recorded_dynamics
from .model import UnknownElementError

__all__ = ["main", "build_parser", "config_from_args", "default_structure", "summary"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flashschnet-md", description="Batched multi-replica MD with a FlashSchNet model.")
    p.add_argument("--model", required=True, help="model file, or the name of a shipped model")
    p.add_argument("--structure", help="starting structure, any format ASE reads (default: the shipped model's)")
    p.add_argument("--replicas", type=int, help="replicas run together as one batch (default 1, or the checkpoint's)")
    p.add_argument("--steps", type=int, default=1000, help="total number of steps (default 1000)")
    # The dynamics options default to None: left out, a restart takes the checkpoint's value.
    p.add_argument("--dt", type=float, help="time step in fs (default 2, or the checkpoint's)")
    p.add_argument("--temperature", type=float, nargs="+",
                   help="temperature in K: one value, or one per replica (default 300, or the checkpoint's)")
    p.add_argument("--friction", type=float, nargs="+",
                   help="Langevin friction in 1/fs: one value or one per replica (default 0.01, or the checkpoint's)")
    p.add_argument("--integrator", choices=("baoab", "nve"), help="default baoab, or the checkpoint's")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--devices", metavar="all|LIST",
                   help="share the replicas among several devices of this process, each running its block at once: "
                        "'all' (every CUDA GPU) or a comma-separated list, e.g. cuda:0,cuda:1 (or 0,1); "
                        "instead of --device, not with --mpi")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--skin", type=float, default=1.0, help="Verlet skin in A (default 1)")
    p.add_argument("--seed", type=int, help="random seed (default: fresh entropy, printed)")
    p.add_argument("--out", help="output folder: replica_NNN.traj and checkpoint.pt")
    p.add_argument("--traj-interval", type=int, default=100, help="steps between saved frames (default 100)")
    p.add_argument("--checkpoint-interval", type=int, default=1000,
                   help="steps between checkpoints when --out is given (default 1000)")
    p.add_argument("--restart", help="checkpoint file, or the folder holding checkpoint.pt, to continue from")
    p.add_argument("--no-cuda-graph", action="store_true", help="run the steps eagerly on a GPU")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--mpi", action="store_true",
                   help="share the replicas among the MPI ranks this runs on (start it with mpiexec; needs mpi4py)")
    return p


def config_from_args(args, recorded=None) -> MDConfig:
    """The run's settings from parsed command-line arguments. A dynamics option left
    out takes its value from ``recorded`` (a restart's checkpoint, see
    :func:`~.md.checkpoint.recorded_dynamics`), else MDConfig's default."""
    given = {"dt_fs": args.dt, "temperature_K": args.temperature, "friction_per_fs": args.friction,
             "integrator": args.integrator}
    dynamics = dict(recorded or {})
    dynamics.update({name: value for name, value in given.items() if value is not None})
    return MDConfig(
        **dynamics, device=args.device, devices=args.devices, precision=args.precision, skin=args.skin,
        traj_interval=args.traj_interval, out_dir=args.out,
        checkpoint_interval=args.checkpoint_interval if args.out else None, restart=args.restart,
        progress=not args.no_progress, seed=args.seed, cuda_graph=not args.no_cuda_graph)


def default_structure(model_name: str):
    """The structure a shipped model brings, or None (model files bring none)."""
    try:
        return shipped.default_structure(model_name)
    except KeyError:
        return None


def summary(result) -> str:
    """What a run measured, for people."""
    n_atoms = result.final_positions.shape[1]
    lines = [
        f"engine       : {result.engine}{' + CUDA graphs' if result.cuda_graph else ''}",
        f"system       : {result.replicas} replica(s) x {n_atoms} atoms, {result.integrator}, dt {result.dt_fs:g} fs, "
        f"seed {result.seed}",
        f"steps        : {result.steps_run} in {result.wall_time_s:.2f} s ({result.steps_per_second:.1f} steps/s, "
        f"{result.steps_per_second * result.replicas:.1f} timestep-replicas/s)",
        f"throughput   : {result.ns_per_day:.3g} ns/day aggregate at {result.dt_fs:g} fs",
        f"neighbours   : {result.neighbor_builds} list builds, {result.neighbor_time_s:.2f} s",
    ]
    if len(result.steps):
        lines.append(f"last frame   : step {result.steps[-1]}, T mean {np.mean(result.temperatures[-1]):.1f} K, "
                     f"E_pot mean {np.mean(result.energies[-1]):.4f} eV")
    for path in result.traj_files[:3]:
        lines.append(f"trajectory   : {path}")
    if len(result.traj_files) > 3:
        lines.append(f"               ... and {len(result.traj_files) - 3} more")
    if result.checkpoint_file:
        lines.append(f"checkpoint   : {result.checkpoint_file}")
    return "\n".join(lines)


def _world():
    """MPI's world communicator, or a ValueError saying what to install."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ValueError(f"--mpi needs mpi4py (pip install 'fusion-chem-gpu[mpi]'): {exc}") from None
    return MPI.COMM_WORLD


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        comm = _world() if args.mpi else None
        model = resolve_model(args.model)
        if args.structure is not None:
            atoms = read(args.structure)
        else:
            atoms = default_structure(args.model)
            if atoms is None and args.restart is None:
                raise ValueError(f"--structure is needed: model {args.model!r} brings no default structure")
        recorded = recorded_dynamics(load_checkpoint(args.restart)) if args.restart is not None else None
        result = run_replicas(model, atoms, replicas=args.replicas, steps=args.steps,
                              config=config_from_args(args, recorded), comm=comm)
    except SimulationError as exc:
        print(f"flashschnet-md: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError, UnknownFileTypeError, UnknownElementError, GPUUnavailableError) as exc:
        print(f"flashschnet-md: error: {exc}", file=sys.stderr)
        return 2
    if comm is None or comm.Get_rank() == 0:
        print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
