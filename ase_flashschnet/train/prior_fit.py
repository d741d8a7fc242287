"""Priors fitted to a coarse-grained dataset, as the modules of ``priors.py``.

Bonds (consecutive beads) and angles (consecutive triples) get harmonic terms
by Boltzmann inversion: the histogram of the observed values x gives
``U(x) = -kT ln(p(x) / J(x)) + const``, with ``J`` the Jacobian of the
coordinate (``r^2`` for a distance, ``sin(theta)`` for an angle: the volume a
value takes up in 3D, which would otherwise pass for energy), and a parabola
``0.5 k (x - x0)^2 + c`` is fitted to it. The fit is by maximum likelihood on
the bin counts (Poisson, with the parabola in the exponent), not by least
squares on ``ln(count)``: the log of small counts is biased low, and that of
empty bins undefined, so least squares would underestimate k. The
histogram reaches a quarter of the samples' span beyond them on each side, so
the empty bins there bound the tails. kT is ``ase.units.kB * temperature_K``
of the dataset, so k comes out in eV/A^2 and eV/rad^2.

Terms are fitted per bead-TYPE class, not per position in the chain: every
bond whose two beads have the same pair of type codes (in either order) pools
its samples, and so does every angle with the same type triple (read either
way). Pooling gives each class many more samples than one position has, and
the network is there to learn what position-specific corrections remain.

Dihedrals of consecutive quadruples (optional) get a periodic energy of a few
harmonics, ``U(phi) = sum_n a_n cos(n phi) + b_n sin(n phi)``, by the same
Poisson maximum likelihood on the histogram over (-pi, pi] (a dihedral's
volume element is uniform). Unlike a mean force, a distribution of positions
is not buried in noise, so with little data this prior carries much of what
tells a folded chain from an extended one; pooling is by type quadruple, read
either way (a dihedral does not change when its beads are read backwards).

The repulsion (:class:`~ase_flashschnet.priors.Repulsion`) acts between beads
not bonded and not the ends of an angle. For each pair of bead types, sigma is
set so that the shifted energy ``(sigma/r)^n - (sigma/rc)^n`` reaches
``wall_kT * kT`` at the shortest distance the data shows between such beads:
it keeps a model out of the overlaps the data never visits and leaves the
sampled region to the network. Type pairs never seen closer than the
repulsion cutoff get no repulsion (sigma 0).
"""
from __future__ import annotations

import numpy as np
from ase.units import kB

import torch

from ..priors import Dihedrals, HarmonicAngles, HarmonicBonds, Repulsion, dihedral_angles
from .dataset import CGDataset

__all__ = ["fit_harmonic", "fit_periodic", "distance_jacobian", "angle_jacobian", "bond_lengths", "bond_angles",
           "chain_dihedrals", "fit_bonds", "fit_angles", "fit_dihedrals", "shortest_nonbonded", "fit_repulsion",
           "fit_priors"]


def bond_lengths(positions: np.ndarray) -> np.ndarray:
    """Distances between consecutive beads, (n_frames, n_beads - 1), float64."""
    pos = np.asarray(positions, dtype=np.float64)
    return np.linalg.norm(pos[:, 1:] - pos[:, :-1], axis=2)


def bond_angles(positions: np.ndarray) -> np.ndarray:
    """Angles (rad) at the middle bead of consecutive triples, (n_frames, n_beads - 2),
    from atan2 as :class:`~ase_flashschnet.priors.HarmonicAngles` computes them."""
    pos = np.asarray(positions, dtype=np.float64)
    u, v = pos[:, :-2] - pos[:, 1:-1], pos[:, 2:] - pos[:, 1:-1]
    return np.arctan2(np.linalg.norm(np.cross(u, v), axis=2), (u * v).sum(axis=2))


