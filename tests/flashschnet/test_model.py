import math

import numpy as np
import pytest
import torch

from ase_flashschnet.model import SchNet, UnknownElementError, load_model, shifted_softplus
from ase_flashschnet.neighbors import build_cpu, build_torch
from ase_flashschnet.priors import HarmonicBonds

CELL = np.array([[3.2, 0.0, 0.0], [0.4, 3.0, 0.0], [-0.3, 0.2, 3.4]])


def energy_of(model, types, graph):
    """E(pos) summed over systems, for a fixed graph (finite differences)."""
    return lambda p: model.energy(types, p, graph.edge_src, graph.edge_dst, graph.edge_vec(p),
                                  graph.batch, graph.n_systems).sum()


@pytest.mark.parametrize("activation", ["tanh", "ssp", "silu"])
def test_forces_equal_finite_differences(activation, small_model, cluster, fd_forces):
    model = small_model(activation=activation)
    pos = torch.cat([cluster(7, 3.0), cluster(5, 3.0) + 10.0])
    batch = torch.tensor([0] * 7 + [1] * 5)
    types = torch.randint(1, 9, (12,), generator=torch.Generator().manual_seed(0))
    graph = build_torch(pos, model.cutoff, batch)
    energy, forces = model.energy_and_forces(types, pos, graph)
    assert energy.shape == (2,) and forces.shape == pos.shape
    reference = fd_forces(energy_of(model, types, graph), pos)
    assert torch.allclose(forces, reference, rtol=1e-6, atol=1e-8)


def test_periodic_forces_and_virial_equal_finite_differences(small_model, cluster, fd_forces):
    model = small_model()
    cell = torch.tensor(CELL)
    pos = cluster(6, 3.0)
    types = torch.tensor([1, 2, 3, 1, 2, 3])
    graph = build_torch(pos, model.cutoff, cell=cell, pbc=True)  # cell < 2 * cutoff: many images
    energy, forces, virial = model.energy_forces_virial(types, pos, graph)
    assert torch.allclose(forces, fd_forces(energy_of(model, types, graph), pos), rtol=1e-6, atol=1e-8)

    def strained(eps):
        deform = torch.eye(3, dtype=torch.float64) + eps
        p, shifts = pos @ deform, graph.shifts @ deform
        vec = p[graph.edge_src] - p[graph.edge_dst] + shifts
        return model.energy(types, p, graph.edge_src, graph.edge_dst, vec)[0]

    h, fd = 1e-5, torch.zeros(3, 3, dtype=torch.float64)
    for a in range(3):
        for b in range(3):
            eps = torch.zeros(3, 3, dtype=torch.float64)
            eps[a, b] = h
            fd[a, b] = -(strained(eps) - strained(-eps)) / (2 * h)
    assert torch.allclose(virial[0], fd, rtol=1e-6, atol=1e-8)
    assert torch.allclose(virial[0], virial[0].T, atol=1e-10)  # rotational invariance
    _, forces_only = model.energy_and_forces(types, pos, graph)
    assert torch.allclose(forces, forces_only, rtol=0, atol=1e-12)


def test_supercell_energy_is_extensive(small_model, cluster):
    """A 2x1x2 supercell has 4x the energy: periodic images are handled right."""
    model = small_model()
    pos = cluster(5, 3.0)
    types = torch.tensor([1, 2, 3, 4, 5])
    cell = torch.tensor(CELL)
    g = build_torch(pos, model.cutoff, cell=cell, pbc=True)
    e1 = model.energy(types, pos, g.edge_src, g.edge_dst, g.edge_vec(pos))
    images = torch.tensor([[i, 0, k] for i in range(2) for k in range(2)], dtype=torch.float64) @ cell
    big_pos = (pos[None] + images[:, None]).reshape(-1, 3)
    big_cell = cell * torch.tensor([[2.0], [1.0], [2.0]], dtype=torch.float64)
    gb = build_cpu(big_pos, model.cutoff, cell=big_cell, pbc=True)
    e4 = model.energy(types.repeat(4), big_pos, gb.edge_src, gb.edge_dst, gb.edge_vec(big_pos))
    assert torch.allclose(e4, 4 * e1, rtol=1e-12)


