"""Priors fitted by Boltzmann inversion give back the harmonic terms the samples were drawn from."""
import numpy as np
import pytest
from ase.units import kB

from ase_flashschnet.model import SchNet, load_model
from ase_flashschnet.train.dataset import make_dataset
from ase_flashschnet.train.prior_fit import (angle_jacobian, bond_angles, bond_lengths, chain_dihedrals,
                                             distance_jacobian, fit_dihedrals, fit_harmonic, fit_periodic, fit_priors,
                                             fit_repulsion, shortest_nonbonded)

T = 300.0
KT = kB * T
TYPES = [1, 1, 2, 2, 1, 1]
#: per bond class (sorted type pair) and angle class (type triple read either way): (k, x0)
BONDS = {(1, 1): (10.0, 1.5), (1, 2): (20.0, 1.8), (2, 2): (5.0, 2.0)}
ANGLES = {(1, 1, 2): (3.0, 1.9), (1, 2, 2): (6.0, 2.2)}


def dataset_of(positions, types=TYPES):
    n_frames = positions.shape[0]
    return make_dataset(positions, np.zeros_like(positions), types, np.arange(n_frames) % 2, T)


@pytest.fixture
def chain(boltzmann_chain):
    bonds = [BONDS[tuple(sorted(TYPES[i:i + 2]))] for i in range(len(TYPES) - 1)]
    angles = [ANGLES[min(tuple(TYPES[i:i + 3]), tuple(TYPES[i:i + 3])[::-1])] for i in range(len(TYPES) - 2)]
    (kb, r0), (ka, theta0) = zip(*bonds), zip(*angles)
    return boltzmann_chain(4000, len(TYPES), kb, r0, ka, theta0, KT), bonds, angles


def test_bonds_and_angles_come_back_per_type_class(chain):
    positions, bonds, angles = chain
    priors = fit_priors(dataset_of(positions), {1: 0, 2: 1}, repulsion_cutoff=4.0)
    fitted_bonds, fitted_angles, _ = priors
    assert fitted_bonds.index.tolist() == [[i, i + 1] for i in range(5)]
    assert fitted_angles.index.tolist() == [[i, i + 1, i + 2] for i in range(4)]
    for fitted, truth, x0_name, x0_tol in ((fitted_bonds, bonds, "r0", 0.01), (fitted_angles, angles, "theta0", 0.02)):
        k_true, x0_true = map(np.array, zip(*truth))
        np.testing.assert_allclose(fitted.k.numpy(), k_true, rtol=0.1)
        np.testing.assert_allclose(getattr(fitted, x0_name).numpy(), x0_true, atol=x0_tol)
    # pooled per class: bonds 0 and 4 are both (1, 1), angles 0 and 3 both (1, 1, 2) read either way
    assert fitted_bonds.k[0] == fitted_bonds.k[4] and fitted_angles.k[0] == fitted_angles.k[3]


def test_the_jacobian_is_divided_out(boltzmann_chain):
    """A soft bond: r^2 pushes the samples' mean well above r0, the fit is not fooled."""
    positions = boltzmann_chain(20000, 3, 0.1, 1.0, 3.0, 2.0, KT)
    r = bond_lengths(positions)[:, 0]
    assert r.mean() > 1.2
    k, r0 = fit_harmonic(r, KT, distance_jacobian)
    assert k == pytest.approx(0.1, rel=0.1) and r0 == pytest.approx(1.0, abs=0.05)
    theta = bond_angles(positions)[:, 0]
    k, theta0 = fit_harmonic(theta, KT, angle_jacobian)
    assert k == pytest.approx(3.0, rel=0.1) and theta0 == pytest.approx(2.0, abs=0.02)


def test_repulsion_reaches_kT_at_the_shortest_nonbonded_distance(boltzmann_chain):
    data = dataset_of(boltzmann_chain(50, len(TYPES), 10.0, 1.5, 3.0, 1.9, KT))
    positions, cutoff = data.positions.astype(np.float64), 4.0
    prior = fit_repulsion(data, {1: 0, 2: 1}, cutoff=cutoff)
    assert sorted(map(tuple, prior.exclusions.tolist())) == sorted(
        [(i, i + 1) for i in range(5)] + [(i, i + 2) for i in range(4)])
    d = np.linalg.norm(positions[:, :, None] - positions[:, None], axis=3).min(axis=0)
    sigma = prior.sigma.numpy()
    for a, b in ((0, 0), (0, 1), (1, 1)):
        pairs = [(i, j) for i in range(6) for j in range(i + 3, 6)
                 if {TYPES[i] - 1, TYPES[j] - 1} == {a, b}]
        shortest = min((d[i, j] for i, j in pairs), default=np.inf)  # types 2, 2: only bonded pairs
        if shortest < cutoff:
            energy = (sigma[a, b] / shortest) ** 6 - (sigma[a, b] / cutoff) ** 6
            assert energy == pytest.approx(KT, rel=1e-9)
        else:
            assert sigma[a, b] == 0.0
        assert sigma[a, b] == sigma[b, a]


def test_shortest_nonbonded_skips_bonded_pairs_and_chunks_alike(rng):
    positions = rng.normal(size=(7, 5, 3))
    whole = shortest_nonbonded(positions)
    assert np.array_equal(whole, shortest_nonbonded(positions, chunk_elements=1))
    assert np.isinf(whole[0, 1]) and np.isinf(whole[2, 0]) and np.isinf(whole[3, 3])
    assert whole[0, 3] == pytest.approx(np.linalg.norm(positions[:, 0] - positions[:, 3], axis=1).min())


