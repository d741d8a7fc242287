"""Validation of a coarse-grained (CG) model against its all-atom reference.

A CG model trained by force matching should reproduce the reference's
equilibrium distribution. For a small folding protein such as CLN025 (10
residues, one bead per residue at C-alpha) that comes down to a few
collective variables (CVs), compared between the reference frames and the
frames of long CG simulations:

* the C-alpha RMSD (:func:`kabsch_rmsd`) to the reference's most populated
  structure (:func:`most_populated_structure`), and from it the folded
  fraction (:func:`folded_fraction`);
* the radius of gyration (:func:`radius_of_gyration`) and the end-to-end
  distance (:func:`end_to_end`).

Their distributions are compared by the Jensen-Shannon divergence of their
histograms (:func:`js_divergence`, :func:`js_divergence_2d`) and shown as free
energy surfaces (:func:`free_energy_surface`).

Positions are in Angstrom, as in the ``flashschnet-cg-v1`` dataset
(``docs/cg-dataset.md``); free energies in kcal/mol.
"""
from __future__ import annotations

import numpy as np
from ase import units

__all__ = ["FOLDED_RMSD_A", "kabsch_rmsd", "radius_of_gyration", "end_to_end", "most_populated_structure",
           "folded_fraction", "js_divergence", "js_divergence_2d", "free_energy_surface"]

#: Boltzmann's constant in kcal/mol/K (ASE's constants, as the rest of the package).
_KB_KCAL_PER_MOL = units.kB / (units.kcal / units.mol)

#: C-alpha RMSD (A) to the folded structure below which a frame counts as folded.
#: Published definitions of chignolin's folded state differ: WESTPA's chignolin
#: example counts folding at <= 0.5 A and unfolding at >= 4.0 A (a dual cutoff,
#: for passage times). 2 A lies between the two. Check on the reference's RMSD
#: histogram that it falls in the sparsely populated gap between the folded
#: peak and the unfolded state: there the folded fraction depends little on
#: the exact value.
FOLDED_RMSD_A = 2.0


def _frames(positions) -> np.ndarray:
    """``positions`` as float64 (frames, beads, 3); one (beads, 3) structure is one frame."""
    array = np.asarray(positions, dtype=np.float64)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[1] < 1:
        raise ValueError(f"positions must have shape (frames, beads, 3), got {np.shape(positions)}")
    return array


def kabsch_rmsd(positions, reference) -> np.ndarray:
    """RMSD (A) of each frame of ``positions`` (F, N, 3) to ``reference`` (N, 3)
    after the optimal superposition (translation and proper rotation), shape (F,).

    The Kabsch algorithm for all frames at once: the minimal squared deviation
    is ``(|X|^2 + |Y|^2 - 2 (s1 + s2 + d s3)) / N`` for the singular values s of
    the centred covariance ``X^T Y``, with ``d = -1`` where the best orthogonal
    map is a reflection. Reflections are excluded: a mirror image of a hairpin
    is another structure, not the same one.
    """
    frames, reference = _frames(positions), np.asarray(reference, dtype=np.float64)
    if reference.shape != frames.shape[1:]:
        raise ValueError(f"reference has shape {reference.shape}, the frames need {frames.shape[1:]}")
    x = frames - frames.mean(axis=1, keepdims=True)
    y = reference - reference.mean(axis=0)
    u, s, vt = np.linalg.svd(np.einsum("fni,nj->fij", x, y))
    s[:, 2] *= np.sign(np.linalg.det(u) * np.linalg.det(vt))
    squared = (np.square(x).sum(axis=(1, 2)) + np.square(y).sum() - 2.0 * s.sum(axis=1)) / y.shape[0]
    return np.sqrt(np.clip(squared, 0.0, None))


def radius_of_gyration(positions) -> np.ndarray:
    """Radius of gyration (A) of each frame, shape (F,); all beads weigh the same."""
    x = _frames(positions)
    return np.sqrt(np.square(x - x.mean(axis=1, keepdims=True)).sum(axis=2).mean(axis=1))


def end_to_end(positions) -> np.ndarray:
    """Distance (A) from the first to the last bead of each frame, shape (F,)."""
    x = _frames(positions)
    return np.linalg.norm(x[:, -1] - x[:, 0], axis=1)


def _distance_features(frames: np.ndarray) -> np.ndarray:
    """The distances between all bead pairs of each frame, (F, N(N-1)/2)."""
    i, j = np.triu_indices(frames.shape[1], k=1)
    return np.linalg.norm(frames[:, i] - frames[:, j], axis=2)


def most_populated_structure(positions, cutoff_A: float = 1.0, max_frames: int = 2000) -> np.ndarray:
    """The centre of the most populated structure of ``positions`` (F, N, 3): one
    of its frames, shape (N, 3).

    Method (deterministic, no random numbers): at most ``max_frames`` frames,
    evenly spaced, are compared by their distance RMSD (the RMS difference of
    all bead-pair distances: no superposition needed, so all pairs cost one
    matrix product). As in the clustering of Daura et al. (1999), the frame
    with the most neighbours within ``cutoff_A`` is the centre of the largest
    cluster, and the cluster is it and those neighbours; the medoid of that
    cluster (the member with the least summed distance to the others) is
    returned. Ties go to the earlier frame.

    Pair distances do not tell a structure from its mirror image; the medoid
    is a frame of the data, so its handedness is the one the data show. The
    cost is ``max_frames``^2 distances (2000: 32 MB, well under a second).
    """
    frames = _frames(positions)
    if frames.shape[1] < 2:
        raise ValueError("a most populated structure needs at least two beads")
    chosen = frames[np.unique(np.linspace(0, frames.shape[0] - 1, min(max_frames, frames.shape[0])).astype(int))]
    features = _distance_features(chosen)
    squared = np.square(features).sum(axis=1)
    between = squared[:, None] + squared[None, :] - 2.0 * features @ features.T
    distance = np.sqrt(np.clip(between, 0.0, None) / features.shape[1])
    neighbours = distance <= cutoff_A
    members = np.flatnonzero(neighbours[np.argmax(neighbours.sum(axis=1))])
    medoid = members[np.argmin(distance[np.ix_(members, members)].sum(axis=1))]
    return chosen[medoid].copy()


