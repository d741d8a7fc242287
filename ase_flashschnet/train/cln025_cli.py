"""``flashschnet-cln025``: the coarse-grained CLN025 model from all-atom data to
its validation, on one GPU, in stages of at most 9 minutes each.

    flashschnet-cln025 cln025                      # every stage not done yet
    flashschnet-cln025 cln025 --stage reference    # one stage
    flashschnet-cln025 /tmp/smoke --quick --platform cpu
    flashschnet-cln025 cln025 --export ase_flashschnet/data   # ship a validated run's model

Stages (:mod:`.cln025`, ``docs/cln025.md``): ``reference`` (OpenMM all-atom
runs mapped to C-alpha beads), ``train`` (priors and force matching),
``validate`` (replica MD of the model against the reference). Each reads what
the one before left in ``OUT_DIR``; ``OUT_DIR/pipeline.json`` records what
each did, so the same command skips the stages that are done and goes on
with one that stopped at its time limit. Exit status: 0 the stages asked for
are done, 1 a stage stopped at its time limit (run the same command again to
go on), 2 bad input, a stage's missing input or dependency, or a stage that
failed.
"""
from __future__ import annotations

import argparse
import sys

from gpucore import GPUUnavailableError

from ..md import SimulationError
from ..model import UnknownElementError
from .cln025 import STAGES, TIME_LIMIT_MINUTES, StageResult, export_model, run_stages
from .pipeline import MANIFEST_NAME
from .reference import PLATFORMS

__all__ = ["main", "build_parser", "summary"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flashschnet-cln025",
                                description="Reference data, training and validation of a coarse-grained CLN025 "
                                "model, in stages that resume.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out_dir", metavar="OUT_DIR", help="the run's folder: reference/, train/, validation/ and "
                   f"{MANIFEST_NAME}")
    p.add_argument("--stage", choices=(*STAGES, "all"), default="all", help="the stage to run; 'all': each one not "
                   "done yet, in turn")
    p.add_argument("--platform", choices=PLATFORMS, default="auto",
                   help="where everything runs: OpenMM's platform and the device of training and MD "
                        "(auto: a GPU when there is one)")
    p.add_argument("--quick", action="store_true", help="tiny sizes that run on a CPU in seconds (a smoke check)")
    p.add_argument("--time-limit", type=float, default=TIME_LIMIT_MINUTES, metavar="MINUTES",
                   help="stop each stage at a point it can go on from once this much time has passed (0: no limit)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--export", metavar="DIR", help="run no stage: copy the finished run's model and the structure it "
                   "starts from into DIR as cln025.pt and cln025.npz (the package's data folder ships them)")
    return p


def summary(results: list[StageResult], out_dir) -> str:
    """One line a stage, and what to do next, for people."""
    lines = []
    for result in results:
        record = result.record
        if result.status == "skipped":
            lines.append(f"{result.name:<10}: done earlier ({record['seconds']:.0f} s in {record['calls']} call(s))")
            continue
        note = f"; {record['note']}" if record["note"] else ""
        lines.append(f"{result.name:<10}: {result.status} in {result.seconds:.0f} s{note}")
    if results and results[-1].status == "partial":
        lines.append("stopped at the time limit: run the same command again to go on")
    elif results and results[-1].name == "validate":
        lines.append(f"results    : {out_dir}/{results[-1].record['outputs']['summary']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.export:
            for path in export_model(args.out_dir, args.export):
                print(f"wrote {path}")
            return 0
        if args.time_limit < 0:
            raise ValueError(f"--time-limit must be >= 0 minutes (0: no limit), got {args.time_limit}")
        results = run_stages(args.out_dir, args.stage, platform=args.platform, quick=args.quick,
                             time_limit_minutes=args.time_limit or None, progress=not args.no_progress)
    except (ValueError, OSError, ImportError, GPUUnavailableError, UnknownElementError, SimulationError,
            FloatingPointError) as exc:
        print(f"flashschnet-cln025: error: {exc}", file=sys.stderr)
        return 2
    print(summary(results, args.out_dir))
    return 1 if results[-1].status == "partial" else 0


if __name__ == "__main__":
    sys.exit(main())
