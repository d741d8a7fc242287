"""The record of a training run: one CSV row an epoch, and the plot of its losses.

``metrics.csv`` has the columns ``epoch, train_loss, val_loss, lr, seconds``:
losses are mean squared force errors in (eV/A)^2, ``lr`` the learning rate the
epoch trained with, ``seconds`` its wall time. A resumed run drops the rows
after the checkpoint's epoch (written by the interrupted run after its last
checkpoint) and appends its own.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

__all__ = ["METRICS_NAME", "PLOT_NAME", "FIELDS", "MetricsLog", "plot_losses"]

log = logging.getLogger(__name__)

METRICS_NAME = "metrics.csv"
PLOT_NAME = "loss.png"
FIELDS = ("epoch", "train_loss", "val_loss", "lr", "seconds")


class MetricsLog:
    """``metrics.csv`` in ``out_dir``: started afresh, or (``keep_through`` an
    epoch) cut back to the rows up to that epoch."""

    def __init__(self, out_dir, keep_through: int | None = None):
        self.path = Path(out_dir) / METRICS_NAME
        kept = []
        if keep_through is not None and self.path.is_file():
            kept = [row for row in self.rows() if int(row["epoch"]) <= keep_through]
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, FIELDS)
            writer.writeheader()
            writer.writerows(kept)

    def append(self, **row) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, FIELDS).writerow(row)

    def rows(self) -> list[dict]:
        """The rows, values as text."""
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))


def plot_losses(rows: list[dict], path) -> Path | None:
    """Training and validation loss by epoch (log scale) as a PNG at ``path``.

    matplotlib is optional: without it the plot is left out (with a warning)
    and None returned, the CSV still holding the numbers.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("loss plot left out: matplotlib is not installed")
        return None
    epochs = [int(r["epoch"]) for r in rows]
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for key, label in (("train_loss", "training"), ("val_loss", "validation")):
        ax.plot(epochs, [float(r[key]) for r in rows], marker="o", markersize=3, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("force MSE (eV/A)$^2$")
    ax.legend()
    fig.savefig(path, dpi=120)
    return Path(path)
