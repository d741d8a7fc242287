import math

import pytest
import torch

from ase_flashschnet.model import SchNet, load_model
from ase_flashschnet.neighbors import build_torch
from ase_flashschnet.priors import (Dihedrals, HarmonicAngles, HarmonicBonds, Repulsion, dihedral_angles,
                                    prior_from_config)

F64 = torch.float64


def evaluate(prior, pos, cutoff=3.0, types=None):
    g = build_torch(pos, cutoff)
    types = torch.zeros(pos.shape[0], dtype=torch.long) if types is None else types
    return prior(types, pos, g.edge_src, g.edge_dst, g.edge_vec(pos))


def chain_model(n_atoms=5, dihedrals=False, **overrides):
    """A CG-like model: SchNet plus bonds, angles and repulsion along a chain (and
    periodic dihedrals of two harmonics with ``dihedrals``)."""
    bonds = [[i, i + 1] for i in range(n_atoms - 1)]
    angles = [[i, i + 1, i + 2] for i in range(n_atoms - 2)]
    priors = [HarmonicBonds(bonds, k=20.0, r0=1.5, n_atoms=n_atoms),
              HarmonicAngles(angles, k=[4.0 + i for i in range(n_atoms - 2)], theta0=1.9, n_atoms=n_atoms),
              Repulsion(sigma=1.2, exponent=6, cutoff=3.0, exclusions=bonds, n_atoms=n_atoms)]
    if dihedrals:
        quads = [[i, i + 1, i + 2, i + 3] for i in range(n_atoms - 3)]
        priors.append(Dihedrals(quads, [[0.3 + 0.1 * i, -0.2] for i in range(n_atoms - 3)],
                                [[0.1, 0.05 * i] for i in range(n_atoms - 3)], n_atoms=n_atoms))
    kwargs = dict(hidden_channels=12, num_filters=8, num_interactions=2, num_rbf=8, cutoff=3.0, seed=2,
                  type_map={1: 0, 2: 1}, priors=priors)
    kwargs.update(overrides)
    return SchNet(**kwargs).double()


def chain_positions(n_atoms, gen):
    steps = torch.randn(n_atoms, 3, dtype=F64, generator=gen)
    steps = 1.5 * steps / steps.norm(dim=1, keepdim=True)
    return torch.cumsum(steps, 0) + 0.05 * torch.randn(n_atoms, 3, dtype=F64, generator=gen)


def test_bond_energy_is_harmonic_and_split_evenly():
    prior = HarmonicBonds([[0, 1]], k=10.0, r0=1.0, n_atoms=3).double()
    pos = torch.tensor([[0.0, 0, 0], [1.3, 0, 0], [5.0, 0, 0]], dtype=F64)
    e = evaluate(prior, pos)
    assert torch.allclose(e, torch.tensor([0.225, 0.225, 0.0], dtype=F64))


def test_angle_energy_and_linear_geometry():
    prior = HarmonicAngles([[0, 1, 2]], k=2.0, theta0=math.pi / 2, n_atoms=3).double()
    pos = torch.tensor([[1.0, 0, 0], [0, 0, 0], [-1.0, 1e-9, 0]], dtype=F64)  # theta ~ pi
    e = evaluate(prior, pos)
    assert float(e.sum()) == pytest.approx(0.5 * 2.0 * (math.pi / 2) ** 2, rel=1e-8)
    pos[2] = torch.tensor([0.0, 2.0, 0.0])
    assert float(evaluate(prior, pos).sum()) == pytest.approx(0.0, abs=1e-20)


def test_repulsion_is_shifted_excluded_and_typed():
    sigma = torch.tensor([[1.0, 1.5], [1.5, 2.0]])
    prior = Repulsion(sigma, exponent=4, cutoff=3.0, exclusions=[[0, 2]], n_atoms=3).double()
    pos = torch.tensor([[0.0, 0, 0], [2.0, 0, 0], [0, 1.0, 0]], dtype=F64)
    types = torch.tensor([0, 1, 1])
    e = evaluate(prior, pos, types=types)
    r12 = math.sqrt(5.0)
    pair01 = (1.5 / 2.0) ** 4 - (1.5 / 3.0) ** 4
    pair12 = (2.0 / r12) ** 4 - (2.0 / 3.0) ** 4  # pair (0, 2) is excluded
    assert torch.allclose(e, torch.tensor([pair01 / 2, (pair01 + pair12) / 2, pair12 / 2], dtype=F64))
    pos[1, 0] = 3.0 - 1e-9
    assert float(evaluate(prior, pos, types=types)[0]) == pytest.approx(0.0, abs=1e-8)


