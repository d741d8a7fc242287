"""``flashschnet-train``: force-matching training of a coarse-grained SchNet.

    flashschnet-train protein.npz --out run1 --epochs 100 --device auto
    flashschnet-train protein.npz --out run1 --epochs 200 --resume

``DATASET`` is a ``flashschnet-cg-v1`` file (``docs/cg-dataset.md``). The
output folder receives ``model.pt`` (the best model, for ``flashschnet-md
--model`` and ``load_model``), ``checkpoint.pt``, ``metrics.csv`` and
``loss.png``; ``--resume`` continues the run checkpointed there.
``--max-minutes`` ends a call at an epoch boundary, checkpointed, to fit a
time slot; ``--resume`` goes on. Exit status: 0 done (or stopped at
``--max-minutes``), 1 the training diverged, 2 bad input.
"""
from __future__ import annotations

import argparse
import sys

from ..model import UnknownElementError
from .config import SCHEDULES, TrainConfig
from .trainer import TrainResult, train

__all__ = ["main", "build_parser", "config_from_args", "summary"]


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig
    p = argparse.ArgumentParser(prog="flashschnet-train", description="Train a coarse-grained SchNet by force "
                                "matching on a flashschnet-cg-v1 dataset.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("dataset", metavar="DATASET", help="the .npz dataset (see docs/cg-dataset.md)")
    p.add_argument("--out", required=True, help="output folder: model.pt, checkpoint.pt, metrics.csv, loss.png")
    p.add_argument("--resume", action="store_true", help="continue the run checkpointed in --out")
    p.add_argument("--max-minutes", type=float, help="stop at the last epoch boundary within this many minutes "
                   "(continue with --resume)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="train up to this epoch")
    p.add_argument("--batch-frames", type=int, default=d.batch_frames, help="frames per optimizer step")
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument("--schedule", choices=SCHEDULES, default=d.schedule, help="learning-rate schedule")
    p.add_argument("--patience", type=int, default=d.patience,
                   help="stop after this many epochs without a better validation loss")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="fraction of the trajectories held out for validation")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the split, initial weights and frame order")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N")
    p.add_argument("--cutoff", type=float, default=d.cutoff, help="SchNet cutoff, A")
    p.add_argument("--hidden-channels", type=int, default=d.hidden_channels)
    p.add_argument("--num-filters", type=int, default=d.num_filters)
    p.add_argument("--num-interactions", type=int, default=d.num_interactions)
    p.add_argument("--num-rbf", type=int, default=d.num_rbf, help="Gaussians of the distance expansion")
    p.add_argument("--activation", default=d.activation, help="tanh, ssp or silu")
    p.add_argument("--repulsion-cutoff", type=float, help="cutoff of the fitted repulsion, A (default: --cutoff)")
    p.add_argument("--dihedral-harmonics", type=int, default=d.dihedral_harmonics,
                   help="harmonics of a fitted periodic dihedral prior (0: none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args) -> TrainConfig:
    """The run's settings from parsed command-line arguments."""
    return TrainConfig(
        out_dir=args.out, epochs=args.epochs, batch_frames=args.batch_frames, lr=args.lr,
        weight_decay=args.weight_decay, schedule=args.schedule, patience=args.patience,
        val_fraction=args.val_fraction, seed=args.seed, device=args.device, cutoff=args.cutoff,
        hidden_channels=args.hidden_channels, num_filters=args.num_filters, num_interactions=args.num_interactions,
        num_rbf=args.num_rbf, activation=args.activation, repulsion_cutoff=args.repulsion_cutoff,
        dihedral_harmonics=args.dihedral_harmonics, resume=args.resume, max_minutes=args.max_minutes,
        progress=not args.no_progress)


def summary(result: TrainResult) -> str:
    """What a run did and where its files are, for people."""
    ending = " (stopped early: the validation loss stopped improving)" if result.stopped_early else ""
    if result.time_limited:
        ending = " (stopped at --max-minutes: continue with --resume)"
    lines = [
        f"epochs       : {result.epochs_run} on {result.device}{ending}",
        f"best         : validation force MSE {result.best_val_loss:.4g} (eV/A)^2 at epoch {result.best_epoch}",
        f"model        : {result.model_file}",
        f"metrics      : {result.metrics_file}",
    ]
    if result.plot_file is not None:
        lines.append(f"plot         : {result.plot_file}")
    lines.append(f"checkpoint   : {result.checkpoint_file} (continue with --resume)")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = train(args.dataset, config_from_args(args))
    except FloatingPointError as exc:
        print(f"flashschnet-train: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError, UnknownElementError) as exc:
        print(f"flashschnet-train: error: {exc}", file=sys.stderr)
        return 2
    print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
