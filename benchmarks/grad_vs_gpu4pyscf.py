"""Nuclear gradients with FusionRCG's derivative integrals against GPU4PySCF's,
in one process on one GPU, on the same converged RHF.

For each case (molecule x basis) the RHF converges once (GPU4PySCF's driver,
or PySCF's with FusionRCG's GPU J/K where GPU4PySCF cannot: beyond g). Then,
each after one untimed call (kernel compilation), the gradient
(``nuc_grad_method().kernel()``) of

* FusionRCG: the same SCF object with the plugin on the GPU path
  (``fusionrcg(mf, backend='gpu', gpu_gradients=True)``): GPU4PySCF's gradient driver with the
  two-electron part from FusionRCG's derivative kernels (only that part
  differs), or PySCF's driver where GPU4PySCF cannot run; the two-electron
  part alone is timed too (``two_electron_s``);
* GPU4PySCF 1.9: the GPU4PySCF object's own gradient, where it runs;

with the largest difference of the two (Eh/Bohr). Results go to
benchmarks/results/ (JSON, markdown, plot) through benchmarks/_common.py.

    python benchmarks/grad_vs_gpu4pyscf.py --dry-run     # list the cases
    python benchmarks/grad_vs_gpu4pyscf.py --quick       # Vitamin C def2-TZVP
    python benchmarks/grad_vs_gpu4pyscf.py               # every case

Needs CuPy, GPU4PySCF and pyscf_fusionrcg importable.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
NAME = "grad_vs_gpu4pyscf"
sys.path.insert(0, str(REPO / "benchmarks"))   # _common, scf_vs_gpu4pyscf

from _common import (environment_meta, gpu4pyscf_driver_works, gpu_or_none, molecules_dir,  # noqa: E402
                     select_cases, timed_once, write_results)
from scf_vs_gpu4pyscf import CASES as SCF_CASES  # noqa: E402
from scf_vs_gpu4pyscf import Case, build_mol  # noqa: E402

CASES = {c.name: c for c in (
    SCF_CASES["vitc-def2-tzvp"], SCF_CASES["vitc-def2-qzvp"], SCF_CASES["tamoxifen-def2-tzvp"],
    Case("water-cc-pv5z", "water_clusters/002.xyz", "cc-pV5Z", baseline=False),
)}
QUICK = ("vitc-def2-tzvp",)
COLUMNS = ["case", "natm", "nao", "max_l", "fusionrcg_s", "two_electron_s", "gpu4pyscf_s", "speedup",
           "max_abs_diff", "scf_s", "e_tot"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="all", help=f"comma-separated names or 'all'; known: {', '.join(CASES)}")
    p.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)} (unless --cases)")
    p.add_argument("--molecules-dir", type=pathlib.Path, default=molecules_dir())
    p.add_argument("--dry-run", action="store_true", help="list the cases and exit")
    p.add_argument("--name", default=NAME, help=f"results file stem under benchmarks/results (default {NAME})")
    args = p.parse_args(argv)
    args.selected = select_cases(p, args.cases, args.quick, CASES, QUICK)
    return args


def dry_run(args):
    print(f"molecules: {args.molecules_dir}")
    for case in args.selected:
        path = args.molecules_dir / case.xyz
        if not path.is_file():
            print(f"{case.name:22s} {case.basis:10s} missing {path}")
            continue
        mol = build_mol(case, args.molecules_dir)
        print(f"{case.name:22s} {case.basis:10s} {mol.natm:5d} atoms {mol.nao:5d} AOs, max l "
              f"{int(mol._bas[:, 1].max())}, {'vs GPU4PySCF' if case.baseline else 'FusionRCG only'}")


def converged_rhf(mol):
    """(seconds, the converged RHF: a GPU4PySCF object where its driver runs,
    else a PySCF one whose SCF ran with FusionRCG's J/K)."""
    from pyscf import scf

    from pyscf_fusionrcg import fusionrcg
    if gpu4pyscf_driver_works(mol):
        mf = scf.RHF(mol).to_gpu()
        mf.conv_tol = 1e-10
        t, _ = timed_once(mf.kernel)
        return t, mf
    mf = fusionrcg(scf.RHF(mol), backend="gpu")
    mf.conv_tol = 1e-10
    t, _ = timed_once(mf.kernel)
    return t, mf.undo_fusionrcg()


def run_case(case, args):
    import numpy as np

    from pyscf_fusionrcg import fusionrcg
    from pyscf_fusionrcg.grad import is_gpu4pyscf

    mol = build_mol(case, args.molecules_dir)
    t_scf, mf = converged_rhf(mol)
    stock = mf if is_gpu4pyscf(mf) else None
    if not mf.converged:
        raise RuntimeError(f"{case.name}: the RHF did not converge")
    rec = dict(case=case.name, molecule=pathlib.Path(case.xyz).stem, basis=case.basis, natm=mol.natm,
               nao=mol.nao, max_l=int(mol._bas[:, 1].max()), scf_s=t_scf, e_tot=float(mf.e_tot))
    ours = fusionrcg(mf.copy(), backend="gpu", gpu_gradients=True).nuc_grad_method()
    ours.verbose = 0
    ours.kernel()                                   # compiles the derivative kernels
    rec["fusionrcg_s"], g = timed_once(ours.kernel)
    dm = mf.make_rdm1()      # NumPy or CuPy: forces() takes either
    # the gradient's own context: its bounds and engine are made, as in the timed gradient
    context = ours._fusionrcg_context(mol, float(mol.omega))
    rec["two_electron_s"], _ = timed_once(lambda: context.forces(dm, 1.0, 0.5, ours._fusionrcg_tol()))
    if stock is not None and case.baseline:
        ref = stock.nuc_grad_method()
        ref.verbose = 0
        ref.kernel()
        rec["gpu4pyscf_s"], g_ref = timed_once(ref.kernel)
        rec["speedup"] = rec["gpu4pyscf_s"] / rec["fusionrcg_s"]
        rec["max_abs_diff"] = float(np.abs(np.asarray(g) - np.asarray(g_ref.get() if hasattr(g_ref, "get")
                                                                      else g_ref)).max())
    print(_line(rec), flush=True)
    return rec


def _line(rec):
    s = (f"{rec['case']:22s} FusionRCG {rec['fusionrcg_s']:8.3f} s (two-electron {rec['two_electron_s']:.3f} s)")
    if "gpu4pyscf_s" in rec:
        s += f"   GPU4PySCF {rec['gpu4pyscf_s']:8.3f} s   x{rec['speedup']:.2f}   max|dg| {rec['max_abs_diff']:.1e}"
    return s


def plot_times(records, path):
    """Bars of the gradient's seconds per case, FusionRCG and GPU4PySCF."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [r["case"] for r in records]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(cases)), 4))
    xs = range(len(cases))
    ax.bar([x - 0.2 for x in xs], [r["fusionrcg_s"] for r in records], 0.4, label="FusionRCG")
    ax.bar([x + 0.2 for x in xs], [r.get("gpu4pyscf_s", 0.0) for r in records], 0.4, label="GPU4PySCF")
    ax.set_xticks(list(xs), cases, rotation=20, ha="right")
    ax.set_ylabel("gradient (s)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    if args.dry_run:
        dry_run(args)
        return 0
    cupy = gpu_or_none("benchmarks/grad_vs_gpu4pyscf.py", "gpu4pyscf")
    if cupy is None:
        return 2
    meta = environment_meta()
    meta.setdefault("gpu", cupy.cuda.runtime.getDeviceProperties(0)["name"].decode())
    meta.update(cases=[c.name for c in args.selected], complete=False)
    records = []

    def save():
        paths = write_results(args.name, records, meta, title="Nuclear gradients: FusionRCG vs GPU4PySCF",
                              columns=COLUMNS, notes="Times in seconds of one nuc_grad_method().kernel() "
                              "after an untimed one; speedup = GPU4PySCF / FusionRCG; two_electron_s: "
                              "FusionRCG's two-electron part alone; max_abs_diff in Eh/Bohr.")
        plot_times(records, paths[0].with_suffix(".png"))
        return paths

    for case in args.selected:
        records.append(run_case(case, args))
        save()
    meta["complete"] = True
    json_path, md_path = save()
    print(f"wrote {json_path}, {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
