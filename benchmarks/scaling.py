"""J/K builds and SCF over several GPUs (strong scaling), replica MD over several
GPUs (weak scaling), and a projection of the J+K build's parallel efficiency
from one GPU's measured costs to 64 GPUs.

Measured, in one process on the GPUs of one machine (``Options.devices``,
``run_replicas(devices=)``), each against the same work on its first GPU:

* ``build``: one J+K build of a case's density (the minao guess, or with
  ``--density converged`` the RHF converged on every GPU) with the GPU path's
  builds shared by the first n GPUs, n = 1, 2, 4, 8 up to what the machine
  has: median wall of ``--repeat`` builds after an untimed one, the largest
  difference of J and K from one GPU's, the parallel efficiency
  ``t_1 / (n t_n)``, and the load imbalance of one more build (each GPU's
  own time: the slowest over the mean, less one);
* ``scf`` (``--scf``): the whole RHF from the guess on n GPUs;
* ``md``: ``--replicas-per-gpu`` replicas of the shipped ``cg-demo`` model on
  each of n GPUs (fused kernels), steps per second and ``rate_n / (n rate_1)``.

Projected (``--project``, any machine): a build of n parts costs
``t_n = K / n + R_n + C_n``, from a breakdown of one build on one GPU
(``benchmarks/rcg_jk_breakdown.py``'s results): ``K`` the kernels' time (ERI,
digestion and digesting kernels, shared by cost: each part takes an equal
estimated share of every class), ``R`` the host work and plan filtering
between the launches, which every part repeats (``R_n = R``) or splits
(``R_n = R / n``; the GPU path splits the plan's filtering, a part of ``R``,
and repeats the launches' host work), and ``C_n`` the sums of the parts' J
and K: within a node of ``--gpus-per-node`` the parts' copies onto one GPU in
turn at ``--peer-gbs`` (as the GPU path sums; the 'ring sum' rows: a ring
all-reduce), across nodes a host copy
each way at ``--host-gbs`` and a ring all-reduce at ``--network-gbs`` with
``--network-latency-us`` a step. The link speeds are
assumptions (flags), not measurements; the model leaves out any imbalance of
the cost estimate within a class.

    python benchmarks/scaling.py --dry-run
    python benchmarks/scaling.py --project            # CPU: from results/rcg_jk_breakdown_*.json
    python benchmarks/scaling.py --quick              # 2 GPUs or more: Vitamin C def2-TZVP, short MD
    python benchmarks/scaling.py --scf                # every case, with whole SCFs

Results: benchmarks/results/scaling.{json,md} (measured) and
scaling_projection.{json,md} through benchmarks/_common.py.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time
from functools import partial

_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]  # _common, and the package when not installed

from _common import (RESULTS_DIR, environment_meta, gpu_or_none, molecules_dir, select_cases,  # noqa: E402
                     timed_once, write_results)
from scf_vs_gpu4pyscf import CASES as SCF_CASES  # noqa: E402
from scf_vs_gpu4pyscf import build_mol, time_build  # noqa: E402

NAME = "scaling"
CASES = {name: SCF_CASES[name] for name in ("vitc-def2-tzvp", "vitc-def2-qzvp", "water20-def2-qzvp",
                                            "gly30-def2-tzvp")}
QUICK = ("vitc-def2-tzvp",)
GPU_COUNTS = (1, 2, 4, 8)
#: The breakdowns the projection reads by default (rcg_jk_breakdown.py's results).
BREAKDOWNS = ("rcg_jk_breakdown_qzvp", "rcg_jk_breakdown_water20_qzvp_guess", "rcg_jk_breakdown")
PROJECTED_PARTS = (1, 2, 4, 8, 16, 32, 64)
#: The designs projected: (name, host work split among the parts, ring all-reduce within a node).
DESIGNS = (("host work repeated", False, False), ("host work split", True, False),
           ("host work split, ring sum", True, True))
#: The parts of a breakdown that the kernels of a build take, and the host work between them.
KERNEL_PARTS = ("ERI kernels, all classes", "digestion kernels, all classes",
                "ERI kernels that digest their blocks, all classes")
HOST_PART = "rest (host work between launches)"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="all", help=f"comma-separated names or 'all'; known: {', '.join(CASES)}")
    p.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}, and a short MD")
    p.add_argument("--density", choices=("guess", "converged"), default="guess")
    p.add_argument("--repeat", type=int, default=3, help="timed builds per GPU count (median)")
    p.add_argument("--scf", action="store_true", help="also time the whole RHF on each GPU count")
    p.add_argument("--no-md", action="store_true", help="leave out the replica MD")
    p.add_argument("--replicas-per-gpu", type=int, default=64)
    p.add_argument("--md-steps", type=int, default=2000)
    p.add_argument("--molecules-dir", type=pathlib.Path, default=molecules_dir())
    p.add_argument("--dry-run", action="store_true", help="list the cases and exit")
    p.add_argument("--project", action="store_true", help="project from breakdowns instead (no GPU needed)")
    p.add_argument("--breakdowns", default=",".join(BREAKDOWNS),
                   help="result stems under benchmarks/results that --project reads")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--peer-gbs", type=float, default=50.0, help="assumed GPU-to-GPU copy speed in a node, GB/s")
    p.add_argument("--host-gbs", type=float, default=25.0, help="assumed GPU-host copy speed, GB/s")
    p.add_argument("--network-gbs", type=float, default=12.5, help="assumed speed between nodes, GB/s")
    p.add_argument("--network-latency-us", type=float, default=5.0, help="assumed latency of one message, us")
    p.add_argument("--name", default=None, help="results file stem (default scaling / scaling_projection)")
    p.add_argument("--results-dir", type=pathlib.Path, default=RESULTS_DIR, help="where the results go")
    args = p.parse_args(argv)
    args.selected = select_cases(p, args.cases, args.quick, CASES, QUICK)
    if args.quick:
        args.md_steps = min(args.md_steps, 200)
    return args


# ---------------------------------------------------------------- projection

def breakdown_inputs(path: pathlib.Path) -> dict:
    """The figures of one build on one GPU that the model needs, from a
    rcg_jk_breakdown.py result file (the first contracted-stage mode in it)."""
    data = json.loads(pathlib.Path(path).read_text())
    meta, parts = data["meta"], {}
    for r in data["records"]:
        parts.setdefault(r["part"], r)      # the first row of each part: the first mode run
    missing = [p for p in KERNEL_PARTS[:2] + (HOST_PART,) if p not in parts]
    if missing:
        raise ValueError(f"{path}: not a J+K breakdown with the parts {missing}")
    kernels = sum(parts[p]["ms"] for p in KERNEL_PARTS if p in parts)
    return dict(case=f"{meta.get('molecule', '?')} / {meta.get('basis', '?')}", source=pathlib.Path(path).stem,
                gpu=meta.get("gpu"), density=meta.get("density"), nao=int(meta["nao"]),
                kernels_ms=kernels, host_ms=parts[HOST_PART]["ms"])


def reduction_ms(n: int, nao: int, args, ring_in_node: bool = False, matrices: int = 2) -> float:
    """The model's time to sum ``matrices`` (nao, nao) double matrices over
    ``n`` parts: in each node the parts' copies onto one GPU, one after the
    other (what the GPU path does), or with ``ring_in_node`` a ring all-reduce
    among its GPUs (as NCCL's); then between nodes a host copy each way and a
    ring all-reduce."""
    nbytes = matrices * nao * nao * 8
    in_node = min(n, args.gpus_per_node)
    copies = 2 * (in_node - 1) / in_node if ring_in_node else in_node - 1
    ms = copies * nbytes / (args.peer_gbs * 1e6)
    nodes = math.ceil(n / args.gpus_per_node)
    if nodes > 1:
        ms += 2 * nbytes / (args.host_gbs * 1e6)
        ms += 2 * (nodes - 1) / nodes * nbytes / (args.network_gbs * 1e6)
        ms += 2 * (nodes - 1) * args.network_latency_us / 1e3
    return ms


def project(inputs: dict, args, counts=PROJECTED_PARTS) -> list[dict]:
    """Rows of projected build time and efficiency for each part count, with
    the host work repeated by every part (today) and split among them."""
    k, r = inputs["kernels_ms"], inputs["host_ms"]
    t1 = k + r
    rows = []
    for design, split_host, ring in DESIGNS:
        for n in counts:
            host = r / n if split_host else r
            c = reduction_ms(n, inputs["nao"], args, ring)
            t = k / n + host + c
            rows.append(dict(case=inputs["case"], density=inputs["density"], source=inputs["source"],
                             design=design, gpus=n, kernels_ms=k / n, host_ms=host, reduction_ms=c, build_ms=t,
                             efficiency=t1 / (n * t)))
    return rows


def run_projection(args) -> int:
    records, sources = [], []
    for stem in [s.strip() for s in args.breakdowns.split(",") if s.strip()]:
        path = RESULTS_DIR / f"{stem}.json"
        if not path.is_file():
            print(f"{stem}: no such result in {RESULTS_DIR}", file=sys.stderr)
            return 2
        inputs = breakdown_inputs(path)
        sources.append(inputs)
        rows = project(inputs, args)
        records += rows
        for row in rows:
            if row["gpus"] in (8, 64):
                print(f"{row['case']:28s} {row['design']:26s} {row['gpus']:3d} GPUs  "
                      f"build {row['build_ms']:8.1f} ms  efficiency {row['efficiency']:.2f}", flush=True)
    meta = environment_meta()
    gpus = sorted({i["gpu"] for i in sources if i["gpu"]})
    meta["gpu"] = f"inputs measured on {', '.join(gpus) or 'an unnamed GPU'}; the projection is arithmetic"
    meta.update(kind="projection", inputs=sources, gpus_per_node=args.gpus_per_node, peer_gbs=args.peer_gbs,
                host_gbs=args.host_gbs, network_gbs=args.network_gbs,
                network_latency_us=args.network_latency_us)
    notes = ("A model, not a measurement: t_n = K/n + R_n + C_n from one GPU's breakdown (K: the kernels, "
             "R: host work and plan filtering between launches, which every part repeats or, 'host work "
             "split', does 1/n of), C_n the sums of J and K (each GPU's copied onto one in turn, or "
             "onto one in turn; 'ring sum': a ring all-reduce in the node) at the assumed link "
             f"speeds (peer {args.peer_gbs} GB/s, host {args.host_gbs} GB/s, network {args.network_gbs} GB/s, "
             f"{args.network_latency_us} us a message, {args.gpus_per_node} GPUs a node). "
             "Efficiency = t_1 / (n t_n). Times in ms. The GPU named is the breakdown's.")
    json_path, _ = write_results(args.name or f"{NAME}_projection", records, meta,
                                 title="J+K build over GPUs: projected from one GPU's breakdown",
                                 columns=["case", "density", "design", "gpus", "kernels_ms", "host_ms",
                                          "reduction_ms", "build_ms", "efficiency"], notes=notes,
                                 directory=args.results_dir)
    print(f"wrote {json_path}")
    return 0


# ---------------------------------------------------------------- measurement

def part_seconds(context, dm) -> list:
    """Each GPU part's own seconds in one build of ``context``: its
    ``get_jk_gpu`` call until its GPU is done (the parts run on threads)."""
    import cupy

    from pyscf_fusionrcg import gpu_jk
    plain, seconds = gpu_jk.get_jk_gpu, []

    def timed_part(*args, **kwargs):
        t0 = time.perf_counter()
        out = plain(*args, **kwargs)
        cupy.cuda.Device().synchronize()
        seconds.append(time.perf_counter() - t0)
        return out
    gpu_jk.get_jk_gpu = timed_part
    try:
        context.get_jk(dm)
    finally:
        gpu_jk.get_jk_gpu = plain
    return seconds


def density(case, mol, args, gpus):
    """The case's density on the GPU: the minao guess, or the RHF converged with every GPU."""
    import cupy
    from pyscf import scf

    from pyscf_fusionrcg import fusionrcg
    mf = scf.RHF(mol)
    if args.density == "guess":
        return cupy.asarray(mf.get_init_guess())
    mf = fusionrcg(mf, backend="gpu", progress=False, devices=list(range(gpus)))
    mf.conv_tol = 1e-9
    mf.kernel()
    if not mf.converged:
        raise RuntimeError(f"{case.name}: the RHF did not converge")
    return cupy.asarray(mf.make_rdm1())


def build_rows(case, args, gpus) -> list[dict]:
    """J+K build (and with --scf the RHF) of one case on 1, 2, 4, ... GPUs."""
    import cupy
    import numpy as np
    from pyscf import scf

    from pyscf_fusionrcg import fusionrcg
    from pyscf_fusionrcg.jk import JKContext
    from pyscf_fusionrcg.options import Options
    mol = build_mol(case, args.molecules_dir)
    dm = density(case, mol, args, gpus)
    rows, ref, base = [], None, {}
    for n in [c for c in GPU_COUNTS if c <= gpus]:
        context = JKContext(mol, backend="gpu", options=Options(progress=False, devices=tuple(range(n))))
        t, (vj, vk) = time_build(partial(context.get_jk, dm), args.repeat)
        vj, vk = cupy.asnumpy(vj), cupy.asnumpy(vk)
        if ref is None:
            ref = (vj, vk)
        parts = part_seconds(context, dm)
        row = dict(case=case.name, nao=mol.nao, task="J+K", gpus=n, seconds=t,
                   max_abs_diff=float(max(np.abs(vj - ref[0]).max(), np.abs(vk - ref[1]).max())),
                   slowest_part_s=max(parts), imbalance=max(parts) / (sum(parts) / len(parts)) - 1)
        rows.append(row)
        if args.scf:
            mf = fusionrcg(scf.RHF(mol), backend="gpu", progress=False, devices=list(range(n)))
            mf.verbose = 0
            t_scf, _ = timed_once(mf.kernel)     # its kernels compiled by the builds above
            rows.append(dict(case=case.name, nao=mol.nao, task="RHF", gpus=n, seconds=t_scf,
                             e_tot=float(mf.e_tot), converged=bool(mf.converged)))
        del context
        cupy.get_default_memory_pool().free_all_blocks()
    for row in rows:
        key = row["task"]
        base.setdefault(key, row["seconds"])
        row["efficiency"] = base[key] / (row["gpus"] * row["seconds"])
    return rows


def md_rows(args, gpus) -> list[dict]:
    """Replica MD of the fused cg-demo model, ``--replicas-per-gpu`` a GPU, on 1, 2, 4, ... GPUs."""
    from ase_flashschnet import shipped
    from ase_flashschnet.md import run_replicas
    model, atoms = shipped.get("cg-demo"), shipped.default_structure("cg-demo")
    rows, base = [], None
    for n in [c for c in GPU_COUNTS if c <= gpus]:
        replicas = args.replicas_per_gpu * n
        kw = dict(steps=args.md_steps, devices=[f"cuda:{i}" for i in range(n)], backend="fused", seed=1,
                  progress=False)
        run_replicas(model, atoms, replicas, **{**kw, "steps": 10})     # compile and capture, untimed
        seconds, _ = timed_once(partial(run_replicas, model, atoms, replicas, **kw))
        rate = replicas * args.md_steps / seconds
        base = rate if base is None else base
        rows.append(dict(case="cg-demo replica MD", task=f"{args.replicas_per_gpu} replicas/GPU", gpus=n,
                         seconds=seconds, replica_steps_per_s=rate, efficiency=rate / (n * base)))
    return rows


def dry_run(args):
    print(f"molecules: {args.molecules_dir}")
    for case in args.selected:
        path = args.molecules_dir / case.xyz
        state = "ok" if path.is_file() else f"missing {path}"
        print(f"{case.name:22s} {case.basis:10s} {state}")
    print(f"GPU counts: {', '.join(map(str, GPU_COUNTS))} (up to the machine's); "
          f"MD: {args.replicas_per_gpu} replicas a GPU, {args.md_steps} steps")


def main(argv=None):
    args = parse_args(argv)
    if args.dry_run:
        dry_run(args)
        return 0
    if args.project:
        return run_projection(args)
    cupy = gpu_or_none("benchmarks/scaling.py")
    if cupy is None:
        return 2
    gpus = cupy.cuda.runtime.getDeviceCount()
    if gpus < 2:
        print(f"benchmarks/scaling.py: this machine has {gpus} GPU; scaling needs 2 or more "
              "(--project works without)", file=sys.stderr)
        return 2
    meta = environment_meta()
    meta.update(gpus=gpus, density=args.density, repeat=args.repeat, complete=False)
    records = []

    def save():
        return write_results(args.name or NAME, records, meta, title="J/K, SCF and replica MD over GPUs",
                             columns=["case", "nao", "task", "gpus", "seconds", "efficiency", "slowest_part_s",
                                      "imbalance", "max_abs_diff", "replica_steps_per_s", "e_tot", "converged"],
                             notes="Strong scaling of J+K builds (median wall) and RHF, weak scaling of "
                             "replica MD; efficiency against the first GPU alone; slowest_part_s and "
                             "imbalance (slowest / mean - 1) from each GPU's own time in one more build; "
                             "max_abs_diff of J and K from one GPU's.",
                             directory=args.results_dir)
    for case in args.selected:
        for row in build_rows(case, args, gpus):
            records.append(row)
            print(row, flush=True)
        save()
    if not args.no_md:
        records += md_rows(args, gpus)
        save()
    meta["complete"] = True
    json_path, _ = save()
    print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
