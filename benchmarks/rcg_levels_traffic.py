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
costs an SM at one wavefront or row per cycle (1.98 GHz) with the primitive
stage run as often as the kernels run it: the mean primitive quartets of the
class's quartets in the molecule (``--xyz``, ``--basis``; Schwarz-screened on
the CPU with the guess density's largest element as every block's bound, as
a plan is; primitive pairs past the kernels' ``FR_EXP_CUTOFF`` skipped), or
``--primitives`` times: a bound to compare with the measured time.

    python benchmarks/rcg_levels_traffic.py
    python benchmarks/rcg_levels_traffic.py --class fdfp --class gffd --primitives 2
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]

from _common import RESULTS_DIR, environment_meta, molecules_dir, print_record, write_results  # noqa: E402

from pyscf_fusionrcg import codegen, host, report, tiers  # noqa: E402

ERI_COMMON = _HERE.parent / 'csrc' / 'fusionrcg' / 'eri_common.cuh'

CLOCK_GHZ = 1.98
H200_SMS = 132


def measured(path: Path) -> dict:
    """Class name -> (tier, measured us per quartet) from a breakdown's results."""
    if not path.is_file():
        return {}
    recs = json.loads(path.read_text())['records']
    return {r['part'][6:]: (r.get('tier'), r.get('eri_us_per_quartet')) for r in recs
            if r['part'].startswith('class ')}


def exp_cutoff() -> float:
    """The kernels' primitive-pair cutoff, FR_EXP_CUTOFF of eri_common.cuh."""
    return float(re.search(r'#define FR_EXP_CUTOFF ([0-9.eE+-]+)', ERI_COMMON.read_text()).group(1))


def primitive_pairs(mol) -> np.ndarray:
    """(nbas, nbas) primitive pairs of each shell pair the kernels run: those
    whose exponent ab/(a+b) |A-B|^2 is at most :func:`exp_cutoff`."""
    from pyscf import gto
    xyz = mol.atom_coords()[mol._bas[:, gto.ATOM_OF]]
    cutoff, exps = exp_cutoff(), [mol.bas_exp(i) for i in range(mol.nbas)]
    r2 = ((xyz[:, None] - xyz[None]) ** 2).sum(-1)
    out = np.empty((mol.nbas, mol.nbas))
    for i, a in enumerate(exps):
        for j, b in enumerate(exps):
            out[i, j] = np.count_nonzero(np.outer(a, b) / np.add.outer(a, b) * r2[i, j] <= cutoff)
    return out


def mean_primitives(mol) -> dict:
    """Class name -> primitive quartets per quartet, over the quartets of a
    plan screened with the guess density's largest element."""
    from pyscf import scf
    from pyscf_fusionrcg.screening import iter_tasks, shell_density_max
    bound = float(shell_density_max(mol, scf.RHF(mol).get_init_guess()).max())
    pairs, runs, quartets = primitive_pairs(mol), {}, {}
    for t in iter_tasks(mol, None, density_bound=bound):
        q, name = t.quartets, report.class_name(t.key)
        runs[name] = runs.get(name, 0.0) + float((pairs[q[:, 0], q[:, 1]] * pairs[q[:, 2], q[:, 3]]).sum())
        quartets[name] = quartets.get(name, 0) + len(q)
    return {name: runs[name] / quartets[name] for name in quartets}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--class', dest='classes', action='append', help='e.g. fdfp (repeatable)')
    ap.add_argument('--breakdown', default=str(RESULTS_DIR / 'rcg_jk_breakdown_qzvp.json'))
    ap.add_argument('--top', type=int, default=12, help='warp-tier classes of the breakdown, by time')
    ap.add_argument('--xyz', default='organic/020_Vitamin_C.xyz',
                    help="the breakdown's molecule, relative to $FUSION_MOLECULES")
    ap.add_argument('--basis', default='def2-QZVP')
    ap.add_argument('--primitives', type=float, default=None,
                    help='primitive quartets per quartet for the SM-time bound, instead of counting them '
                         'in the molecule')
    ap.add_argument('--name', default='rcg_levels_traffic')
    args = ap.parse_args(argv)
    times = measured(Path(args.breakdown))
    names = args.classes or [n for n, (tier, _) in times.items() if tier == 'warp'][:args.top]
    if args.primitives is None:
        from pyscf import gto
        mol = gto.M(atom=str(molecules_dir() / args.xyz), basis=args.basis, verbose=0)
        primitives = mean_primitives(mol)
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
        rec['primitives'] = args.primitives if args.primitives is not None else primitives.get(name)
        cycles = rec['primitives'] * prim + (ctr if var.ctr == 'ops' else 0)
        rec['bound_us_per_quartet'] = cycles / (CLOCK_GHZ * 1e3) / H200_SMS
        rec['measured_us_per_quartet'] = times.get(name, (None, None))[1]
        if rec['measured_us_per_quartet']:
            rec['measured_over_bound'] = rec['measured_us_per_quartet'] / rec['bound_us_per_quartet']
        records.append(rec)
        print_record(rec)
    meta = environment_meta()
    counted = f'{args.xyz} / {args.basis}' if args.primitives is None else None
    meta.update(breakdown=args.breakdown, primitives=args.primitives, primitives_counted_in=counted,
                exp_cutoff=exp_cutoff(), clock_ghz=CLOCK_GHZ, sms=H200_SMS)
    paths = write_results(args.name, records, meta, title="Warp tier's load/store traffic, counted from the op streams",
                          notes='Static counts per warp (codegen.level_traffic), no GPU. rows: 128-byte record '
                                'rows; wavefronts: shared-memory wavefronts of operand, pair-product and result '
                                'accesses; conflicts: wavefronts / the conflict-free count. primitives: primitive '
                                'quartets per quartet, ' + (f'counted in {counted} (Schwarz screening with the guess '
                                "density's largest element, primitive pairs past FR_EXP_CUTOFF skipped)"
                                if counted else 'given') + '. bound_us_per_quartet: '
                                'that many primitive stages (+ the contracted stage where it is interpreted, '
                                f'ctr=ops) at one row or wavefront per cycle of one SM, {CLOCK_GHZ} GHz, over '
                                f'{H200_SMS} SMs; the pairmap side passes are not counted. measured: the breakdown '
                                "(H200, ERI kernels incl. the pairmap side passes).")
    print('wrote', *paths)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
