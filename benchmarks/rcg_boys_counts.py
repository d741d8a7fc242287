"""How much of the Boys function's series a molecule's integrals ask for, counted on the CPU (no GPU).

For every class of a plan (Schwarz screening with the guess density's largest
element, as ``JKPlan.screen`` does), on ``--warps`` runs of 32 consecutive
quartets (a warp's lanes in screening order) at random places: the primitive
quartets per quartet, the share whose T lies below boys.cuh's switch point
(``boys.series_limit`` of the class's top order), the series terms those take
with boys.cuh's stopping rule, and the share of warps with at least one such
primitive quartet, all of whose lanes then wait for it.  Below the switch
point the series form (``boys(mmax, ...)``) runs that many dependent terms;
the compile-time form of the generated kernels (``boys<M>``) reads its Taylor
table instead.  The primitive pairs the kernels skip (``FR_EXP_CUTOFF``) are
skipped here too.

    python benchmarks/rcg_boys_counts.py
    python benchmarks/rcg_boys_counts.py --xyz organic/057_Tamoxifen.xyz --warps 40
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]

from _common import environment_meta, molecules_dir, print_record, write_results  # noqa: E402

from pyscf_fusionrcg.boys import series_limit  # noqa: E402
from pyscf_fusionrcg.report import LETTERS  # noqa: E402

#: eri_common.cuh's FR_EXP_CUTOFF: primitive pairs with a larger exponent are skipped.
EXP_CUTOFF = 50.0


def series_terms(mmax: int, t: np.ndarray) -> np.ndarray:
    """Terms boys.cuh's series takes at each T (its loop and stopping rule)."""
    two_t = 2.0 * t
    term, total = np.ones_like(t), np.ones_like(t)
    taken = np.zeros(t.shape, dtype=int)
    running = np.ones(t.shape, dtype=bool)
    for k in range(200):
        term = np.where(running, term * two_t / (2 * mmax + 3 + 2 * k), term)
        total = np.where(running, total + term, total)
        taken += running
        running &= ~(term < 1e-17 * total)
        if not running.any():
            break
    return taken


def primitive_t(mol, quartet) -> np.ndarray:
    """T of the primitive quartets of one shell quartet that the kernels compute."""
    bas, env, coords = mol._bas, mol._env, mol.atom_coords()

    def pair(i, j):
        ei = env[bas[i, 5]:bas[i, 5] + bas[i, 2]][:, None]
        ej = env[bas[j, 5]:bas[j, 5] + bas[j, 2]][None, :]
        ri, rj = coords[bas[i, 0]], coords[bas[j, 0]]
        z = ei + ej
        keep = ei * ej / z * np.sum((ri - rj) ** 2) <= EXP_CUTOFF
        centre = (ei[..., None] * ri + ej[..., None] * rj) / z[..., None]
        return z[keep], centre[keep]

    (za, pa), (zc, pc) = pair(*quartet[:2]), pair(*quartet[2:])
    rho = za[:, None] * zc[None, :] / (za[:, None] + zc[None, :])
    return (rho * np.sum((pa[:, None, :] - pc[None, :, :]) ** 2, axis=-1)).ravel()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--xyz', default='organic/020_Vitamin_C.xyz', help='relative to $FUSION_MOLECULES')
    ap.add_argument('--basis', default='def2-TZVP')
    ap.add_argument('--warps', type=int, default=60, help='runs of 32 consecutive quartets per class')
    ap.add_argument('--name', default='rcg_boys_counts')
    args = ap.parse_args(argv)

    from pyscf import gto, scf

    from pyscf_fusionrcg.screening import build_tasks
    mol = gto.M(atom=str(molecules_dir() / args.xyz), basis=args.basis, verbose=0)
    bound = float(np.abs(scf.RHF(mol).get_init_guess()).max())
    rng = np.random.default_rng(0)
    totals = {}
    for t in build_tasks(mol, None, density_bound=bound):
        mmax, q = sum(t.key), t.quartets
        starts = rng.integers(0, max(1, len(q) - 31), size=min(args.warps, max(1, len(q) // 32)))
        row = totals.setdefault(''.join(LETTERS[l] for l in t.key),
                                dict(mmax=mmax, quartets=0, sampled=0, primitives=0, below=0, terms=0,
                                     warps=0, warps_below=0))
        row['quartets'] += len(q)
        for s in starts:
            ts = [primitive_t(mol, x) for x in q[s:s + 32]]
            below = [x[x < series_limit(mmax)] for x in ts]
            row['sampled'] += len(ts)
            row['primitives'] += sum(len(x) for x in ts)
            row['below'] += sum(len(x) for x in below)
            row['terms'] += sum(int(series_terms(mmax, x).sum()) for x in below)
            row['warps'] += 1
            row['warps_below'] += any(len(x) for x in below)
    records = []
    for name, r in sorted(totals.items(), key=lambda kv: -kv[1]['quartets']):
        records.append(dict(part=f'class {name}', quartets=r['quartets'], mmax=r['mmax'],
                            primitives_per_quartet=r['primitives'] / max(r['sampled'], 1),
                            below_switch_share=r['below'] / max(r['primitives'], 1),
                            mean_series_terms=r['terms'] / max(r['below'], 1),
                            warps_with_series_share=r['warps_below'] / max(r['warps'], 1)))
    weight = {name: r['quartets'] / max(r['sampled'], 1) for name, r in totals.items()}
    prims = sum(r['primitives'] * weight[n] for n, r in totals.items())
    below = sum(r['below'] * weight[n] for n, r in totals.items())
    terms = sum(r['terms'] * weight[n] for n, r in totals.items())
    warps = sum(r['warps'] * weight[n] for n, r in totals.items())
    records.insert(0, dict(part='all classes (weighted by quartets)', quartets=sum(r['quartets'] for r in totals.values()),
                           below_switch_share=below / prims, mean_series_terms=terms / max(below, 1),
                           warps_with_series_share=sum(r['warps_below'] * weight[n] for n, r in totals.items()) / warps))
    for r in records[:12]:
        print_record(r)
    meta = environment_meta()
    meta.update(molecule=Path(args.xyz).stem, basis=args.basis, warps=args.warps, density_bound=bound)
    paths = write_results(args.name, records, meta,
                          title=f'Boys series asked for, {Path(args.xyz).stem} / {args.basis} (counted, no GPU)',
                          notes='Per class, on --warps runs of 32 consecutive quartets of the plan in screening '
                                'order: primitive quartets per quartet, the share below boys.cuh\'s switch point, '
                                'the series terms those take, and the share of runs with at least one (a warp '
                                'waits for its slowest lane).')
    print('wrote', *paths)
    return 0


if __name__ == '__main__':
    sys.exit(main())