def chain_dihedrals(positions: np.ndarray) -> np.ndarray:
    """Dihedrals (rad) of consecutive quadruples, (n_frames, n_beads - 3), as
    :class:`~ase_flashschnet.priors.Dihedrals` computes them."""
    pos = torch.as_tensor(np.asarray(positions, dtype=np.float64))
    n_frames, n_beads = pos.shape[:2]
    quads = torch.arange(n_beads - 3)[:, None] + torch.arange(4)
    index = (quads[None] + n_beads * torch.arange(n_frames)[:, None, None]).reshape(-1, 4)
    return dihedral_angles(pos.reshape(-1, 3), index).reshape(n_frames, n_beads - 3).numpy()


def distance_jacobian(r: np.ndarray) -> np.ndarray:
    """Volume element of a distance in 3D: r^2, and 0 where r < 0."""
    return np.where(r > 0, r * r, 0.0)


def angle_jacobian(theta: np.ndarray) -> np.ndarray:
    """Volume element of a bond angle: sin(theta) in (0, pi), 0 outside."""
    return np.clip(np.sin(theta), 0.0, None) * ((theta > 0) & (theta < np.pi))


def fit_harmonic(values: np.ndarray, kT: float, jacobian, bins: int = 50) -> tuple[float, float]:
    """(k, x0) of the harmonic whose Boltzmann distribution at ``kT`` fits the
    samples ``values`` best (see the module docstring); ``jacobian(x)`` is the
    coordinate's volume element. Raises ``ValueError`` when the histogram is no
    single well (fewer than 3 filled bins, or a fit that opens downwards)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    low, high = values.min(), values.max()
    # empty bins beyond the samples tell the fit that the tails end there
    counts, edges = np.histogram(values, bins=bins, range=(low - 0.25 * (high - low), high + 0.25 * (high - low)))
    if (counts > 0).sum() < 3:
        raise ValueError(f"{values.size} samples fill {(counts > 0).sum()} histogram bin(s); a harmonic fit needs 3")
    mid, scale = values.mean(), values.std()
    t = (0.5 * (edges[1:] + edges[:-1]) - mid) / scale
    # counts ~ Poisson(J(x) exp(c0 + c1 t + c2 t^2)), by Newton's method (the
    # log-likelihood is concave) from the Gaussian of the samples' mean and variance
    design = np.stack([np.ones_like(t), t, t * t], axis=1)
    log_jacobian = np.log(np.maximum(jacobian(scale * t + mid), 1e-300))
    coef = np.array([0.0, 0.0, -0.5])
    coef[0] = np.log(counts.sum() / np.exp(log_jacobian + design @ coef).sum())
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(100):
            rate = np.exp(log_jacobian + design @ coef)
            step = np.linalg.solve(design.T @ (rate[:, None] * design), design.T @ (counts - rate))
            coef += step
            if not np.isfinite(coef).all() or np.abs(step).max() < 1e-10:
                break
    if not np.isfinite(coef).all():
        raise ValueError(f"the fit to the histogram of {values.size} samples did not converge")
    _, c1, c2 = coef
    if not c2 < 0:
        raise ValueError(f"the -kT ln p of {values.size} samples is not a well (curvature {-2 * kT * c2:.3g}); "
                         "no harmonic fits it")
    return -2.0 * kT * c2 / scale ** 2, mid - scale * c1 / (2.0 * c2)


def fit_periodic(values: np.ndarray, kT: float, harmonics: int = 3, bins: int = 36) -> tuple[np.ndarray, np.ndarray]:
    """(a, b), each of length ``harmonics``: the periodic energy
    ``sum_n a_n cos(n x) + b_n sin(n x)`` whose Boltzmann distribution at ``kT``
    fits the angles ``values`` (rad) best, by Poisson maximum likelihood on a
    histogram of ``bins`` bins over (-pi, pi] (Newton's method with step
    halving; the log-likelihood is concave). Each harmonic's coefficients
    (in units of kT) get a Gaussian prior of width 1: samples crowded into a
    few bins, for which the likelihood alone has no maximum, then give
    barriers of a few kT instead of infinite ones, while a fit to thousands
    of samples moves by about 1/N of its curvature."""
    values = np.asarray(values, dtype=np.float64).ravel()
    counts, edges = np.histogram(values, bins=bins, range=(-np.pi, np.pi))
    x = 0.5 * (edges[1:] + edges[:-1])
    n = np.arange(1, harmonics + 1)
    design = np.concatenate([np.ones((bins, 1)), np.cos(np.outer(x, n)), np.sin(np.outer(x, n))], axis=1)
    coef = np.zeros(design.shape[1])
    coef[0] = np.log(max(counts.sum(), 1) / bins)

    ridge = np.ones(design.shape[1])
    ridge[0] = 0.0  # the normalisation is free

    def log_posterior(c):
        eta = design @ c
        return float(counts @ eta - np.exp(eta).sum() - 0.5 * ridge @ (c * c))

    current = log_posterior(coef)
    for _ in range(200):
        rate = np.exp(design @ coef)
        hessian = design.T @ (rate[:, None] * design) + np.diag(ridge) + 1e-9 * np.eye(design.shape[1])
        step = np.linalg.solve(hessian, design.T @ (counts - rate) - ridge * coef)
        scale = 1.0
        while scale > 1e-6 and not log_posterior(coef + scale * step) >= current:
            scale *= 0.5
        coef += scale * step
        current = log_posterior(coef)
        if np.abs(scale * step).max() < 1e-10:
            break
    else:
        raise ValueError(f"the periodic fit of {harmonics} harmonic(s) to {values.size} samples did not converge")
    return -kT * coef[1:harmonics + 1], -kT * coef[harmonics + 1:]


def _fit_classes(values: np.ndarray, classes: list, fit, what: str) -> list:
    """Per-term parameter arrays, each term given ``fit`` (samples -> a tuple of
    parameters) of its class's pooled samples."""
    parameters = None
    for key in sorted(set(classes)):
        members = [i for i, c in enumerate(classes) if c == key]
        try:
            fitted = fit(values[:, members])
        except ValueError as exc:
            raise ValueError(f"{what} of bead types {key}: {exc}") from exc
        if parameters is None:
            parameters = [np.zeros((len(classes), *np.shape(p))) for p in fitted]
        for array, p in zip(parameters, fitted):
            array[members] = p
    return parameters


