"""ASE's BFGS on a B3LYP molecule, J and K from FusionRCG, through the ASE calculator.

    python examples/ase_optimisation.py [--backend auto|gpu|cpu] [--molecule NAME]
        [--basis BASIS] [--fmax EV_PER_A]

``pyscf_fusionrcg.ase.SCFCalculator`` gives ASE the energy and forces of a
PySCF SCF object (here B3LYP with ``fusionrcg`` applied), each geometry's SCF
starting from the last one's orbitals.  'auto' (the default) means the GPU
when one is usable, else the SCF object's own PySCF J/K with a warning; 'cpu'
is FusionRCG's host path, a slow reference for checks, which computes the
gradients too.  The molecule is a name of ASE's G2 set (water by default).
"""
import argparse

from ase.build import molecule
from ase.optimize import BFGS
from pyscf import dft, gto

from gpucore import gpu_available
from pyscf_fusionrcg import fusionrcg
from pyscf_fusionrcg.ase import SCFCalculator
from pyscf_fusionrcg.options import BACKEND_HELP, BACKENDS


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=BACKENDS, default="auto", help=BACKEND_HELP)
    p.add_argument("--molecule", default="H2O", help="a name of ASE's G2 set (ase.build.molecule)")
    p.add_argument("--basis", default="6-31g")
    p.add_argument("--fmax", type=float, default=0.01, help="largest force at convergence, eV/Å")
    args = p.parse_args(argv)

    atoms = molecule(args.molecule)
    mol = gto.M(atom=list(zip(atoms.get_chemical_symbols(), atoms.positions)), basis=args.basis,
                verbose=0)
    mf = dft.RKS(mol, xc="b3lyp").apply(fusionrcg, backend=args.backend)
    atoms.calc = SCFCalculator(mf)
    print(f"{args.molecule}/{args.basis} B3LYP: FusionRCG backend = {args.backend}")
    if args.backend == "auto" and not gpu_available():
        print("No usable GPU: 'auto' leaves J/K and gradients to PySCF; --backend cpu runs "
              "FusionRCG's host path, a slow reference.")
    e_start = atoms.get_potential_energy()
    opt = BFGS(atoms, logfile=None)
    converged = opt.run(fmax=args.fmax)
    print(f"{'converged' if converged else 'not converged'} in {opt.nsteps} BFGS steps: "
          f"E = {atoms.get_potential_energy():.6f} eV (start {e_start:.6f}), "
          f"largest force {abs(atoms.get_forces()).max():.4f} eV/Å")
    for symbol, xyz in zip(atoms.get_chemical_symbols(), atoms.positions):
        print(f"{symbol:2s} {xyz[0]:12.6f} {xyz[1]:12.6f} {xyz[2]:12.6f}")
    return 0 if converged else 1


if __name__ == "__main__":
    raise SystemExit(main())
