"""Levels-form tuning on a GPU: ops per lane and level, and threads per SM.

The warp tier's interpreter (``run_levels`` in csrc/fusionrcg/eri_common.cuh)
has two constants in ``pyscf_fusionrcg.codegen``: ``LEVEL_OPS_PER_LANE`` (a
level holds 32 times as many ops; more ops give each lane more independent
loads but keep more values alive) and ``LEVELS_THREADS_PER_SM`` (the
registers ptxas may use, against the warps that can reside).  For each
configuration this script rebuilds the warp-tier kernels of the given classes
and times them on the same random quartets (``rcg_report_gpu.random_quartets``
of water/def2-QZVP by default), so the defaults rest on a measurement.

    python benchmarks/rcg_levels_tuning.py --class gdfd --class gggf --config 2,256 --config 4,256
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]

from _common import environment_meta, write_results  # noqa: E402
from rcg_report_gpu import WATER, random_quartets, time_kernel  # noqa: E402

from pyscf import gto  # noqa: E402

from pyscf_fusionrcg import codegen, launch, report  # noqa: E402


def configure(ops_per_lane: int, threads_per_sm: int) -> None:
    """Set the two constants and drop everything derived from them."""
    codegen.LEVEL_OPS_PER_LANE = ops_per_lane
    codegen.LEVEL_WIDTH = 32 * ops_per_lane
    codegen.LEVELS_THREADS_PER_SM = threads_per_sm
    codegen.level_sequence.cache_clear()
    codegen.table.cache_clear()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--class', dest='classes', action='append', required=True)
    ap.add_argument('--config', action='append', required=True,
                    help='OPS_PER_LANE,THREADS_PER_SM (repeatable)')
    ap.add_argument('--basis', default='def2-QZVP')
    ap.add_argument('--quartets', type=int, default=2048)
    ap.add_argument('--tier', default='warp', choices=('warp', 'global'))
    ap.add_argument('--name', default='rcg_levels_tuning')
    args = ap.parse_args(argv)

    from gpucore import require_gpu
    require_gpu('the levels tuning')
    mol = gto.M(atom=WATER, basis=args.basis, verbose=0)
    basis = launch.DeviceBasis(mol)
    configs = [tuple(int(x) for x in c.split(',')) for c in args.config]
    default = (codegen.LEVEL_OPS_PER_LANE, codegen.LEVELS_THREADS_PER_SM)
    records = []
    for ls in (report.parse_class(c) for c in args.classes):
        quartets = random_quartets(mol, ls, args.quartets, np.random.default_rng(0))
        for ops, threads in configs:
            configure(ops, threads)
            kern = launch.ClassKernel(ls, tier=args.tier)
            us = 1e3 * time_kernel(kern, basis, quartets) / len(quartets)
            att = kern.kernel.attributes()      # route()'s cached stats are of the first config
            row = dict(cls=report.class_name(ls), ops_per_lane=ops, threads_per_sm=threads,
                       block=kern.block, min_blocks=codegen.min_blocks(kern.program, kern.variant),
                       registers=att['num_regs'], spill_bytes=att['local_size_bytes'],
                       slots=kern.n_slots, us_per_quartet=us)
            records.append(row)
            print(' '.join(f'{k}={v}' for k, v in row.items()), flush=True)
    configure(*default)
    meta = environment_meta()
    meta.update(basis=args.basis, molecule='water', quartets_per_class=args.quartets, tier=args.tier,
                default_config=dict(ops_per_lane=default[0], threads_per_sm=default[1]))
    paths = write_results(args.name, records, meta, title='FusionRCG levels-form tuning',
                          notes='us_per_quartet: kernel time per contracted shell quartet (the same random '
                                'quartets for every configuration, median of 3 launches).')
    print('wrote', *paths)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
