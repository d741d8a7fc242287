"""The ASE calculator: exact derivatives, ASE's conventions, state caching, clear errors.

Checks run in fp64 (the reference path) so that finite differences can be
compared tightly; the fused GPU path is compared with the reference in test_md.
"""
import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.md.langevin import Langevin
from ase.optimize import BFGS

import gpucore
from ase_flashschnet.calculator import FlashSchNetCalculator
from ase_flashschnet.model import SchNet, UnknownElementError

CUTOFF = 3.0


@pytest.fixture
def model(small_model):
    return small_model(cutoff=CUTOFF).float()


@pytest.fixture
def ethanol():
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=3)
    return atoms


@pytest.fixture
def crystal():
    """Periodic and triclinic (so that shifts mix axes), about 6.4 A wide: just
    above 2 x cutoff; 14 atoms at random, at least 1.4 A apart."""
    cell = np.array([[6.6, 0.0, 0.0], [1.2, 6.5, 0.0], [0.7, -0.9, 6.4]])
    rng = np.random.default_rng(5)
    atoms = Atoms(cell=cell, pbc=True)
    while len(atoms) < 14:
        trial = atoms + Atoms("CO"[len(atoms) % 2], positions=[rng.uniform(0, 1, 3) @ cell])
        if len(trial) == 1 or trial.get_distances(-1, range(len(atoms)), mic=True).min() > 1.4:
            atoms = trial
    return atoms


def test_forces_are_the_exact_negative_gradient(model, ethanol):
    ethanol.calc = FlashSchNetCalculator(model, precision="fp64")
    forces = ethanol.get_forces()
    assert np.abs(forces).max() > 1e-3  # not trivially zero
    np.testing.assert_allclose(forces, calculate_numerical_forces(ethanol, eps=1e-4), atol=1e-7)


def test_energy_free_energy_and_per_atom_energies(model, ethanol):
    ethanol.calc = FlashSchNetCalculator(model, precision="fp64")
    energy = ethanol.get_potential_energy()
    assert ethanol.get_potential_energy(force_consistent=True) == energy
    np.testing.assert_allclose(ethanol.get_potential_energies().sum(), energy, rtol=1e-12)


def test_periodic_stress_and_forces_match_finite_differences(model, crystal):
    crystal.calc = FlashSchNetCalculator(model, precision="fp64")
    stress = crystal.get_stress()
    assert stress.shape == (6,) and np.abs(stress).min() > 1e-6  # every component exercised
    np.testing.assert_allclose(stress, calculate_numerical_stress(crystal, eps=1e-5), rtol=1e-5, atol=1e-10)
    np.testing.assert_allclose(crystal.get_forces(), calculate_numerical_forces(crystal, eps=1e-4), atol=1e-7)


def test_stress_needs_a_fully_periodic_cell(model, ethanol):
    ethanol.calc = FlashSchNetCalculator(model, precision="fp64")
    with pytest.raises(PropertyNotImplementedError, match="fully periodic"):
        ethanol.get_stress()


def test_fp32_agrees_with_fp64(model, ethanol):
    results = {}
    for precision in ("fp32", "fp64"):
        atoms = ethanol.copy()
        atoms.calc = FlashSchNetCalculator(model, device="cpu", precision=precision)
        results[precision] = atoms.get_potential_energy(), atoms.get_forces()
    assert results["fp32"][0] == pytest.approx(results["fp64"][0], abs=1e-5)
    np.testing.assert_allclose(results["fp32"][1], results["fp64"][1], atol=1e-5)


def test_model_from_file_is_the_same_model(model, ethanol, tmp_path):
    model.save(tmp_path / "m.pt")
    a, b = ethanol.copy(), ethanol.copy()
    a.calc = FlashSchNetCalculator(model, precision="fp64")
    b.calc = FlashSchNetCalculator(str(tmp_path / "m.pt"), precision="fp64")
    assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), rel=1e-12)
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is left as it was


def test_nothing_is_recomputed_needlessly(model, ethanol):
    calc = FlashSchNetCalculator(model, precision="fp64", skin=1.0)
    ethanol.calc = calc
    calls = []
    original = calc.calculate
    calc.calculate = lambda *a, **k: (calls.append(1), original(*a, **k))
    ethanol.get_forces()
    ethanol.get_potential_energy()
    ethanol.info["note"] = "metadata only"
    ethanol.set_initial_charges(np.ones(len(ethanol)))
    ethanol.get_forces()
    assert len(calls) == 1
    builds = calc.neighbors.n_builds
    ethanol.positions[0] += 0.1  # within skin/2: same neighbour list
    ethanol.get_forces()
    assert len(calls) == 2 and calc.neighbors.n_builds == builds
    ethanol.positions[0] += 1.0  # beyond skin/2: rebuilt
    ethanol.get_forces()
    assert calc.neighbors.n_builds == builds + 1