def test_invariance_and_per_atom_energies(small_model, cluster):
    model = small_model(activation="ssp")
    pos = cluster(8, 3.0)
    types = torch.arange(8) % 3
    g = build_torch(pos, model.cutoff)
    energy, forces = model.energy_and_forces(types, pos, g)
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    moved = pos @ q.T + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    energy2, forces2 = model.energy_and_forces(types, moved, build_torch(moved, model.cutoff))
    assert torch.allclose(energy, energy2, rtol=1e-12)
    assert torch.allclose(forces @ q.T, forces2, atol=1e-10)
    per_atom = model.per_atom_energies(types, pos, g.edge_src, g.edge_dst)
    assert per_atom.shape == (8,)
    assert torch.allclose(per_atom.sum(), energy[0], rtol=1e-13)
    assert torch.allclose(forces.sum(0), torch.zeros(3, dtype=torch.float64), atol=1e-10)


def test_edges_beyond_cutoff_contribute_nothing(small_model, cluster):
    """A Verlet graph built with a skin gives the same energy and forces."""
    model = small_model()
    pos = cluster(10, 4.0)
    types = torch.zeros(10, dtype=torch.long)
    tight = build_torch(pos, model.cutoff)
    loose = build_torch(pos, model.cutoff + 1.0)
    assert loose.num_edges > tight.num_edges
    e1, f1 = model.energy_and_forces(types, pos, tight)
    e2, f2 = model.energy_and_forces(types, pos, loose)
    assert torch.allclose(e1, e2, rtol=1e-14) and torch.allclose(f1, f2, rtol=0, atol=1e-14)


def test_energy_is_continuous_at_the_cutoff(small_model):
    model = small_model()
    types = torch.tensor([1, 2])

    def e(r):
        pos = torch.tensor([[0.0, 0.0, 0.0], [r, 0.0, 0.0]], dtype=torch.float64)
        g = build_torch(pos, model.cutoff)
        return model.energy(types, pos, g.edge_src, g.edge_dst)[0].item()

    far = e(model.cutoff + 0.5)
    assert abs(e(model.cutoff - 1e-7) - far) < 1e-10
    assert abs(e(model.cutoff - 0.5) - far) > 1e-6  # but the pair does interact inside


def test_architecture_attributes_are_stable(small_model):
    """The fused CUDA kernels read these names."""
    model = small_model(num_interactions=3, num_rbf=10, cutoff=3.0, output_hidden=5)
    assert model.embedding.weight.shape == (100, 16)
    assert model.rbf.centers.shape == (10,)
    assert math.isclose(float(model.rbf.gamma), 0.5 / (3.0 / 9) ** 2)
    assert float(model.rbf.cutoff) == 3.0
    assert len(model.interactions) == 3
    block = model.interactions[0]
    assert block.lin1.bias is None and block.lin1.weight.shape == (12, 16)
    assert block.filter1.weight.shape == (12, 10) and block.filter2.weight.shape == (12, 12)
    assert block.lin2.weight.shape == (16, 12) and block.lin.weight.shape == (16, 16)
    assert model.output1.weight.shape == (5, 16) and model.output2.weight.shape == (1, 5)
    assert model.config["activation"] == "tanh" and model.config["output_activation"] == "tanh"
    assert model.atomref.shape == (100,)


def test_shifted_softplus_is_zero_at_zero():
    assert float(shifted_softplus(torch.zeros(1))) == pytest.approx(0.0, abs=1e-7)


def test_seed_is_reproducible_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a, b = SchNet(hidden_channels=8, num_filters=8, seed=3), SchNet(hidden_channels=8, num_filters=8, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    c = SchNet(hidden_channels=8, num_filters=8, seed=4)
    assert not torch.equal(a.embedding.weight, c.embedding.weight)


def test_save_load_round_trip(tmp_path, small_model, cluster):
    model = small_model(activation="silu", type_map={"H": 0, "C": 1, 8: 2}, energy_scale=2.0, energy_shift=-0.5,
                        priors=[HarmonicBonds([[0, 1], [1, 2]], k=3.0, r0=[1.0, 1.2], n_atoms=4)])
    with torch.no_grad():
        model.atomref.copy_(torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64))
    path = tmp_path / "model.pt"
    model.save(path)
    loaded = load_model(path)
    assert loaded.config == model.config
    assert loaded.embedding.weight.dtype == torch.float64
    pos = cluster(8, 3.0)
    types = model.types_from_numbers([1, 6, 8, 1, 6, 6, 1, 8])
    batch = torch.tensor([0] * 4 + [1] * 4)
    g = build_torch(pos, model.cutoff, batch)
    e1, f1 = model.energy_and_forces(types, pos, g)
    e2, f2 = loaded.energy_and_forces(types, pos, g)
    assert torch.equal(e1, e2) and torch.equal(f1, f2)
    blob = torch.load(path, weights_only=True)
    assert blob["format"] == "flashschnet" and blob["version"] == 1