def test_priors_tile_over_replicas():
    gen = torch.Generator().manual_seed(3)
    model = chain_model(5)
    one = chain_positions(5, gen)
    pos = torch.cat([one, one + 20.0, one + 40.0])
    types = model.types_from_numbers([1, 2, 1, 2, 1] * 3)
    batch = torch.arange(3).repeat_interleave(5)
    g = build_torch(pos, model.cutoff, batch)
    energy = model.energy(types, pos, g.edge_src, g.edge_dst, g.edge_vec(pos), batch, 3)
    assert torch.allclose(energy, energy[0].expand(3), rtol=1e-13)
    with pytest.raises(ValueError, match="whole number of replicas"):
        model.energy(types[:7], pos[:7], g.edge_src[:0], g.edge_dst[:0])


def test_dihedral_angles_follow_ase_and_the_energy_is_their_series():
    from ase import Atoms

    gen = torch.Generator().manual_seed(3)
    pos = chain_positions(7, gen)
    quads = torch.tensor([[i, i + 1, i + 2, i + 3] for i in range(4)])
    atoms = Atoms(f"H{len(pos)}", positions=pos.numpy())
    expected = torch.tensor([math.radians(atoms.get_dihedral(*q)) for q in quads.tolist()], dtype=F64)
    assert torch.allclose(torch.remainder(dihedral_angles(pos, quads), 2 * math.pi), expected, atol=1e-12)
    cos_terms, sin_terms = torch.rand(4, 3, dtype=F64, generator=gen), torch.rand(4, 3, dtype=F64, generator=gen)
    prior = Dihedrals(quads, cos_terms, sin_terms, n_atoms=7)
    phi = dihedral_angles(pos, quads)[:, None] * torch.arange(1, 4, dtype=F64)
    terms = (cos_terms * torch.cos(phi) + sin_terms * torch.sin(phi)).sum(1)
    per_atom = evaluate(prior, pos)
    assert torch.allclose(per_atom.sum(), terms.sum(), rtol=1e-13)
    assert torch.allclose(per_atom[0], terms[0] / 4, rtol=1e-13)  # atom 0 is in the first dihedral only
    with pytest.raises(ValueError, match="must both have shape"):
        Dihedrals(quads, cos_terms, sin_terms[:, :2], n_atoms=7)


@pytest.mark.parametrize("dihedrals", [False, True], ids=["no-dihedrals", "dihedrals"])
def test_forces_with_priors_equal_finite_differences(fd_forces, dihedrals):
    gen = torch.Generator().manual_seed(5)
    model = chain_model(6, dihedrals=dihedrals)
    pos = torch.cat([chain_positions(6, gen), chain_positions(6, gen) + 15.0])
    types = model.types_from_numbers([1, 2, 2, 1, 1, 2] * 2)
    batch = torch.arange(2).repeat_interleave(6)
    g = build_torch(pos, model.cutoff, batch)
    energy, forces = model.energy_and_forces(types, pos, g)

    def e(p):
        return model.energy(types, p, g.edge_src, g.edge_dst, g.edge_vec(p), batch, 2).sum()

    assert torch.allclose(forces, fd_forces(e, pos), rtol=1e-6, atol=1e-7)
    per_atom = model.per_atom_energies(types, pos, g.edge_src, g.edge_dst, g.edge_vec(pos))
    assert torch.allclose(per_atom.reshape(2, 6).sum(1), energy, rtol=1e-13)


def test_priors_survive_save_and_load(tmp_path):
    gen = torch.Generator().manual_seed(7)
    model = chain_model(5)
    model.save(tmp_path / "cg.pt")
    loaded = load_model(tmp_path / "cg.pt")
    assert [type(p).__name__ for p in loaded.priors] == ["HarmonicBonds", "HarmonicAngles", "Repulsion"]
    pos = chain_positions(5, gen)
    types = model.types_from_numbers([1, 2, 1, 2, 1])
    g = build_torch(pos, model.cutoff)
    assert torch.equal(model.energy_and_forces(types, pos, g)[1], loaded.energy_and_forces(types, pos, g)[1])


def test_prior_config_round_trip_and_errors():
    for prior in chain_model(5, dihedrals=True).priors:
        again = prior_from_config(prior.config())
        assert again.config() == prior.config()
    with pytest.raises(ValueError, match="unknown prior kind"):
        prior_from_config({"kind": "Impropers"})
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        HarmonicBonds([[0, 3]], k=1.0, r0=1.0, n_atoms=3)
    with pytest.raises(ValueError, match="needs 1 or 2 values"):
        HarmonicBonds([[0, 1], [1, 2]], k=[1.0, 2.0, 3.0], r0=1.0, n_atoms=3)
    with pytest.raises(ValueError, match="exceeds the model cutoff"):
        SchNet(cutoff=3.0, priors=[Repulsion(1.0, cutoff=4.0)])
    with pytest.raises(ValueError, match="n_atoms"):
        Repulsion(1.0, exclusions=[[0, 1]])
