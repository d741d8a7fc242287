"""What the digestion's warp sums cost on a plan's quartet order, counted on the CPU (no GPU).

The digestion adds each output element of a warp's 32 quartets (digest.cuh:
fr_digest_quartet and the register tier's digesting kernels) once per run of
lanes with equal addresses.  For every class of a plan (Schwarz screening
with the guess density's largest element, oriented and ordered as a plan
launches it: ``launch.orient`` and ``launch.primitive_order`` with
``launch.ShellKeys``), warps of 32 consecutive quartets, and each of the six
output blocks: the runs of equal (AO offsets of the block's two indices), and
the shuffled doubles the warp spends on the block's elements,

* ``scan``: the segmented scan per element, 5 steps whenever some run is
  longer than one lane (fr_run_add), none when every lane adds alone;
* ``scatter``: with at most two runs, chunks of FR_SCATTER_CHUNK (8)
  elements reduced and scattered once per run (fr_block_chunks), else the scan.

    python benchmarks/rcg_digest_runs.py
    python benchmarks/rcg_digest_runs.py --xyz organic/057_Tamoxifen.xyz --max-quartets 2000000
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]

from _common import environment_meta, molecules_dir, print_record, write_results  # noqa: E402

from pyscf_fusionrcg.report import LETTERS  # noqa: E402

#: digest.cu's six output blocks (X, Y): Jh[p,q], Jh[r,s], Kh[p,s], Kh[q,s], Kh[p,r], Kh[q,r].
OUTPUTS = ((0, 1), (2, 3), (0, 3), (1, 3), (0, 2), (1, 2))
#: digest.cuh's FR_SCATTER_CHUNK.
CHUNK = 8


def scatter_cost(m: int) -> int:
    """Shuffled doubles of fr_scatter_sum on m values: halvings, then whole steps."""
    cost, steps = 0, 0
    while m > 1:
        m = (m + 1) // 2
        cost += m
        steps += 1
    return cost + 5 - steps


def warp_runs(ao: np.ndarray, x: int, y: int) -> np.ndarray:
    """Runs per warp of 32 consecutive quartets for output block (x, y); the
    last warp's idle lanes make one run of their own."""
    key = ao[:, x].astype(np.int64) << 32 | ao[:, y]
    pad = -len(key) % 32
    key = np.concatenate([key, np.full(pad, -1, dtype=np.int64)]).reshape(-1, 32)
    return 1 + (key[:, 1:] != key[:, :-1]).sum(axis=1)


def class_costs(ao: np.ndarray, dims) -> tuple[int, int, int]:
    """(elements summed, scan cost, scatter cost) over the warps of one class."""
    elements = scan = scatter = 0
    for x, y in OUTPUTS:
        e = dims[x] * dims[y]
        runs = warp_runs(ao, x, y)
        per_scan = np.where(runs == 32, 0, 5 * e)
        per_scatter = np.where(runs <= 2, runs * sum(scatter_cost(min(CHUNK, e - c)) for c in range(0, e, CHUNK)),
                               per_scan)
        elements += e * len(runs)
        scan += int(per_scan.sum())
        scatter += int(per_scatter.sum())
    return elements, scan, scatter


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--xyz', default='organic/020_Vitamin_C.xyz', help='relative to $FUSION_MOLECULES')
    ap.add_argument('--basis', default='def2-TZVP')
    ap.add_argument('--max-quartets', type=int, default=None,
                    help='order and count at most this many quartets of each class (its first ones)')
    ap.add_argument('--name', default='rcg_digest_runs')
    args = ap.parse_args(argv)

    from pyscf import gto, scf

    from pyscf_fusionrcg import launch
    from pyscf_fusionrcg.screening import build_tasks
    mol = gto.M(atom=str(molecules_dir() / args.xyz), basis=args.basis, verbose=0)
    bound = float(np.abs(scf.RHF(mol).get_init_guess()).max())
    keys = launch.ShellKeys(mol)
    ao_loc = np.asarray(mol.ao_loc)
    totals = {}
    for t in build_tasks(mol, None, density_bound=bound):
        q = t.quartets[:args.max_quartets]
        q = launch.orient(keys, q)[0]
        q = q[launch.primitive_order(keys, q)]
        dims = [(2 * l + 1) * n for l, n in zip(t.key, t.nctr)]
        row = totals.setdefault(''.join(LETTERS[l] for l in t.key), [0, 0, 0, 0])
        costs = class_costs(ao_loc[q], dims)
        row[0] += len(q)
        for k, c in enumerate(costs):
            row[k + 1] += c
    records = [dict(part='all classes', quartets=sum(r[0] for r in totals.values()),
                    scan_per_element=sum(r[2] for r in totals.values()) / sum(r[1] for r in totals.values()),
                    scatter_per_element=sum(r[3] for r in totals.values()) / sum(r[1] for r in totals.values()),
                    scatter_over_scan=sum(r[3] for r in totals.values()) / sum(r[2] for r in totals.values()))]
    for name, (n, elements, scan, scatter) in sorted(totals.items(), key=lambda kv: -kv[1][2]):
        records.append(dict(part=f'class {name}', quartets=n, scan_per_element=scan / elements,
                            scatter_per_element=scatter / elements, scatter_over_scan=scatter / max(scan, 1)))
    for r in records[:12]:
        print_record(r)
    meta = environment_meta()
    meta.update(molecule=Path(args.xyz).stem, basis=args.basis, density_bound=bound,
                max_quartets=args.max_quartets, chunk=CHUNK)
    paths = write_results(args.name, records, meta,
                          title=f'Digestion warp sums on the plan order, {Path(args.xyz).stem} / {args.basis} '
                                '(counted, no GPU)',
                          notes='Shuffled doubles per output element a warp adds (summed over the six output '
                                'blocks and the warps of 32 consecutive quartets in launch order): scan, '
                                'fr_run_add\'s 5 steps where some run is longer than one lane; scatter, '
                                'fr_block_chunks\' reduce-and-scatter where the lanes form at most two runs.')
    print('wrote', *paths)
    return 0


if __name__ == '__main__':
    sys.exit(main())
