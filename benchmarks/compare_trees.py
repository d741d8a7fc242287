"""Merge the before/after result sets of ``compare_trees.sh`` into one table.

    python benchmarks/compare_trees.py LOG_DIR [--results DIR]

Reads ``compare_scf_{before,after}.json`` (scf_vs_gpu4pyscf.py, J+K builds)
and ``compare_schnet_{before,after}.json`` (schnet_throughput.py) from
LOG_DIR and writes ``compare_trees.{json,md}``: per case and task (or per
replica count and method) the time of each tree and their ratio, with the
J/K difference against GPU4PySCF of both.  Both runs must come from the same
GPU: the script refuses otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))   # _common
from _common import RESULTS_DIR, write_results  # noqa: E402


def _load(log_dir: Path, stem: str) -> tuple | None:
    """(meta before, meta after, records before, records after) of result set
    ``stem``, None when either tree's is missing."""
    runs = {}
    for label in ("before", "after"):
        path = log_dir / f"compare_{stem}_{label}.json"
        if not path.exists():
            return None
        runs[label] = json.loads(path.read_text())
    return runs["before"]["meta"], runs["after"]["meta"], runs["before"]["records"], runs["after"]["records"]


def _rows(before: list[dict], after: list[dict], key, time: str, extra=()) -> list[dict]:
    """One row per record of ``after`` whose key ``before`` has too."""
    old = {key(r): r for r in before}
    rows = []
    for r in after:
        b = old.get(key(r))
        if b is None or b.get(time) is None or r.get(time) is None:
            continue
        row = {"benchmark": None, "case": " / ".join(str(k) for k in key(r)), "before": b[time],
               "after": r[time], "after / before": r[time] / b[time]}
        for name in extra:
            row[f"{name} before"], row[f"{name} after"] = b.get(name), r.get(name)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log_dir", type=Path)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    parser.add_argument("--note", default="", help="a sentence added to the notes (how the runs went)")
    args = parser.parse_args(argv)
    rows, meta, gpus = [], None, set()
    scf = _load(args.log_dir, "scf")
    if scf:
        mb, ma, rb, ra = scf
        gpus |= {mb.get("gpu"), ma.get("gpu")}
        meta = ma
        for row in _rows(rb, ra, lambda r: (r["case"], r["task"]), "fusionrcg_s", ("max_abs_diff",)):
            row["benchmark"] = "J/K build, s"
            rows.append(row)
    schnet = _load(args.log_dir, "schnet")
    if schnet:
        mb, ma, rb, ra = schnet
        gpus |= {mb.get("gpu"), ma.get("gpu")}
        meta = meta or ma
        for row in _rows(rb, ra, lambda r: (r["replicas"], r["method"]), "ms_per_eval"):
            row["benchmark"] = "SchNet evaluation, ms"
            rows.append(row)
    if not rows:
        print(f"no before/after result pairs in {args.log_dir}", file=sys.stderr)
        return 1
    if len(gpus) != 1:
        print(f"the two trees ran on different GPUs ({sorted(map(str, gpus))}): not comparable", file=sys.stderr)
        return 1
    ratios = [r["after / before"] for r in rows if r["case"].split(" / ")[-1] != "warm-up"]
    notes = (f"Same GPU, one process per tree, one after the other. Ratio after/before of the timed rows "
             f"(warm-up rows, which include compilation, excluded): {min(ratios):.3f} to {max(ratios):.3f}. "
             + args.note).strip()
    json_path, md_path = write_results("compare_trees", rows, meta, title="Before and after one change",
                                       notes=notes, directory=args.results)
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
