"""The flashschnet-cg-v1 dataset format: round trip, and a clear refusal of each kind of bad data."""
import numpy as np
import pytest

from ase_flashschnet.model import UnknownElementError
from ase_flashschnet.train.dataset import (FORMAT, check_types, load_dataset, make_dataset, save_dataset,
                                           split_by_trajectory)


@pytest.fixture
def arrays(rng):
    n_frames, n_beads = 12, 4
    return dict(positions=rng.normal(size=(n_frames, n_beads, 3)), forces=rng.normal(size=(n_frames, n_beads, 3)),
                types=np.array([1, 2, 2, 1]), trajectory=np.repeat([0, 1, 2, 3], 3), temperature_K=300.0,
                bead_names=np.array(["ALA", "GLY", "GLY", "ALA"]))


def test_round_trip_keeps_values_in_the_documented_dtypes(arrays, tmp_path):
    path = tmp_path / "data.npz"
    save_dataset(path, **arrays)
    data = load_dataset(path)
    assert data.positions.dtype == np.float32 and data.forces.dtype == np.float32
    assert data.types.dtype == np.int64 and data.trajectory.dtype == np.int64
    np.testing.assert_allclose(data.positions, arrays["positions"], rtol=1e-6)
    np.testing.assert_array_equal(data.types, arrays["types"])
    assert data.temperature_K == 300.0 and data.bead_names.tolist() == ["ALA", "GLY", "GLY", "ALA"]
    assert (data.n_frames, data.n_beads) == (12, 4)
    with np.load(path) as npz:
        assert str(npz["format"]) == FORMAT


@pytest.mark.parametrize("key, value, message", [
    ("positions", "nan", "non-finite (NaN/inf) positions at frame 3 bead 1"),
    ("forces", "inf", "non-finite (NaN/inf) forces at frame 3 bead 1"),
    ("forces", np.zeros((12, 5, 3)), "forces has shape (12, 5, 3) but the positions ((12, 4, 3)) need (12, 4, 3)"),
    ("types", np.array([1, 2, 1]), "types has shape (3,) but the positions"),
    ("trajectory", np.zeros(11, dtype=int), "trajectory has shape (11,)"),
    ("positions", np.zeros((12, 4)), "positions must have shape (n_frames, n_beads, 3)"),
    ("types", np.array([1.0, 2.0, 2.0, 1.0]), "types must be integer, got dtype float64"),
    ("types", np.array([1, -2, 2, 1]), "bead types must be non-negative"),
    ("temperature_K", -5.0, "temperature_K must be a positive temperature"),
])
def test_bad_data_is_refused_before_it_is_written(arrays, tmp_path, key, value, message):
    if isinstance(value, str):
        bad = arrays[key].copy()
        bad[3, 1, 2] = float(value)
        value = bad
    arrays[key] = value
    with pytest.raises(ValueError) as info:
        save_dataset(tmp_path / "bad.npz", **arrays)
    assert message in str(info.value)
    assert not (tmp_path / "bad.npz").exists()


def test_load_refuses_bad_files_naming_them(arrays, tmp_path):
    with pytest.raises(FileNotFoundError, match="no dataset file at"):
        load_dataset(tmp_path / "missing.npz")
    other = tmp_path / "other.npz"
    np.savez(other, **dict(arrays, format=np.array("something-else")))
    with pytest.raises(ValueError, match=r"other.npz: format tag is 'something-else', expected 'flashschnet-cg-v1'"):
        load_dataset(other)
    untagged = tmp_path / "untagged.npz"
    np.savez(untagged, **arrays)
    with pytest.raises(ValueError, match="format tag is None"):
        load_dataset(untagged)
    lacking = tmp_path / "lacking.npz"
    np.savez(lacking, **{k: v for k, v in arrays.items() if k != "forces"}, format=np.array(FORMAT))
    with pytest.raises(ValueError, match="missing key.s. forces"):
        load_dataset(lacking)
    nan = tmp_path / "nan.npz"
    arrays["positions"][0, 0, 0] = np.nan
    np.savez(nan, **arrays, format=np.array(FORMAT))
    with pytest.raises(ValueError, match=r"nan.npz: non-finite \(NaN/inf\) positions at frame 0 bead 0"):
        load_dataset(nan)
    text = tmp_path / "text.npz"
    text.write_text("not an archive")
    with pytest.raises(ValueError, match="not a readable .npz file"):
        load_dataset(text)


def test_unknown_bead_types_are_named(arrays):
    data = make_dataset(**arrays)
    check_types(data, {1: 0, 2: 1})
    with pytest.raises(UnknownElementError, match=r"bead type\(s\) \[2\] .* not in the model's type map .*\[1, 3\]"):
        check_types(data, {1: 0, 3: 1})


def test_split_keeps_trajectories_whole_and_repeats_with_the_seed(arrays):
    data = make_dataset(**arrays)
    train, val = split_by_trajectory(data, 0.25, seed=3)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(12))
    assert set(data.trajectory[train]).isdisjoint(data.trajectory[val])
    assert len(set(data.trajectory[val])) == 1
    again = split_by_trajectory(data, 0.25, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])


def test_split_needs_two_trajectories(arrays):
    data = make_dataset(**dict(arrays, trajectory=np.zeros(12, dtype=int)))
    with pytest.raises(ValueError, match="needs at least 2 trajectories; the dataset has 1"):
        split_by_trajectory(data, 0.2, seed=0)
    with pytest.raises(ValueError, match="val_fraction must lie strictly between 0 and 1"):
        split_by_trajectory(make_dataset(**arrays), 1.0, seed=0)
