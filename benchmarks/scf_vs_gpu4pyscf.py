"""FusionRCG J/K against GPU4PySCF's, in one process on one GPU.

First a small untimed RHF and B3LYP with both (CuPy's and the libraries'
first-use setup).  For each case (molecule x basis): one J+K build on the
guess density (the "warm-up": kernel compilation included, and kept out of
what follows); whole SCFs (``--scf-methods``, RHF and B3LYP by default) with
GPU4PySCF's driver, J/K from FusionRCG (``mf.to_gpu().apply(fusionrcg)``)
against stock GPU4PySCF, with the energy
difference; then, on the same converged RHF density, one J+K build, J alone
and K alone (median of --repeat after a warm-up call) with the largest
difference of the matrices (with ``--no-scf``, or for a case without SCFs,
only our RHF runs, untimed, to make that density).  With ``--density guess`` the builds are timed on
the guess density and no SCF runs: for systems whose SCFs outlast a time limit
(a converged density costs far more).  ``--scf-methods`` takes RHF, B3LYP and
PBE (a pure functional: the driver asks for J alone).  With ``--joltqc`` JoltQC
(``jqc.pyscf.apply`` with both cutoffs at the screening threshold, so every
quartet runs in FP64) is a third column wherever it runs: restricted methods,
shells up to g; it must be importable (a source checkout on PYTHONPATH).  Geometries come from benchmarks/molecules
(or ``--molecules-dir``, or $FUSION_MOLECULES).  Results go to
benchmarks/results/ (JSON, markdown, plot) through benchmarks/_common.py.

    python benchmarks/scf_vs_gpu4pyscf.py --dry-run           # list the cases
    python benchmarks/scf_vs_gpu4pyscf.py --quick             # one small case
    python benchmarks/scf_vs_gpu4pyscf.py --cases vitc-def2-tzvp,tamoxifen-def2-tzvp
    python benchmarks/scf_vs_gpu4pyscf.py --cases water10-cc-pv5z --builds J+K   # GPU4PySCF's J and K alone take minutes there

The result sets in benchmarks/results, one case each:

    python benchmarks/scf_vs_gpu4pyscf.py --cases vitc-def2-tzvp                  # scf_vs_gpu4pyscf
    python benchmarks/scf_vs_gpu4pyscf.py --cases vitc-def2-qzvp --scf-methods RHF --name scf_vs_gpu4pyscf_qzvp
    python benchmarks/scf_vs_gpu4pyscf.py --cases vitc-def2-qzvp --no-scf --name scf_vs_gpu4pyscf_qzvp_builds
    python benchmarks/scf_vs_gpu4pyscf.py --cases water-cc-pv5z --builds J+K --name scf_vs_gpu4pyscf_cc_pv5z
    python benchmarks/scf_vs_gpu4pyscf.py --cases water5-cc-pv5z --builds J+K --repeat 1 --name scf_vs_gpu4pyscf_water5_cc_pv5z
    python benchmarks/scf_vs_gpu4pyscf.py --cases water20-def2-qzvp --builds J+K --density guess --name scf_vs_gpu4pyscf_water20_qzvp_guess
    python benchmarks/scf_vs_gpu4pyscf.py --cases gly30-def2-tzvp --builds J+K --density guess --name scf_vs_gpu4pyscf_gly30_tzvp_guess
    python benchmarks/scf_vs_gpu4pyscf.py --cases vitc-def2-tzvp,vitc-def2-qzvp --scf-methods PBE --builds J,J+K --joltqc --name scf_vs_gpu4pyscf_pbe
    python benchmarks/scf_vs_gpu4pyscf.py --cases water20-def2-qzvp --builds J+K,J --joltqc --name scf_vs_gpu4pyscf_water20_qzvp

Needs CuPy, GPU4PySCF and pyscf_fusionrcg importable (``pip install -e .[cuda12]``).
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time
from dataclasses import dataclass

REPO = pathlib.Path(__file__).resolve().parents[1]
NAME = "scf_vs_gpu4pyscf"
sys.path.insert(0, str(REPO / "benchmarks"))   # _common

from _common import (environment_meta, gpu4pyscf_driver_works, gpu_or_none, molecules_dir,  # noqa: E402
                     select_cases, sync_gpu, timed_once, write_results)


@dataclass(frozen=True)
class Case:
    name: str
    xyz: str            # relative to the molecules directory
    basis: str
    baseline: bool = True   # GPU4PySCF runs l > 4 on the CPU: unusable for large cc-pV5Z cases
    scf: bool = True        # whole SCFs (else only the builds on a converged density)
    slow_baseline: bool = False  # baseline builds timed once, no warm-up, no baseline SCF


CASES = {c.name: c for c in (
    Case("vitc-def2-tzvp", "organic/020_Vitamin_C.xyz", "def2-TZVP"),
    Case("vitc-def2-qzvp", "organic/020_Vitamin_C.xyz", "def2-QZVP"),
    Case("vitc-cc-pvqz", "organic/020_Vitamin_C.xyz", "cc-pVQZ"),
    Case("tamoxifen-def2-tzvp", "organic/057_Tamoxifen.xyz", "def2-TZVP"),
    Case("water10-def2-tzvp", "water_clusters/004.xyz", "def2-TZVP"),
    Case("water20-def2-qzvp", "water_clusters/005.xyz", "def2-QZVP", scf=False),
    Case("water-cc-pv5z", "water_clusters/002.xyz", "cc-pV5Z", scf=False, slow_baseline=True),
    Case("water5-cc-pv5z", "water_clusters/003.xyz", "cc-pV5Z", scf=False, slow_baseline=True),
    Case("water10-cc-pv5z", "water_clusters/004.xyz", "cc-pV5Z", baseline=False, scf=False),
    Case("gly30-def2-tzvp", "gly/gly30.xyz", "def2-TZVP", scf=False),
)}
QUICK = ("vitc-def2-tzvp",)
BUILDS = ("J+K", "J", "K")
SCF_METHODS = ("RHF", "B3LYP", "PBE")
#: The highest angular momentum JoltQC's kernels take.
JOLTQC_LMAX = 4


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="all",
                   help=f"comma-separated names or 'all'; known: {', '.join(CASES)}")
    p.add_argument("--quick", action="store_true",
                   help=f"only {', '.join(QUICK)} (unless --cases), 1 repeat, RHF only")
    p.add_argument("--molecules-dir", type=pathlib.Path, default=molecules_dir())
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-scf", action="store_true",
                   help="builds only (on the converged density, the density of our RHF, untimed)")
    p.add_argument("--scf-methods", default="RHF,B3LYP",
                   help=f"whole SCFs timed, of {','.join(SCF_METHODS)} (an RHF always runs: its density "
                        "is the builds'; PBE is a pure functional, J only)")
    p.add_argument("--joltqc", action="store_true",
                   help="JoltQC (FP64) as a third column where it runs (restricted, l <= 4)")
    p.add_argument("--builds", default=",".join(BUILDS),
                   help=f"builds timed on the converged density, of {','.join(BUILDS)}")
    p.add_argument("--density", choices=("converged", "guess"), default="converged",
                   help="the density of the timed builds: the converged RHF one, or the "
                        "guess (no SCF runs)")
    p.add_argument("--tier", default=None, help="force one FusionRCG storage tier")
    p.add_argument("--dry-run", action="store_true", help="list the cases and exit")
    p.add_argument("--name", default=NAME,
                   help=f"results file stem under benchmarks/results (default {NAME}); "
                        "cases run in separate processes go to separate files")
    args = p.parse_args(argv)
    args.selected = select_cases(p, args.cases, args.quick, CASES, QUICK)
    args.builds = [b.strip() for b in args.builds.split(",") if b.strip()]
    unknown = [b for b in args.builds if b not in BUILDS]
    if unknown or not args.builds:
        p.error(f"unknown build(s) {unknown}; known: {', '.join(BUILDS)}")
    args.scf_methods = [m.strip() for m in args.scf_methods.split(",") if m.strip()]
    unknown = [m for m in args.scf_methods if m not in SCF_METHODS]
    if unknown:
        p.error(f"unknown SCF method(s) {unknown}; known: {', '.join(SCF_METHODS)}")
    if args.quick:
        args.repeat = 1
    return args


def build_mol(case, molecules_dir):
    from pyscf import gto
    return gto.M(atom=str(molecules_dir / case.xyz), basis=case.basis, verbose=0)


def dry_run(args):
    print(f"molecules: {args.molecules_dir}")
    print(f"{'case':22s} {'basis':10s} {'atoms':>5s} {'nao':>5s} {'max l':>5s}  runs")
    for case in args.selected:
        path = args.molecules_dir / case.xyz
        runs = list(args.builds)
        if case.scf and not args.no_scf and args.density == "converged":
            runs += ["RHF"] if args.quick else list(args.scf_methods)
        runs.append("vs GPU4PySCF" if case.baseline else "FusionRCG only")
        runs.append(f"{args.density} density")
        if not path.is_file():
            print(f"{case.name:22s} {case.basis:10s} missing {path}")
            continue
        mol = build_mol(case, args.molecules_dir)
        if args.joltqc:
            runs.append("and JoltQC" if joltqc_runs(mol) else "JoltQC cannot (l > 4)")
        print(f"{case.name:22s} {case.basis:10s} {mol.natm:5d} {mol.nao:5d} "
              f"{int(mol._bas[:, 1].max()):5d}  {', '.join(runs)}")


def joltqc_runs(mol) -> bool:
    """JoltQC's kernels take shells up to g."""
    return int(mol._bas[:, 1].max()) <= JOLTQC_LMAX


