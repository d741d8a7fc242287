"""Coarse-grained force-matching data: the ``flashschnet-cg-v1`` ``.npz`` format.

One file holds frames of ONE coarse-grained molecule (the same beads, in the
same order, in every frame) and the all-atom forces mapped onto its beads
(the full description is ``docs/cg-dataset.md``):

=================  ======================  =======  ================================================
key                shape                   dtype    meaning
=================  ======================  =======  ================================================
``positions``      (n_frames, n_beads, 3)  float32  bead positions, Angstrom
``forces``         (n_frames, n_beads, 3)  float32  mapped forces, eV/Angstrom (ASE units)
``types``          (n_beads,)              int64    bead type codes (the model's type-map keys)
``trajectory``     (n_frames,)             int64    simulation each frame came from (for splitting)
``temperature_K``  ()                      float64  temperature of the simulations, K
``bead_names``     (n_beads,)              str      names for people (e.g. residue names)
``format``         ()                      str      ``"flashschnet-cg-v1"``
=================  ======================  =======  ================================================

Everything is checked when a file is written or read, so that bad data stops
before a training run starts rather than as a NaN loss hours into it.
Consecutive beads are taken as bonded (one chain), which is what the fitted
priors of :mod:`.prior_fit` assume.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..model import UnknownElementError

__all__ = ["FORMAT", "CGDataset", "make_dataset", "save_dataset", "load_dataset", "validate", "check_types",
           "split_by_trajectory"]

FORMAT = "flashschnet-cg-v1"
_KEYS = ("positions", "forces", "types", "trajectory", "temperature_K", "bead_names", "format")


@dataclass(frozen=True)
class CGDataset:
    """The arrays of a ``flashschnet-cg-v1`` file, in its documented dtypes."""

    positions: np.ndarray
    forces: np.ndarray
    types: np.ndarray
    trajectory: np.ndarray
    temperature_K: float
    bead_names: np.ndarray

    @property
    def n_frames(self) -> int:
        return int(self.positions.shape[0])

    @property
    def n_beads(self) -> int:
        return int(self.positions.shape[1])

    def frames(self, index) -> CGDataset:
        """The frames selected by ``index`` (indices or a boolean mask)."""
        return CGDataset(self.positions[index], self.forces[index], self.types, self.trajectory[index],
                         self.temperature_K, self.bead_names)


def _bad_rows(array: np.ndarray) -> str:
    """The frames (and beads) of an (F, N, 3) array that hold NaN or inf, for a message."""
    frame, bead = np.nonzero(~np.isfinite(array).all(axis=2))
    shown = ", ".join(f"frame {f} bead {b}" for f, b in zip(frame[:5], bead[:5]))
    more = f" and {frame.size - 5} more" if frame.size > 5 else ""
    return shown + more


def validate(dataset: CGDataset) -> None:
    """Raise ``ValueError`` saying what is wrong with ``dataset``, if anything."""
    pos, forces = dataset.positions, dataset.forces
    if pos.ndim != 3 or pos.shape[2] != 3 or pos.shape[0] < 1 or pos.shape[1] < 1:
        raise ValueError(f"positions must have shape (n_frames, n_beads, 3) with at least one frame and bead, "
                         f"got {pos.shape}")
    n_frames, n_beads = pos.shape[:2]
    expected = {"forces": (forces.shape, pos.shape), "types": (dataset.types.shape, (n_beads,)),
                "trajectory": (dataset.trajectory.shape, (n_frames,)),
                "bead_names": (dataset.bead_names.shape, (n_beads,))}
    for name, (shape, want) in expected.items():
        if shape != want:
            raise ValueError(f"{name} has shape {shape} but the positions ({pos.shape}) need {want}")
    for name, array in (("positions", pos), ("forces", forces)):
        if not np.isfinite(array).all():
            raise ValueError(f"non-finite (NaN/inf) {name} at {_bad_rows(array)}")
    if (dataset.types < 0).any():
        raise ValueError(f"bead types must be non-negative codes, got {sorted(set(dataset.types.tolist()))}")
    if not (np.isfinite(dataset.temperature_K) and dataset.temperature_K > 0):
        raise ValueError(f"temperature_K must be a positive temperature, got {dataset.temperature_K}")


def _typed(name: str, value, kind: str, dtype) -> np.ndarray:
    """``value`` as an array of ``dtype``, refusing values of another kind ('f' or 'i')."""
    array = np.asarray(value)
    accepted = "fiu" if kind == "f" else "iu"
    if array.dtype.kind not in accepted:
        wanted = "floating-point" if kind == "f" else "integer"
        raise ValueError(f"{name} must be {wanted}, got dtype {array.dtype}")
    return array.astype(dtype, copy=False)


def make_dataset(positions, forces, types, trajectory, temperature_K, bead_names=None) -> CGDataset:
    """A checked :class:`CGDataset` in the documented dtypes (``bead_names``
    default to the type codes as strings)."""
    types = _typed("types", types, "i", np.int64)
    if bead_names is None:
        bead_names = types.astype(str)
    dataset = CGDataset(_typed("positions", positions, "f", np.float32), _typed("forces", forces, "f", np.float32),
                        types, _typed("trajectory", trajectory, "i", np.int64),
                        float(np.asarray(temperature_K)), np.asarray(bead_names, dtype=str))
    validate(dataset)
    return dataset


def save_dataset(path, positions, forces, types, trajectory, temperature_K, bead_names=None) -> CGDataset:
    """Check the arrays and write them as a ``flashschnet-cg-v1`` file; returns the dataset."""
    dataset = make_dataset(positions, forces, types, trajectory, temperature_K, bead_names)
    with open(path, "wb") as f:  # a file object keeps numpy from adding ".npz" to the name
        np.savez(f, positions=dataset.positions, forces=dataset.forces, types=dataset.types,
                 trajectory=dataset.trajectory, temperature_K=np.float64(dataset.temperature_K),
                 bead_names=dataset.bead_names, format=np.array(FORMAT))
    return dataset


def load_dataset(path) -> CGDataset:
    """Read and check a ``flashschnet-cg-v1`` file.

    ``FileNotFoundError`` if there is none; ``ValueError`` naming the file for a
    file of another format, a missing key, or data that fails :func:`validate`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no dataset file at {path}")
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array")
        with npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from exc
    found = str(arrays["format"]) if "format" in arrays else None
    if found != FORMAT:
        raise ValueError(f"{path}: format tag is {found!r}, expected {FORMAT!r} (see docs/cg-dataset.md)")
    missing = [key for key in _KEYS if key not in arrays]
    if missing:
        raise ValueError(f"{path}: missing key(s) {', '.join(missing)}")
    try:
        return make_dataset(arrays["positions"], arrays["forces"], arrays["types"], arrays["trajectory"],
                            arrays["temperature_K"], arrays["bead_names"])
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def check_types(dataset: CGDataset, type_map: dict) -> None:
    """Raise :class:`~ase_flashschnet.model.UnknownElementError` for bead types
    that ``type_map`` (code -> embedding index) does not know."""
    unknown = sorted(set(dataset.types.tolist()) - {int(code) for code in type_map})
    if unknown:
        raise UnknownElementError(f"bead type(s) {unknown} of the dataset are not in the model's type map "
                                  f"(it knows {sorted(int(code) for code in type_map)})")


def split_by_trajectory(dataset: CGDataset, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices (train, validation), whole trajectories to each side.

    Frames of one simulation are correlated, so a split by frame would let the
    validation loss see near-copies of training frames. ``round(val_fraction
    * n_trajectories)`` trajectories (at least one, and leaving one for
    training) are drawn for validation by a generator seeded with ``seed``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    names = np.unique(dataset.trajectory)
    if names.size < 2:
        raise ValueError(f"a split by trajectory needs at least 2 trajectories; the dataset has {names.size} "
                         f"(label the frames of each simulation in 'trajectory')")
    n_val = min(max(1, round(val_fraction * names.size)), names.size - 1)
    chosen = np.random.default_rng(seed).permutation(names)[:n_val]
    is_val = np.isin(dataset.trajectory, chosen)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
