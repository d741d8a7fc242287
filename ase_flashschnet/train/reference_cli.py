"""``flashschnet-cln025-reference``: all-atom reference data of CLN025 for force matching.

    flashschnet-cln025-reference cln025 --platform cuda
    flashschnet-cln025-reference cln025 --platform cpu --trajectories 4 --ns-per-trajectory 0.1
    flashschnet-train cln025/dataset.npz --out run1

Runs the OpenMM simulations of :mod:`.reference` into ``OUT_DIR`` and writes
``OUT_DIR/dataset.npz`` (``docs/cg-dataset.md``, ``docs/cg-mapping.md``). The
same command again continues an interrupted run; with a finished run it only
maps the frames again (``--force-map`` may differ). ``--time-limit`` (8
minutes unless set) keeps one call inside a 9-minute slot whatever the
machine's speed. Exit status: 0 all trajectories done, 1 stopped early
(``--time-limit``, ``--max-trajectories``; the dataset holds the frames so
far, rerun to go on), 2 bad input or a missing dependency.
"""
from __future__ import annotations

import argparse
import sys

from .mapping import FORCE_MAPS
from .reference import CONSTRAINTS, PLATFORMS, ReferenceResult, ReferenceSettings, generate_reference

__all__ = ["main", "build_parser", "summary"]


def build_parser() -> argparse.ArgumentParser:
    d = ReferenceSettings
    p = argparse.ArgumentParser(prog="flashschnet-cln025-reference",
                                description="Simulate CLN025 (amber14, GBn2 implicit solvent, Langevin) with OpenMM "
                                "and write a flashschnet-cg-v1 dataset of C-alpha beads.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder for the chunks, reference.json and dataset.npz")
    p.add_argument("--platform", choices=PLATFORMS, default="auto", help="OpenMM platform (auto: CUDA if present)")
    p.add_argument("--trajectories", type=int, default=d.n_trajectories,
                   help="independent trajectories (even ones start extended, odd ones as a hairpin)")
    p.add_argument("--ns-per-trajectory", type=float, default=0.3, help="simulated time of each trajectory's frames")
    p.add_argument("--save-every-ps", type=float, default=1.0, help="time between frames")
    p.add_argument("--temperature", type=float, default=d.temperature_K, help="K")
    p.add_argument("--timestep-fs", type=float, default=d.timestep_fs, help="integration time step, fs")
    p.add_argument("--friction", type=float, default=d.friction_per_ps, help="Langevin friction, 1/ps")
    p.add_argument("--constraints", choices=CONSTRAINTS, default=d.constraints,
                   help="bonds held rigid ('none' wants --timestep-fs 1 or less)")
    p.add_argument("--pull-ps", type=float, default=10.0, help="pull into a hairpin (odd trajectories), unsaved")
    p.add_argument("--equilibration-ps", type=float, default=20.0, help="unsaved run before the first frame")
    p.add_argument("--force-map", choices=FORCE_MAPS, default="aggregate", help="see docs/cg-mapping.md")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds every trajectory's velocities and noise")
    p.add_argument("--time-limit", type=float, default=8.0, metavar="MINUTES",
                   help="stop at the end of the chunk running when this much time has passed (0: no limit)")
    p.add_argument("--max-trajectories", type=int, help="work on at most this many trajectories in this call")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _steps(ps: float, timestep_fs: float, what: str) -> int:
    """``ps`` as a whole number of steps; ``ValueError`` when it is not one."""
    steps = ps * 1000.0 / timestep_fs
    if ps < 0 or abs(steps - round(steps)) > 1e-6:
        raise ValueError(f"{what} ({ps} ps) must be a non-negative whole number of {timestep_fs} fs steps")
    return round(steps)


def settings_from_args(args) -> dict:
    """The keyword arguments of :func:`generate_reference` from parsed arguments."""
    save_every = _steps(args.save_every_ps, args.timestep_fs, "--save-every-ps")
    if save_every < 1 or not args.ns_per_trajectory > 0:
        raise ValueError(f"--save-every-ps and --ns-per-trajectory must be positive, got {args.save_every_ps} "
                         f"and {args.ns_per_trajectory}")
    if args.time_limit < 0:
        raise ValueError(f"--time-limit must be >= 0 minutes (0: no limit), got {args.time_limit}")
    n_frames = round(args.ns_per_trajectory * 1000.0 / args.save_every_ps)
    if n_frames < 1:
        raise ValueError(f"--ns-per-trajectory {args.ns_per_trajectory} is shorter than one frame "
                         f"(--save-every-ps {args.save_every_ps})")
    return dict(n_trajectories=args.trajectories, n_frames=n_frames, save_every_steps=save_every,
                temperature_K=args.temperature, platform=args.platform, seed=args.seed,
                timestep_fs=args.timestep_fs, friction_per_ps=args.friction, constraints=args.constraints,
                pull_steps=_steps(args.pull_ps, args.timestep_fs, "--pull-ps"),
                equilibration_steps=_steps(args.equilibration_ps, args.timestep_fs, "--equilibration-ps"),
                force_map=args.force_map, max_trajectories=args.max_trajectories,
                time_limit_s=args.time_limit * 60.0 if args.time_limit > 0 else None,
                progress=not args.no_progress)


def summary(result: ReferenceResult) -> str:
    """What a run did and where its dataset is, for people."""
    state = "all done" if result.complete else "stopped early: run the same command again to go on"
    return "\n".join([
        f"trajectories : {result.finished_trajectories} of {result.n_trajectories} finished ({state})",
        f"this call    : {result.simulated_ns:.3f} ns simulated in {result.wall_s:.0f} s on {result.platform} "
        f"({result.ns_per_day:.0f} ns/day with the set-up)",
        f"dataset      : {result.dataset_file or 'none yet'} ({result.n_frames} frames)",
    ])


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = generate_reference(args.out_dir, **settings_from_args(args))
    except (ValueError, OSError, ImportError) as exc:
        print(f"flashschnet-cln025-reference: error: {exc}", file=sys.stderr)
        return 2
    print(summary(result))
    return 0 if result.complete else 1


if __name__ == "__main__":
    sys.exit(main())