def joltqc(mf):
    """``mf`` (PySCF, restricted) with JoltQC's J/K on the GPU, every quartet
    above the screening threshold in FP64."""
    import jqc.pyscf
    tol = mf.direct_scf_tol
    return jqc.pyscf.apply(mf.to_gpu(), cutoff_fp32=tol, cutoff_fp64=tol)


def time_build(fn, repeat):
    """Median seconds of `repeat` calls after one warm-up call, and the last result."""
    timed_once(fn)
    times, out = [], None
    for _ in range(repeat):
        t, out = timed_once(fn)
        times.append(t)
    return statistics.median(times), out


class BuildTimes:
    """Wall seconds of each J/K build an SCF driver asks for: the outermost
    calls of the object's ``get_jk``, ``get_j`` and ``get_k`` (one may call
    another), each with the GPU drained before and after.  Says how much of a
    whole SCF the builds are, and how much is the driver's own work (grids,
    diagonalisation), which is the same code for both engines."""

    def __init__(self, mf, sync=None):
        self.seconds, self._depth, self._sync = [], 0, sync or sync_gpu
        for name in ("get_jk", "get_j", "get_k"):
            setattr(mf, name, self._timed(getattr(mf, name)))

    def _timed(self, method):
        def call(*args, **kwargs):
            if self._depth:
                return method(*args, **kwargs)
            self._depth += 1
            try:
                self._sync()
                t0 = time.perf_counter()
                out = method(*args, **kwargs)
                self._sync()
                self.seconds.append(time.perf_counter() - t0)
            finally:
                self._depth -= 1
            return out
        return call


