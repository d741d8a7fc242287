"""Where one FusionRCG J+K build spends its time on a GPU, next to GPU4PySCF's build.

On the converged RHF density of one molecule (Vitamin C / def2-TZVP by default;
``--density guess``: GPU4PySCF's minao guess, the density of scf_vs_gpu4pyscf's guess cases):

* the wall time of GPU4PySCF 1.9's ``get_jk`` and of FusionRCG's, median of
  ``--repeat`` builds after a warm-up, in one process on one GPU, and the
  largest element difference of FusionRCG's J and K from GPU4PySCF's;
* FusionRCG's build (the plugin's ``get_jk``, whose plan of screened and
  ordered quartets is made once per geometry, as GPU4PySCF keeps its
  screening per molecule) split into the ERI kernels, the digestion
  kernels and the kernels that do both (small register-tier blocks,
  ``launch.jk_kernel``) of every class (CUDA events,
  ``gpu_jk.get_jk_gpu(profile=...)``, on the plan filtered to the density's
  own blocks, as the plugin builds) and the rest outside those kernels (the
  plan filter's passes, timed alone too, the density's preparation and host
  work between launches); the walls of ``get_jk_gpu`` without events on that filtered
  plan, on the whole plan, and streamed (screened and sorted in the build,
  what the plugin does when a plan does not fit); the plan's own time,
  quartet count and memory, and how many quartets the density's own blocks keep;
* per class: quartets, tier, ERI and digestion milliseconds, microseconds per
  quartet, and the share of the build: the classes that hold the build back;
  and the same summed over the classes of each highest angular momentum (with
  cc-pV5Z: what the h classes, which GPU4PySCF computes on the CPU, cost us);
* with ``--ctr pairmap,ops`` all of FusionRCG's part once per contracted-stage
  mode (``Options.ctr``, see ``tiers.ctr_mode``: ``pairmap`` forces it on
  the levels tiers, the other tiers run the ops whatever is asked), and
  with ``--fuse 1,0`` once with and once without the digesting kernels
  (``Options.fuse_digestion``), side by side in the one table; ``--fused-max``
  moves the largest block a digesting kernel takes
  (``launch.FUSED_DIGEST_MAX``), to see what fusing larger blocks is worth;
* with ``--density-change 1e-2,1e-4``: builds on density changes of that
  size (the scale times the converged density less the guess, as an
  incremental SCF cycle builds), FusionRCG's from the plan filtered to the
  change's blocks (``JKPlan.restricted``) and screened and sorted anew
  (``iter_tasks``), next to GPU4PySCF's build of the same change, with the
  share of the plan that screening anew looks at (what
  ``jk._cached_plan`` chooses by, against ``gpu_jk.PLAN_RESTRICT_SHARE``).

Writes benchmarks/results/rcg_jk_breakdown.json and .md.

    python benchmarks/rcg_jk_breakdown.py --ctr auto,pairmap,ops --name rcg_jk_breakdown_ctr
    python benchmarks/rcg_jk_breakdown.py --xyz organic/057_Tamoxifen.xyz --fuse 1,0 --fused-max 200
    python benchmarks/rcg_jk_breakdown.py --xyz water_clusters/003.xyz --basis cc-pV5Z --repeat 1
    python benchmarks/rcg_jk_breakdown.py --xyz water_clusters/005.xyz --basis def2-QZVP --density guess
    python benchmarks/rcg_jk_breakdown.py --xyz organic/057_Tamoxifen.xyz --density-change 1e-1,1e-3,1e-5
    python benchmarks/rcg_jk_breakdown.py --xyz organic/057_Tamoxifen.xyz --density-cache /tmp/fusion-dm

The result sets in benchmarks/results:

    python benchmarks/rcg_jk_breakdown.py --ctr auto,ops                           # rcg_jk_breakdown
    python benchmarks/rcg_jk_breakdown.py --basis def2-QZVP --repeat 1 --name rcg_jk_breakdown_qzvp
    python benchmarks/rcg_jk_breakdown.py --xyz organic/057_Tamoxifen.xyz --fuse 1,0 --density-change 1e-1,1e-3,1e-5 --name rcg_jk_breakdown_tamoxifen
    python benchmarks/rcg_jk_breakdown.py --xyz organic/057_Tamoxifen.xyz --repeat 1 --density-change 1e-1,1e-3,1e-5,1e-7 --name rcg_jk_breakdown_tamoxifen_change
    python benchmarks/rcg_jk_breakdown.py --xyz water_clusters/003.xyz --basis cc-pV5Z --repeat 1 --name rcg_jk_breakdown_water5_cc_pv5z
    python benchmarks/rcg_jk_breakdown.py --xyz water_clusters/005.xyz --basis def2-QZVP --density guess --repeat 1 --name rcg_jk_breakdown_water20_qzvp_guess
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]  # _common, and the package when not installed

from _common import (environment_meta, gpu4pyscf_driver_works, molecules_dir, print_record,  # noqa: E402
                     write_results)
from pyscf_fusionrcg.ir import LETTERS, parse_class  # noqa: E402


def _timed(fn, sync):
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return 1e3 * (time.perf_counter() - t0), out


def _fusionrcg_parts(args, mol, dm, dms, q_cond, baseline, ref, changes, sync, options):
    """Records of FusionRCG's build with ``options``; ``changes``:
    (scale, density change, GPU4PySCF's ms and J/K of it) for --density-change."""
    import cupy
    from pyscf import scf

    from pyscf_fusionrcg import fusionrcg, launch
    from pyscf_fusionrcg.gpu_jk import PLAN_RESTRICT_SHARE, JKPlan, get_jk_gpu
    from pyscf_fusionrcg.screening import iter_tasks, schwarz_candidates, shell_density_max

    mf = scf.RHF(mol).to_gpu().apply(fusionrcg, options=options.replace(backend='gpu'))
    tol = mf.direct_scf_tol
    fn = lambda: mf.get_jk(mol, dm)  # noqa: E731
    diff = max(float(abs(a - b).max()) for a, b in zip(fn(), ref))
    wall = statistics.median(_timed(fn, sync)[0] for _ in range(args.repeat))
    plugin_plan = any(c.plan is not None for c in mf._fusionrcg_contexts.values())
    # the plugin's build split into its parts: the plan (once per geometry), then a build from it
    mf.reset()      # drop the plugin's plan first: Tamoxifen/def2-TZVP's takes 19 GB
    cupy.get_default_memory_pool().free_all_blocks()
    block_quartets = sum(len(t) for t in iter_tasks(mol, dms, 0.0, tol, q_cond, xp=cupy))
    plan_ms, plan = _timed(lambda: JKPlan.screen(mol, float(abs(dm).max()), 0.0, tol, q_cond, options), sync)
    dcond = shell_density_max(mol, dms)
    builds = {'on the plan filtered to the density\'s blocks, no events': lambda: plan.restricted(dcond),
              'on the whole plan, no events': lambda: plan,
              'streamed: screened and sorted in the build': lambda: iter_tasks(mol, dms, 0.0, tol, q_cond,
                                                                               xp=cupy)}
    walls = {way: statistics.median(_timed(lambda: get_jk_gpu(mol, dms, 1, True, True, 0.0, tasks(), options), sync)[0]
                                    for _ in range(args.repeat)) for way, tasks in builds.items()}
    profile = {}
    jk_ms, _ = _timed(lambda: get_jk_gpu(mol, dms, 1, True, True, 0.0, plan.restricted(dcond), options,
                                                  profile=profile),
                      sync)
    total = jk_ms
    stages = {key: sum(r[key] for r in profile.values()) for key in _STAGES}
    records = [dict(part='FusionRCG J+K (wall, plugin, plan reused' + ('' if plugin_plan else ': did not fit, streamed')
                    + ')', ms=wall, share=1.0, speedup=baseline / wall, max_abs_diff=diff)]
    records += [dict(part=f'FusionRCG J+K (wall, get_jk_gpu {way})', ms=ms, speedup=baseline / ms)
                for way, ms in walls.items()]
    records += [dict(part='plan: screening and ordering (once per geometry)', ms=plan_ms,
                     quartets=plan.quartets, gib=plan.nbytes / 2**30),
                dict(part="the density's own blocks: the plan filtered to them (profiled below)",
                     quartets=block_quartets)]
    records += [dict(part=f'{title}, all classes', ms=stages[key], share=stages[key] / total)
                for key, title in _STAGES.items()]
    rest = jk_ms - sum(stages.values())
    records.append(dict(part='rest: outside the class kernels (the filter below, the density\'s preparation, '
                             'host work between launches)', ms=rest, share=rest / total))
    filter_ms, _ = _timed(lambda: sum(len(c.quartets) for c in plan.restricted(dcond)), sync)
    records.append(dict(part="of it, the plan filter alone: every class counted and compacted, no kernels",
                        ms=filter_ms, share=filter_ms / total))
    for scale, change, ref_ms, ref_change in changes:
        dch = change.reshape(dms.shape)
        share = schwarz_candidates(plan.pair_bounds, float(abs(change).max()), tol) / plan.quartets
        ways = {'filtered plan': lambda: plan.restricted(shell_density_max(mol, dch)),
                'screened anew': lambda: iter_tasks(mol, dch, 0.0, tol, q_cond, xp=cupy)}
        for way, tasks in ways.items():
            build = lambda: get_jk_gpu(mol, dch, 1, True, True, 0.0, tasks(), options)  # noqa: E731
            got = build()
            ms = statistics.median(_timed(build, sync)[0] for _ in range(args.repeat))
            chosen = (share >= PLAN_RESTRICT_SHARE) == (way == 'filtered plan')
            records.append(dict(part=f'density change x{scale:g}: {way}' + (' (chosen)' if chosen else ''),
                                ms=ms, speedup=ref_ms / ms, candidates_share=share,
                                max_abs_diff=max(float(abs(a[0] - b).max()) for a, b in zip(got, ref_change))))
    records += by_highest_l(profile, total)
    ranked = sorted(profile.items(), key=lambda kv: -_class_ms(kv[1]))
    for name, row in ranked[:args.top]:
        ls = parse_class(name)
        kern = launch.jk_kernel(ls, options=options)
        records.append(dict(part=f'class {name}', ms=_class_ms(row), share=_class_ms(row) / total,
                            quartets=row['quartets'],
                            tier=kern.stats['tier'] + (' (digests)' if kern.variant.digest else ''),
                            **{key: row[key] for key in _STAGES},
                            eri_us_per_quartet=1e3 * (row['eri_ms'] + row['fused_ms']) / max(row['quartets'], 1)))
    for r in records:
        r.update(ctr=options.ctr, fuse=int(options.fuse_digestion))
    return records


def _converged_density(mol, stock, cache_dir, stem, basis):
    """(CuPy density, how it was made): the converged RHF density from the
    baseline's own SCF (with def2-QZVP it runs faster than ours, and it is
    the same density) where its driver works, else from PySCF's driver with
    our J/K; kept in ``cache_dir`` (when given) for the next run of the same
    molecule and basis, which then skips the SCF (a minute of GPU time); a
    file of other coordinates or dimensions is made again."""
    import cupy
    import numpy as np
    from pyscf import scf

    from pyscf_fusionrcg import fusionrcg
    path = Path(cache_dir) / f'{stem}_{basis}.npz' if cache_dir else None
    if path is not None and path.is_file():
        saved = np.load(path)
        if ('coords' in saved.files and saved['dm'].shape == (mol.nao, mol.nao)
                and np.array_equal(saved['coords'], mol.atom_coords())):
            return cupy.asarray(saved['dm']), f"{saved['density']} (cached)"
    if gpu4pyscf_driver_works(mol):
        stock.kernel()
        dm, density = stock.make_rdm1(), 'converged RHF (GPU4PySCF)'
    else:
        own = scf.RHF(mol).apply(fusionrcg, backend='gpu')
        own.kernel()
        dm, density = own.make_rdm1(), 'converged RHF (PySCF driver, FusionRCG J/K)'
    dm = cupy.asarray(dm)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, dm=dm.get(), density=density, coords=mol.atom_coords())
    return dm, density


