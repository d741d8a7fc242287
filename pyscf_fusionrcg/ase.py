"""An ASE calculator around a PySCF (or GPU4PySCF) SCF object.

::

    from ase.build import molecule
    from ase.optimize import BFGS
    from pyscf import dft, gto
    from pyscf_fusionrcg import fusionrcg
    from pyscf_fusionrcg.ase import SCFCalculator

    atoms = molecule("H2O")
    mol = gto.M(atom=list(zip(atoms.get_chemical_symbols(), atoms.positions)), basis="6-31g")
    mf = dft.RKS(mol, xc="b3lyp").apply(fusionrcg, backend="auto")
    atoms.calc = SCFCalculator(mf)
    BFGS(atoms).run(fmax=0.05)

:class:`SCFCalculator` gives ASE the energy (eV), the forces (eV/Å) and the
dipole (e·Å) of the SCF object at the geometry of ``atoms``.  The object
passed in is the one that runs, so all its settings stay as they are: charge,
spin, basis, functional, grids, convergence thresholds and the plugin's
options (with ``fusionrcg`` applied, J/K and, on the host path, the gradients
come from FusionRCG; without it, from PySCF or GPU4PySCF).  After a
calculation ``calc.mf`` holds that geometry's converged SCF (orbitals,
energies, ``mf.mol``).

At a new geometry of the same atoms the SCF starts from the previous one's
occupied orbitals, orthonormalised in the new overlap (:func:`carried_density`),
whose energy lies within ~1e-4 Hartree of the converged one after a 0.02 Å
step (PySCF's default guess: ~0.1 Hartree); how many cycles that saves
depends on the method and the thresholds (docs/ase-calculator.md).  PySCF's
default guess serves when the atoms change (other atomic numbers or another
count rebuild ``mf.mol`` with its own basis, charge and spin) or the last
SCF did not converge.  An SCF that does not converge raises ASE's
:class:`~ase.calculators.calculator.SCFError` (a ``CalculationFailed``)
rather than hand an optimiser numbers of an unconverged density.  Periodic
``atoms`` are refused: this is a molecular calculator (PySCF's ``pbc``
module treats crystals).

Units are PySCF's own (``pyscf.data.nist``): the positions reach PySCF in
Å through ``mol.set_geom_``, which converts with PySCF's Bohr, and the
forces and energy come back with the same constants, so that the forces are
minus the derivative of the energy returned with respect to the positions
given (ASE's own Hartree and Bohr differ from PySCF's by parts in 1e10).
"""
from __future__ import annotations

import numpy as np
from ase.calculators.calculator import (Calculator, CalculatorSetupError,
                                        PropertyNotImplementedError, SCFError, all_changes)
from pyscf import gto
from pyscf.data.nist import BOHR, HARTREE2EV

from pyscf_fusionrcg.screening import to_host


class SCFCalculator(Calculator):
    """ASE calculator of the SCF object ``mf`` (see the module docstring);
    ``kwargs`` go to ASE's :class:`~ase.calculators.calculator.Calculator`
    (``label``, ``directory``, ``atoms``)."""

    implemented_properties = ["energy", "forces", "dipole"]

    def __init__(self, mf, **kwargs):
        if hasattr(mf, "cell"):
            raise CalculatorSetupError("SCFCalculator takes molecular SCF objects; this one is "
                                       "periodic (it has a cell).")
        super().__init__(**kwargs)
        self.mf = mf

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        """The SCF at the geometry of ``atoms`` when it changed (or none was
        run), then the forces and the dipole when asked."""
        super().calculate(atoms, properties, system_changes)
        if self.atoms.pbc.any():
            raise CalculatorSetupError(
                f"SCFCalculator is molecular, but these atoms are periodic (pbc = "
                f"{self.atoms.pbc.tolist()}); set atoms.pbc = False for a molecule.")
        if system_changes or "energy" not in self.results:
            self.results = {"energy": self._energy(self.atoms)}
        if "forces" in properties and "forces" not in self.results:
            gradient = to_host(self.mf.nuc_grad_method().kernel())
            self.results["forces"] = -gradient * (HARTREE2EV / BOHR)
        if "dipole" in properties and "dipole" not in self.results:
            if not hasattr(self.mf, "dip_moment"):
                raise PropertyNotImplementedError(f"{type(self.mf).__name__} has no dip_moment")
            self.results["dipole"] = to_host(self.mf.dip_moment(unit="AU", verbose=0)) * BOHR

    def _energy(self, atoms):
        """Converge the SCF at the geometry of ``atoms``; its energy in eV."""
        mf = self.mf
        same_atoms = np.array_equal(atoms.numbers, [gto.charge(e) for e in mf.mol.elements])
        if same_atoms:
            mol = mf.mol.set_geom_(atoms.positions, unit="Angstrom", inplace=False)
        else:
            mol = mf.mol.set_geom_(list(zip(atoms.get_chemical_symbols(), atoms.positions)),
                                   unit="Angstrom", inplace=False)
        reuse = same_atoms and mf.mo_coeff is not None and mf.converged
        dm0 = carried_density(mf, mol) if reuse else None
        mf.reset(mol)
        mf.mo_coeff = None      # else PySCF's scf() takes the last orbitals as the guess
        e_tot = mf.kernel(dm0=dm0)
        if not mf.converged:
            raise SCFError(f"{type(mf).__name__} did not converge in {mf.max_cycle} cycles "
                           f"(conv_tol = {mf.conv_tol:g}); raise mf.max_cycle or change the "
                           "SCF settings (level_shift, damp, init_guess) and calculate again.")
        return float(e_tot) * HARTREE2EV


def carried_density(mf, mol):
    """``mf``'s density carried to ``mol``, the same atoms and basis at another
    geometry: each spin's occupied orbitals, symmetrically (Löwdin)
    orthonormalised in ``mol``'s overlap, with their occupations.  The
    density matrix as it stands misses the new overlap: its electron count
    and idempotency drift with the step, and its energy lies ~100 times
    farther from the converged one (water, 0.02 Å)."""
    s = mol.intor_symmetric("int1e_ovlp")
    mo_occ = to_host(mf.mo_occ)
    mo_coeff = to_host(mf.mo_coeff).copy()
    channels = mo_coeff.reshape((-1,) + mo_coeff.shape[-2:])       # RHF/ROHF one, UHF two
    for c, occ in zip(channels, mo_occ.reshape(len(channels), -1)):
        occupied = occ > 0
        w, v = np.linalg.eigh(c[:, occupied].T @ s @ c[:, occupied])
        c[:, occupied] = c[:, occupied] @ (v / np.sqrt(w)) @ v.T
    return mf.make_rdm1(mo_coeff, mf.mo_occ)
