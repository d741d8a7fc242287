"""Checkpoints of a training run: all that its continuation depends on.

``checkpoint.pt`` in the output folder, written atomically after every epoch,
holds the model (configuration with its fitted priors, and weights), the
optimizer and learning-rate schedule (and which schedule it is), the epoch, the best validation loss and
when it was reached, the validation trajectories, and the state of the
generator that orders the frames (the only randomness after the initial
weights). A run resumed from it on the same device repeats the uninterrupted
run.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..model import SchNet, read_tagged_file

__all__ = ["CHECKPOINT_NAME", "Progress", "write_checkpoint", "load_checkpoint", "model_from_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "flashschnet-train-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class Progress:
    """Where a run stands: the last epoch finished, the best validation loss and
    its epoch, and the epochs since that best (for early stopping)."""

    epoch: int = 0
    best_val_loss: float = float("inf")
    best_epoch: int = 0
    epochs_since_best: int = 0


def write_checkpoint(path: Path, model: SchNet, optimizer, scheduler, generator: torch.Generator,
                     progress: Progress, val_trajectories) -> None:
    """Write the checkpoint to ``path`` atomically (a crash leaves the last one whole)."""
    data = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "progress": asdict(progress),
        "model_config": model.config,
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scheduler_kind": type(scheduler).__name__,
        "shuffle_rng": generator.get_state(), "val_trajectories": [int(t) for t in val_trajectories],
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)


def load_checkpoint(out_dir) -> dict:
    """The checkpoint in folder ``out_dir``, its ``progress`` as a :class:`Progress`."""
    path = Path(out_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume: no checkpoint at {path}")
    data = read_tagged_file(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "FlashSchNet training checkpoint")
    data["progress"] = Progress(**data["progress"])
    return data


def model_from_checkpoint(checkpoint: dict) -> SchNet:
    """The checkpointed model (on the CPU, float32 as trained)."""
    model = SchNet(**checkpoint["model_config"])
    model.load_state_dict(checkpoint["model_state"])
    return model