def _kT(dataset: CGDataset) -> float:
    return float(kB * dataset.temperature_K)


def fit_bonds(dataset: CGDataset, bins: int = 50) -> HarmonicBonds:
    """Harmonic bonds between consecutive beads, one fit per pair of bead types."""
    t = dataset.types.tolist()
    classes = [tuple(sorted((t[i], t[i + 1]))) for i in range(len(t) - 1)]
    k, r0 = _fit_classes(bond_lengths(dataset.positions), classes,
                         lambda x: fit_harmonic(x, _kT(dataset), distance_jacobian, bins), "bonds")
    bonds = [[i, i + 1] for i in range(len(t) - 1)]
    return HarmonicBonds(bonds, k=k, r0=r0, n_atoms=dataset.n_beads)


def fit_angles(dataset: CGDataset, bins: int = 50) -> HarmonicAngles:
    """Harmonic angles of consecutive triples, one fit per triple of bead types."""
    t = dataset.types.tolist()
    classes = [min((t[i], t[i + 1], t[i + 2]), (t[i + 2], t[i + 1], t[i])) for i in range(len(t) - 2)]
    k, theta0 = _fit_classes(bond_angles(dataset.positions), classes,
                             lambda x: fit_harmonic(x, _kT(dataset), angle_jacobian, bins), "angles")
    angles = [[i, i + 1, i + 2] for i in range(len(t) - 2)]
    return HarmonicAngles(angles, k=k, theta0=theta0, n_atoms=dataset.n_beads)


