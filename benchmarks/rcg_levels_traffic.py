"""What the warp tier's op streams ask of a GPU's load/store pipeline, counted from the tables (no GPU).

For each class (by default the warp-tier classes that take the most time in
``results/rcg_jk_breakdown_qzvp.json``, VitC/def2-QZVP on an H200), from
``codegen.level_traffic`` of the variant of its tier in the breakdown (else
``tiers.choose_tier``'s): per stage the levels, the 128-byte record rows a
warp fetches, and the shared-memory wavefronts of its operand, pair-product
and result accesses, against the same accesses without bank conflicts.  The
primitive stage runs once per primitive quartet; the contracted stage once
per quartet (pairmap classes run it as the side passes instead: no op stream).  Next to
them the breakdown's measured microseconds per quartet, and what one quartet
costs an SM at one wavefront or row per cycle (1.98 GHz) if the primitive
stage ran ``--primitives`` times: a bound to compare with the measured time.

    python benchmarks/rcg_levels_traffic.py
    python benchmarks/rcg_levels_traffic.py --class fdfp --class gffd --primitives 2
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]

from _common import RESULTS_DIR, environment_meta, print_record, write_results  # noqa: E402

from pyscf_fusionrcg import codegen, host, report, tiers  # noqa: E402

CLOCK_GHZ = 1.98
H200_SMS = 132


def measured(path: Path) -> dict:
    """Class name -> (tier, measured us per quartet) from a breakdown's results."""
    if not path.is_file():
        return {}
    recs = json.loads(path.read_text())['records']
    return {r['part'][6:]: (r.get('tier'), r.get('eri_us_per_quartet')) for r in recs
            if r['part'].startswith('class ')}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--class', dest='classes', action='append', help='e.g. fdfp (repeatable)')
    ap.add_argument('--breakdown', default=str(RESULTS_DIR / 'rcg_jk_breakdown_qzvp.json'))
    ap.add_argument('--top', type=int, default=12, help='warp-tier classes of the breakdown, by time')
    ap.add_argument('--primitives', type=float, default=2.0,
                    help='primitive quartets per quartet assumed for the SM-time bound')
    ap.add_argument('--name', default='rcg_levels_traffic')
    args = ap.parse_args(argv)
    times = measured(Path(args.breakdown))
    names = args.classes or [n for n, (tier, _) in times.items() if tier == 'warp'][:args.top]
    records = []
    for name in names:
        prog = host.get_program(*report.parse_class(name))
        tier = times.get(name, (None,))[0] or tiers.choose_tier(prog)
        var = tiers.variant_for(prog, tier)
        if var.form != 'levels':
            print(f'{name}: {var.tier} tier, no op stream of levels: skipped')
            continue
        traffic = codegen.level_traffic(prog, var)
        rec = dict(cls=name, ctr=var.ctr)
        for stage, t in traffic.items():
            rec[f'{stage}_levels'] = t['levels']
            rec[f'{stage}_rows'] = t['record_rows']
            rec[f'{stage}_wavefronts'] = t['shared_wavefronts']
            # a pairmap variant has no contracted-stage stream: no accesses, no ratio
            rec[f'{stage}_conflicts'] = t['shared_wavefronts'] / t['conflict_free'] if t['conflict_free'] else None
        prim = traffic['primitive']['record_rows'] + traffic['primitive']['shared_wavefronts']
        ctr = traffic['contracted']['record_rows'] + traffic['contracted']['shared_wavefronts']
        cycles = args.primitives * prim + (ctr if var.ctr == 'ops' else 0)
        rec['bound_us_per_quartet'] = cycles / (CLOCK_GHZ * 1e3) / H200_SMS
        rec['measured_us_per_quartet'] = times.get(name, (None, None))[1]
        records.append(rec)
        print_record(rec)
    meta = environment_meta()
    meta.update(breakdown=args.breakdown, primitives=args.primitives, clock_ghz=CLOCK_GHZ, sms=H200_SMS)
    paths = write_results(args.name, records, meta, title="Warp tier's load/store traffic, counted from the op streams",
                          notes='Static counts per warp (codegen.level_traffic), no GPU. rows: 128-byte record '
                                'rows; wavefronts: shared-memory wavefronts of operand, pair-product and result '
                                'accesses; conflicts: wavefronts / the conflict-free count. bound_us_per_quartet: '
                                f'{args.primitives} primitive stages (+ the contracted stage where it is interpreted, '
                                f'ctr=ops) at one row or wavefront per cycle of one SM, {CLOCK_GHZ} GHz, over '
                                f'{H200_SMS} SMs; the pairmap side passes are not counted. measured: the breakdown '
                                "(H200, ERI kernels incl. the pairmap side passes).")
    print('wrote', *paths)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