#: The profile's stages and their rows' titles.
_STAGES = {'eri_ms': 'ERI kernels', 'digest_ms': 'digestion kernels',
           'fused_ms': 'ERI kernels that digest their blocks'}


def _class_ms(row: dict) -> float:
    return sum(row[key] for key in _STAGES)


def by_highest_l(profile: dict, total_ms: float) -> list:
    """Records of the classes of ``profile`` (name -> quartets, eri_ms,
    digest_ms) summed per highest angular momentum, lowest first."""
    sums = {}
    for name, row in profile.items():
        top = max(parse_class(name))
        acc = sums.setdefault(top, dict(quartets=0, **dict.fromkeys(_STAGES, 0.0), classes=0))
        acc['classes'] += 1
        for key in ('quartets', *_STAGES):
            acc[key] += row[key]
    return [dict(part=f'classes with highest l = {top} ({LETTERS[top]})',
                 ms=_class_ms(acc), share=_class_ms(acc) / total_ms, **acc)
            for top, acc in sorted(sums.items())]


def results_title(meta: dict) -> str:
    """The results' heading: molecule, basis and the density built on, which
    changes the kept quartets many times over (a guess density keeps far fewer)."""
    return f"FusionRCG J+K breakdown, {meta['molecule']} / {meta['basis']}, density: {meta['density']}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--xyz', default='organic/020_Vitamin_C.xyz', help='relative to benchmarks/molecules (or $FUSION_MOLECULES)')
    ap.add_argument('--basis', default='def2-TZVP')
    ap.add_argument('--repeat', type=int, default=3)
    ap.add_argument('--top', type=int, default=25, help='classes listed (by time)')
    ap.add_argument('--name', default='rcg_jk_breakdown')
    ap.add_argument('--ctr', default='auto',
                    help="contracted-stage modes of the levels tiers to run, comma-separated (auto, pairmap, ops)")
    ap.add_argument('--fuse', default='1',
                    help='digesting kernels on (1) or off (0), comma-separated to run both')
    ap.add_argument('--density', choices=('converged', 'guess'), default='converged',
                    help="the density built on: the converged RHF one or GPU4PySCF's minao guess (no SCF)")
    ap.add_argument('--density-cache', default=None,
                    help='directory keeping the converged density per molecule and basis between runs')
    ap.add_argument('--fused-max', type=int, default=None,
                    help='largest block (elements) a digesting kernel takes (default: launch.FUSED_DIGEST_MAX)')
    ap.add_argument('--density-change', default='',
                    help='comma-separated scales of density changes to build on as well (e.g. 1e-2,1e-4)')
    args = ap.parse_args(argv)

    import cupy
    from pyscf import gto, scf

    from gpucore import require_gpu
    from pyscf_fusionrcg import launch
    from pyscf_fusionrcg.options import Options
    from pyscf_fusionrcg.screening import schwarz_bounds

    require_gpu('the J/K breakdown')
    if args.fused_max is not None:
        launch.FUSED_DIGEST_MAX = args.fused_max
    sync = cupy.cuda.Device().synchronize
    mol = gto.M(atom=str(molecules_dir() / args.xyz), basis=args.basis, verbose=0)
    stock = scf.RHF(mol).to_gpu()
    guess = cupy.asarray(stock.get_init_guess())
    if args.density == 'guess':
        dm, density = guess, 'minao guess'
    else:
        dm, density = _converged_density(mol, stock, args.density_cache, Path(args.xyz).stem, args.basis)
    dms = dm.reshape(1, mol.nao, mol.nao)
    q_cond = schwarz_bounds(mol, 0.0)
    fn = lambda: stock.get_jk(mol, dm)  # noqa: E731
    ref = fn()
    baseline = statistics.median(_timed(fn, sync)[0] for _ in range(args.repeat))
    records = [dict(part='GPU4PySCF get_jk (wall)', ms=baseline)]
    changes = []
    for scale in (float(x) for x in args.density_change.split(',') if x.strip()):
        change = scale * (dm - guess)
        fn = lambda: stock.get_jk(mol, change)  # noqa: E731
        ref_change = fn()
        ms = statistics.median(_timed(fn, sync)[0] for _ in range(args.repeat))
        records.append(dict(part=f'density change x{scale:g}: GPU4PySCF get_jk (wall)', ms=ms))
        changes.append((scale, change, ms, ref_change))
    for ctr in args.ctr.split(','):
        for fuse in args.fuse.split(','):
            options = Options(ctr=ctr, fuse_digestion=fuse != '0')
            records += _fusionrcg_parts(args, mol, dm, dms, q_cond, baseline, ref, changes, sync, options)
    for r in records:
        print_record(r)
    meta = environment_meta()
    meta.update(molecule=Path(args.xyz).stem, basis=args.basis, nao=mol.nao, nbas=mol.nbas, repeat=args.repeat,
                density=density, direct_scf_tol=stock.direct_scf_tol, ctr=args.ctr, fuse=args.fuse,
                fused_max=launch.FUSED_DIGEST_MAX, density_change=args.density_change)
    paths = write_results(args.name, records, meta, title=results_title(meta),
                          notes='ms: GPU milliseconds from CUDA events (classes: summed over their batches, '
                                'host gaps while the GPU waits included); walls: median of --repeat builds. '
                                'The tier is the routed one for the class with one contracted function per shell; '
                                '"(digests)": its kernel digests the blocks (fused_ms), with fuse=1.'
                                ' eri_us_per_quartet counts eri_ms and fused_ms.')
    print('wrote', *paths)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
