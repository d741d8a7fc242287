"""Whether a molecule's J/K plan fits on the GPU, counted on the CPU (no GPU).

``JKPlan.screen`` keeps one geometry's screened, ordered quartets on the device
(Schwarz screening with the density's largest element, a 16-bit shell index
per centre: ``gpu_jk.PLAN_QUARTET_BYTES``) when they fit in ``PLAN_MEMORY_SHARE`` of the free GPU memory;
otherwise every build of that geometry screens and orders its quartets anew,
one chunk at a time.  Per case this counts the plan's quartets exactly
(``schwarz_candidates``, as a density change does), the memory they take, and
whether that fits the share of ``--gpu-memory-gib``; what the same plan would
take as ket prefixes per bra pair (:func:`prefix_rows`); and, on ``--samples``
unique quartets drawn at random, the share of the plan that the guess
density's own shell blocks keep (``kept_quartets``): what a build on that
density computes.

    python benchmarks/rcg_plan_sizes.py
    python benchmarks/rcg_plan_sizes.py --cases gly/gly30.xyz:def2-TZVP --samples 4000000
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]

from _common import environment_meta, molecules_dir, print_record, write_results  # noqa: E402

#: The molecules and bases of scf_vs_gpu4pyscf.py's triple- and quadruple-zeta cases.
CASES = ('organic/020_Vitamin_C.xyz:def2-TZVP', 'organic/057_Tamoxifen.xyz:def2-TZVP',
         'organic/020_Vitamin_C.xyz:def2-QZVP', 'water_clusters/005.xyz:def2-QZVP',
         'gly/gly30.xyz:def2-TZVP')
#: An H200's memory as CuPy reports it.
H200_GIB = 139.8
#: Bytes of one row of a plan kept as ket prefixes: a bra pair, a ket sub-class
#: and how many of its pairs (by descending Schwarz bound) pass, in int32.
PREFIX_ROW_BYTES = 3 * np.dtype(np.int32).itemsize


def prefix_rows(mol, q, density_max, tol):
    """Rows of the same plan kept as ket prefixes: with one density bound for
    every block, the kets of a bra pair that pass are, within each pair
    sub-class (screening's pair groups, by descending bound), a prefix; count
    the (bra pair, ket sub-class) combinations with a prefix, for the
    combinations ``iter_tasks`` screens (within one l-class an upper bound:
    there the kets come no later than the bra pair)."""
    from itertools import product

    from pyscf import gto

    from pyscf_fusionrcg.screening import _ket_counts, _pair_classes
    ls, nctr = (mol._bas[:, col].astype(np.int64) for col in (gto.ANG_OF, gto.NCTR_OF))
    groups = _pair_classes(ls, nctr, q, np.ones(q.shape, dtype=bool))
    lkeys = sorted(groups, reverse=True)
    combos = [(bra, ket) for n, lb in enumerate(lkeys) for lk in lkeys[n:]
              for bra, ket in product(groups[lb], groups[lk])]
    return sum(int(np.count_nonzero(_ket_counts(bra.q, ket, density_max, tol))) for bra, ket in combos)


def plan_size(mol, dm, tol, samples, gpu_bytes, rng):
    """The plan counts of one molecule and density (one record)."""
    from pyscf_fusionrcg.gpu_jk import PLAN_QUARTET_BYTES
    from pyscf_fusionrcg.jk import PLAN_MEMORY_SHARE
    from pyscf_fusionrcg.screening import (kept_quartets, schwarz_bounds, schwarz_candidates,
                                           shell_density_max, sorted_pair_bounds)
    q = schwarz_bounds(mol)
    dcond = shell_density_max(mol, dm)
    pair_bounds = sorted_pair_bounds(q)
    planned = schwarz_candidates(pair_bounds, float(dcond.max()), tol)
    pairs = np.array(np.tril_indices(mol.nbas)).T
    quartets = np.concatenate([pairs[rng.integers(len(pairs), size=samples)],
                               pairs[rng.integers(len(pairs), size=samples)]], axis=1)
    q32, d32 = q.astype(np.float32), dcond.astype(np.float32)
    in_plan = kept_quartets(quartets, q32, np.full_like(d32, d32.max()), tol)
    kept = kept_quartets(quartets[in_plan], q32, d32, tol)
    share = float(kept.mean()) if len(kept) else 0.0
    plan_bytes = planned * PLAN_QUARTET_BYTES
    rows = prefix_rows(mol, q, float(dcond.max()), tol)
    return dict(nao=mol.nao, nbas=mol.nbas, shell_pairs=len(pair_bounds),
                plan_quartets=planned, plan_gib=plan_bytes / 2**30,
                prefix_rows=rows, prefix_plan_mib=rows * PREFIX_ROW_BYTES / 2**20,
                allowed_gib=PLAN_MEMORY_SHARE * gpu_bytes / 2**30,
                plan_kept=plan_bytes <= PLAN_MEMORY_SHARE * gpu_bytes,
                guess_kept_share=share,
                guess_kept_share_err=float(np.sqrt(share * (1 - share) / max(len(kept), 1))),
                sampled_in_plan=int(in_plan.sum()))


def main(argv=None):
    from pyscf_fusionrcg.gpu_jk import PLAN_QUARTET_BYTES
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--cases', default=','.join(CASES), help='xyz:basis, xyz relative to $FUSION_MOLECULES')
    ap.add_argument('--samples', type=int, default=2_000_000, help='unique quartets drawn per case')
    ap.add_argument('--gpu-memory-gib', type=float, default=H200_GIB,
                    help='the free GPU memory the plan share is taken of')
    ap.add_argument('--tol', type=float, default=1e-13, help="the screening threshold (PySCF's direct_scf_tol)")
    ap.add_argument('--name', default='rcg_plan_sizes')
    args = ap.parse_args(argv)

    from pyscf import gto, scf
    rng = np.random.default_rng(0)
    records = []
    for case in args.cases.split(','):
        xyz, basis = case.rsplit(':', 1)
        mol = gto.M(atom=str(molecules_dir() / xyz), basis=basis, verbose=0)
        dm = scf.RHF(mol).get_init_guess(key='minao')
        record = dict(molecule=Path(xyz).stem, basis=basis)
        record.update(plan_size(mol, dm, args.tol, args.samples, args.gpu_memory_gib * 2**30, rng))
        print_record(record)
        records.append(record)
    meta = environment_meta()
    meta.update(samples=args.samples, gpu_memory_gib=args.gpu_memory_gib, tol=args.tol)
    paths = write_results(args.name, records, meta,
                          title='FusionRCG plan sizes on the guess density (counted, no GPU)',
                          notes=f'plan_quartets: the unique quartets of a plan (Schwarz screening with the minao '
                                f'guess density\'s largest element), exact; plan_gib at {PLAN_QUARTET_BYTES} bytes each; '
                                f'prefix_plan_mib: the same plan as (bra pair, ket sub-class, prefix length) rows of '
                                f'{PREFIX_ROW_BYTES} bytes (prefix_rows); '
                                f'plan_kept: whether the quartets fit in allowed_gib (PLAN_MEMORY_SHARE of '
                                f'{args.gpu_memory_gib} GiB), else every build screens anew; guess_kept_share: the '
                                f'share of the plan that the guess density\'s own shell blocks keep (PySCF\'s '
                                f'minao guess; GPU4PySCF\'s, which scf_vs_gpu4pyscf.py --density guess builds on, '
                                f'keeps other shares: rcg_jk_breakdown.py --density guess counts them), on '
                                f'{args.samples} random unique quartets (the in-plan ones: sampled_in_plan), with '
                                f'its standard error.')
    print('wrote', *paths)
    return 0


if __name__ == '__main__':
    sys.exit(main())
