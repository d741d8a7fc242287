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

Positions are in Angstrom, as in the ``flashschnet-cg-v1`` dataset
(``docs/cg-dataset.md``).
"""
from __future__ import annotations

import numpy as np

__all__ = ["FOLDED_RMSD_A", "kabsch_rmsd", "radius_of_gyration", "end_to_end", "most_populated_structure",
           "folded_fraction"]

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
