"""The ASE calculator (pyscf_fusionrcg/ase.py): PySCF's energies, forces and
dipoles in ASE's units, with the plugin's J/K and gradients or PySCF's own;
the previous orbitals as the next geometry's guess; clear refusals.

The plugin runs its host path (backend='cpu') on water/STO-3G.
"""
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import CalculationFailed, CalculatorSetupError
from ase.optimize import BFGS
from ase.units import Debye
from pyscf import gto, scf
from pyscf.data.nist import BOHR, HARTREE2EV

from pyscf_fusionrcg.ase import SCFCalculator
from pyscf_fusionrcg.grad import DerivativeContext
from pyscf_fusionrcg.options import Options
from pyscf_fusionrcg.scf import _FusionRCGMixin, fusionrcg
from test_scf_plugin import NH3, _ks

#: off every symmetry plane but its own, so that every force component is tested
H2O = "O 0 0 0.117; H 0.05 0.757 -0.469; H 0 -0.757 -0.48"
OPTIONS = Options(backend="cpu", progress=False)
METHODS = {"rhf": scf.RHF, "b3lyp": _ks("b3lyp"), "uhf": scf.UHF}


def _mf(method="rhf", plugin=True, atom=H2O, **kw):
    """An STO-3G SCF of ``atom`` (water by default) converged tightly, for
    the finite differences, with the plugin's host path or without."""
    mf = METHODS[method](gto.M(atom=atom, basis="sto-3g", verbose=0, **kw))
    mf.conv_tol = 1e-11
    mf.conv_tol_grad = 1e-7
    return fusionrcg(mf, options=OPTIONS) if plugin else mf


def _atoms(mol):
    return Atoms(mol.elements, positions=mol.atom_coords(unit="Angstrom"))


@pytest.fixture
def fusionrcg_forces(monkeypatch):
    """How often FusionRCG's two-electron forces were built."""
    count = [0]
    original = DerivativeContext.forces

    def counted(self, *args, **kwargs):
        count[0] += 1
        return original(self, *args, **kwargs)
    monkeypatch.setattr(DerivativeContext, "forces", counted)
    return count


@pytest.mark.parametrize("plugin", [True, False], ids=["fusionrcg", "pyscf"])
@pytest.mark.parametrize("method", ["rhf", "b3lyp"])
def test_energy_and_forces_are_pyscfs_in_ase_units(method, plugin, fusionrcg_forces):
    ref = _mf(method, plugin=False)
    e_ref = ref.kernel()
    g_ref = ref.nuc_grad_method().kernel()
    atoms = _atoms(ref.mol)
    atoms.calc = SCFCalculator(_mf(method, plugin))
    assert abs(atoms.get_potential_energy() - e_ref * HARTREE2EV) < 1e-7
    assert np.abs(atoms.get_forces() + g_ref * (HARTREE2EV / BOHR)).max() < 1e-6
    assert isinstance(atoms.calc.mf, _FusionRCGMixin) == plugin
    assert fusionrcg_forces[0] == plugin


def test_forces_are_minus_the_energy_derivative():
    """Central differences of the energy, 1e-3 Å steps, on four coordinates."""
    atoms = _atoms(gto.M(atom=H2O, verbose=0))
    atoms.calc = SCFCalculator(_mf())
    forces = atoms.get_forces()
    step = 1e-3
    for i, x in [(0, 2), (1, 0), (1, 1), (2, 2)]:
        energies = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[i, x] += sign * step
            moved.calc = atoms.calc
            energies.append(moved.get_potential_energy())
        assert abs(-(energies[0] - energies[1]) / (2 * step) - forces[i, x]) < 1e-4, (i, x)


