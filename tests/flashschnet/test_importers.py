import math

import pytest
import torch

from ase_flashschnet.importers import from_pyg, from_schnetpack
from ase_flashschnet.model import load_model
from ase_flashschnet.neighbors import build_torch

pyg_schnet = pytest.importorskip("torch_geometric.nn.models.schnet")

Z = torch.tensor([1, 6, 8, 1, 7, 6, 6, 1, 1, 8, 6])
BATCH = torch.tensor([0] * 6 + [1] * 5)


def brute_force_radius_graph(pos, r, batch=None, loop=False, max_num_neighbors=32, **kwargs):
    """Stand-in for PyG's radius_graph when pyg-lib is missing (all pairs < r)."""
    batch = torch.zeros(pos.shape[0], dtype=torch.long) if batch is None else batch
    close = (torch.cdist(pos, pos) < r) & (batch[:, None] == batch[None, :])
    close.fill_diagonal_(loop)
    dst, src = close.nonzero(as_tuple=True)
    return torch.stack([src, dst])


@pytest.fixture(autouse=True)
def radius_graph_available(monkeypatch):
    try:
        pyg_schnet.radius_graph(torch.zeros(2, 3), r=1.0)
    except ImportError:
        monkeypatch.setattr(pyg_schnet, "radius_graph", brute_force_radius_graph)


def random_pyg(**kwargs):
    torch.manual_seed(0)
    model = pyg_schnet.SchNet(hidden_channels=32, num_filters=24, num_interactions=2, num_gaussians=20,
                              cutoff=4.0, **kwargs).double()
    with torch.no_grad():  # PyG zero-initialises biases: make every weight matter
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def ours_on(model, pos):
    graph = build_torch(pos, model.cutoff, BATCH)
    return model.energy_and_forces(model.types_from_numbers(Z), pos, graph)


def theirs_on(pyg_model, pos):
    pos = pos.clone().requires_grad_(True)
    energy = pyg_model(Z, pos, BATCH).reshape(-1)
    (grad,) = torch.autograd.grad(energy.sum(), pos)
    return energy.detach(), -grad


@pytest.mark.parametrize("extras", [{}, {"mean": 0.3, "std": 2.0, "atomref": "random", "scale": 0.7}],
                         ids=["plain", "mean-std-atomref-scale"])
def test_pyg_energies_and_forces_match(extras, cluster):
    extras = dict(extras)
    scale = extras.pop("scale", None)
    if extras.get("atomref") == "random":
        extras["atomref"] = torch.randn(100, 1, generator=torch.Generator().manual_seed(1))
    pyg = random_pyg(**extras)
    pyg.scale = scale
    ours = from_pyg(pyg)
    assert ours.embedding.weight.dtype == torch.float64
    pos = torch.cat([cluster(6, 3.5), cluster(5, 3.5) + 20.0])
    e_ref, f_ref = theirs_on(pyg, pos)
    e, f = ours_on(ours, pos)
    assert torch.allclose(e, e_ref, rtol=1e-6, atol=0)
    assert torch.allclose(f, f_ref, rtol=1e-6, atol=1e-6 * float(f_ref.abs().max()))


def test_pyg_mapping_is_exact(cluster):
    """Up to PyG's float32-rounded log(2) in its shifted softplus, the conversion
    is exact: with that constant set to log(2), float64 energies agree to 1e-13."""
    pyg = random_pyg(mean=0.1, std=1.5)
    ours = from_pyg(pyg)
    for module in pyg.modules():
        if isinstance(module, pyg_schnet.ShiftedSoftplus):
            module.shift = math.log(2.0)
    pos = torch.cat([cluster(6, 3.5), cluster(5, 3.5) + 20.0])
    assert torch.allclose(ours_on(ours, pos)[0], theirs_on(pyg, pos)[0], rtol=1e-13, atol=0)


def test_imported_model_round_trips_through_a_file(tmp_path, cluster):
    ours = from_pyg(random_pyg())
    ours.save(tmp_path / "pyg.pt")
    loaded = load_model(tmp_path / "pyg.pt")
    assert loaded.config["rbf_gamma"] == ours.config["rbf_gamma"]
    assert torch.equal(loaded.rbf.gamma, ours.rbf.gamma) and torch.equal(loaded.rbf.centers, ours.rbf.centers)
    pos = torch.cat([cluster(6, 3.5), cluster(5, 3.5) + 20.0])
    assert torch.equal(ours_on(ours, pos)[0], ours_on(loaded, pos)[0])


def test_pyg_refusals():
    with pytest.raises(ValueError, match="dipole"):
        from_pyg(random_pyg(dipole=True))
    with pytest.raises(ValueError, match="MeanAggregation readout"):
        from_pyg(random_pyg(readout="mean"))
    model = random_pyg()
    model.interaction_graph = torch.nn.Identity()
    with pytest.raises(ValueError, match="custom interaction graph"):
        from_pyg(model)
    model = random_pyg()
    model.act = torch.nn.Tanh()
    with pytest.raises(ValueError, match="output activation"):
        from_pyg(model)


def test_schnetpack_energies_and_forces_match(cluster):
    """Runs only where schnetpack 2.x is installed (it is not a dependency)."""
    spk = pytest.importorskip("schnetpack")
    from schnetpack import properties
    from schnetpack import transform as trn

    torch.manual_seed(0)
    cutoff = 4.0
    rep = spk.representation.SchNet(n_atom_basis=32, n_interactions=2, n_filters=24,
                                    radial_basis=spk.nn.GaussianRBF(n_rbf=20, cutoff=cutoff),
                                    cutoff_fn=spk.nn.CosineCutoff(cutoff))
    offsets = trn.AddOffsets("energy", add_mean=True, add_atomrefs=True)
    offsets.atomref, offsets.mean = torch.randn(100), torch.tensor([0.5])
    nnp = spk.model.NeuralNetworkPotential(
        representation=rep, input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[spk.atomistic.Atomwise(n_in=32, output_key="energy"),
                        spk.atomistic.Forces(energy_key="energy", force_key="forces")],
        postprocessors=[trn.CastTo64(), trn.ScaleProperty("energy", scale=torch.tensor([1.7])),
                        trn.ScaleProperty("forces", scale=torch.tensor([1.7])), offsets]).double()
    with torch.no_grad():
        for p in nnp.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours = from_schnetpack(nnp)
    assert ours.config["activation"] == "ssp" and ours.config["output_activation"] == "silu"
    pos = torch.cat([cluster(6, 3.5), cluster(5, 3.5) + 20.0])
    graph = build_torch(pos, cutoff, BATCH)
    inputs = {properties.Z: Z, properties.R: pos.clone(), properties.idx_m: BATCH,
              properties.n_atoms: torch.tensor([6, 5]), properties.idx_i: graph.edge_dst,
              properties.idx_j: graph.edge_src, properties.offsets: graph.shifts,
              properties.cell: torch.zeros(2, 3, 3, dtype=torch.float64),
              properties.pbc: torch.zeros(2, 3, dtype=torch.bool)}
    out = nnp(inputs)
    energy, forces = ours_on(ours, pos)
    assert torch.allclose(energy, out["energy"].detach(), rtol=1e-12, atol=0)
    assert torch.allclose(forces, out["forces"].detach(), rtol=0, atol=1e-10)
    nnp.postprocessors = nnp.postprocessors[:2]  # energy scaled, forces not: refused
    with pytest.raises(ValueError, match="not the gradient of its energy"):
        from_schnetpack(nnp)
