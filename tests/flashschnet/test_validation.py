"""Validation of a CG model against its reference: structural measures,
distributions and the comparison report, on synthetic chains."""
import json

import numpy as np
import pytest
from ase import units

from ase_flashschnet.train.validation import (compare, end_to_end, folded_fraction, free_energy_surface,
                                              js_divergence, js_divergence_2d, kabsch_rmsd, most_populated_structure,
                                              radius_of_gyration, sampling_note)

BOND = 3.8  # A between consecutive C-alpha beads


def hairpin() -> np.ndarray:
    """A 10-bead beta hairpin: two strands of five beads, 4.8 A apart."""
    strand = BOND * np.arange(5.0)
    return np.concatenate([np.column_stack([strand, np.zeros(5), np.zeros(5)]),
                           np.column_stack([strand[::-1], np.full(5, 4.8), np.zeros(5)])])


def extended() -> np.ndarray:
    """A 10-bead zigzag chain, 33 A long."""
    return np.column_stack([3.6 * np.arange(10.0), 1.2 * (np.arange(10) % 2), np.zeros(10)])


def random_rotations(rng, n) -> np.ndarray:
    """n proper rotation matrices, uniformly random (QR of Gaussian matrices)."""
    q, r = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    q *= np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    q[np.linalg.det(q) < 0] *= -1.0
    return q


def noisy_copies(rng, structure, n, noise_A) -> np.ndarray:
    """n copies of ``structure``, each with Gaussian noise, rotated and moved at random."""
    frames = structure + rng.normal(scale=noise_A, size=(n,) + structure.shape)
    return np.einsum("fij,fnj->fni", random_rotations(rng, n), frames) + rng.uniform(-20, 20, (n, 1, 3))


def two_state_mixture(rng, n, folded_share=0.7, noise_A=0.3) -> np.ndarray:
    """n frames: ``folded_share`` noisy hairpins, then noisy extended chains."""
    n_folded = round(folded_share * n)
    return np.concatenate([noisy_copies(rng, hairpin(), n_folded, noise_A),
                           noisy_copies(rng, extended(), n - n_folded, noise_A)])


def folding_trajectory(rng, n, switch=0.02) -> np.ndarray:
    """n frames of a chain that folds and unfolds: a two-state Markov chain
    (leaving its state with probability ``switch`` a frame), noisy frames of
    the hairpin or the extended chain."""
    folded = np.cumsum(rng.random(n) < switch) % 2 == 0
    frames = noisy_copies(rng, extended(), n, 0.3)
    frames[folded] = noisy_copies(rng, hairpin(), int(folded.sum()), 0.3)
    return frames


def test_kabsch_rmsd_is_zero_for_moved_copies(rng):
    copies = noisy_copies(rng, hairpin(), 50, 0.0)
    np.testing.assert_allclose(kabsch_rmsd(copies, hairpin()), 0.0, atol=1e-6)


def test_kabsch_rmsd_matches_explicit_superposition(rng):
    """Each frame superposed one at a time by its own rotation, the deviation
    summed bead by bead; no random rotation gets closer."""
    frames = two_state_mixture(rng, 20, noise_A=1.0)
    reference = hairpin()
    rmsd = kabsch_rmsd(frames, reference)
    y = reference - reference.mean(axis=0)
    for frame, value in zip(frames, rmsd):
        x = frame - frame.mean(axis=0)
        u, _, vt = np.linalg.svd(x.T @ y)
        d = np.sign(np.linalg.det(u @ vt))
        rotation = u @ np.diag([1.0, 1.0, d]) @ vt  # x @ rotation ~ y
        assert value == pytest.approx(np.sqrt(np.mean(np.sum((x @ rotation - y) ** 2, axis=1))), abs=1e-9)
        tried = np.einsum("nj,rij->rni", x, random_rotations(rng, 200))
        assert value <= np.sqrt(np.mean(np.sum((tried - y) ** 2, axis=2), axis=1)).min() + 1e-9


def test_kabsch_rmsd_tells_a_mirror_image_apart():
    chiral = hairpin() + np.column_stack([np.zeros((10, 2)), np.linspace(-2.0, 2.0, 10) ** 2])
    assert kabsch_rmsd(chiral * np.array([1.0, 1.0, -1.0]), chiral)[0] > 0.1


def test_kabsch_rmsd_refuses_a_reference_of_another_size():
    with pytest.raises(ValueError, match="reference has shape"):
        kabsch_rmsd(np.zeros((3, 10, 3)), np.zeros((9, 3)))


