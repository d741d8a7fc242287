"""What spreading one quartet's VRR over several threads would cost, counted from the programs (no GPU).

The warp tier runs each quartet from an op stream with every operand in
shared memory, and its classes take a steady 1.6-2.1x the time of the rows and
wavefronts that moves (``rcg_levels_traffic.py``).  A form that keeps operands
in registers instead needs each thread's live set to fit them.  For each
class (by default the warp-tier classes that take the most time in
``results/rcg_jk_breakdown_qzvp.json``) and each count of threads, the pieces
of ``schedule.split_primitive_stage`` (the primitive stage cut by accumulator
targets, each piece a depth-first VRR of its own targets): the ops of all
pieces against the whole stage's (the work recomputed), and of the largest
piece its ops, accumulators and peak live intermediates, without the
accumulators (which a form adding into device memory, as the pairmap kernels
do, keeps out of registers) and with them.

    python benchmarks/rcg_split_vrr.py
    python benchmarks/rcg_split_vrr.py --class fdfp --pieces 4,8,16
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]

from _common import RESULTS_DIR, environment_meta, print_record, write_results  # noqa: E402
from rcg_levels_traffic import measured  # noqa: E402

from pyscf_fusionrcg import ir, report, schedule  # noqa: E402


def piece_counts(table: ir.OpTable, n_temps: int) -> dict:
    """Ops, accumulates and peak live intermediates of one piece."""
    accumulates = int(np.count_nonzero(table.kind == ir.ACCUMULATE))
    peak = schedule._peak(table, n_temps)
    return dict(ops=len(table) - accumulates, acc=accumulates, peak=peak, peak_with_acc=peak + accumulates)


def split_records(name: str, counts) -> list:
    """One record per count of pieces, against the whole stage (one piece)."""
    ls = report.parse_class(name)
    ops = piece_counts(*schedule.split_primitive_stage(*ls, 1)[0])['ops']
    split = [[piece_counts(*p) for p in schedule.split_primitive_stage(*ls, k)] for k in counts]
    return [dict(cls=name, pieces=k, ops=ops, recomputed=sum(p['ops'] for p in parts) / ops,
                 **{f'piece_{key}': max(p[key] for p in parts) for key in ('ops', 'acc', 'peak', 'peak_with_acc')})
            for k, parts in zip(counts, split)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--class', dest='classes', action='append', help='e.g. fdfp (repeatable)')
    ap.add_argument('--breakdown', default=str(RESULTS_DIR / 'rcg_jk_breakdown_qzvp.json'))
    ap.add_argument('--top', type=int, default=8, help='warp-tier classes of the breakdown, by time')
    ap.add_argument('--pieces', default='1,2,4,8,16', help='threads per quartet, comma-separated')
    ap.add_argument('--name', default='rcg_split_vrr')
    args = ap.parse_args(argv)
    names = args.classes or [n for n, (tier, _) in measured(Path(args.breakdown)).items()
                             if tier == 'warp'][:args.top]
    counts = [int(x) for x in args.pieces.split(',')]
    records = []
    for name in names:
        for rec in split_records(name, counts):
            records.append(rec)
            print_record(rec)
    meta = environment_meta()
    meta.update(breakdown=args.breakdown)
    paths = write_results(args.name, records, meta, title="One quartet's VRR spread over threads: what each runs",
                          notes='Static counts of schedule.split_primitive_stage, no GPU. ops: the whole primitive '
                                "stage's (Boys values and VRR steps); recomputed: all pieces' ops over it; piece_*: "
                                'the largest piece: its ops, accumulators, peak live intermediates without the '
                                'accumulators and with them (doubles; a thread has at most 255 32-bit registers, '
                                'about 120 doubles besides addresses).')
    print('wrote', *paths)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