def test_ase_langevin_and_bfgs_run(model, ethanol):
    ethanol.calc = FlashSchNetCalculator(model, precision="fp32")
    dyn = Langevin(ethanol, timestep=0.5 * units.fs, temperature_K=300, friction=0.02, fixcm=False,
                   rng=np.random.default_rng(0))
    dyn.run(20)
    assert np.isfinite(ethanol.get_potential_energy())
    e0, f0 = ethanol.get_potential_energy(), np.abs(ethanol.get_forces()).max()
    opt = BFGS(ethanol, logfile=None)
    opt.run(fmax=0.2 * f0, steps=100)
    assert ethanol.get_potential_energy() < e0 and np.abs(ethanol.get_forces()).max() < 0.2 * f0


def test_unknown_element_is_named(ethanol):
    model = SchNet(hidden_channels=8, num_filters=8, num_interactions=1, num_rbf=8, cutoff=CUTOFF,
                   type_map={"H": 0, "C": 1, "O": 2}, seed=0)
    ethanol.calc = FlashSchNetCalculator(model)
    ethanol.get_potential_energy()
    ethanol.symbols[0] = "Au"
    with pytest.raises(UnknownElementError, match="Au"):
        ethanol.get_potential_energy()


def test_small_periodic_cell_names_axis_and_sizes(model):
    atoms = Atoms("Cu", cell=[8.0, 8.0, 5.0], pbc=True)
    atoms.calc = FlashSchNetCalculator(model)
    with pytest.raises(ValueError, match=r"axis c .* 5 A wide .* 2 x cutoff = 6 A"):
        atoms.get_potential_energy()
    atoms.pbc = [True, True, False]  # the narrow direction is no longer periodic
    assert np.isfinite(atoms.get_potential_energy())


def test_nan_positions_name_the_atoms(model, ethanol):
    ethanol.positions[[2, 5], 1] = [np.nan, np.inf]
    ethanol.calc = FlashSchNetCalculator(model)
    with pytest.raises(ValueError, match=r"atom\(s\) \[2, 5\]"):
        ethanol.get_forces()


@pytest.mark.skipif(gpucore.gpu_available() and torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_on_cpu_is_a_clear_error(model, precision):
    with pytest.raises(gpucore.GPUUnavailableError, match=f"precision='{precision}'.*needs a GPU"):
        FlashSchNetCalculator(model, device="auto", precision=precision)
    with pytest.raises(gpucore.GPUUnavailableError, match="needs a GPU"):
        FlashSchNetCalculator(model, device="cpu", precision=precision)


@pytest.mark.parametrize("device", ["gpu", "GPU", "cuda:x", "mps", 0, torch.device("meta")],
                         ids=repr)  # an id 'gpu' would read as the gpu marker and be skipped without a GPU
def test_unknown_device_is_a_clear_error(model, device):
    with pytest.raises(ValueError, match=r"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device"):
        FlashSchNetCalculator(model, device=device)


def test_accepted_devices(model):
    assert FlashSchNetCalculator(model, device=torch.device("cpu")).engine.device == torch.device("cpu")
    assert FlashSchNetCalculator(model, device=None).engine.device.type in ("cpu", "cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(model):
    for device in ("cuda", "cuda:1", torch.device("cuda")):
        with pytest.raises(gpucore.GPUUnavailableError, match=r"PyTorch sees no CUDA GPU"):
            FlashSchNetCalculator(model, device=device)


def test_missing_cuda_device_is_a_clear_error(model, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(gpucore.GPUUnavailableError, match=r"device='cuda:2' but PyTorch sees 2 CUDA GPU\(s\)"):
        FlashSchNetCalculator(model, device="cuda:2")


@pytest.mark.gpu
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-4), ("bf16", 5e-2), ("fp16", 2e-2)])
def test_gpu_calculator_matches_reference(small_model, crystal, precision, tol):
    """Fused kernels against the fp64 reference, relative to the largest force
    (64 filters: a width the kernels support)."""
    model = small_model(cutoff=CUTOFF, num_filters=64).float()
    ref = crystal.copy()
    ref.calc = FlashSchNetCalculator(model, device="cpu", precision="fp64")
    crystal.calc = FlashSchNetCalculator(model, device="cuda", precision=precision)
    f_ref = ref.get_forces()
    scale = np.abs(f_ref).max()
    np.testing.assert_allclose(crystal.get_forces(), f_ref, atol=tol * scale)
    assert crystal.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=tol * len(crystal))
    np.testing.assert_allclose(crystal.get_stress(), ref.get_stress(), atol=tol * np.abs(ref.get_stress()).max())
