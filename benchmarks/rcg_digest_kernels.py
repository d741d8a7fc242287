"""The digestion kernels of csrc/fusionrcg/digest.cu side by side, per class, on a GPU.

For every class of a molecule's plan, the class's ERI blocks are computed
batch by batch and each batch is digested by ``fr_digest`` (one thread per
quartet and output element), by ``fr_digest_quartet`` for the whole block
(one thread per quartet, compiled for the block shape; blocks of at most
``--max-elements``), and by ``fr_digest_quartet`` in slabs (one thread per
quartet and value of the block's leading index; blocks of more than
``gpu_jk.QUARTET_DIGEST_MAX`` elements whose slabs have at most that many), median of ``--repeat`` runs each
(CUDA events), with each kernel's registers and spills and the largest
difference of its J and K contributions from fr_digest's.
``gpu_jk.digest_layout`` picks one by block size: this shows where each
should go.  The quartets are the plan's for the guess density's largest
element (a converged density's is about the same, and screening is all it
changes here).

Writes benchmarks/results/rcg_digest_kernels.json and .md.

    python benchmarks/rcg_digest_kernels.py
    python benchmarks/rcg_digest_kernels.py --xyz organic/020_Vitamin_C.xyz --max-elements 225
"""
from __future__ import annotations

import argparse
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from math import prod
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]  # _common, and the package when not installed

from _common import environment_meta, molecules_dir, print_record, write_results  # noqa: E402

from pyscf_fusionrcg import launch  # noqa: E402
from pyscf_fusionrcg.gpu_jk import QUARTET_DIGEST_MAX, JKPlan, _Digestion, digest_layout, slabs_fit  # noqa: E402


def _digest_ms(cp, digestion, args, repeat):
    """Median GPU milliseconds of one digestion call."""
    times = []
    for _ in range(repeat):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        digestion(*args)
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    return statistics.median(times)


def class_records(mol, plan, dm, max_elements, repeat):
    """One record per class of ``plan``: fr_digest, whole-block fr_digest_quartet
    for blocks of at most ``max_elements`` elements, and its slabs for larger
    blocks that have them (gpu_jk.digest_layout)."""
    import cupy as cp

    nao = mol.nao
    dm_j = cp.ascontiguousarray(dm + dm.T)[None]
    dm_k = cp.ascontiguousarray(dm)[None]

    def kinds_of(dims):
        return (['element'] + ['quartet'] * (prod(dims) <= max_elements)
                + ['slab'] * (prod(dims) > QUARTET_DIGEST_MAX and slabs_fit(dims)))

    wanted = sorted({(c.digestion.dims, k) for c in plan.classes for k in kinds_of(c.digestion.dims)})
    device = cp.cuda.Device()

    def build(item):
        with device:
            return item, _Digestion(*item)

    with ThreadPoolExecutor(max_workers=8) as pool:     # NVRTC releases the GIL
        built = dict(pool.map(build, wanted))
    records = []
    for c in plan.classes:
        dims = c.digestion.dims
        kinds = kinds_of(dims)
        kernels = {k: built[dims, k] for k in kinds}
        outs = {k: (cp.zeros((1, nao, nao)), cp.zeros((1, nao, nao))) for k in kernels}
        scratch = cp.zeros((1, nao, nao)), cp.zeros((1, nao, nao))
        ms = dict.fromkeys(kernels, 0.0)
        for lo, hi, g in launch.class_blocks(c.kern, plan.basis, c.quartets, 0.0):
            head = (g, hi - lo, c.quartets[lo:hi], plan.ao_loc, nao)
            for kind, digestion in kernels.items():
                jh, kh = outs[kind]
                digestion(*head, dm_j, jh, 1, dm_k, kh, 1)
                ms[kind] += _digest_ms(cp, digestion, head + (dm_j, scratch[0], 1, dm_k, scratch[1], 1),
                                       repeat)
        row = dict(part=f'class {c.kern.program.name}', dims='x'.join(map(str, dims)), elements=prod(dims),
                   quartets=len(c.quartets), routed=digest_layout(dims)[0], element_ms=ms['element'])
        for kind in kinds[1:]:
            att = kernels[kind].kernel.attributes()
            row.update({f'{kind}_ms': ms[kind], f'{kind}_speedup': ms['element'] / ms[kind] if ms[kind] else None,
                        f'{kind}_registers': att['num_regs'], f'{kind}_spill_bytes': att['local_size_bytes'],
                        f'{kind}_max_abs_diff': max(float(abs(a - b).max())
                                                    for a, b in zip(outs['element'], outs[kind]))})
        records.append(row)
    return sorted(records, key=lambda r: (r['elements'], -r['quartets']))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--xyz', default='organic/057_Tamoxifen.xyz', help='relative to $FUSION_MOLECULES')
    ap.add_argument('--basis', default='def2-TZVP')
    ap.add_argument('--max-elements', type=int, default=135,
                    help='largest block tried with the per-quartet kernel')
    ap.add_argument('--repeat', type=int, default=3)
    ap.add_argument('--name', default='rcg_digest_kernels')
    args = ap.parse_args(argv)

    import cupy
    from pyscf import gto, scf

    from gpucore import require_gpu

    require_gpu('the digestion kernels benchmark')
    mol = gto.M(atom=str(molecules_dir() / args.xyz), basis=args.basis, verbose=0)
    dm = cupy.asarray(scf.RHF(mol).get_init_guess())
    plan = JKPlan.screen(mol, float(abs(dm).max()))
    records = class_records(mol, plan, dm, args.max_elements, args.repeat)
    for r in records:
        print_record(r)
    meta = environment_meta()
    meta.update(molecule=Path(args.xyz).stem, basis=args.basis, nao=mol.nao, repeat=args.repeat,
                quartet_digest_max=QUARTET_DIGEST_MAX, density='guess (plan bound: its largest element)')
    paths = write_results(args.name, records, meta,
                          title=f'Digestion kernels per class, {Path(args.xyz).stem} / {args.basis}',
                          notes='ms: GPU milliseconds from CUDA events, summed over the batches of a class, '
                                'median of --repeat per batch; speedups: element_ms over the kernel\'s; '
                                'quartet: the whole block per thread, slab: a slab of it (its leading '
                                'index fixed); routed: the kind gpu_jk.digest_layout picks today.')
    print('wrote', *paths)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
