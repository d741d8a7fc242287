"""FlashSchNet throughput: fused kernels vs the plain PyTorch reference, side by side.

The case of the FlashSchNet paper: R replicas of a compact 269-bead coarse-grained
protein as one disconnected batch (CGSchNet: 128 channels, 128 filters, 3
interactions, 50 Gaussians, 10 A cutoff, tanh). The protein is built here: a
random chain with 3.8 A bonds relaxed into a sphere at protein density
(~57 neighbours per bead within 10 A, as measured in BRIEF section 3).

For each replica count, on one GPU in one run: median time of one force
evaluation (CUDA events, after warm-up), peak GPU memory of one evaluation
(torch.cuda.max_memory_allocated after a reset, inputs included), aggregate
ns/day at a 4 fs step, and the force error against the reference, for the
reference (``SchNet.energy_and_forces``, autograd, float32) and FusedSchNet in
fp32 / bf16 / fp16. Results go to benchmarks/results/ (JSON + markdown).

With ``--cuda-graph`` each method is also timed as a replay of one force
evaluation captured in a CUDA graph (``torch.cuda.CUDAGraph``: static inputs, the
same neighbour graph, so no launch or Python overhead), in rows labelled
``... (CUDA graph)``: ``speedup`` is still against the eager reference, and
``speedup_vs_graph_ref`` against the reference replayed the same way. The replay's
forces are compared with the eager call's (``graph_vs_eager_max_rel``; the fused
path is deterministic, so 0 is expected there). A method that cannot be captured
gets a row with the reason in ``note``.

    python benchmarks/schnet_throughput.py                 # 64 and 128 replicas
    python benchmarks/schnet_throughput.py --cuda-graph    # + CUDA-graph rows
    python benchmarks/schnet_throughput.py --quick         # smoke run
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]  # _common, and the package when not installed

from _common import environment_meta, write_results  # noqa: E402

from ase_flashschnet.fused import FusedSchNet  # noqa: E402
from ase_flashschnet.model import SchNet  # noqa: E402
from ase_flashschnet.neighbors import build_torch  # noqa: E402

N_BEADS = 269
BOND = 3.8
CUTOFF = 10.0
TIMESTEP_FS = 4.0
N_TYPES = 25


def compact_chain(n_beads: int = N_BEADS, bond: float = BOND, radius: float = 12.75, min_dist: float = 3.8,
                  seed: int = 0, steps: int = 600) -> np.ndarray:
    """A random chain of ``n_beads`` with ``bond`` spacing, relaxed (Adam on a penalty:
    bond lengths, non-bonded pairs closer than ``min_dist``, beads outside a sphere of
    ``radius``) into a compact globule; radius 12.75 A gives ~57 neighbours per bead
    within 10 A for 269 beads."""
    rng = np.random.default_rng(seed)
    step = rng.normal(size=(n_beads, 3))
    pos = np.cumsum(bond * step / np.linalg.norm(step, axis=1, keepdims=True), axis=0)
    pos -= pos.mean(0)
    idx = np.arange(n_beads)
    nonbonded = np.abs(idx[:, None] - idx[None]) > 1
    m, v = np.zeros_like(pos), np.zeros_like(pos)
    for t in range(1, steps + 1):
        grad = np.zeros_like(pos)
        b = pos[1:] - pos[:-1]
        length = np.linalg.norm(b, axis=1, keepdims=True)
        fb = 2 * (length - bond) * b / length
        grad[1:] += fb
        grad[:-1] -= fb
        diff = pos[:, None] - pos[None]
        r = np.sqrt((diff ** 2).sum(-1)) + np.eye(n_beads)
        overlap = np.where(nonbonded, np.maximum(min_dist - r, 0.0), 0.0)
        grad -= 2 * np.einsum("ij,ijk->ik", overlap / r, diff)
        rad = np.linalg.norm(pos, axis=1, keepdims=True)
        grad += 2 * np.maximum(rad - radius, 0.0) * pos / rad
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad ** 2
        pos -= 0.1 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    return pos


def build_case(n_replicas: int, device, seed: int = 0):
    """(model, types, positions, graph) for ``n_replicas`` slightly perturbed copies."""
    base = compact_chain(seed=seed)
    rng = np.random.default_rng(seed + 1)
    pos = np.concatenate([base + rng.normal(scale=0.05, size=base.shape) for _ in range(n_replicas)])
    pos = torch.tensor(pos, dtype=torch.float32, device=device)
    batch = torch.arange(n_replicas, device=device).repeat_interleave(N_BEADS)
    graph = build_torch(pos, CUTOFF, batch=batch, n_systems=n_replicas)
    bead_types = torch.as_tensor(rng.integers(0, N_TYPES, size=N_BEADS), device=device)
    types = bead_types.repeat(n_replicas)
    model = SchNet(hidden_channels=128, num_filters=128, num_interactions=3, num_rbf=50, cutoff=CUTOFF,
                   activation="tanh", num_types=N_TYPES, seed=seed).to(device)
    return model, types, pos, graph


def median_ms(fn, warmup: int, reps: int) -> float:
    """Median CUDA-event time of ``fn`` in ms, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def peak_bytes(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def capture_graph(fn):
    """Capture one call of ``fn`` (returning a tuple of tensors) in a CUDA graph, after
    warm-up calls on a side stream as torch.cuda.graph requires; returns
    (replay, graph), replay() replaying it and returning the graph's static outputs."""
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = fn()
    torch.cuda.synchronize()

    def replay():
        graph.replay()
        return static

    return replay, graph


def ns_per_day(ms: float, replicas: int) -> float:
    return replicas * (86400e3 / ms) * TIMESTEP_FS * 1e-6


def _errors(energy, forces, ref) -> dict:
    df = forces.double() - ref["forces"]
    return dict(force_max_rel=float(df.abs().max() / ref["forces"].abs().max()),
                force_rms_rel=float(df.norm() / ref["forces"].norm()),
                energy_max_rel=float((energy.double() - ref["energy"]).abs().max() / ref["energy"].abs().max()))


def run_case(n_replicas: int, precisions, warmup: int, reps: int, device, cuda_graph: bool = False) -> list[dict]:
    model, types, pos, graph = build_case(n_replicas, device)
    n_edges = graph.num_edges
    common = dict(replicas=n_replicas, beads=n_replicas * N_BEADS, edges=n_edges,
                  neighbours_per_bead=round(n_edges / (n_replicas * N_BEADS), 1))
    variants = [("reference (torch fp32)", lambda: model.energy_and_forces(types, pos, graph))]
    for precision in precisions:
        fused = FusedSchNet(model, precision=precision, device=device)
        variants.append((f"fused {precision}", lambda f=fused: f.energy_and_forces(types, pos, graph)))
    records, ref, ref_graph_ms = [], None, None

    def emit(row):
        records.append(row)
        print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)

    for name, fn in variants:
        try:
            energy, forces = fn()
            ms = median_ms(fn, warmup, reps)
            peak = peak_bytes(fn)
        except torch.cuda.OutOfMemoryError:
            emit(dict(common, method=name, ms_per_eval=None, note="out of GPU memory"))
            torch.cuda.empty_cache()
            continue
        row = dict(common, method=name, ms_per_eval=round(ms, 3), ns_per_day=round(ns_per_day(ms, n_replicas), 1),
                   peak_gb=round(peak / 1e9, 3))
        if ref is None and name.startswith("reference"):
            ref = dict(ms=ms, peak=peak, energy=energy.double(), forces=forces.double())
            row.update(speedup=1.0, memory_ratio=1.0)
        elif ref is not None:
            row.update(speedup=round(ref["ms"] / ms, 2), memory_ratio=round(peak / ref["peak"], 3),
                       **_errors(energy, forces, ref))
        emit(row)
        if not cuda_graph:
            continue
        gname = f"{name} (CUDA graph)"
        replay = captured = None
        try:
            replay, captured = capture_graph(fn)
            g_energy, g_forces = (t.clone() for t in replay())
            g_ms = median_ms(replay, warmup, reps)
        except torch.cuda.OutOfMemoryError:
            emit(dict(common, method=gname, ms_per_eval=None, note="out of GPU memory"))
            continue
        except Exception as exc:  # a path that cannot be captured is reported, not hidden
            emit(dict(common, method=gname, ms_per_eval=None,
                      note=f"capture failed: {type(exc).__name__}: {exc}"[:300]))
            continue
        finally:
            del replay, captured
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        grow = dict(common, method=gname, ms_per_eval=round(g_ms, 3),
                    ns_per_day=round(ns_per_day(g_ms, n_replicas), 1),
                    graph_vs_eager_max_rel=float((g_forces.double() - forces.double()).abs().max()
                                                 / forces.double().abs().max()),
                    note="replay of one captured evaluation (static inputs and neighbour graph)")
        if name.startswith("reference"):
            ref_graph_ms = g_ms
        if ref is not None:
            grow["speedup"] = round(ref["ms"] / g_ms, 2)
            if ref_graph_ms is not None:
                grow["speedup_vs_graph_ref"] = round(ref_graph_ms / g_ms, 2)
            if not name.startswith("reference"):
                grow.update(_errors(g_energy, g_forces, ref))
        emit(grow)
    return records