def test_radius_of_gyration_and_end_to_end_of_known_shapes():
    line = np.column_stack([BOND * np.arange(10.0), np.zeros(10), np.zeros(10)])
    assert radius_of_gyration(line)[0] == pytest.approx(BOND * np.sqrt((10 ** 2 - 1) / 12))
    assert end_to_end(line)[0] == pytest.approx(9 * BOND)
    angle = np.linspace(0.0, 2 * np.pi, 8, endpoint=False)
    ring = np.column_stack([5.0 * np.cos(angle), 5.0 * np.sin(angle), np.full(8, 7.0)])
    assert radius_of_gyration(ring)[0] == pytest.approx(5.0)
    assert end_to_end(ring)[0] == pytest.approx(2 * 5.0 * np.sin(7 * np.pi / 8))
    assert radius_of_gyration(np.stack([line, ring[:1].repeat(10, axis=0)])).shape == (2,)


def test_most_populated_structure_is_the_dominant_state(rng):
    frames = two_state_mixture(rng, 1000)
    best = most_populated_structure(frames)
    assert kabsch_rmsd(best, hairpin())[0] < 0.6
    assert folded_fraction(kabsch_rmsd(frames, best)) == pytest.approx(0.7)


def test_most_populated_structure_is_deterministic_and_subsampled(rng):
    frames = two_state_mixture(rng, 1000)[rng.permutation(1000)]
    first = most_populated_structure(frames, max_frames=300)
    np.testing.assert_array_equal(first, most_populated_structure(frames, max_frames=300))
    assert any(np.array_equal(first, frame) for frame in frames)
    assert kabsch_rmsd(first, hairpin())[0] < 0.6


def test_folded_fraction_counts_frames_below_the_threshold():
    rmsd = np.array([0.5, 1.0, 1.9, 2.0, 3.0, 6.0, 0.1, 8.0])
    assert folded_fraction(rmsd) == pytest.approx(4 / 8)
    assert folded_fraction(rmsd, threshold_A=1.0) == pytest.approx(2 / 8)
    with pytest.raises(ValueError, match="no frames"):
        folded_fraction([])


def test_js_divergence_is_zero_for_identical_samples(rng):
    a = rng.normal(size=500)
    assert js_divergence(a, a.copy()) == pytest.approx(0.0, abs=1e-12)
    points = rng.normal(size=(500, 2))
    assert js_divergence_2d(points, points.copy(), bins=20) == pytest.approx(0.0, abs=1e-12)


def test_js_divergence_is_one_for_disjoint_supports(rng):
    a, b = rng.uniform(0.0, 1.0, 300), rng.uniform(2.0, 3.0, 200)
    assert js_divergence(a, b, bins=30, range=(0.0, 3.0)) == pytest.approx(1.0)
    points = np.column_stack([a[:200], b])
    assert js_divergence_2d(points, points[:, ::-1], bins=30, range=[(0.0, 3.0), (0.0, 3.0)]) == pytest.approx(1.0)


def test_js_divergence_is_symmetric_and_in_bits(rng):
    a, b = rng.normal(0.0, 1.0, 400), rng.normal(0.7, 1.3, 300)
    assert js_divergence(a, b) == pytest.approx(js_divergence(b, a))
    assert 0.0 < js_divergence(a, b) < 1.0
    a_xy, b_xy = rng.normal(size=(400, 2)), rng.normal(0.5, 1.0, size=(300, 2))
    assert js_divergence_2d(a_xy, b_xy, bins=15) == pytest.approx(js_divergence_2d(b_xy, a_xy, bins=15))
    # p = (1, 0), q = (1/2, 1/2), m = (3/4, 1/4): JSD = (KL(p|m) + KL(q|m)) / 2 with log2
    m = np.array([0.75, 0.25])
    expected = 0.5 * np.log2(1.0 / m[0]) + 0.5 * (0.5 * np.log2(0.5 / m[0]) + 0.5 * np.log2(0.5 / m[1]))
    assert js_divergence([0.25] * 10, [0.25] * 5 + [0.75] * 5, bins=2, range=(0.0, 1.0)) == pytest.approx(expected)