def _record(common, task, ours_s, ref_s=None, jqc_s=None, **extra):
    rec = dict(common, task=task, fusionrcg_s=ours_s, **extra)
    if ref_s is not None:
        rec.update(gpu4pyscf_s=ref_s, speedup=ref_s / ours_s)
    if jqc_s is not None:
        rec.update(joltqc_s=jqc_s, speedup_joltqc=jqc_s / ours_s)
    print(_line(rec), flush=True)
    return rec


def _max_diff(a, b):
    import cupy
    return float(cupy.abs(cupy.asarray(a) - cupy.asarray(b)).max())


def warm_drivers(args):
    """One small untimed RHF and B3LYP, stock and with FusionRCG, before any
    timing: CuPy compiles its elementwise and reduction kernels and the CUDA
    libraries set up handles on first use, which would otherwise land on
    whichever SCF of the first case runs first (ours)."""
    from pyscf import dft, gto, scf

    from pyscf_fusionrcg import fusionrcg
    mol = gto.M(atom="O 0 0 0.117; H 0 0.757 -0.469; H 0 -0.757 -0.469", basis="def2-SVP",
                verbose=0)
    for make in (scf.RHF, lambda m: dft.RKS(m, xc="b3lyp")):
        make(mol).to_gpu().kernel()
        make(mol).to_gpu().apply(fusionrcg, backend="gpu", tier=args.tier).kernel()
        if args.joltqc:
            joltqc(make(mol)).kernel()


