"""``python -m pyscf_fusionrcg``: RHF with FusionRCG's J/K checked against PySCF.

Runs on an embedded water molecule (def2-SVP) unless ``--mol`` names an XYZ
file.  ``--backend auto`` (the default) gives FusionRCG the GPU when one is
usable, else leaves the SCF object's own PySCF J/K (the check then compares
PySCF with itself, and says so); ``--backend cpu`` checks FusionRCG's host
path, a slow reference.  Exits with status 1 when the two energies differ by
more than ``--tol`` Eh.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from pyscf_fusionrcg.options import BACKEND_HELP, BACKENDS

WATER = """
O   0.0000000   0.0000000   0.1173000
H   0.0000000   0.7572000  -0.4692000
H   0.0000000  -0.7572000  -0.4692000
"""


def _parser():
    p = argparse.ArgumentParser(prog="python -m pyscf_fusionrcg", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mol", help="XYZ file, or atoms as PySCF reads them (default: an embedded water molecule)")
    p.add_argument("--basis", default="def2-SVP")
    p.add_argument("--charge", type=int, default=0)
    p.add_argument("--spin", type=int, default=0, help="2S; > 0 runs UHF")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help=BACKEND_HELP)
    p.add_argument("--tol", type=float, default=1e-8, help="largest accepted |dE| (Eh)")
    return p


def _run(mf):
    t0 = time.perf_counter()
    e = mf.kernel()
    if not mf.converged:
        raise SystemExit(f"{type(mf).__name__} did not converge")
    return e, time.perf_counter() - t0


def _looks_like_a_path(text):
    """True for a ``--mol`` that names a file rather than atoms (PySCF reads
    both, and would take a missing file's name for an atom symbol)."""
    return text.lower().endswith(".xyz") or any(sep and sep in text for sep in (os.sep, os.altsep))


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.mol and _looks_like_a_path(args.mol) and not os.path.isfile(args.mol):
        parser.error(f"--mol {args.mol}: no such file")
    from gpucore import gpu_available, unavailable_reason
    from pyscf import gto, scf

    from pyscf_fusionrcg.scf import fusionrcg

    mol = gto.M(atom=args.mol or WATER, basis=args.basis, charge=args.charge,
                spin=args.spin, verbose=0)
    method = scf.RHF if args.spin == 0 else scf.UHF

    def new_mf():
        mf = method(mol)
        mf.conv_tol = 1e-10
        return mf

    print(f"{mol.natm} atoms, {args.basis}, nao = {mol.nao}, {method.__name__}, "
          f"FusionRCG backend = {args.backend}")
    if args.backend == "auto" and not gpu_available():
        print(f"No usable GPU ({unavailable_reason()}): 'auto' leaves J and K to PySCF, so both "
              "runs below are PySCF's own; --backend cpu checks FusionRCG's host path (slow).")
    e_ref, t_ref = _run(new_mf())
    e_ours, t_ours = _run(new_mf().apply(fusionrcg, backend=args.backend))
    diff = e_ours - e_ref
    print(f"PySCF     E = {e_ref:.12f} Eh   {t_ref:8.2f} s")
    print(f"FusionRCG E = {e_ours:.12f} Eh   {t_ours:8.2f} s")
    print(f"difference  = {diff:.3e} Eh (tolerance {args.tol:.0e})")
    ok = abs(diff) <= args.tol
    print("OK" if ok else "FAILED: energies differ")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
