"""FlashSchNet MD throughput and peak memory: fused kernels against the plain PyTorch
reference, side by side in one process on one GPU.

System: the shipped ``cg-demo`` model (CGSchNet size: 128 channels, 128 filters,
3 interactions, 50 Gaussians, 10 A cutoff, tanh; bond, angle and repulsion
priors; untrained) on its compact 269-bead chain (~58 neighbours per bead
within 10 A, as the 1ENH benchmark).

* Replicas: 64 and 128 copies advanced as one batch by ``run_replicas`` (BAOAB,
  300 K, --dt fs, Verlet skin --skin A, CUDA graphs when capturable). The
  reference is driven the same way; only its force call differs (the model's
  own ``energy_and_forces``: autograd, index_add_). Reported: aggregate ns/day
  at the stated time step, ms per step, timestep-molecules/s, peak GPU memory,
  neighbour-list builds and their time, how the list was rebuilt ('in-graph':
  gated GPU kernels inside the captured step; 'host'), host synchronisations,
  edge slots and the mean fraction of padding slots (which the reference
  processes like real edges and the fused kernels skip).
* One structure through ASE: steps/s of ``VelocityVerlet`` with
  ``FlashSchNetCalculator``, fused against reference.

    python benchmarks/md_throughput.py                   # the full comparison (GPU)
    python benchmarks/md_throughput.py --quick           # smoke run: 1 and 2 replicas, a few steps
    python benchmarks/md_throughput.py --fused-precisions fp32 bf16
    python benchmarks/md_throughput.py --profile --replicas 64   # where a step's time goes (GPU)

Without a GPU only the reference runs (the fused rows say why they were
skipped). Results go to benchmarks/results/md_throughput.{json,md} (a --quick
run to md_throughput_quick.*) through benchmarks/_common.py.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch
from ase import units
from ase.md.verlet import VelocityVerlet
from ase.neighborlist import neighbor_list

_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]  # _common, and the package when not installed

import gpucore  # noqa: E402
from _common import environment_meta, write_results  # noqa: E402

from ase_flashschnet import shipped  # noqa: E402
from ase_flashschnet.calculator import FlashSchNetCalculator, resolve_device  # noqa: E402
from ase_flashschnet.md import run_replicas  # noqa: E402

NAME = "md_throughput"
MODEL = "cg-demo"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 and 2 replicas, 5 steps, 5 ASE steps")
    p.add_argument("--replicas", type=int, nargs="+", help="replica counts (default 64 128)")
    p.add_argument("--steps", type=int, help="MD steps per replica run (default 1000)")
    p.add_argument("--ase-steps", type=int, help="ASE VelocityVerlet steps (default 200)")
    p.add_argument("--dt", type=float, default=4.0, help="time step in fs (default 4)")
    p.add_argument("--skin", type=float, default=1.0, help="Verlet skin in A (default 1)")
    p.add_argument("--fused-precisions", nargs="+", default=["fp32"], choices=("fp32", "fp16", "bf16"))
    p.add_argument("--check-interval", type=int, default=20,
                   help="steps per host status read (run_replicas check_interval, default 20)")
    p.add_argument("--edge-margin", type=float, default=0.05, help="spare neighbour-list slots (default 0.05)")
    p.add_argument("--profile", action="store_true",
                   help="also time the pieces of one step per engine (noise, integrator, rebuild, force call, "
                        "captured steps) and write md_throughput_profile.*")
    p.add_argument("--profile-only", action="store_true", help="only the --profile measurements")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    args.replicas = args.replicas or ([1, 2] if args.quick else [64, 128])
    args.steps = args.steps or (5 if args.quick else 1000)
    args.ase_steps = args.ase_steps or (5 if args.quick else 200)
    return args


def neighbours_per_bead(atoms, cutoff: float) -> float:
    return len(neighbor_list("i", atoms, cutoff)) / len(atoms)


def engines(args):
    """(label, backend, precision) of every engine compared."""
    return [("reference", "reference", "fp32")] + [(f"fused-{p}", "fused", p) for p in args.fused_precisions]


def skip_reason(backend, device):
    """Why an engine cannot run here (the fused kernels need a CUDA GPU), or None."""
    if backend == "fused" and not (device.type == "cuda" and gpucore.gpu_available()):
        return gpucore.unavailable_reason() or f"the fused kernels need a CUDA GPU (device is {device})"
    return None


def peak_memory_start(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device):
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def replica_run(model, chain, label, backend, precision, replicas, args, device):
    base = dict(benchmark="replicas", engine=label, precision=precision, replicas=replicas, beads=len(chain),
                dt_fs=args.dt, steps=args.steps, skin_A=args.skin)
    peak_memory_start(device)
    try:
        result = run_replicas(model, chain, replicas=replicas, steps=args.steps, dt_fs=args.dt, temperature_K=300.0,
                              friction_per_fs=0.001, integrator="baoab", device=device, precision=precision,
                              backend=backend, skin=args.skin, traj_interval=args.steps, progress=False, seed=0,
                              check_interval=args.check_interval, edge_margin=args.edge_margin)
    except torch.cuda.OutOfMemoryError as exc:
        return dict(base, status="out of memory", error=str(exc).splitlines()[0])
    end = chain.copy()
    end.positions = result.final_positions[0]
    return dict(base, status="ok", cuda_graph=result.cuda_graph, wall_s=result.wall_time_s,
                ms_per_step=1e3 * result.wall_time_s / result.steps_run, ns_per_day=result.ns_per_day,
                timestep_molecules_per_s=result.steps_per_second * replicas, peak_memory_gb=peak_memory_gb(device),
                neighbor_builds=result.neighbor_builds, neighbor_time_s=result.neighbor_time_s,
                neighbor_mode=result.neighbor_mode, neighbor_build_ms=result.neighbor_build_ms,
                host_syncs=result.host_syncs, edge_slots=result.edge_capacity,
                edge_padding=result.mean_edge_padding, neighbor_overflows=result.neighbor_overflows,
                neighbours_per_bead_end=neighbours_per_bead(end, 10.0),
                mean_temperature_end_K=float(result.temperatures[-1].mean()))


def profile_run(model, chain, label, backend, precision, replicas, args, device):
    """Time the pieces of a step (see ase_flashschnet.md.simulation.Simulation.profile)."""
    from ase_flashschnet.calculator import ForceEngine
    from ase_flashschnet.md.simulation import Simulation

    base = dict(benchmark="profile", engine=label, precision=precision, replicas=replicas)
    engine = ForceEngine(model, device=device, precision=precision, backend=backend)
    sim = Simulation(engine, [chain.copy() for _ in range(replicas)], dt_fs=args.dt, temperature_K=300.0,
                      friction_per_fs=0.001, integrator="baoab", skin=args.skin, seed=0, cuda_graph=True,
                      max_displacement=1.0, checkpoint=None, check_interval=args.check_interval,
                      edge_margin=args.edge_margin)
    with torch.cuda.device(device):
        out = sim.profile(repeats=40)
    out["outside_force_ms"] = out.get("step_ms_in_blocks", float("nan")) - out["force_call_ms"]
    return dict(base, status="ok", **out)


def ase_run(model, chain, label, backend, precision, args, device):
    atoms = chain.copy()
    atoms.calc = FlashSchNetCalculator(model, device=device, precision=precision, backend=backend, skin=args.skin)
    dyn = VelocityVerlet(atoms, timestep=args.dt * units.fs)
    dyn.run(min(10, args.ase_steps))  # warm-up: kernels, allocator, first neighbour list
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    dyn.run(args.ase_steps)
    wall = time.perf_counter() - t0
    return dict(benchmark="ase_calculator", engine=label, precision=precision, beads=len(chain), dt_fs=args.dt,
                steps=args.ase_steps, status="ok", wall_s=wall, steps_per_s=args.ase_steps / wall)


def line(rec) -> str:
    head = f"{rec['benchmark']:>14} {rec['engine']:>12}"
    if rec["status"] != "ok":
        return f"{head}  {rec.get('replicas', ''):>4}  {rec['status']}"
    if rec["benchmark"] == "ase_calculator":
        return f"{head}     1  {rec['steps_per_s']:8.1f} steps/s"
    mem = f"{rec['peak_memory_gb']:6.2f} GB" if rec["peak_memory_gb"] is not None else "   n/a"
    return (f"{head}  {rec['replicas']:>4}  {rec['ns_per_day']:9.1f} ns/day  {rec['ms_per_step']:8.2f} ms/step  "
            f"{mem}  graph={rec['cuda_graph']}  nl {rec['neighbor_builds']} builds {rec['neighbor_time_s']:.2f} s "
            f"({rec['neighbor_mode']}, {rec['neighbor_build_ms']:.2f} ms each, padding {rec['edge_padding']:.1%}, "
            f"{rec['neighbor_overflows']} overflows)  {rec['host_syncs']} host syncs")


def ratios(records) -> list[dict]:
    """Fused over reference, per replica count (speed-up and memory ratio)."""
    ref = {r["replicas"]: r for r in records if r["benchmark"] == "replicas" and r["engine"] == "reference"
           and r["status"] == "ok"}
    out = []
    for r in records:
        base = ref.get(r.get("replicas"))
        if r["benchmark"] == "replicas" and r["engine"] != "reference" and r["status"] == "ok" and base:
            out.append(dict(engine=r["engine"], replicas=r["replicas"], speedup=r["ns_per_day"] / base["ns_per_day"],
                            memory_ratio=(r["peak_memory_gb"] / base["peak_memory_gb"]
                                          if r["peak_memory_gb"] and base["peak_memory_gb"] else None)))
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device, "fp32")
    model, chain = shipped.get(MODEL), shipped.default_structure(MODEL)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    print(f"{MODEL}: {len(chain)} beads, {neighbours_per_bead(chain, 10.0):.1f} neighbours per bead within 10 A; "
          f"dt {args.dt} fs; device {gpu or device}")
    records, profiles = [], []
    if args.profile or args.profile_only:
        for label, backend, precision in engines(args):
            reason = skip_reason(backend, device)
            if reason or device.type != "cuda":
                continue
            for replicas in args.replicas:
                rec = profile_run(model, chain, label, backend, precision, replicas, args, device)
                profiles.append(rec)
                print("profile", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items()}, flush=True)
        if profiles:
            title = f"FlashSchNet MD step profile, {len(chain)}-bead chain, dt {args.dt:g} fs, {gpu or device}"
            print("results:", *write_results(NAME + "_profile", profiles, dict(environment_meta(), gpu=gpu),
                                             title=title))
        if args.profile_only:
            return 0
    for label, backend, precision in engines(args):
        reason = skip_reason(backend, device)
        for replicas in args.replicas:
            rec = (dict(benchmark="replicas", engine=label, precision=precision, replicas=replicas,
                        status=f"skipped: {reason}") if reason else
                   replica_run(model, chain, label, backend, precision, replicas, args, device))
            records.append(rec)
            print(line(rec), flush=True)
        rec = (dict(benchmark="ase_calculator", engine=label, precision=precision, status=f"skipped: {reason}")
               if reason else ase_run(model, chain, label, backend, precision, args, device))
        records.append(rec)
        print(line(rec), flush=True)
    notes = []
    for r in ratios(records):
        mem = f", peak memory x{r['memory_ratio']:.2f}" if r["memory_ratio"] else ""
        notes.append(f"{r['engine']} vs reference at {r['replicas']} replicas: x{r['speedup']:.2f} ns/day{mem}")
        print(notes[-1])

    config = dict(model.config, priors=[p["kind"] for p in model.config["priors"]])
    meta = dict(environment_meta(), gpu=gpu, device=str(device), model=MODEL, model_config=config, beads=len(chain),
                neighbours_per_bead_start=neighbours_per_bead(chain, 10.0), dt_fs=args.dt, skin_A=args.skin,
                steps=args.steps, ase_steps=args.ase_steps, quick=args.quick, ratios=ratios(records),
                check_interval=args.check_interval, edge_margin=args.edge_margin)
    title = f"FlashSchNet MD throughput, {len(chain)}-bead chain, dt {args.dt:g} fs, {gpu or device}"
    paths = write_results(NAME + ("_quick" if args.quick else ""), records, meta, title=title,
                          notes="\n\n".join(notes) or None)
    print("results:", *paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
