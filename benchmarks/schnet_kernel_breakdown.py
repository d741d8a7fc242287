"""Where the time of one FusedSchNet force evaluation goes, kernel by kernel.

Same case as benchmarks/schnet_throughput.py (default 64 replicas of the 269-bead
protein, ~1.0 M edges, F = 128, 50 Gaussians, 3 interactions, tanh). For each
precision, on the real inputs of one force call (the per-interaction h = lin1(x),
the backward's dE/dm captured by autograd), each piece is timed alone with CUDA
events (median of --reps after --warmup):

* edge_lengths, cfconv_forward (x3), cfconv_backward (x3), edge_forces,
  segment_sum (per-system energies): the fused kernels;
* torch dense: the per-atom torch part of the force path
  (``FusedSchNet._energy_grad_d``: embedding, lin1/lin2/lin, activations, output
  MLP and their hand-written backward) with the CFConv kernels replaced by
  pass-throughs of the same shapes;
* full: ``energy_and_forces`` as the throughput benchmark times it; ``rest`` =
  full - the sum of the pieces (launch gaps, autograd bookkeeping, small ops);
* host enqueue: CPU wall time of one call without synchronising; when it
  approaches ``full`` the evaluation is launch-bound, not GPU-bound.

The CFConv rows also give the achieved TFLOP/s from ``fused.cfconv_flops`` (the
FLOPs the kernels execute; the 16-bit path pads 50 Gaussians to 64).

Kernel variants (``--variants``, compile-time defines of csrc/flashschnet/cfconv.cu)
are timed side by side on the same inputs, and their outputs are compared bit for
bit with the default build (and by the largest relative difference), so one GPU
run decides between them: ``FS_SEGSUM=0`` is the previous segment sum (F threads
walking the tile's edges one by one; it adds in another order, so it differs in the
last bits), ``FS_PIPELINE=0`` loads the edge arrays at the start of each tile
instead of one tile ahead. Each CFConv row also gives the registers, spill bytes,
resident blocks per SM, threads and shared memory of its kernel. ``FS_PROFILE=1``
is the default build with clock() marks at each barrier of the tile loop: it adds
rows with the cycles per block spent in each phase (setup, staging, Gaussians,
gemm1 + activation, gemm2, epilogue, segment sum; the default build's carries of
the segment sum are combined during "stage edges") of one forward and one backward
launch, i.e. where inside the kernels the time goes (its own timings are slightly
slower than the default's).

    python benchmarks/schnet_kernel_breakdown.py
    python benchmarks/schnet_kernel_breakdown.py --replicas 128 --precisions bf16
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]  # _common, and the package when not installed

from _common import environment_meta, write_results  # noqa: E402
from schnet_throughput import build_case, median_ms  # noqa: E402

from ase_flashschnet import fused as fz  # noqa: E402

DEFAULT_VARIANTS = ["FS_SEGSUM=0", "FS_PIPELINE=0", "FS_PROFILE=1", "FS_SEGSUM=0,FS_PROFILE=1"]


def host_ms(fn, reps: int) -> float:
    """Median CPU wall time to enqueue ``fn`` (synchronised between calls, not inside)."""
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize()
    return statistics.median(times)


def parse_variant(text: str) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        out[key.strip()] = int(value)
    return out


def capture(model_f: fz.FusedSchNet, types, pos32, csr):
    """The inputs each kernel sees in one force call: d, per interaction (h, dE/dm),
    dE/dd and the per-atom energies."""
    kernels = model_f._kernels
    d = kernels.edge_lengths(pos32, csr).requires_grad_(True)
    hs, ms = [], []
    with torch.enable_grad():
        x = F.embedding(types, model_f._embedding)
        for blk in model_f._blocks:
            h = F.linear(x, blk.lin1)
            m = fz.schnet._CFConv.apply(h, d, kernels, blk, csr)
            hs.append(h.detach())
            ms.append(m)
            x = x + F.linear(model_f.act(F.linear(m, blk.lin2_w, blk.lin2_b)), blk.lin_w, blk.lin_b)
        o1w, o1b, o2w, o2b = model_f._out
        out = F.linear(model_f.out_act(F.linear(x, o1w, o1b)), o2w, o2b).squeeze(-1)
        per_atom = model_f._scale * out + model_f._shift + model_f._atomref[types]
        grad_d, *gms = torch.autograd.grad(per_atom.sum(), [d, *ms])
    gms = [g.contiguous() for g in gms]
    return d.detach(), hs, gms, grad_d.contiguous(), per_atom.detach()


class _PassThrough:
    """Stands in for the CFConv kernels: m = h forward, (gm, zeros) backward."""

    def __init__(self, n_edges: int, device):
        self.grad_d = torch.zeros(n_edges, device=device)

    def cfconv_forward(self, h, d, csr, blk):
        return h

    def cfconv_backward(self, h, gm, d, csr, blk):
        return gm, self.grad_d.clone()


def dense_part(model_f: fz.FusedSchNet, types, d, csr):
    """The torch per-atom part of the force path (FusedSchNet._energy_grad_d, forward
    and hand-written backward) with each CFConv a pass-through, so it is timed
    without the fused kernels."""
    stand_in = _PassThrough(csr.n_edges, d.device)

    def run():
        real = model_f._kernels
        model_f._kernels = stand_in
        try:
            with torch.no_grad():
                model_f._energy_grad_d(types, d, csr)
        finally:
            model_f._kernels = real
    return run


PHASES = ["setup", "stage edges", "Gaussians", "gemm1 + act", "gemm2", "epilogue + messages", "segment sum"]


def phase_rows(kern, variant: str, fwd, bwd, n_edges: int) -> list[dict]:
    """Cycles per phase of the tile loop (an FS_PROFILE=1 build; cfconv.cu), summed
    over a block's tiles and averaged over blocks, for one forward and one backward
    launch of the first interaction."""
    read = kern.cf_module.get_kernel("cfconv_profile_read")
    rows = []
    for name, launch, geometry in (("cfconv_forward", fwd, kern.fwd_launch), ("cfconv_backward", bwd, kern.bwd_launch)):
        n_blocks = kern._grid(geometry[0], n_edges)
        launch()
        buf = torch.zeros(n_blocks * len(PHASES), dtype=torch.int64, device="cuda")
        read((64,), (256,), (buf, np.int32(n_blocks)))
        cycles = buf.view(n_blocks, len(PHASES)).double().mean(0)
        total = float(cycles.sum())
        for phase, c in zip(PHASES, cycles.tolist()):
            rows.append(dict(part=f"{name} phase: {phase}", variant=variant, kcycles_per_block=round(c / 1e3, 1),
                             share_of_kernel=round(c / total, 3)))
    return rows


def run_precision(model, types, pos, graph, precision, variants, warmup, reps, device) -> list[dict]:
    mf = fz.FusedSchNet(model, precision=precision, device=device)
    pos32 = pos.detach().float().contiguous()
    csr = mf._csr_of(graph, pos32.shape[0])
    k = mf._kernels
    d, hs, gms, grad_d, per_atom = capture(mf, types, pos32, csr)
    cfg = model.config
    flop_f, flop_b = fz.cfconv_flops(csr.n_edges, cfg["num_filters"], cfg["num_rbf"], precision)
    n_int = len(mf._blocks)
    t = lambda fn: median_ms(fn, warmup, reps)  # noqa: E731

    def cf_rows(kern, variant: str, ref=None):
        fwd = sum(t(lambda i=i: kern.cfconv_forward(hs[i], d, csr, mf._blocks[i])) for i in range(n_int))
        bwd = sum(t(lambda i=i: kern.cfconv_backward(hs[i], gms[i], d, csr, mf._blocks[i])) for i in range(n_int))
        outs = [(kern.cfconv_forward(hs[i], d, csr, mf._blocks[i]),
                 *kern.cfconv_backward(hs[i], gms[i], d, csr, mf._blocks[i])) for i in range(n_int)]
        same = None if ref is None else all(bool(torch.equal(a, b)) for o, r in zip(outs, ref) for a, b in zip(o, r))
        diff = None if ref is None else max(float((a.double() - b.double()).abs().max() / b.double().abs().max())
                                            for o, r in zip(outs, ref) for a, b in zip(o, r))
        rows = [dict(part="cfconv_forward", calls=n_int, ms=fwd, tflops=n_int * flop_f / fwd * 1e-9),
                dict(part="cfconv_backward", calls=n_int, ms=bwd, tflops=n_int * flop_b / bwd * 1e-9)]
        for r, fn, (grid, threads, smem) in zip(rows, (kern.fwd, kern.bwd), (kern.fwd_launch, kern.bwd_launch)):
            attrs = fn.attributes(device.index)
            r.update(variant=variant, regs=attrs["num_regs"], spill_bytes=attrs["local_size_bytes"],
                     blocks_per_sm=grid // torch.cuda.get_device_properties(device).multi_processor_count,
                     threads=threads, smem_kb=round(smem / 1024, 1))
            if same is not None:
                r["bitwise_same_as_default"] = same
                r["max_rel_diff_to_default"] = diff
        return rows, outs

    rows, ref_outs = cf_rows(k, "default")
    rows += [dict(part="edge_lengths", calls=1, ms=t(lambda: k.edge_lengths(pos32, csr))),
             dict(part="edge_forces", calls=1, ms=t(lambda: k.edge_forces(grad_d, pos32, csr, False))),
             dict(part="segment_sum", calls=1,
                  ms=t(lambda: k.segment_sum(per_atom, csr.sys_order, csr.sys_ptr, csr.n_systems))),
             dict(part="torch dense (fwd+bwd)", calls=1, ms=t(dense_part(mf, types, d, csr)))]
    for r in rows[2:]:
        r["variant"] = "default"
    full_fn = lambda: mf.energy_and_forces(types, pos, graph)  # noqa: E731
    full = t(full_fn)
    parts = sum(r["ms"] for r in rows)
    rows += [dict(part="rest (full - parts)", calls=1, ms=full - parts, variant="default"),
             dict(part="full energy_and_forces", calls=1, ms=full, variant="default"),
             dict(part="host enqueue (CPU)", calls=1, ms=host_ms(full_fn, reps), variant="default")]
    for text in variants:
        defines = dict(k.defines, **parse_variant(text))
        try:
            kv = fz.kernels.Kernels(defines, device)
        except Exception as exc:  # a variant that does not build is reported, not fatal
            rows.append(dict(part="cfconv", variant=text, note=f"build failed: {exc}"[:200]))
            continue
        rows += cf_rows(kv, text, ref_outs)[0]
        if defines.get("FS_PROFILE"):
            rows += phase_rows(kv, text, lambda: kv.cfconv_forward(hs[0], d, csr, mf._blocks[0]),
                               lambda: kv.cfconv_backward(hs[0], gms[0], d, csr, mf._blocks[0]), csr.n_edges)
    for r in rows:
        r["precision"] = precision
        if r.get("ms") is not None:
            r["ms"] = round(r["ms"], 4)
            r["share_of_full"] = round(r["ms"] / full, 3) if r["part"] != "full energy_and_forces" else 1.0
        if "tflops" in r:
            r["tflops"] = round(r["tflops"], 1)
    return rows


NOTES = """\
ms: GPU time (CUDA events, median) of all `calls` launches of that part in one force
evaluation. share_of_full: ms / full. tflops: executed CFConv FLOPs
(fused.cfconv_flops; 16-bit pads the Gaussians to 64) / time. `rest` is what the
full call spends outside the timed pieces (launch gaps, autograd, small torch ops);
`host enqueue` is the CPU time to issue one call - if it is close to `full`, the
evaluation is launch-bound. Variants are other compile-time defines of cfconv.cu,
timed on the same inputs; bitwise_same_as_default compares their outputs with the
default build's (max_rel_diff_to_default: max |difference| / max |default| over all
outputs). Phase rows (FS_PROFILE=1): kcycles_per_block = thousands of
cycles thread 0 of a block spent in that phase (barrier to barrier, so waiting on the
slowest warp counts), averaged over blocks; share_of_kernel = fraction of the sum.
"""

COLUMNS = ["precision", "variant", "part", "calls", "ms", "share_of_full", "tflops", "regs", "spill_bytes",
           "blocks_per_sm", "threads", "smem_kb", "bitwise_same_as_default", "max_rel_diff_to_default",
           "kcycles_per_block", "share_of_kernel", "note"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=64)
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp16", "fp32"])
    parser.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS,
                        help="extra cfconv.cu define sets, e.g. FS_PIPELINE=0,SEG_CHUNK=1")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--name", default="schnet_kernel_breakdown")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("schnet_kernel_breakdown needs a CUDA GPU (torch.cuda.is_available() is False)")
        return 1
    device = torch.device("cuda", torch.cuda.current_device())
    model, types, pos, graph = build_case(args.replicas, device)
    print(f"{args.replicas} replicas, {pos.shape[0]} beads, {graph.num_edges} edges")
    records = []
    for precision in args.precisions:
        rows = run_precision(model, types, pos, graph, precision, args.variants, args.warmup, args.reps, device)
        for r in rows:
            r.update(replicas=args.replicas, edges=graph.num_edges)
            print("  ".join(f"{c}={r[c]}" for c in COLUMNS if c in r), flush=True)
        records += rows
    paths = write_results(args.name, records, environment_meta(), title="FlashSchNet kernel breakdown",
                          columns=COLUMNS + ["replicas", "edges"], notes=NOTES)
    print("wrote", *paths)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
