"""Quickstart: PySCF SCF with J and K from FusionRCG.

    python examples/scf_quickstart.py [--backend auto|gpu|cpu] [--basis BASIS]

``mf.apply(fusionrcg, backend=...)`` is all it takes: the SCF driver, DIIS,
DFT grids etc. stay PySCF's; only J and K are served by FusionRCG.  'auto' (the
default) means the GPU when one is usable, else the SCF object's own PySCF J/K
with a warning, so without a GPU both columns are PySCF's; 'cpu' is FusionRCG's
host path, a slow reference for checks.
"""
import argparse
import time

from pyscf import dft, gto, scf

from gpucore import gpu_available
from pyscf_fusionrcg import fusionrcg
from pyscf_fusionrcg.options import BACKEND_HELP, BACKENDS

WATER = "O 0 0 0.117; H 0 0.757 -0.469; H 0 -0.757 -0.469"


def timed_energy(mf):
    t0 = time.perf_counter()
    e = mf.kernel()
    return e, time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=BACKENDS, default="auto", help=BACKEND_HELP)
    p.add_argument("--basis", default="6-31g*")
    args = p.parse_args()

    mol = gto.M(atom=WATER, basis=args.basis, verbose=0)
    print(f"water/{args.basis}: nao = {mol.nao}; FusionRCG backend = {args.backend}")
    if args.backend == "auto" and not gpu_available():
        print("No usable GPU: 'auto' leaves J and K to PySCF (both columns are PySCF's); "
              "--backend cpu runs FusionRCG's host path, a slow reference.")
    for label, make in (("RHF", lambda: scf.RHF(mol)),
                        ("B3LYP", lambda: dft.RKS(mol, xc="b3lyp")),
                        ("wB97X", lambda: dft.RKS(mol, xc="wb97x"))):
        e_ref, t_ref = timed_energy(make())
        e, t = timed_energy(make().apply(fusionrcg, backend=args.backend))
        print(f"{label:6s} FusionRCG {e:.10f} ({t:5.2f} s)   PySCF {e_ref:.10f} "
              f"({t_ref:5.2f} s)   dE = {e - e_ref:+.1e}")


if __name__ == "__main__":
    main()
