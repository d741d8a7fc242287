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
energy surfaces (:func:`free_energy_surface`); :func:`sampling_note` says
whether frames fold and unfold often enough for their folded fraction to mean
something. :func:`compare` does it all, with plots and a JSON summary::

    data = load_dataset("cln025.npz")                      # .dataset
    result = run_replicas(model, structures, steps=10**6)   # ase_flashschnet.md
    summary = compare(data.positions, result.positions, data.temperature_K, "validation",
                      reference_trajectory=data.trajectory)

Positions are in Angstrom, as in the ``flashschnet-cg-v1`` dataset
(``docs/cg-dataset.md``); free energies in kcal/mol.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from ase import units

__all__ = ["FOLDED_RMSD_A", "UNFOLDED_RMSD_A", "MIN_TRANSITIONS", "CVS", "kabsch_rmsd", "radius_of_gyration",
           "end_to_end", "most_populated_structure", "folded_fraction", "js_divergence", "js_divergence_2d",
           "free_energy_surface", "sampling_note", "compare"]

log = logging.getLogger(__name__)

#: Boltzmann's constant in kcal/mol/K (ASE's constants, as the rest of the package).
_KB_KCAL_PER_MOL = units.kB / (units.kcal / units.mol)

#: C-alpha RMSD (A) to the folded structure below which a frame counts as folded.
#: Definitions differ: WESTPA's chignolin example counts folding at <= 0.5 A and
#: unfolding at >= 4.0 A (a dual cutoff, for passage times); 2 A lies between.
#: Check that it falls in the sparsely populated gap of the reference's RMSD
#: histogram, where the folded fraction depends little on its exact value.
FOLDED_RMSD_A = 2.0
#: C-alpha RMSD (A) above which a frame counts as unfolded when transitions are
#: counted (WESTPA's chignolin example's unfolded cutoff, see above).
UNFOLDED_RMSD_A = 4.0
#: Transitions (folding plus unfolding) below which sampling is too short for
#: a folded fraction. A rule of thumb: n transitions are some n/2 independent
#: visits to each state, a relative error of about sqrt(2/n) (45% at 10).
MIN_TRANSITIONS = 10
#: What :func:`compare` reports, with axis labels.
CVS = {"rmsd": "C-alpha RMSD to the reference structure (A)", "rg": "radius of gyration (A)",
       "end_to_end": "end-to-end distance (A)"}


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
    i, j = np.triu_indices(frames.shape[1], k=1)
    features = np.linalg.norm(chosen[:, i] - chosen[:, j], axis=2)  # all bead-pair distances
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
    are one for both axes or a pair (list or tuple)."""
    bins = bins if isinstance(bins, (list, tuple)) else (bins, bins)
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
    points = np.column_stack([np.ravel(x), np.ravel(y)]).astype(np.float64)
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


def _frames_and_trajectories(positions, trajectory) -> tuple[np.ndarray, np.ndarray]:
    """Frames (F, N, 3) and the trajectory of each frame (default: all one).
    MD results (frames, replicas, N, 3), as ``ReplicaResult.positions``, are one
    trajectory per replica."""
    array = np.asarray(positions, dtype=np.float64)
    if array.ndim == 4:
        if trajectory is not None:
            raise ValueError("positions of shape (frames, replicas, beads, 3) are one trajectory per replica: "
                             "give no trajectory labels with them")
        n_frames, n_replicas = array.shape[:2]
        return array.transpose(1, 0, 2, 3).reshape(-1, *array.shape[2:]), np.repeat(np.arange(n_replicas), n_frames)
    frames = _frames(array)
    trajectory = np.zeros(frames.shape[0], dtype=int) if trajectory is None else np.asarray(trajectory)
    if trajectory.shape != frames.shape[:1]:
        raise ValueError(f"trajectory labels have shape {trajectory.shape}, the frames need {frames.shape[:1]}")
    return frames, trajectory


def sampling_note(rmsd, trajectory=None, folded_A: float = FOLDED_RMSD_A, unfolded_A: float = UNFOLDED_RMSD_A,
                  min_transitions: int = MIN_TRANSITIONS, n_blocks: int = 10) -> dict:
    """Whether frames fold and unfold often enough for their folded fraction
    (and histograms of what differs between the states) to mean something.

    ``rmsd`` (F,) to the folded structure, frames in time order within each
    trajectory; ``trajectory`` (F,) labels them (default: all one). A transition
    is a passage from RMSD < ``folded_A`` to RMSD > ``unfolded_A`` or back within
    one trajectory; frames in between count as staying where the trajectory
    last was (a dual cutoff, so that noise about one threshold is not counted).

    The folded fraction's standard error is that of ``n_blocks`` contiguous
    blocks of the frames (trajectory by trajectory): right for blocks long
    compared with the time between transitions, too small with few
    transitions, meaningless with none (every trajectory stayed where it
    started). ``sufficient``: at least ``min_transitions``; ``note``: in words.
    """
    rmsd = np.asarray(rmsd, dtype=np.float64)
    trajectory = np.zeros(rmsd.shape, dtype=int) if trajectory is None else np.asarray(trajectory)
    if rmsd.ndim != 1 or trajectory.shape != rmsd.shape or rmsd.size < 1:
        raise ValueError(f"need one RMSD and one trajectory label a frame, got shapes {rmsd.shape} and "
                         f"{trajectory.shape}")
    if not folded_A <= unfolded_A:
        raise ValueError(f"folded_A ({folded_A}) must not exceed unfolded_A ({unfolded_A})")
    names, index = np.unique(trajectory, return_inverse=True)
    order = np.argsort(index, kind="stable")
    state = np.where(rmsd < folded_A, 1, np.where(rmsd > unfolded_A, -1, 0))[order]
    label = index[order][state != 0]
    core = state[state != 0]
    changed = (core[1:] != core[:-1]) & (label[1:] == label[:-1])
    per_trajectory = np.bincount(label[1:][changed], minlength=names.size)
    folded = (rmsd < folded_A)[order].astype(np.float64)
    blocks = np.array([block.mean() for block in np.array_split(folded, min(n_blocks, folded.size))])
    error = float(blocks.std(ddof=1) / np.sqrt(blocks.size)) if blocks.size > 1 else float("nan")
    fraction, transitions = float(folded.mean()), int(per_trajectory.sum())
    where = f"{names.size} trajector{'y' if names.size == 1 else 'ies'}"
    if transitions == 0:
        longest = int(np.bincount(index).max())
        note = (f"no folding or unfolding transition in {where} (longest {longest} frames): the folded fraction "
                f"{fraction:.3f} reflects where they started and its error cannot be estimated; folding or "
                f"unfolding takes longer than the longest trajectory")
    elif transitions < min_transitions:
        note = (f"only {transitions} transitions in {where}, fewer than the {min_transitions} wanted (about "
                f"{min_transitions / transitions:.1f}x as much sampling): the block standard error {error:.3f} "
                f"of the folded fraction {fraction:.3f} understates its uncertainty")
    else:
        note = f"{transitions} transitions in {where}: folded fraction {fraction:.3f} +- {error:.3f} (block std. error)"
    return {"frames": int(rmsd.size), "trajectories": int(names.size), "transitions": transitions,
            "transitions_per_trajectory": per_trajectory.tolist(), "folded_fraction": fraction,
            "standard_error": error, "sufficient": transitions >= min_transitions, "note": note}


def _verdict(reference: dict, model: dict, labels) -> str:
    """The sampling notes of both sides and what they allow to say about the difference."""
    difference = model["folded_fraction"] - reference["folded_fraction"]
    text = f"{labels[0]}: {reference['note']}. {labels[1]}: {model['note']}. "
    if not reference["sufficient"]:
        return text + (f"The reference sampling is too short to judge the difference in folded fraction "
                       f"({difference:+.3f}) or the divergences of the distributions.")
    if not model["sufficient"]:
        return text + f"The model's sampling is too short to judge the folded fraction's difference, {difference:+.3f}."
    error = float(np.hypot(reference["standard_error"], model["standard_error"]))
    sigmas = abs(difference) / error if error > 0 else float("inf")
    return text + f"The folded fractions differ by {difference:+.3f}, {sigmas:.1f} combined standard errors."


def _plot(cvs: dict, summary: dict, fes: dict, out_dir: Path) -> list[str]:
    """The CV histograms side by side and the two free energy surfaces, as PNGs
    in ``out_dir``; their names (none without matplotlib, with a warning)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("validation plots left out: matplotlib is not installed")
        return []
    labels = summary["labels"]
    fig = Figure(figsize=(4 * len(CVS), 3.5), layout="constrained")
    for ax, (cv, axis_label) in zip(fig.subplots(1, len(CVS)), CVS.items()):
        edges = _edges([cvs["reference"][cv], cvs["model"][cv]], summary["bins"], None)
        for side in ("reference", "model"):
            ax.hist(cvs[side][cv], edges, density=True, histtype="step", linewidth=1.5, label=labels[side])
        ax.set_xlabel(axis_label)
        ax.set_title(f"JSD {summary['js_divergence'][cv]:.3f} bits")
    fig.axes[0].set_ylabel("probability density")
    fig.axes[0].legend()
    fig.savefig(out_dir / "histograms.png", dpi=120)
    top = max(np.nanmax(fes[side][0]) for side in fes)
    fig = Figure(figsize=(10, 4), layout="constrained")
    for ax, side in zip(fig.subplots(1, 2, sharex=True, sharey=True), ("reference", "model")):
        free_energy, x_edges, y_edges = fes[side]
        mesh = ax.pcolormesh(x_edges, y_edges, free_energy.T, vmin=0.0, vmax=top, cmap="viridis")
        ax.axvline(summary["threshold_A"], color="grey", linestyle="--", linewidth=1)
        ax.set_title(f"{labels[side]}: folded {summary['folded_fraction'][side]:.2f}")
        ax.set_xlabel(CVS["rmsd"])
    fig.axes[0].set_ylabel(CVS["rg"])
    fig.colorbar(mesh, ax=fig.axes, label="free energy (kcal/mol)")
    fig.savefig(out_dir / "fes_rmsd_rg.png", dpi=120)
    return ["histograms.png", "fes_rmsd_rg.png"]


