"""The shipped CLN025 model (``ase_flashschnet/data/``): it loads by name with
its fitted priors and structure, the calculator gives its forces, and on a GPU
the fused kernels give the reference's forces on frames of its reference."""
import numpy as np
import pytest
import torch

from ase_flashschnet import load_model, shipped
from ase_flashschnet.calculator import FlashSchNetCalculator
from ase_flashschnet.neighbors import build_torch
from ase_flashschnet.train.mapping import RESIDUE_TYPES

SEQUENCE = ("TYR", "TYR", "ASP", "PRO", "GLU", "THR", "GLY", "THR", "TRP", "TYR")


def frames(n):
    """``n`` reference frames spread over the data, as Atoms of the shipped structure."""
    positions, _, _ = shipped.reference_frames("cln025")
    structure = shipped.default_structure("cln025")
    out = []
    for f in np.linspace(0, len(positions) - 1, n).astype(int):
        atoms = structure.copy()
        atoms.positions = positions[f]
        out.append(atoms)
    return out


def test_cln025_loads_with_its_priors_structure_and_reference():
    model = load_model("cln025")
    assert "cln025" in shipped.names()
    assert [type(p).__name__ for p in model.priors] == ["HarmonicBonds", "HarmonicAngles", "Dihedrals", "Repulsion"]
    structure = shipped.default_structure("cln025")
    assert list(structure.numbers) == [RESIDUE_TYPES[name] for name in SEQUENCE]
    assert set(structure.get_masses()) == {110.0}
    assert set(model.config["type_map"]) == set(structure.numbers.tolist())
    positions, trajectory, temperature_K = shipped.reference_frames("cln025")
    assert positions.shape == (3600, 10, 3) and len(np.unique(trajectory)) == 12 and temperature_K == 350.0


def test_a_folder_named_cln025_does_not_hide_the_shipped_model(tmp_path, monkeypatch):
    """``flashschnet-cln025 cln025`` makes a run folder of that name in the working folder."""
    (tmp_path / "cln025").mkdir()
    monkeypatch.chdir(tmp_path)
    loaded, shipped_model = load_model("cln025").state_dict(), shipped.get("cln025").state_dict()
    assert all(torch.equal(loaded[name], shipped_model[name]) for name in shipped_model)


def test_cln025_calculator_forces_are_the_models_gradient():
    model = load_model("cln025").double()
    for atoms in frames(3):
        atoms.calc = FlashSchNetCalculator("cln025", device="cpu", precision="fp64")
        pos = torch.tensor(atoms.positions, requires_grad=True)
        graph = build_torch(pos.detach(), model.cutoff)
        types = model.types_from_numbers(atoms.numbers)
        energy = model.energy(types, pos, graph.edge_src, graph.edge_dst, graph.edge_vec(pos)).sum()
        (grad,) = torch.autograd.grad(energy, pos)
        np.testing.assert_allclose(atoms.get_forces(), -grad.numpy(), rtol=1e-10, atol=1e-10)
        assert atoms.get_potential_energy() == pytest.approx(energy.item(), rel=1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-4), ("bf16", 5e-2)])
def test_gpu_cln025_fused_forces_equal_the_reference(precision, tol):
    for atoms in frames(8):
        ref = atoms.copy()
        ref.calc = FlashSchNetCalculator("cln025", device="cpu", precision="fp64")
        atoms.calc = FlashSchNetCalculator("cln025", device="cuda", precision=precision, backend="fused")
        f_ref = ref.get_forces()
        np.testing.assert_allclose(atoms.get_forces(), f_ref, atol=tol * np.abs(f_ref).max())