@pytest.mark.parametrize("method,kw", [("rhf", {}), ("uhf", dict(charge=1, spin=1))])
def test_the_next_geometry_starts_from_the_last_orbitals(method, kw, monkeypatch):
    """At a new geometry of the same atoms the SCF starts from the last
    orbitals, orthonormalised: the new overlap counts the electrons right, and
    its energy is a hundred times closer to the converged one than that of
    PySCF's default guess; other atoms get none."""
    mf = _mf(method, **kw)
    guesses = []
    kernel = mf.kernel

    def spied(dm0=None, **kwargs):
        guesses.append(dm0)
        return kernel(dm0=dm0, **kwargs)
    monkeypatch.setattr(mf, "kernel", spied)
    atoms = _atoms(mf.mol)
    atoms.calc = SCFCalculator(mf)
    atoms.get_potential_energy()
    atoms.positions[1] += (0.0, 0.01, -0.02)
    atoms.get_potential_energy()
    assert guesses[0] is None and guesses[1] is not None
    s = mf.mol.intor_symmetric("int1e_ovlp")
    assert abs(np.einsum("...ij,ji->...", np.asarray(guesses[1]), s).sum() - mf.mol.nelectron) < 1e-10
    error = abs(mf.energy_tot(guesses[1]) - mf.e_tot)
    assert error < 1e-2 * abs(mf.energy_tot(mf.get_init_guess()) - mf.e_tot)
    atoms.numbers[2] = 3    # H -> Li: two more electrons, the spin stays possible
    atoms.get_potential_energy()
    assert guesses[2] is None


def test_dipole_is_pyscfs_in_e_angstrom():
    mf = _mf()
    atoms = _atoms(mf.mol)
    atoms.calc = SCFCalculator(mf)
    dipole = atoms.get_dipole_moment()
    assert np.allclose(dipole, mf.dip_moment(verbose=0) * Debye, rtol=1e-6, atol=0)
    assert np.linalg.norm(dipole) > 0.1


def test_other_atoms_rebuild_the_molecule():
    """Other atomic numbers, or another count, rebuild mf.mol with its basis
    and settings."""
    calc = SCFCalculator(_mf(atom="H 0 0 0; H 0 0 0.74"))
    for atom in ("Li 0 0 0; H 0 0 1.6", H2O):
        ref = _mf(atom=atom, plugin=False)
        ref.kernel()
        atoms = _atoms(ref.mol)
        assert abs(calc.get_potential_energy(atoms) - ref.e_tot * HARTREE2EV) < 1e-7
        assert calc.mf.mol.basis == "sto-3g" and calc.mf.mol.nao == ref.mol.nao


def test_periodic_atoms_are_refused():
    atoms = _atoms(gto.M(atom=H2O, verbose=0))
    atoms.calc = SCFCalculator(_mf())
    atoms.cell = [8.0, 8.0, 8.0]
    atoms.pbc = (True, True, False)
    with pytest.raises(CalculatorSetupError, match="periodic"):
        atoms.get_potential_energy()


def test_periodic_scf_objects_are_refused():
    from pyscf.pbc import gto as pbc_gto
    from pyscf.pbc import scf as pbc_scf
    cell = pbc_gto.M(atom="H 0 0 0; H 0 0 0.74", a=np.eye(3) * 4, basis="sto-3g", verbose=0)
    with pytest.raises(CalculatorSetupError, match="periodic"):
        SCFCalculator(pbc_scf.RHF(cell))


def test_an_unconverged_scf_fails_the_calculation():
    """CalculationFailed (ASE's SCFError) rather than numbers of an
    unconverged density; with more cycles the same atoms then go through."""
    mf = _mf()
    mf.max_cycle = 2
    atoms = _atoms(mf.mol)
    atoms.calc = SCFCalculator(mf)
    with pytest.raises(CalculationFailed, match="did not converge in 2 cycles"):
        atoms.get_forces()
    mf.max_cycle = 50
    assert atoms.get_forces().shape == (3, 3)


def _internal(positions):
    """Distances between all atoms: the geometry up to rotation and translation."""
    return np.linalg.norm(positions[:, None] - positions[None], axis=-1)


def test_bfgs_through_the_plugin_finds_pyscfs_minimum():
    """Ammonia/STO-3G: ASE's BFGS on the calculator with the plugin's J/K and
    gradients ends where PySCF's own optimisation (PyBerny, PySCF's J/K) does,
    within the optimisers' thresholds."""
    berny_solver = pytest.importorskip("pyscf.geomopt.berny_solver")
    ref = _mf(atom=NH3, plugin=False)
    mol_eq = berny_solver.optimize(ref, maxsteps=50)
    e_eq = scf.RHF(mol_eq).kernel()
    atoms = _atoms(gto.M(atom=NH3, verbose=0))
    atoms.calc = SCFCalculator(_mf(atom=NH3))
    assert BFGS(atoms, logfile=None).run(fmax=1e-3, steps=100)
    assert abs(atoms.get_potential_energy() - e_eq * HARTREE2EV) < 1e-4
    assert np.abs(_internal(atoms.positions) - _internal(mol_eq.atom_coords(unit="Angstrom"))).max() < 2e-3