def run_case(case, args, save):
    """One case: warm-up, whole SCFs, then builds on the converged RHF density;
    ``save(record)`` gets each record as soon as it is measured."""
    import cupy
    from pyscf import dft, scf

    from pyscf_fusionrcg import fusionrcg

    mol = build_mol(case, args.molecules_dir)
    common = dict(case=case.name, molecule=pathlib.Path(case.xyz).stem, basis=case.basis,
                  natm=mol.natm, nao=mol.nao, max_l=int(mol._bas[:, 1].max()),
                  density=args.density)

    def ours(mf):
        return mf.to_gpu().apply(fusionrcg, backend="gpu", tier=args.tier)

    mine = ours(scf.RHF(mol))
    stock = scf.RHF(mol).to_gpu() if case.baseline else None
    jolt = joltqc(scf.RHF(mol)) if args.joltqc and joltqc_runs(mol) else None
    # One build on the guess density first: kernel compilation stays out of the SCFs.
    dm0 = mine.get_init_guess()
    save(_record(common, "warm-up", timed_once(lambda: mine.get_jk(mol, dm0))[0],
                 None if stock is None or case.slow_baseline
                 else timed_once(lambda: stock.get_jk(mol, dm0))[0]))

    makers = {"RHF": scf.RHF, "B3LYP": lambda m: dft.RKS(m, xc="b3lyp"),
              "PBE": lambda m: dft.RKS(m, xc="pbe")}
    methods = [] if args.density == "guess" else [("RHF", scf.RHF)]
    if methods and not (args.quick or args.no_scf or not case.scf):
        methods += [(m, makers[m]) for m in args.scf_methods if m != "RHF"]
    dm = dm0 if args.density == "guess" else None
    gpu_driver = gpu4pyscf_driver_works(mol)
    for label, make in methods:
        mf = ours(make(mol)) if gpu_driver else make(mol).apply(fusionrcg, backend="gpu", tier=args.tier)
        builds = BuildTimes(mf)
        t, e = timed_once(mf.kernel)
        extra = dict(e_fusionrcg=float(e), cycles_fusionrcg=mf.cycles, jk_fusionrcg_s=sum(builds.seconds),
                     builds_fusionrcg_s=builds.seconds)
        t_ref, mf_ref = None, None
        kept = case.scf and not args.no_scf and (label in args.scf_methods or args.quick)
        if kept and case.baseline and not case.slow_baseline:
            mf_ref = make(mol).to_gpu()
            builds = BuildTimes(mf_ref)
            t_ref, e_ref = timed_once(mf_ref.kernel)
            extra.update(e_gpu4pyscf=float(e_ref), de=float(e - e_ref),
                         cycles_gpu4pyscf=mf_ref.cycles, jk_gpu4pyscf_s=sum(builds.seconds),
                         builds_gpu4pyscf_s=builds.seconds)
        t_jqc = None
        if kept and jolt is not None:
            mf_jqc = joltqc(make(mol))
            t_jqc, e_jqc = timed_once(mf_jqc.kernel)
            extra.update(e_joltqc=float(e_jqc), de_joltqc=float(e - e_jqc), cycles_joltqc=mf_jqc.cycles)
            del mf_jqc
        if dm is None:   # the first method is RHF: its density is the one for the builds
            dm = (mf if mf_ref is None else mf_ref).make_rdm1()
        if kept:
            save(_record(common, label, t, t_ref, t_jqc, **extra))
        del mf
        cupy.get_default_memory_pool().free_all_blocks()

    builds = {"J+K": lambda mf: mf.get_jk(mol, dm), "J": lambda mf: mf.get_j(mol, dm),
              "K": lambda mf: mf.get_k(mol, dm)}
    for task in args.builds:
        call = builds[task]
        t, out = time_build(lambda: call(mine), args.repeat)
        t_ref, t_jqc, extra = None, None, {}

        def largest_difference(other):
            pairs = zip(out, other) if task == "J+K" else [(out, other)]
            return max(_max_diff(a, b) for a, b in pairs)
        if stock is not None:
            if case.slow_baseline:
                t_ref, out_ref = timed_once(lambda: call(stock))
            else:
                t_ref, out_ref = time_build(lambda: call(stock), args.repeat)
            extra["max_abs_diff"] = largest_difference(out_ref)
        if jolt is not None:
            t_jqc, out_jqc = time_build(lambda: call(jolt), args.repeat)
            extra["max_abs_diff_joltqc"] = largest_difference(out_jqc)
        save(_record(common, task, t, t_ref, t_jqc, **extra))
        cupy.get_default_memory_pool().free_all_blocks()


