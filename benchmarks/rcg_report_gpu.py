"""FusionRCG per-class report on a GPU: tier, compiler registers and spills, kernel time.

For every canonical class (la >= lb, lc >= ld, (la,lb) >= (lc,ld)) up to
``--lmax`` (default 4, i.e. up to (gg|gg)), spherical output:

* the liveness columns of ``pyscf_fusionrcg.report`` (naive / unfused / fused
  peak live set);
* the routed tier and form, and what the compiler reports for that kernel
  (``tiers.compile_stats``: NVRTC registers, local/spill bytes, shared bytes);
* the kernel time per shell quartet on random quartets of the class drawn
  from a real basis (water/def2-QZVP by default: s..g shells with 1-8
  primitives), median of 3 timed launches after a warm-up (CUDA events);
* with ``--compare-tiers``, the same timing for every tier the class fits in
  (registers only up to ``--register-ops-max`` statements), to check the
  routing against measurements.

Every kernel is compiled first, ``--jobs`` at a time (NVRTC releases the GIL),
since a large register-tier class takes minutes in ptxas; ``compile_s`` is then
each kernel's own wall time while the others compiled beside it.

Writes benchmarks/results/<name>.json and .md.

    python benchmarks/rcg_report_gpu.py                       # up to (gg|gg)
    python benchmarks/rcg_report_gpu.py --lmax 2 --compare-tiers
"""
from __future__ import annotations

import argparse
import statistics
from concurrent.futures import ThreadPoolExecutor
import sys
import time
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]  # _common, and the package when not installed

from _common import environment_meta, write_results  # noqa: E402

from pyscf import gto  # noqa: E402

from pyscf_fusionrcg import codegen, host, ir, launch, report, tiers  # noqa: E402

WATER = 'O 0 0 0.1173; H 0 0.7572 -0.4692; H 0 -0.7572 -0.4692'


def random_quartets(mol, ls, n, rng):
    """n quartets of class ls from the molecule's shells (one nctr shape)."""
    bas = mol._bas
    picks = []
    for l in ls:
        shells = np.nonzero((bas[:, 1] == l) & (bas[:, 3] == 1))[0]
        picks.append(rng.choice(shells, n))
    return np.stack(picks, axis=1).astype(np.int32)


def time_kernel(kern, basis, quartets, repeats=3):
    """Median milliseconds of computing the blocks of all quartets (after a
    warm-up), through launch.class_blocks as the J/K build runs them: the
    pairmap classes' products and the global tier's scratch included."""
    import cupy as cp
    q = cp.asarray(quartets)

    def run():
        for _ in launch.class_blocks(kern, basis, q, 0.0):
            pass

    run()
    times = []
    for _ in range(repeats):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        run()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    return statistics.median(times)


def compile_all(classes, compare_tiers, register_ops_max, jobs):
    """{(ls, tier or None): compile seconds} for every kernel the report times,
    compiled on ``jobs`` threads; a tier the class does not fit is left out."""
    wanted = []
    for ls in classes:
        wanted.append((ls, None))
        for tier in compare_tiers:
            if tier == 'register' and tiers.n_statements(host.get_program(*ls)) > register_ops_max:
                continue                # long ptxas runs for a kernel that spills anyway
            wanted.append((ls, tier))

    def build(item):
        t0 = time.perf_counter()
        try:
            launch.get_kernel(item[0], tier=item[1])
        except ValueError:              # does not fit (shared)
            return item, None
        return item, round(time.perf_counter() - t0, 2)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return {item: sec for item, sec in pool.map(build, wanted) if sec is not None}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--lmax', type=int, default=4)
    ap.add_argument('--class', dest='classes', action='append', default=[],
                    help='only these classes, e.g. --class gggg (repeatable)')
    ap.add_argument('--basis', default='def2-QZVP')
    ap.add_argument('--mol', help='XYZ file (default: water)')
    ap.add_argument('--quartets', type=int, default=4096, help='quartets timed per class')
    ap.add_argument('--compare-tiers', action='store_true')
    ap.add_argument('--tiers', nargs='+', choices=codegen.TIERS, default=list(codegen.TIERS),
                    help='the tiers --compare-tiers times (default: all)')
    ap.add_argument('--register-ops-max', type=int, default=tiers.STRAIGHT_OPS_MAX,
                    help='time the register tier only for classes of at most this many statements '
                         '(default tiers.STRAIGHT_OPS_MAX; beyond it ptxas takes long)')
    ap.add_argument('--jobs', type=int, default=8, help='kernels compiled at once')
    ap.add_argument('--name', default='rcg_report_gpu')
    args = ap.parse_args(argv)

    from gpucore import require_gpu
    require_gpu('the GPU report')
    mol = gto.M(atom=args.mol or WATER, basis=args.basis, verbose=0)
    basis = launch.DeviceBasis(mol)
    rng = np.random.default_rng(0)
    classes = ([ir.parse_class(c) for c in args.classes] if args.classes
               else launch.canonical_classes(args.lmax))
    compile_s = compile_all(classes, args.tiers if args.compare_tiers else (),
                            args.register_ops_max, args.jobs)
    records = []
    for ls in classes:
        row = report.class_row(ls)
        kern = launch.get_kernel(ls)
        row['compile_s'] = compile_s[(ls, None)]
        row.update(tier=kern.stats['tier'], form=kern.stats['form'],
                   shared_bytes=kern.stats['shared_bytes'], kernel=kern.name,
                   slots=kern.n_slots, statements=tiers.n_statements(kern.program))
        present = all(((mol._bas[:, 1] == l) & (mol._bas[:, 3] == 1)).any() for l in ls)
        if present:
            quartets = random_quartets(mol, ls, args.quartets, rng)
            ms = time_kernel(kern, basis, quartets)
            row['us_per_quartet'] = 1e3 * ms / len(quartets)
            if args.compare_tiers:
                for tier in args.tiers:
                    row[f'us_{tier}'] = None
                    if (ls, tier) not in compile_s:     # not compiled: see compile_all
                        continue
                    k = launch.get_kernel(ls, tier=tier)
                    row[f'compile_s_{tier}'] = compile_s[(ls, tier)]
                    row[f'us_{tier}'] = 1e3 * time_kernel(k, basis, quartets) / len(quartets)
                    row[f'spill_{tier}'] = k.stats['spill_bytes']
        records.append(row)
        print(' '.join(f'{k}={v}' for k, v in row.items() if k != 'kernel'), flush=True)
    meta = environment_meta()
    meta.update(basis=args.basis, molecule=args.mol or 'water', quartets_per_class=args.quartets,
                register_ops_max=args.register_ops_max, compile_jobs=args.jobs,
                thresholds=dict(REG_STATEMENTS_MAX=tiers.REG_STATEMENTS_MAX, SPILL_BYTES_MAX=tiers.SPILL_BYTES_MAX,
                                STRAIGHT_OPS_MAX=tiers.STRAIGHT_OPS_MAX))
    paths = write_results(args.name, records, meta, title='FusionRCG classes on the GPU',
                          notes='us_per_quartet: kernel time per contracted shell quartet '
                                '(random quartets of the class, median of 3 launches).')
    print('wrote', *paths)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
