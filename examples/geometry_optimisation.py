"""Geometry optimisation with PySCF's optimisers, J and K from FusionRCG.

    python examples/geometry_optimisation.py [--backend auto|gpu|cpu]
        [--solver geometric|berny] [--basis BASIS] [--xc XC]

PySCF's ``geomopt`` drives ``mf.nuc_grad_method().as_scanner()`` with
geomeTRIC (which reports its steps on stderr) or PyBerny (``pip install
geometric pyberny``, or the ``geomopt`` extra); with ``fusionrcg`` applied,
that scanner's J/K come from FusionRCG at every geometry, and on the host
path the two-electron gradients too (on the GPU those are PySCF's, with a
warning).  'auto' (the default) means the GPU when one is usable, else the
SCF object's own PySCF J/K with a warning; 'cpu' is FusionRCG's host path, a
slow reference for checks.  Water by default, Hartree-Fock unless --xc
names a functional.
"""
import argparse
import importlib

from pyscf import dft, gto, scf

from gpucore import gpu_available
from pyscf_fusionrcg import fusionrcg
from pyscf_fusionrcg.options import BACKEND_HELP, BACKENDS

WATER = "O 0 0 0.117; H 0 0.757 -0.469; H 0 -0.757 -0.469"
#: PySCF's module of each optimiser, and the package it needs
SOLVERS = {"geometric": ("pyscf.geomopt.geometric_solver", "geometric"),
           "berny": ("pyscf.geomopt.berny_solver", "pyberny")}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=BACKENDS, default="auto", help=BACKEND_HELP)
    p.add_argument("--solver", choices=SOLVERS, default="geometric")
    p.add_argument("--basis", default="6-31g")
    p.add_argument("--xc", default=None, help="a functional for Kohn-Sham DFT (default: Hartree-Fock)")
    args = p.parse_args(argv)
    module, package = SOLVERS[args.solver]
    try:
        solver = importlib.import_module(module)
    except ImportError:
        p.error(f"--solver {args.solver} needs {package} (pip install {package})")

    mol = gto.M(atom=WATER, basis=args.basis, verbose=0)
    mf = scf.RHF(mol) if args.xc is None else dft.RKS(mol, xc=args.xc)
    mf = mf.apply(fusionrcg, backend=args.backend)
    print(f"water/{args.basis} {args.xc or 'HF'}: FusionRCG backend = {args.backend}, "
          f"solver = {args.solver}")
    if args.backend == "auto" and not gpu_available():
        print("No usable GPU: 'auto' leaves J/K and gradients to PySCF; --backend cpu runs "
              "FusionRCG's host path, a slow reference.")
    energies = []
    mol_eq = solver.optimize(mf, callback=lambda envs: energies.append(envs["energy"]))
    print(f"converged in {len(energies)} gradient evaluations: "
          f"E = {energies[-1]:.10f} Hartree (start {energies[0]:.10f})")
    for symbol, xyz in zip(mol_eq.elements, mol_eq.atom_coords(unit="Angstrom")):
        print(f"{symbol:2s} {xyz[0]:12.6f} {xyz[1]:12.6f} {xyz[2]:12.6f}")


if __name__ == "__main__":
    main()
