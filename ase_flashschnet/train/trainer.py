"""Force matching: train the reference SchNet on a coarse-grained dataset.

The loss is the mean squared error of the model's forces (``-dE/dx`` by
autograd, kept differentiable with ``create_graph=True`` so the loss has a
gradient in the weights) against the dataset's mapped forces. The priors are
fitted to the data once (:mod:`.prior_fit`) and held fixed (they are buffers,
not parameters): the network learns what the priors leave over. Each batch is
``batch_frames`` frames laid out as consecutive blocks of beads, the layout
the bonded priors expect, with one neighbour graph for the batch.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..model import SchNet
from ..neighbors import NeighborList
from .checkpoint import CHECKPOINT_NAME, Progress, load_checkpoint, model_from_checkpoint, write_checkpoint
from .config import TrainConfig
from .dataset import CGDataset, check_types, load_dataset, split_by_trajectory
from .metrics import PLOT_NAME, MetricsLog, plot_losses
from .prior_fit import fit_priors

__all__ = ["train", "TrainResult", "MODEL_NAME", "force_loss"]

log = logging.getLogger(__name__)

MODEL_NAME = "model.pt"


@dataclass
class TrainResult:
    """Where a run's files are and how it went: ``epochs_run`` counts all epochs
    finished (a resumed run's included), ``stopped_early`` says the validation
    loss stopped improving before ``epochs``, ``time_limited`` that this call
    stopped at ``max_minutes`` before either (resume to go on)."""

    model_file: Path
    checkpoint_file: Path
    metrics_file: Path
    plot_file: Path | None
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    time_limited: bool
    device: str


def _device(device) -> torch.device:
    """'auto' is CUDA when PyTorch sees a GPU: the reference model needs nothing else
    (unlike the fused kernels, which also need the CUDA core)."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but PyTorch sees no CUDA GPU")
    return device


def force_loss(model: SchNet, types: torch.Tensor, positions: torch.Tensor, forces: torch.Tensor,
               neighbor_list: NeighborList, create_graph: bool) -> torch.Tensor:
    """Mean squared force error of frames ``positions`` (B, N, 3) against ``forces``;
    ``types`` (N,) are embedding indices of one frame's beads."""
    n_frames, n_beads = positions.shape[:2]
    pos = positions.reshape(-1, 3)
    batch = torch.arange(n_frames, device=pos.device).repeat_interleave(n_beads)
    graph = neighbor_list(pos, batch=batch, n_systems=n_frames)
    _, predicted = model.energy_and_forces(types.repeat(n_frames), pos, graph, create_graph=create_graph)
    return (predicted - forces.reshape(-1, 3)).square().mean()


def _new_model(dataset: CGDataset, config: TrainConfig) -> SchNet:
    """A SchNet with priors fitted to ``dataset``, its weights drawn from ``config.seed``."""
    codes = sorted(set(dataset.types.tolist()))
    type_map = config.type_map if config.type_map is not None else {code: i for i, code in enumerate(codes)}
    check_types(dataset, type_map)
    repulsion_cutoff = config.cutoff if config.repulsion_cutoff is None else config.repulsion_cutoff
    priors = fit_priors(dataset, type_map, repulsion_cutoff, bins=config.prior_bins,
                        dihedral_harmonics=config.dihedral_harmonics)
    return SchNet(hidden_channels=config.hidden_channels, num_filters=config.num_filters,
                  num_interactions=config.num_interactions, num_rbf=config.num_rbf, cutoff=config.cutoff,
                  activation=config.activation, type_map=type_map, priors=priors, seed=config.seed)


