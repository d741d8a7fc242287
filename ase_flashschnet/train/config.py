"""The settings of a force-matching training run, in one validated object."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..model import ACTIVATIONS

__all__ = ["TrainConfig", "SCHEDULES"]

SCHEDULES = ("cosine", "plateau")


@dataclass(frozen=True)
class TrainConfig:
    """How :func:`~ase_flashschnet.train.trainer.train` trains: everything but the data.

    Output: ``out_dir`` receives ``model.pt`` (the model of the best validation
    loss so far, readable by :func:`~ase_flashschnet.model.load_model`),
    ``checkpoint.pt`` (after every epoch), ``metrics.csv`` and ``loss.png``;
    ``resume`` continues the run checkpointed there up to ``epochs``, with the
    model (and its priors) of the checkpoint: the model settings below then
    go unused.

    Optimisation: AdamW with ``lr`` and ``weight_decay`` on ``batch_frames``
    frames a step; ``schedule`` 'cosine' (from ``lr`` down to ``lr / 100`` over
    ``epochs``; a resumed run keeps the length it started with) or 'plateau'
    (halve the rate when the validation loss has not improved for
    ``max(1, patience // 2)`` epochs). Training stops early once the validation
    loss has not improved for ``patience`` epochs.

    Data: whole trajectories go to validation, ``val_fraction`` of them, drawn
    with ``seed``; ``seed`` also sets the initial weights and the order of the
    frames, so a run on the CPU repeats bit for bit.

    Model: SchNet's ``cutoff`` (A), ``hidden_channels``, ``num_filters``,
    ``num_interactions``, ``num_rbf``, ``activation``; ``type_map`` (bead code
    -> embedding row; None: the dataset's codes in increasing order). Priors are
    fitted to the data (``prior_fit``), with histograms of ``prior_bins`` bins,
    a repulsion cut off at ``repulsion_cutoff`` (None: the model cutoff) and,
    unless ``dihedral_harmonics`` is 0, periodic dihedrals of that many
    harmonics.

    Time: ``max_minutes`` bounds the wall-clock time of one call (None: no
    bound), so that a run fits a fixed slot on a shared machine: no epoch
    starts that would end past it, judged by the longest epoch of the call so
    far, and at least one epoch runs. The run stops at an epoch boundary with
    its checkpoint written; ``resume`` continues it.

    ``device``: 'auto' (CUDA when PyTorch sees a GPU), 'cpu', 'cuda', 'cuda:N'.
    ``progress``: show a progress bar.
    """

    out_dir: Any
    epochs: int = 100
    batch_frames: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    patience: int = 10
    val_fraction: float = 0.2
    seed: int = 0
    device: Any = "auto"
    cutoff: float = 10.0
    hidden_channels: int = 128
    num_filters: int = 128
    num_interactions: int = 3
    num_rbf: int = 50
    activation: str = "tanh"
    type_map: dict | None = None
    repulsion_cutoff: float | None = None
    prior_bins: int = 50
    dihedral_harmonics: int = 0
    resume: bool = False
    max_minutes: float | None = None
    progress: bool = True

    def __post_init__(self):
        if self.out_dir is None:
            raise ValueError("out_dir is needed: the folder for the model, checkpoint, metrics and plot")
        for name in ("epochs", "batch_frames", "patience", "prior_bins"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive whole number, got {getattr(self, name)!r}")
        for name in ("lr", "cutoff"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be positive (None: no limit), got {self.max_minutes!r}")
        if int(self.dihedral_harmonics) < 0:
            raise ValueError(f"dihedral_harmonics must be >= 0 (0: no dihedral prior), got {self.dihedral_harmonics!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose from {sorted(ACTIVATIONS)}")
        if self.repulsion_cutoff is not None and not 0 < self.repulsion_cutoff <= self.cutoff:
            raise ValueError(f"repulsion_cutoff must lie in (0, cutoff={self.cutoff}], got {self.repulsion_cutoff}")
