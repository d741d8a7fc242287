"""The TorchSim model: a batch of systems in one call gives each system what the
ASE calculator gives it alone; TorchSim's integrators and autobatcher run it;
states it cannot take are refused clearly. Skipped without TorchSim.

CPU only: the reference in fp64 (tight comparisons) and, for the shipped
cg-demo model and its priors, in fp32.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.stress import voigt_6_to_full_3x3_stress

from ase_flashschnet.calculator import FlashSchNetCalculator
from ase_flashschnet.model import UnknownElementError

ts = pytest.importorskip("torch_sim")
from ase_flashschnet.torchsim import FlashSchNetModel  # noqa: E402

CUTOFF = 2.5  # below half the width of torch-sim's own test cells (Si, a = 5.43 A)
CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def model(small_model):
    return small_model(cutoff=CUTOFF)


def _random_crystal(cell, n, species, seed, min_dist=1.4):
    """``n`` atoms at random in a periodic ``cell``, at least ``min_dist`` apart."""
    rng = np.random.default_rng(seed)
    atoms = Atoms(cell=cell, pbc=True)
    while len(atoms) < n:
        trial = atoms + Atoms(species[len(atoms) % len(species)], positions=[rng.uniform(0, 1, 3) @ cell])
        if len(trial) == 1 or trial.get_distances(-1, range(len(atoms)), mic=True).min() > min_dist:
            atoms = trial
    return atoms


@pytest.fixture
def crystals():
    """Three periodic systems of different sizes, densities and cells (one triclinic,
    one sheared fcc, one cubic fcc; fcc neighbours within the cutoff), all rattled."""
    triclinic = _random_crystal([[6.6, 0.0, 0.0], [1.2, 6.5, 0.0], [0.7, -0.9, 6.4]], 14, "CO", seed=5)
    copper = bulk("Cu", "fcc", a=3.4, cubic=True).repeat(2)
    copper.set_cell(copper.cell.array @ [[1.0, 0.04, 0.0], [0.0, 1.0, -0.03], [0.02, 0.0, 1.0]], scale_atoms=True)
    nickel = bulk("Ni", "fcc", a=3.2, cubic=True).repeat(2)
    for seed, atoms in enumerate((triclinic, copper, nickel)):
        atoms.rattle(0.05, seed=seed)
    return [triclinic, copper, nickel]


def _per_system(state, tensor, system):
    return tensor[state.system_idx == system].double().numpy()


def test_a_periodic_batch_equals_the_calculator_per_system(model, crystals):
    ts_model = FlashSchNetModel(model, device="cpu", precision="fp64", compute_stress=True)
    state = ts.io.atoms_to_state(crystals, CPU, ts_model.dtype)
    out = ts_model(state)
    assert out["energy"].shape == (3,) and out["forces"].shape == (state.n_atoms, 3)
    assert out["stress"].shape == (3, 3, 3)
    calc = FlashSchNetCalculator(model, device="cpu", precision="fp64")
    for k, atoms in enumerate(crystals):
        atoms.calc = calc
        np.testing.assert_allclose(out["energy"][k].item(), atoms.get_potential_energy(), rtol=1e-10)
        np.testing.assert_allclose(_per_system(state, out["forces"], k), atoms.get_forces(), rtol=0, atol=1e-10)
        stress = voigt_6_to_full_3x3_stress(atoms.get_stress())
        assert np.abs(stress).max() > 1e-4  # not trivially zero
        np.testing.assert_allclose(out["stress"][k].numpy(), stress, rtol=0, atol=1e-10)


def test_replicas_of_cg_demo_equal_the_calculator_in_fp32(cg_demo):
    """The shipped model with its bonded priors and repulsion exclusions, on two
    perturbed copies of its chain in one state."""
    model, chain = cg_demo
    replicas = []
    for seed in range(2):
        atoms = chain.copy()
        atoms.rattle(0.05, seed=seed)
        replicas.append(atoms)
    ts_model = FlashSchNetModel(model, device="cpu")
    assert ts_model.dtype == torch.float32
    state = ts.io.atoms_to_state(replicas, CPU, ts_model.dtype)
    out = ts_model(state)
    calc = FlashSchNetCalculator(model, device="cpu")
    for k, atoms in enumerate(replicas):
        atoms.calc = calc
        forces = atoms.get_forces()
        np.testing.assert_allclose(out["energy"][k].item(), atoms.get_potential_energy(), rtol=1e-5)
        np.testing.assert_allclose(_per_system(state, out["forces"], k), forces, rtol=0,
                                   atol=1e-5 * np.abs(forces).max())


def test_torch_sims_own_interface_check_passes(model):
    """TorchSim's validator: Si and Fe crystals, alone and together, inputs untouched."""
    from torch_sim.models.interface import validate_model_outputs

    validate_model_outputs(FlashSchNetModel(model, device="cpu", precision="fp64", compute_stress=True),
                           CPU, torch.float64)


def _fractional(state):
    return torch.einsum("ni,nij->nj", state.positions, torch.linalg.inv(state.row_vector_cell)[state.system_idx])