def test_float32_model_round_trips_in_float32(tmp_path):
    model = SchNet(hidden_channels=8, num_filters=8, num_rbf=6, seed=0)
    model.save(tmp_path / "m.pt")
    assert load_model(tmp_path / "m.pt").output2.weight.dtype == torch.float32


def test_bad_model_files_raise_clear_errors(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a torch file" * 10)
    with pytest.raises(ValueError, match="junk.pt.*not a readable"):
        load_model(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="other.pt.*not a FlashSchNet model file"):
        load_model(other)
    future = tmp_path / "future.pt"
    torch.save({"format": "flashschnet", "version": 99, "config": {}, "state_dict": {}}, future)
    with pytest.raises(ValueError, match="future.pt.*version 99"):
        load_model(future)
    broken = tmp_path / "broken.pt"
    model = SchNet(hidden_channels=8, num_filters=8, num_rbf=6, seed=0)
    state = model.state_dict()
    state.pop("output2.bias")
    torch.save({"format": "flashschnet", "version": 1, "config": model.config, "state_dict": state}, broken)
    with pytest.raises(ValueError, match="broken.pt.*output2.bias"):
        load_model(broken)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")


def test_unknown_element_error():
    model = SchNet(hidden_channels=8, num_filters=8, num_rbf=6, type_map={"H": 0, "C": 1, "O": 2})
    assert model.types_from_numbers([8, 1, 6]).tolist() == [2, 0, 1]
    with pytest.raises(UnknownElementError, match=r"Fe.*not known.*H, C, O") as info:
        model.types_from_numbers([1, 26, 6])
    assert isinstance(info.value, KeyError)
    with pytest.raises(KeyError):
        model.types_from_numbers([500])
    identity = SchNet(hidden_channels=8, num_filters=8, num_rbf=6)
    assert identity.types_from_numbers([1, 99]).tolist() == [1, 99]
    with pytest.raises(UnknownElementError, match="0..99"):
        identity.types_from_numbers([100])


def test_input_checks(small_model):
    model = small_model()
    pos = torch.zeros(2, 3)
    with pytest.raises(TypeError, match="float32 but the model is torch.float64"):
        model.energy(torch.tensor([0, 1]), pos, torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(ValueError, match="activation"):
        SchNet(activation="relu")
    with pytest.raises(ValueError, match="type_map"):
        SchNet(type_map={"Xx": 0})


def test_shipped_cg_demo():
    from ase_flashschnet import shipped

    assert shipped.names() == ["cg-demo", "cg-small", "cln025"]
    chain = shipped.default_structure("cg-demo")
    assert len(chain) == 269 and set(chain.numbers) == {1, 2, 3, 4, 5}
    assert chain.get_masses()[:5].tolist() == [14.007, 12.011, 12.011, 12.011, 15.999]
    graph = build_torch(torch.tensor(chain.positions), 10.0)
    assert 50 < graph.num_edges / 269 < 65  # protein-like packing
    model = shipped.get("cg-demo")
    assert (model.config["hidden_channels"], model.config["num_filters"], model.config["num_interactions"],
            model.config["num_rbf"], model.config["cutoff"]) == (128, 128, 3, 50, 10.0)
    assert [type(p).__name__ for p in model.priors] == ["HarmonicBonds", "HarmonicAngles", "Repulsion"]
    assert torch.equal(shipped.get("cg-demo").embedding.weight, model.embedding.weight)  # reproducible
    with pytest.raises(KeyError, match="cg-demo"):
        shipped.get("no-such-model")


def test_shipped_cg_small():
    """The examples' model: cg-demo's recipe, small enough for a CPU."""
    from ase_flashschnet import shipped

    chain = shipped.default_structure("cg-small")
    assert len(chain) == 30 and set(chain.numbers) == {1, 2, 3, 4, 5}
    model = shipped.get("cg-small")
    assert (model.config["hidden_channels"], model.config["num_filters"], model.config["num_interactions"],
            model.config["num_rbf"], model.config["cutoff"]) == (32, 64, 2, 16, 6.0)
    assert [type(p).__name__ for p in model.priors] == ["HarmonicBonds", "HarmonicAngles", "Repulsion"]