def test_free_energy_surface_is_zero_at_the_peak_with_kt_ln_ratios():
    """300 samples in one bin and 100 in another: 0 and kT ln 3 kcal/mol, NaN elsewhere."""
    x = np.concatenate([np.full(300, 0.5), np.full(100, 2.5)])
    y = np.concatenate([np.full(300, 1.5), np.full(100, 0.5)])
    free_energy, x_edges, y_edges = free_energy_surface(x, y, 300.0, bins=3, range=[(0.0, 3.0), (0.0, 3.0)])
    np.testing.assert_allclose(x_edges, [0.0, 1.0, 2.0, 3.0])
    kt = units.kB * 300.0 / (units.kcal / units.mol)
    assert kt == pytest.approx(0.596, abs=1e-3)
    assert free_energy[0, 1] == 0.0
    assert free_energy[2, 0] == pytest.approx(kt * np.log(3.0))
    assert np.isnan(free_energy).sum() == 7
    with pytest.raises(ValueError, match="temperature_K"):
        free_energy_surface(x, y, 0.0)


def test_sampling_note_counts_transitions_between_the_cores():
    """Frames between the cutoffs (2 and 4 A) keep the last state; trajectories are apart."""
    note = sampling_note([0.5, 0.5, 3.0, 5.0, 5.0, 3.0, 1.0, 5.0])
    assert (note["transitions"], note["transitions_per_trajectory"]) == (3, [3])
    assert sampling_note([1.9, 2.1, 1.9, 3.5, 1.9, 3.9])["transitions"] == 0
    note = sampling_note([0.5, 5.0, 5.0, 0.5, 0.5, 5.0], trajectory=[7, 3, 7, 3, 3, 3])
    assert note["transitions_per_trajectory"] == [2, 1]  # trajectory 3 (5 -> 0.5 -> 5), then 7 (0.5 -> 5)
    assert note["trajectories"] == 2 and note["folded_fraction"] == pytest.approx(0.5)


def test_sampling_note_flags_a_reference_without_transitions():
    rmsd = np.concatenate([np.full(500, 0.8), np.full(300, 6.0)])
    note = sampling_note(rmsd, trajectory=np.repeat([0, 1], [500, 300]))
    assert note["transitions"] == 0 and not note["sufficient"]
    assert "no folding or unfolding transition in 2 trajectories" in note["note"]
    assert "cannot be estimated" in note["note"]


def test_sampling_note_on_a_well_sampled_two_state_chain(rng):
    folded = np.cumsum(rng.random(20000) < 0.01) % 2 == 0
    note = sampling_note(np.where(folded, 1.0, 6.0) + rng.normal(scale=0.3, size=folded.size))
    assert note["transitions"] == pytest.approx(200, rel=0.3) and note["sufficient"]
    assert note["folded_fraction"] == pytest.approx(folded.mean(), abs=1e-3)
    assert 0.0 < note["standard_error"] < 0.1
    few = sampling_note(np.repeat([1.0, 6.0, 1.0, 6.0], 100))
    assert few["transitions"] == 3 and not few["sufficient"]
    assert "only 3 transitions" in few["note"] and "3.3x as much sampling" in few["note"]


def test_compare_identical_inputs_writes_plots_and_summary(rng, tmp_path):
    reference = folding_trajectory(rng, 2000)
    replicas = reference.reshape(1000, 2, 10, 3)  # as run_replicas returns them: (frames, replicas, beads, 3)
    summary = compare(reference, replicas, 300.0, tmp_path / "out", bins=30)
    for name in ("histograms.png", "fes_rmsd_rg.png", "summary.json"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary
    assert summary["js_divergence"] == pytest.approx(dict(rmsd=0.0, rg=0.0, end_to_end=0.0, rmsd_rg=0.0), abs=1e-12)
    assert summary["folded_fraction"]["model"] == summary["folded_fraction"]["reference"]
    assert kabsch_rmsd(np.array(summary["reference_structure"]), hairpin())[0] < 0.6
    assert summary["sampling"]["reference"]["sufficient"] and summary["sampling"]["model"]["trajectories"] == 2
    assert "differ by +0.000" in summary["sampling_note"]


def test_compare_says_when_the_reference_is_too_short(rng, tmp_path):
    reference = two_state_mixture(rng, 600)  # one trajectory a state: no transition
    summary = compare(reference, folding_trajectory(rng, 600), 300.0, tmp_path, labels=("AA", "CG"),
                      reference_trajectory=np.repeat([0, 1], [420, 180]), reference_structure=hairpin())
    assert summary["reference_structure"] == hairpin().tolist()
    assert summary["folded_fraction"]["reference"] == pytest.approx(0.7)
    assert not summary["sampling"]["reference"]["sufficient"]
    assert summary["sampling_note"].startswith("AA: no folding or unfolding transition in 2 trajectories")
    assert "reference sampling is too short" in summary["sampling_note"]
    assert 0.0 < summary["js_divergence"]["rmsd"] < 1.0