def test_nve_conserves_the_energy_of_each_system(model, crystals):
    """40 velocity-Verlet steps of 0.5 fs. TorchSim wraps the rattled atoms that
    start outside their cell back in: the model follows them to the nearest image,
    so the one neighbour list of the start serves the whole run."""
    ts_model = FlashSchNetModel(model, device="cpu", precision="fp64")
    state = ts.io.atoms_to_state(crystals, CPU, ts_model.dtype)
    assert (_fractional(state) < 0).any()
    init, update = ts.nve(model=ts_model, dt=torch.tensor(0.5e-3 * ts.units.MetalUnits.time, dtype=torch.float64),
                          kT=torch.tensor(300 * ts.units.MetalUnits.temperature, dtype=torch.float64), seed=1)
    state = init(state)

    def total():
        kinetic = ts.calc_kinetic_energy(masses=state.masses, momenta=state.momenta, system_idx=state.system_idx)
        return (state.energy + kinetic).numpy()

    start = total()
    for _ in range(40):
        state = update(state)
    kinetic = ts.calc_kinetic_energy(masses=state.masses, momenta=state.momenta, system_idx=state.system_idx)
    assert (kinetic > 0).all()
    np.testing.assert_allclose(total(), start, rtol=0, atol=1e-5 * kinetic.max().item())
    assert ((_fractional(state) >= 0) & (_fractional(state) < 1)).all()
    assert ts_model.neighbors.n_builds == 1


def test_langevin_with_the_autobatcher_runs_the_batches_finitely(model, crystals):
    """Three systems in two batches of the binning autobatcher: the neighbour list
    follows the model from one batch to the next."""
    ts_model = FlashSchNetModel(model, device="cpu", precision="fp64")
    batcher = ts.BinningAutoBatcher(ts_model, memory_scales_with=ts_model.memory_scales_with,
                                    max_memory_scaler=50)
    final = ts.integrate(crystals, ts_model, integrator=ts.nvt_langevin, n_steps=5, temperature=300.0,
                         timestep=0.001, autobatcher=batcher, seed=2)
    assert final.n_systems == 3 and torch.isfinite(final.positions).all()
    assert ts_model.neighbors.n_builds >= 2
    start = ts.io.atoms_to_state(crystals, CPU, ts_model.dtype)
    assert torch.equal(final.atomic_numbers, start.atomic_numbers)


def test_unknown_elements_are_named(cg_demo):
    model, chain = cg_demo
    atoms = chain.copy()
    atoms.numbers[7] = 26
    ts_model = FlashSchNetModel(model, device="cpu")
    with pytest.raises(UnknownElementError, match="Fe not known to this model"):
        ts_model(ts.io.atoms_to_state([chain, atoms], CPU, ts_model.dtype))


def test_systems_must_hold_whole_molecules_of_the_priors(cg_demo):
    """Split in two systems, the chain's 269 atoms would still tile the priors'
    topology once: only the per-system check catches it."""
    model, chain = cg_demo
    ts_model = FlashSchNetModel(model, device="cpu")
    with pytest.raises(ValueError, match=r"molecules of 269 atoms, but system\(s\) \[0, 1\] hold \[100, 169\]"):
        ts_model(ts.io.atoms_to_state([chain[:100], chain[100:]], CPU, ts_model.dtype))


def test_bonded_priors_refuse_periodic_states(cg_demo):
    model, chain = cg_demo
    boxed = chain.copy()
    boxed.set_cell([60.0, 60.0, 60.0])
    boxed.pbc = True
    ts_model = FlashSchNetModel(model, device="cpu")
    with pytest.raises(ValueError, match="unwrapped molecules"):
        ts_model(ts.io.atoms_to_state([boxed], CPU, ts_model.dtype))


def test_stress_needs_a_periodic_state(model):
    ts_model = FlashSchNetModel(model, device="cpu", precision="fp64", compute_stress=True)
    atoms = Atoms("CO2", positions=[[0, 0, 0], [1.2, 0, 0], [-1.2, 0, 0]])
    with pytest.raises(ValueError, match="fully periodic"):
        ts_model(ts.io.atoms_to_state([atoms], CPU, torch.float64))


def test_a_cell_too_small_for_the_cutoff_names_its_system(model, crystals):
    small = bulk("Cu", "fcc", a=3.6, cubic=True)
    ts_model = FlashSchNetModel(model, device="cpu", precision="fp64")
    with pytest.raises(ValueError, match="system 1: periodic cell too small"):
        ts_model(ts.io.atoms_to_state([crystals[0], small], CPU, torch.float64))


def test_memory_scaling_is_checked(model):
    with pytest.raises(ValueError, match="memory_scales_with"):
        FlashSchNetModel(model, device="cpu", memory_scales_with="n_edges")


def test_the_package_imports_without_torch_sim():
    """TorchSim is optional: the package never imports it, and this module says
    how to install it."""
    code = ("import sys; sys.modules['torch_sim'] = None\n"
            "import ase_flashschnet, ase_flashschnet.calculator, ase_flashschnet.md\n"
            "try:\n    import ase_flashschnet.torchsim\n"
            "except ImportError as exc:\n    print(exc)\n")
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=REPO)
    assert "pip install torch-sim-atomistic" in done.stdout