def compare(reference_positions, model_positions, temperature_K: float, out_dir, labels=("all-atom", "CG model"),
            reference_structure=None, *, reference_trajectory=None, model_trajectory=None,
            threshold_A: float = FOLDED_RMSD_A, bins: int = 50) -> dict:
    """Compare a model's frames with the reference's; write plots and
    ``summary.json`` into ``out_dir`` and return the summary.

    Positions (F, N, 3) with optional trajectory labels (F,), or MD results
    (frames, replicas, N, 3) such as ``ReplicaResult.positions``, one trajectory
    per replica (drop the frames before equilibrium first). The CVs of
    :data:`CVS` are computed for both, the RMSD to ``reference_structure``
    (default: :func:`most_populated_structure` of the reference). The summary
    holds the folded fractions below ``threshold_A``, each CV's mean and
    standard deviation, the Jensen-Shannon divergences (bits) of each CV's
    histograms and of the 2D RMSD-Rg histograms (``bins`` bins a dimension over
    both sides' span), :func:`sampling_note` of both sides, a ``sampling_note``
    that says what these allow to conclude, and the files written:
    ``histograms.png`` (the CV histograms), ``fes_rmsd_rg.png`` (free energy
    surfaces of RMSD and radius of gyration, kcal/mol at ``temperature_K``; both
    need matplotlib) and ``summary.json``.
    """
    reference, reference_trajectory = _frames_and_trajectories(reference_positions, reference_trajectory)
    model, model_trajectory = _frames_and_trajectories(model_positions, model_trajectory)
    if model.shape[1] != reference.shape[1]:
        raise ValueError(f"the model has {model.shape[1]} beads, the reference {reference.shape[1]}")
    structure = most_populated_structure(reference) if reference_structure is None else np.asarray(
        reference_structure, dtype=np.float64)
    cvs = {side: {"rmsd": kabsch_rmsd(frames, structure), "rg": radius_of_gyration(frames),
                  "end_to_end": end_to_end(frames)} for side, frames in (("reference", reference), ("model", model))}
    sampling = {side: sampling_note(cvs[side]["rmsd"], ids, folded_A=threshold_A)
                for side, ids in (("reference", reference_trajectory), ("model", model_trajectory))}
    points = {side: np.column_stack([cvs[side]["rmsd"], cvs[side]["rg"]]) for side in cvs}
    edges = _edges_2d(list(points.values()), bins, None)
    fes = {side: free_energy_surface(points[side][:, 0], points[side][:, 1], temperature_K, bins=edges)
           for side in points}
    summary = {
        "labels": {"reference": labels[0], "model": labels[1]}, "temperature_K": float(temperature_K),
        "threshold_A": float(threshold_A), "bins": bins, "reference_structure": structure.tolist(),
        "folded_fraction": {side: folded_fraction(cvs[side]["rmsd"], threshold_A) for side in cvs},
        "cvs": {cv: {side: {"mean": float(cvs[side][cv].mean()), "std": float(cvs[side][cv].std())} for side in cvs}
                for cv in CVS},
        "js_divergence": {**{cv: js_divergence(cvs["reference"][cv], cvs["model"][cv], bins) for cv in CVS},
                          "rmsd_rg": js_divergence_2d(points["reference"], points["model"], edges)},
        "sampling": sampling, "sampling_note": _verdict(sampling["reference"], sampling["model"], labels)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary["files"] = _plot(cvs, summary, fes, out_dir) + ["summary.json"]
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