def _line(rec):
    s = f"{rec['case']:22s} {rec['task']:7s} FusionRCG {rec['fusionrcg_s']:9.3f} s"
    if "gpu4pyscf_s" in rec:
        s += f"   GPU4PySCF {rec['gpu4pyscf_s']:9.3f} s   x{rec['speedup']:.2f}"
    if "de" in rec:
        s += f"   dE {rec['de']:+.1e}"
    if "max_abs_diff" in rec:
        s += f"   max|dV| {rec['max_abs_diff']:.1e}"
    if "joltqc_s" in rec:
        s += f"   JoltQC {rec['joltqc_s']:9.3f} s   x{rec['speedup_joltqc']:.2f}"
    for engine in ("fusionrcg", "gpu4pyscf"):
        if f"jk_{engine}_s" in rec:
            s += f"   {engine} J/K {rec[f'jk_{engine}_s']:.3f} s in {len(rec[f'builds_{engine}_s'])} builds"
    return s


COLUMNS = ["case", "nao", "max_l", "density", "task", "fusionrcg_s", "gpu4pyscf_s", "speedup", "de",
           "max_abs_diff", "joltqc_s", "speedup_joltqc", "de_joltqc", "max_abs_diff_joltqc",
           "cycles_fusionrcg", "cycles_gpu4pyscf", "jk_fusionrcg_s", "jk_gpu4pyscf_s"]
TASKS = ("J+K", "J", "K") + SCF_METHODS


def plot_speedups(records, path):
    """Bars of GPU4PySCF time / FusionRCG time per case and task (1 = parity)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r["case"] for r in records if "speedup" in r))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(cases)), 4))
    width = 0.8 / len(TASKS)
    for i, task in enumerate(TASKS):
        by_case = {r["case"]: r["speedup"] for r in records
                   if r["task"] == task and "speedup" in r}
        xs = [k + (i - (len(TASKS) - 1) / 2) * width for k, c in enumerate(cases) if c in by_case]
        ax.bar(xs, [by_case[c] for c in cases if c in by_case], width, label=task)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(cases)), cases, rotation=20, ha="right")
    ax.set_ylabel("speedup over GPU4PySCF")
    ax.legend(ncol=len(TASKS), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    if args.dry_run:
        dry_run(args)
        return 0
    cupy = gpu_or_none("benchmarks/scf_vs_gpu4pyscf.py", "gpu4pyscf", *(["jqc.pyscf"] if args.joltqc else []))
    if cupy is None:
        return 2

    warm_drivers(args)
    meta = environment_meta()
    meta.setdefault("gpu", cupy.cuda.runtime.getDeviceProperties(0)["name"].decode())
    meta.update(repeat=args.repeat, tier=args.tier, quick=args.quick, joltqc=args.joltqc,
                cases=[c.name for c in args.selected], complete=False)
    records = []

    def save(rec=None):
        """Rewrite the results with every record so far: a run stopped part way
        (a time limit) still leaves what it measured, marked complete: false."""
        if rec is not None:
            records.append(rec)
        paths = write_results(
            args.name, records, meta, title="FusionRCG vs GPU4PySCF: J/K builds and SCF",
            columns=COLUMNS, notes="Times in seconds; speedup = GPU4PySCF / FusionRCG; "
            "speedup_joltqc = JoltQC (FP64) / FusionRCG where JoltQC runs; "
            f"builds on the {'guess' if args.density == 'guess' else 'converged RHF'} density, "
            "median of --repeat after a warm-up; jk_*_s: the J/K builds inside a whole SCF "
            "(the rest of it is the driver's own work; each build in the JSON).")
        plot_speedups(records, paths[0].with_suffix(".png"))
        return paths

    for case in args.selected:
        run_case(case, args, save)
    meta["complete"] = True
    json_path, md_path = save()
    print(f"wrote {json_path}, {md_path}, {json_path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