def test_fitted_priors_save_and_load_with_a_model(chain, tmp_path):
    positions, _, _ = chain
    priors = fit_priors(dataset_of(positions[:200]), {1: 0, 2: 1}, repulsion_cutoff=3.0)
    model = SchNet(hidden_channels=8, num_filters=8, num_interactions=1, num_rbf=6, cutoff=3.0,
                   type_map={1: 0, 2: 1}, priors=priors, seed=0)
    model.save(tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt")  # a float32 model: its priors come back in float32
    for saved, back in zip(priors, loaded.priors):
        assert type(back) is type(saved)
        for name in ("k", "r0", "theta0", "sigma"):
            if hasattr(saved, name):
                np.testing.assert_allclose(getattr(back, name).numpy(), getattr(saved, name).numpy(), rtol=1e-6)


def test_a_fit_that_cannot_be_made_names_the_class():
    positions = np.zeros((10, 3, 3))
    positions[:, 1, 0], positions[:, 2] = 1.0, [1.0, 1.0, 0.0]  # every bond 1 A long
    with pytest.raises(ValueError, match=r"bonds of bead types \(1, 2\): 20 samples fill 1 histogram bin"):
        fit_priors(dataset_of(positions, [1, 2, 1]), {1: 0, 2: 1}, repulsion_cutoff=3.0)


def periodic_samples(rng, cos_terms, sin_terms, kT, size):
    """Angles drawn from exp(-U/kT), U the periodic series of ``cos_terms``/``sin_terms``."""
    grid = np.linspace(-np.pi, np.pi, 20001)[:-1] + np.pi / 20000
    n = np.arange(1, len(cos_terms) + 1)
    energy = np.cos(np.outer(grid, n)) @ cos_terms + np.sin(np.outer(grid, n)) @ sin_terms
    p = np.exp(-(energy - energy.min()) / kT)
    return rng.choice(grid, size=size, p=p / p.sum())


def chain_from_dihedrals(phis, bond=3.8, angle=1.9):
    """Positions of a chain with the given bond, angle and dihedrals (rad), built bead by bead."""
    pos = np.zeros((len(phis) + 3, 3))
    pos[1] = [bond, 0.0, 0.0]
    pos[2] = pos[1] + bond * np.array([-np.cos(angle), np.sin(angle), 0.0])
    for i, phi in enumerate(phis, start=3):
        a, b, c = pos[i - 3:i]
        axis = (c - b) / np.linalg.norm(c - b)
        normal = np.cross(b - a, axis)
        normal /= np.linalg.norm(normal)
        local = bond * np.array([-np.cos(angle), np.sin(angle) * np.cos(phi), np.sin(angle) * np.sin(phi)])
        pos[i] = c + local[0] * axis + local[1] * np.cross(normal, axis) + local[2] * normal
    return pos


def test_a_periodic_energy_comes_back_from_its_samples(rng):
    cos_terms, sin_terms = np.array([0.02, -0.01, 0.005]), np.array([-0.015, 0.0, 0.01])
    a, b = fit_periodic(periodic_samples(rng, cos_terms, sin_terms, KT, 100_000), KT, harmonics=3, bins=72)
    np.testing.assert_allclose(a, cos_terms, atol=1.5e-3)
    np.testing.assert_allclose(b, sin_terms, atol=1.5e-3)


def test_a_few_crowded_samples_give_a_finite_periodic_energy():
    a, b = fit_periodic(np.full(10, 0.5), KT, harmonics=2)
    grid = np.outer(np.linspace(-np.pi, np.pi, 73), np.arange(1, 3))
    barrier = np.ptp(np.cos(grid) @ a + np.sin(grid) @ b)
    assert np.isfinite(a).all() and np.isfinite(b).all() and 0.5 * KT < barrier < 20 * KT


def test_dihedrals_come_back_per_type_quadruple_read_either_way(rng):
    # types 1 1 2 2 1 1: quadruples (1,1,2,2), (1,2,2,1), (2,2,1,1) = (1,1,2,2) read backwards
    truth = {(1, 1, 2, 2): (np.array([0.03, 0.0]), np.array([0.02, -0.01])),
             (1, 2, 2, 1): (np.array([-0.02, 0.01]), np.array([0.0, 0.0]))}
    classes = [(1, 1, 2, 2), (1, 2, 2, 1), (1, 1, 2, 2)]
    phis = np.stack([periodic_samples(rng, *truth[c], KT, 3000) for c in classes], axis=1)
    positions = np.stack([chain_from_dihedrals(p) for p in phis])
    np.testing.assert_allclose(chain_dihedrals(positions), phis, atol=1e-9)
    prior = fit_dihedrals(dataset_of(positions), harmonics=2)
    assert prior.index.tolist() == [[0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5]]
    assert np.array_equal(prior.cos_terms[0].numpy(), prior.cos_terms[2].numpy())  # pooled
    for row, key in enumerate(classes):
        np.testing.assert_allclose(prior.cos_terms[row].numpy(), truth[key][0], atol=4e-3)
    assert fit_priors(dataset_of(positions), {1: 0, 2: 1}, repulsion_cutoff=4.0)[-1].__class__.__name__ == "Repulsion"
    assert type(fit_priors(dataset_of(positions), {1: 0, 2: 1}, repulsion_cutoff=4.0,
                           dihedral_harmonics=2)[2]).__name__ == "Dihedrals"