def folded_fraction(rmsd, threshold_A: float = FOLDED_RMSD_A) -> float:
    """The share of frames whose RMSD to the folded structure is below
    ``threshold_A`` (default :data:`FOLDED_RMSD_A`)."""
    rmsd = np.asarray(rmsd, dtype=np.float64)
    if rmsd.size == 0:
        raise ValueError("no frames: the folded fraction of nothing is undefined")
    return float(np.mean(rmsd < threshold_A))


def _edges(samples, bins, range) -> np.ndarray:
    """Bin edges shared by all 1D ``samples``: ``bins`` edges, or a number of
    bins over ``range`` (default: from the least to the largest value of all)."""
    return np.histogram_bin_edges(np.concatenate([np.ravel(s) for s in samples]), bins=bins, range=range)


def _edges_2d(samples, bins, range) -> list[np.ndarray]:
    """The x and y edges shared by all (n, 2) ``samples``; ``bins`` and ``range``
    are one for both axes or a pair."""
    bins = (bins, bins) if np.ndim(bins) == 0 else bins
    range = (None, None) if range is None else range
    return [_edges([s[:, axis] for s in samples], bins[axis], range[axis]) for axis in (0, 1)]


def _points(sample) -> np.ndarray:
    """``sample`` as float64 (n, 2) pairs, checked."""
    sample = np.asarray(sample, dtype=np.float64)
    if sample.ndim != 2 or sample.shape[1] != 2:
        raise ValueError(f"a 2D sample has shape (n, 2), got {sample.shape}")
    return sample


def _jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (base 2) of two histograms of the same bins."""
    p, q = np.ravel(p).astype(np.float64), np.ravel(q).astype(np.float64)
    if p.sum() == 0 or q.sum() == 0:
        raise ValueError("a sample has no values inside the bins")
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kullback_leibler(x):
        seen = x > 0
        return np.sum(x[seen] * np.log2(x[seen] / m[seen]))

    return float(np.clip(0.5 * kullback_leibler(p) + 0.5 * kullback_leibler(q), 0.0, 1.0))


def js_divergence(a, b, bins=50, range=None) -> float:
    """Jensen-Shannon divergence of the histograms of two 1D samples, in bits
    (base-2 logarithms): 0 for identical histograms, 1 for histograms with no
    bin in common; symmetric in ``a`` and ``b``.

    Both are histogrammed on the same bins: ``bins`` edges, or a number of bins
    over ``range`` (default: the span of both samples together). The value
    depends on the binning: compare values computed on the same bins.
    """
    edges = _edges([a, b], bins, range)
    return _jensen_shannon(np.histogram(a, edges)[0], np.histogram(b, edges)[0])


def js_divergence_2d(a, b, bins=50, range=None) -> float:
    """:func:`js_divergence` of two 2D samples, (n, 2) arrays of (x, y) pairs
    (e.g. RMSD and radius of gyration), on a common 2D binning; ``bins`` and
    ``range`` as :func:`numpy.histogram2d` takes them (one for both axes or a
    pair), the default range spanning both samples."""
    a, b = _points(a), _points(b)
    edges = _edges_2d([a, b], bins, range)
    return _jensen_shannon(np.histogram2d(a[:, 0], a[:, 1], edges)[0], np.histogram2d(b[:, 0], b[:, 1], edges)[0])


def free_energy_surface(x, y, temperature_K: float, bins=50, range=None):
    """The free energy ``-kT ln p(x, y)`` on a 2D histogram, in kcal/mol, with
    its minimum (the most populated bin) at 0 and NaN where no sample falls.

    Returns ``(free_energy, x_edges, y_edges)``, ``free_energy[i, j]`` for the
    bin of ``x_edges[i:i+2]`` and ``y_edges[j:j+2]`` (as
    :func:`numpy.histogram2d`); ``bins`` and ``range`` as there. Two bins
    holding n1 and n2 samples differ by ``kT ln(n1 / n2)``.
    """
    points = _points(np.column_stack([np.ravel(x), np.ravel(y)]))
    if not temperature_K > 0:
        raise ValueError(f"temperature_K must be positive, got {temperature_K}")
    x_edges, y_edges = _edges_2d([points], bins, range)
    counts = np.histogram2d(points[:, 0], points[:, 1], [x_edges, y_edges])[0]
    if counts.max() == 0:
        raise ValueError("no sample inside the bins")
    free_energy = np.full(counts.shape, np.nan)
    seen = counts > 0
    free_energy[seen] = -_KB_KCAL_PER_MOL * temperature_K * np.log(counts[seen] / counts.max())
    return free_energy, x_edges, y_edges