def fit_dihedrals(dataset: CGDataset, harmonics: int = 3, bins: int = 36) -> Dihedrals:
    """Periodic dihedrals of consecutive quadruples, one fit per type quadruple
    (read either way), of ``harmonics`` harmonics each."""
    t = dataset.types.tolist()
    classes = [min(tuple(t[i:i + 4]), tuple(t[i:i + 4][::-1])) for i in range(len(t) - 3)]
    cos_terms, sin_terms = _fit_classes(chain_dihedrals(dataset.positions), classes,
                                        lambda x: fit_periodic(x, _kT(dataset), harmonics, bins), "dihedrals")
    dihedrals = [[i, i + 1, i + 2, i + 3] for i in range(len(t) - 3)]
    return Dihedrals(dihedrals, cos_terms, sin_terms, n_atoms=dataset.n_beads)


def _excluded_pairs(n_beads: int) -> list:
    """Bonded pairs and the ends of angles: the pairs the repulsion leaves out."""
    return [[i, i + 1] for i in range(n_beads - 1)] + [[i, i + 2] for i in range(n_beads - 2)]


def shortest_nonbonded(positions: np.ndarray, chunk_elements: int = 1 << 22) -> np.ndarray:
    """(n_beads, n_beads) shortest distance over all frames between each pair of
    beads, ``inf`` on the diagonal and for the excluded (bonded, 1-3) pairs.
    Frames are taken in chunks of about ``chunk_elements`` distances."""
    pos = np.asarray(positions)
    n = pos.shape[1]
    shortest = np.full((n, n), np.inf)
    step = max(1, chunk_elements // max(n * n, 1))
    for start in range(0, pos.shape[0], step):
        block = pos[start:start + step].astype(np.float64)
        d = np.linalg.norm(block[:, :, None] - block[:, None], axis=3)
        np.minimum(shortest, d.min(axis=0), out=shortest)
    excluded = np.array(_excluded_pairs(n), dtype=np.int64).reshape(-1, 2)
    shortest[excluded[:, 0], excluded[:, 1]] = shortest[excluded[:, 1], excluded[:, 0]] = np.inf
    np.fill_diagonal(shortest, np.inf)
    return shortest


def fit_repulsion(dataset: CGDataset, type_map: dict, cutoff: float, exponent: int = 6,
                  wall_kT: float = 1.0) -> Repulsion:
    """A :class:`~ase_flashschnet.priors.Repulsion` whose (num_types, num_types)
    sigma table puts ``wall_kT * kT`` at the shortest non-bonded distance seen
    for each pair of embedding types (``type_map``: bead code -> type index)."""
    index = np.array([type_map[int(code)] for code in dataset.types])
    num_types = max(type_map.values()) + 1
    shortest = shortest_nonbonded(dataset.positions)
    sigma = np.zeros((num_types, num_types))
    energy = wall_kT * _kT(dataset)
    for a in range(num_types):
        for b in range(a, num_types):
            d = shortest[np.ix_(index == a, index == b)].min(initial=np.inf)
            if d < cutoff:
                sigma[a, b] = sigma[b, a] = (energy / (d ** -exponent - cutoff ** -exponent)) ** (1.0 / exponent)
    return Repulsion(sigma, exponent=exponent, cutoff=cutoff, exclusions=_excluded_pairs(dataset.n_beads),
                     n_atoms=dataset.n_beads)


def fit_priors(dataset: CGDataset, type_map: dict, repulsion_cutoff: float, bins: int = 50,
               dihedral_harmonics: int = 0) -> list:
    """The bonds, angles and repulsion a chain of ``dataset.n_beads`` beads has
    (no bonds for one bead, no angles for two, no repulsion below four), and
    dihedrals of ``dihedral_harmonics`` harmonics when that is not 0 (from
    four beads)."""
    priors = []
    if dataset.n_beads >= 2:
        priors.append(fit_bonds(dataset, bins))
    if dataset.n_beads >= 3:
        priors.append(fit_angles(dataset, bins))
    if dataset.n_beads >= 4 and dihedral_harmonics:
        priors.append(fit_dihedrals(dataset, dihedral_harmonics))
    if dataset.n_beads >= 4:
        priors.append(fit_repulsion(dataset, type_map, repulsion_cutoff))
    return priors
