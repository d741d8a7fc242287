"""The levels tiers' contracted stage in the interpreter against the pairmap form, per class.

For each class, on the same synthetic quartets (one primitive per shell,
random centres in a box, sorted by shells as a plan sorts them), in one
process on one GPU (CUDA events, median of --repeat after a warm-up):

* ``ops_us``: the levels kernel running primitive and contracted stage;
* ``prim_us``: the pairmap variant of the same kernel (primitive stage only,
  accumulators out);
* ``products_us``: its contracted stage as ``pairmaps.PairProducts``: each
  quartet's pair matrices and the two batched products (cuBLAS), and the
  blocks' transpose into the digestion's layout;
* ``passes_us``: the same stage as ``launch.SidePasses``, the generated bra
  and ket passes (``codegen.side_pass_source``), on the same accumulators;
  ``passes_speedup`` = products / passes;
* ``ratio``: (prim + the faster of products and passes) / ops, and the
  largest difference of each form's blocks from the interpreter's, relative
  to the largest element.

No PySCF needed (the basis is built in libcint's layout here).  Writes
benchmarks/results/rcg_pairmap_kernels.json and .md.  ``--static`` needs no
GPU: per class the multiply-adds and device-memory bytes of one quartet's
contracted stage, products (``PairProducts.cost``) against passes
(``codegen.pass_cost``), into rcg_pairmap_static.

    python benchmarks/rcg_pairmap_kernels.py
    python benchmarks/rcg_pairmap_kernels.py --static
    python benchmarks/rcg_pairmap_kernels.py --classes fdfp,gdfd --quartets 100000
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]  # _common, and the package when not installed

from _common import environment_meta, print_record, write_results  # noqa: E402

#: Warp-tier classes from the smallest accumulator counts up (870 for (gg|ds)
#: to 14 500 for (gg|gf)), those that cost most in Vitamin C / def2-QZVP
#: (rcg_jk_breakdown_qzvp) and Tamoxifen / def2-TZVP among them: where the
#: pairmap stage starts to pay; then the classes tiers.pairmap_pays left to
#: the interpreter before 9b5b989, where the products lost ((gp|fp), second in
#: the QZVP breakdown, with 900 accumulators; small pairs against large ones;
#: an s shell): rcg_pairmap_kernels_ilp measured them again.
CLASSES = ('fffs,ggds,dddd,gddp,fdfp,ffdp,fddd,fffp,gdfd,fffd,gffd,gfgd,gfff,gggf,'
           'gpfp,gfpp,ggpp,ggdp,gdgs,gsff,ggfs')
SHELLS = 48          # shells per index
TITLE = 'FusionRCG levels tiers: contracted stage in the interpreter (ops) vs pair matrices'
NOTES = ('us per quartet from CUDA events, median of --repeat after a warm-up (each stage with its pair vectors '
         'gathered, as ClassKernel.contract does); ratio = (prim + min(products, passes)) / ops; '
         'rel_diff, passes_rel_diff: largest block difference from the interpreter over the largest element.')
BYTES_MAX = 3 << 30  # buffers of one class


def synthetic_basis(ls, rng):
    """``mol``-like ``_bas``, ``_atm``, ``_env``: SHELLS shells of each l of
    the class, one primitive each, on random centres in an 8 Bohr box."""
    env = [0.0] * 20
    atm, bas = [], []
    for l in sorted(set(ls)):
        for _ in range(SHELLS):
            ptr = len(env)
            env += list(rng.uniform(0.0, 8.0, 3)) + [float(rng.uniform(0.3, 3.0)), 1.0]
            atm.append([1, ptr, 1, 0, 0, 0])
            bas.append([len(atm) - 1, l, 1, 1, 0, ptr + 3, ptr + 4, 0])
    return SimpleNamespace(_bas=np.array(bas, dtype=np.int32), _atm=np.array(atm, dtype=np.int32),
                           _env=np.array(env))


def _events_ms(cp, fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(cp.cuda.get_elapsed_time(a, b))
    return statistics.median(times)


def measure(ls, nq_max, repeat, rng):
    import cupy as cp

    from pyscf_fusionrcg import launch, pairmaps

    mol = synthetic_basis(ls, rng)
    basis = launch.DeviceBasis(mol)
    first = {l: int(np.nonzero(mol._bas[:, 1] == l)[0][0]) for l in set(ls)}
    ops = launch.get_kernel(ls, ctr='ops')
    # the levels form's two contracted stages, on the tier the class routes to (asked for
    # pairmap with no tier, a class the register tier holds would take its pairmap form)
    pm = launch.get_kernel(ls, ctr='pairmap', tier=ops.variant.tier)
    assert ops.variant.form == 'levels' and not ops.pairmap and pm.pairmap, (ops.name, pm.name)
    products = pairmaps.PairProducts(pm.program, cp)
    passes = launch.SidePasses(pm.program)
    per_quartet = 8 * (3 * pm.nelem + pm.program.n_acc + products.work_doubles)
    nq = int(min(nq_max, BYTES_MAX // per_quartet))
    q = np.stack([first[l] + rng.integers(0, SHELLS, nq) for l in ls], axis=1)
    q = cp.asarray(q[np.lexsort(q.T[::-1])], dtype=cp.int32)
    out_ops = cp.empty((ops.nelem, nq))
    out_pm = cp.empty((pm.nelem, nq))
    out_pass = cp.empty((pm.nelem, nq))
    acc = cp.empty(pm.program.n_acc * nq)
    tmp = cp.empty(products.work_doubles * nq)
    xyz = basis.coords

    def contract(stage, out, work=None):
        stage(acc, xyz[q[:, 0]] - xyz[q[:, 1]], xyz[q[:, 2]] - xyz[q[:, 3]], out, work)

    ops_ms = _events_ms(cp, lambda: ops.launch(q, nq, basis, 0.0, out_ops), repeat)
    prim_ms = _events_ms(cp, lambda: pm.launch(q, nq, basis, 0.0, acc), repeat)
    prod_ms = _events_ms(cp, lambda: contract(products, out_pm, tmp), repeat)
    pass_ms = _events_ms(cp, lambda: contract(passes, out_pass), repeat)
    scale = float(abs(out_ops).max())
    bra, ket = products.bra, products.ket
    fma = bra.n_rows * bra.n_start * ket.n_start + bra.n_rows * ket.n_start * ket.n_rows
    us = 1e3 / nq
    return dict(cls=ops.program.name, quartets=nq, n_acc=pm.program.n_acc, tier=pm.variant.tier,
                ops_us=ops_ms * us, prim_us=prim_ms * us, products_us=prod_ms * us, passes_us=pass_ms * us,
                passes_speedup=prod_ms / pass_ms, pairmap_us=(prim_ms + min(prod_ms, pass_ms)) * us,
                ratio=(prim_ms + min(prod_ms, pass_ms)) / ops_ms, products_gflops=2e-6 * fma * nq / prod_ms,
                rel_diff=float(abs(out_pm - out_ops).max()) / scale,
                passes_rel_diff=float(abs(out_pass - out_ops).max()) / scale)


def static_counts(classes, name):
    """Records of :func:`~pyscf_fusionrcg.codegen.pass_cost` against
    ``PairProducts.cost`` per class, written as ``name``."""
    from pyscf_fusionrcg import codegen, host, pairmaps
    records = []
    for ls in classes:
        prog = host.get_program(*ls)
        products, passes = pairmaps.PairProducts(prog).cost(), codegen.pass_cost(prog)
        rec = dict(cls=prog.name, n_acc=prog.n_acc, dims='x'.join(map(str, codegen.pass_dims(prog))),
                   products_fma=products['fma'], passes_fma=passes['fma'], fma_ratio=products['fma'] / passes['fma'],
                   products_bytes=products['bytes'], passes_bytes=passes['bytes'],
                   bytes_ratio=products['bytes'] / passes['bytes'])
        print_record(rec)
        records.append(rec)
    paths = write_results(name, records, environment_meta(),
                          title="Pairmap contracted stage per quartet: products against side passes, counted",
                          notes='Static counts, no GPU. dims: bra rows x bra starts x ket starts x ket rows; '
                                'fma: multiply-adds (a term of the graph counts one); bytes: device memory '
                                'read and written per quartet (the passes keep the half-transformed block in '
                                'shared memory).')
    print('wrote', *paths)
    return 0


def _compile(classes):
    """Both variants of every class, by a few threads at once (NVRTC releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    import cupy as cp

    from pyscf_fusionrcg import launch
    device = cp.cuda.Device()

    def build(job):
        with device:
            return launch.get_kernel(job[0], ctr=job[1])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(build, [(ls, ctr) for ls in classes for ctr in ('ops', 'pairmap')]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--classes', default=CLASSES, help='comma-separated, e.g. fdfp,gdfd')
    ap.add_argument('--quartets', type=int, default=200_000, help='per class, at most (memory permitting)')
    ap.add_argument('--repeat', type=int, default=5)
    ap.add_argument('--name', default=None, help='results name (rcg_pairmap_kernels, or rcg_pairmap_static)')
    ap.add_argument('--static', action='store_true', help='static counts of the contracted stage, no GPU')
    args = ap.parse_args(argv)
    from pyscf_fusionrcg.report import parse_class
    classes = [parse_class(name.strip()) for name in args.classes.split(',')]
    if args.static:
        return static_counts(classes, args.name or 'rcg_pairmap_static')
    from gpucore import require_gpu
    require_gpu('the pairmap kernel benchmark')
    _compile(classes)
    rng = np.random.default_rng(0)
    meta = environment_meta()
    meta.update(shells_per_index=SHELLS, repeat=args.repeat, basis='synthetic, one primitive per shell')
    records = []
    for ls in classes:
        rec = measure(ls, args.quartets, args.repeat, rng)
        print_record(rec)
        records.append(rec)
        # rewritten after every class, so a run cut short keeps what it measured
        paths = write_results(args.name or 'rcg_pairmap_kernels', records, meta, title=TITLE, notes=NOTES)
    print('wrote', *paths)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
