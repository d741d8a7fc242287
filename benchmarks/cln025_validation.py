"""The coarse-grained CLN025 model end to end on one GPU: all-atom reference,
force matching, and 64 replicas of the trained model in the fused kernels
(bf16 and fp32) against the reference (``flashschnet-cln025``, docs/cln025.md).

    python benchmarks/cln025_validation.py OUT_DIR                  # the stages not done yet
    python benchmarks/cln025_validation.py OUT_DIR --stage reference
    python benchmarks/cln025_validation.py /tmp/smoke --quick --platform cpu   # smoke run, no result files

Each call runs what ``flashschnet-cln025 OUT_DIR`` runs: every stage stops
itself within 9 minutes, and a call after a stop goes on (exit status 1 says
so). Once the validate stage is done at full size with the fused kernels on a
GPU, the call writes results/cln025_validation.{json,md}: a row per precision
with the MD speed, the folded fractions of the reference and the model, the
Jensen-Shannon divergences of the collective variables and the sampling
verdict, and each stage's time in the notes. Runs at --quick sizes or without
a GPU leave the results alone.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]  # _common, and the package when not installed

from _common import write_results  # noqa: E402

from ase_flashschnet.train import cln025_cli  # noqa: E402
from ase_flashschnet.train.cln025 import STAGES  # noqa: E402
from ase_flashschnet.train.pipeline import MANIFEST_NAME  # noqa: E402
from ase_flashschnet.train.reference import PLATFORMS  # noqa: E402

NAME = "cln025_validation"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", metavar="OUT_DIR", help="the run's folder (flashschnet-cln025 OUT_DIR)")
    p.add_argument("--stage", choices=(*STAGES, "all"), default="all")
    p.add_argument("--platform", choices=PLATFORMS, default="auto")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run; writes no results)")
    return p.parse_args(argv)


def records(summary: dict) -> list[dict]:
    """One row per validation run (precision)."""
    rows = []
    for label, run in summary["runs"].items():
        model_sampling = run["sampling"]["model"]
        rows.append(dict(run=label, engine=run["engine"], replicas=summary["md"]["replicas"],
                         ns_per_replica=summary["md"]["steps"] * summary["md"]["dt_fs"] * 1e-6,
                         md_wall_s=run["md_wall_s"], ns_per_day=run["ns_per_day"],
                         folded_reference=run["folded_fraction"]["reference"],
                         folded_model=run["folded_fraction"]["model"],
                         **{f"jsd_{cv}": value for cv, value in run["js_divergence"].items()},
                         transitions_model=model_sampling["transitions"], sufficient=model_sampling["sufficient"]))
    return rows


def notes(manifest: dict, summary: dict) -> str:
    """Each stage's time, the starting basins and the sampling verdicts."""
    times = ", ".join(f"{name} {record['seconds']:.0f} s in {record['calls']} call(s)"
                      for name, record in manifest["stages"].items())
    starts = summary["starts"]
    lines = [f"Stage times: {times}.",
             f"Replicas started {starts['folded']} folded and {starts['unfolded']} unfolded (C-alpha RMSD "
             f"{starts['threshold_A']} A to the reference's most populated structure), at "
             f"{summary['temperature_K']} K; the first {summary['md']['equilibration_steps']} steps are left out."]
    lines += [f"{label}: {run['sampling_note']}" for label, run in summary["runs"].items()]
    return "\n\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    status = cln025_cli.main([args.out_dir, "--stage", args.stage, "--platform", args.platform]
                             + (["--quick"] if args.quick else []))
    out = pathlib.Path(args.out_dir)
    if status != 0 or not (out / MANIFEST_NAME).is_file():
        return status
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    validate = manifest["stages"].get("validate", {})
    if validate.get("status") != "done":
        return status
    summary = json.loads((out / validate["outputs"]["summary"]).read_text())
    if manifest["sizes"] != "full" or not all(label.startswith("fused-") for label in summary["runs"]):
        print(f"no results written: {NAME} records full-size runs of the fused kernels on a GPU")
        return status
    json_path, _ = write_results(NAME, records(summary), title="CLN025 CG model: validation against the all-atom "
                                 "reference", notes=notes(manifest, summary))
    print(f"results: {json_path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