def _optimisation(model: SchNet, config: TrainConfig, checkpoint: dict | None):
    """(optimizer, learning-rate scheduler, frame-order generator, :class:`Progress`),
    fresh or as the checkpoint left them."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if config.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=config.lr / 100)
    else:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5,
                                                               patience=max(1, config.patience // 2))
    generator = torch.Generator().manual_seed(config.seed)
    if checkpoint is None:
        return optimizer, scheduler, generator, Progress()
    if checkpoint["scheduler_kind"] != type(scheduler).__name__:
        raise ValueError(f"the checkpointed run used the {checkpoint['scheduler_kind']} schedule, this one asks "
                         f"for {config.schedule!r}: resume with the schedule the run started with")
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    if config.schedule == "cosine" and scheduler.T_max != config.epochs:
        log.warning("resuming to epoch %d: the cosine schedule keeps the %d epochs the run started with",
                    config.epochs, scheduler.T_max)
    generator.set_state(checkpoint["shuffle_rng"])
    return optimizer, scheduler, generator, checkpoint["progress"]


class _Batches:
    """The frames of one side of the split on the device, served in batches."""

    def __init__(self, dataset: CGDataset, frames: np.ndarray, batch_frames: int, device: torch.device):
        self.positions = torch.as_tensor(dataset.positions[frames], device=device)
        self.forces = torch.as_tensor(dataset.forces[frames], device=device)
        self.batch_frames = batch_frames

    def __len__(self) -> int:
        return self.positions.shape[0]

    def __call__(self, generator: torch.Generator | None = None):
        """(positions, forces) batches; shuffled by ``generator`` when one is given."""
        order = torch.arange(len(self)) if generator is None else torch.randperm(len(self), generator=generator)
        for start in range(0, len(self), self.batch_frames):
            index = order[start:start + self.batch_frames].to(self.positions.device)
            yield self.positions[index], self.forces[index]


def _train_epoch(model, types, batches: _Batches, neighbor_list, optimizer, generator) -> float:
    total = 0.0
    for positions, forces in batches(generator):
        optimizer.zero_grad(set_to_none=True)
        loss = force_loss(model, types, positions, forces, neighbor_list, create_graph=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * positions.shape[0]
    return total / len(batches)


def _validate(model, types, batches: _Batches, neighbor_list) -> float:
    total = 0.0
    for positions, forces in batches():
        total += force_loss(model, types, positions, forces, neighbor_list, create_graph=False).item() * len(positions)
    return total / len(batches)


def _resume(checkpoint: dict, out: Path, val_trajectories: np.ndarray) -> SchNet:
    """The checkpointed model, after checking that this run splits the data as the checkpointed one did."""
    if sorted(checkpoint["val_trajectories"]) != sorted(val_trajectories.tolist()):
        raise ValueError(f"{out / CHECKPOINT_NAME} validated on trajectories {sorted(checkpoint['val_trajectories'])}"
                         f" but this run would validate on {sorted(val_trajectories.tolist())}: resume with the "
                         "dataset, seed and val_fraction of the checkpointed run")
    return model_from_checkpoint(checkpoint)


def train(dataset, config: TrainConfig) -> TrainResult:
    """Train a SchNet by force matching on ``dataset`` (a :class:`CGDataset` or
    a ``flashschnet-cg-v1`` file) as ``config`` says; see :class:`TrainConfig`
    for the files written to ``config.out_dir``.

    Raises ``ValueError`` for bad data or settings before any training, and
    ``FloatingPointError`` if the training loss becomes non-finite.
    """
    started = time.perf_counter()
    if isinstance(dataset, (str, os.PathLike)):
        dataset = load_dataset(dataset)
    out = Path(config.out_dir)
    device = _device(config.device)
    train_frames, val_frames = split_by_trajectory(dataset, config.val_fraction, config.seed)
    val_trajectories = np.unique(dataset.trajectory[val_frames])
    if config.resume:
        checkpoint = load_checkpoint(out)
    elif (out / CHECKPOINT_NAME).exists():
        raise ValueError(f"{out} holds the checkpoint of an earlier run: resume it, or train into another folder")
    else:
        checkpoint = None
    model = _resume(checkpoint, out, val_trajectories) if checkpoint else _new_model(dataset, config)
    check_types(dataset, model.config["type_map"])
    model.to(device)
    out.mkdir(parents=True, exist_ok=True)

    optimizer, scheduler, generator, progress = _optimisation(model, config, checkpoint)
    metrics = MetricsLog(out, keep_through=progress.epoch if checkpoint else None)

    types = model.types_from_numbers(dataset.types)
    neighbor_list = NeighborList(model.cutoff)
    train_batches = _Batches(dataset, train_frames, config.batch_frames, device)
    val_batches = _Batches(dataset, val_frames, config.batch_frames, device)
    budget_s = None if config.max_minutes is None else 60.0 * config.max_minutes
    longest_epoch_s, time_limited = 0.0, False
    bar = tqdm(total=config.epochs, initial=progress.epoch, disable=not config.progress, unit="epoch",
               desc="training", dynamic_ncols=True)
    with bar:
        for epoch in range(progress.epoch + 1, config.epochs + 1):
            if progress.epochs_since_best >= config.patience:
                break
            if budget_s is not None and longest_epoch_s and \
                    time.perf_counter() - started + longest_epoch_s > budget_s:
                time_limited = True
                break
            start, lr = time.perf_counter(), optimizer.param_groups[0]["lr"]
            train_loss = _train_epoch(model, types, train_batches, neighbor_list, optimizer, generator)
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"the training loss became {train_loss} in epoch {epoch}; "
                                         f"try a smaller learning rate (lr={lr:g})")
            val_loss = _validate(model, types, val_batches, neighbor_list)
            if config.schedule == "plateau":
                scheduler.step(val_loss)
            else:
                scheduler.step()
            progress.epoch = epoch
            if val_loss < progress.best_val_loss:
                progress.best_val_loss, progress.best_epoch, progress.epochs_since_best = val_loss, epoch, 0
                model.save(out / MODEL_NAME)
            else:
                progress.epochs_since_best += 1
            metrics.append(epoch=epoch, train_loss=train_loss, val_loss=val_loss, lr=lr,
                           seconds=round(time.perf_counter() - start, 3))
            write_checkpoint(out / CHECKPOINT_NAME, model, optimizer, scheduler, generator, progress,
                             val_trajectories)
            longest_epoch_s = max(longest_epoch_s, time.perf_counter() - start)
            bar.update(1)
            bar.set_postfix(train=f"{train_loss:.4g}", val=f"{val_loss:.4g}")
    plot_file = plot_losses(metrics.rows(), out / PLOT_NAME)
    return TrainResult(model_file=out / MODEL_NAME, checkpoint_file=out / CHECKPOINT_NAME,
                       metrics_file=metrics.path, plot_file=plot_file, epochs_run=progress.epoch,
                       best_epoch=progress.best_epoch, best_val_loss=progress.best_val_loss,
                       stopped_early=progress.epoch < config.epochs and progress.epochs_since_best >= config.patience,
                       time_limited=time_limited, device=str(device))