NOTES = """\
speedup = reference ms / ms (the eager reference, for every row); memory_ratio = peak /
reference peak (peaks include the inputs, neighbour graph and weights). ns_per_day =
replicas x steps per day x 4 fs. Errors are against the reference's float32 forces
(max |dF| / max |F_ref|, and the RMS ratio). Timings are medians of CUDA-event timed
force evaluations after warm-up. Rows "(CUDA graph)" (--cuda-graph) time the replay
of one captured evaluation with static inputs and neighbour graph;
speedup_vs_graph_ref compares with the reference replayed the same way, and
graph_vs_eager_max_rel is max |F_replay - F_eager| / max |F_eager| of the same method.
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 replicas, 3 repetitions")
    parser.add_argument("--name", default=None, help="results file stem (default schnet_throughput[_quick])")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="also time each method replayed from a captured CUDA graph")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("schnet_throughput needs a CUDA GPU (torch.cuda.is_available() is False)")
        return 1
    if args.quick:
        args.replicas, args.warmup, args.reps = [4], 1, 3
    device = torch.device("cuda", torch.cuda.current_device())
    records = []
    for n in args.replicas:
        records += run_case(n, args.precisions, args.warmup, args.reps, device, cuda_graph=args.cuda_graph)
    name = args.name or ("schnet_throughput_quick" if args.quick else "schnet_throughput")
    paths = write_results(name, records, environment_meta(), title="FlashSchNet force-evaluation throughput",
                          notes=NOTES)
    print("wrote", *paths)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
