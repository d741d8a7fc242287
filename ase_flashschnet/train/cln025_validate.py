"""The validate stage of ``flashschnet-cln025``: replica MD of the trained CG
model, compared with the all-atom reference it was trained on.

The replicas start from reference frames of both basins: half from frames
within :data:`~.validation.FOLDED_RMSD_A` of the reference's most populated
structure, half from the others (all from one basin when the reference has
no frame in the other). They run at the reference's temperature with
:func:`~ase_flashschnet.md.run_replicas`: on a GPU with the fused kernels, once
in bf16 and once in fp32 (the reduced precision must sample what fp32 does);
elsewhere with the PyTorch reference in fp32. Each run is then compared with
the reference by :func:`~.validation.compare`.

Masses do not change the equilibrium distribution that the comparison is
about, so every bead gets :data:`BEAD_MASS_AMU`, an average residue's mass:
the stiffest prior alone then sets the largest stable time step. The Langevin
friction (1/ps) is the reference runs'.

A run is made of ``segments`` calls of ``run_replicas``, each continuing from
the positions and velocities the one before ended with (its Langevin noise
seeded by ``seed`` and the segment's number). Each segment's frames go to
``segment-NNN.npz`` as it ends, so a call stopped at its time limit loses
nothing and a rerun goes on from the last segment.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from tqdm import tqdm

from ..calculator import resolve_device
from ..md import run_replicas
from ..model import load_model
from .dataset import CGDataset
from .pipeline import DONE, PARTIAL
from .validation import FOLDED_RMSD_A, compare, kabsch_rmsd, most_populated_structure

__all__ = ["BEAD_MASS_AMU", "SUMMARY_NAME", "ValidationMD", "starting_frames", "md_engines", "validate"]

#: The mass of every bead (Da): about the mean residue mass of proteins.
BEAD_MASS_AMU = 110.0
SUMMARY_NAME = "summary.json"


@dataclass(frozen=True)
class ValidationMD:
    """The validation runs: ``replicas`` trajectories of ``steps`` steps of
    ``dt_fs``, a frame every ``traj_interval`` steps, run in ``segments``
    calls; frames before ``equilibration_steps`` are left out of the
    comparison."""

    replicas: int
    steps: int
    segments: int
    traj_interval: int
    equilibration_steps: int
    dt_fs: float = 2.0
    friction_per_fs: float = 0.001
    seed: int = 0

    def __post_init__(self):
        for name in ("replicas", "steps", "segments", "traj_interval"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive whole number, got {getattr(self, name)!r}")
        if self.steps % (self.segments * self.traj_interval):
            raise ValueError(f"steps ({self.steps}) must be a multiple of segments x traj_interval "
                             f"({self.segments} x {self.traj_interval}): each segment ends on a frame")
        if not 0 <= self.equilibration_steps < self.steps:
            raise ValueError(f"equilibration_steps must lie in [0, steps), got {self.equilibration_steps}")

    @property
    def segment_steps(self) -> int:
        return self.steps // self.segments


def starting_frames(positions, structure, replicas: int, threshold_A: float = FOLDED_RMSD_A):
    """Indices of ``replicas`` frames of ``positions`` (F, N, 3) to start from,
    and how many are folded: half (rounded down) within ``threshold_A`` of
    ``structure`` by C-alpha RMSD, half beyond, each half evenly spread over the
    frames of its basin (repeating frames when a basin has fewer); all from one
    basin when the other has no frame."""
    rmsd = kabsch_rmsd(positions, structure)
    folded, unfolded = np.flatnonzero(rmsd < threshold_A), np.flatnonzero(rmsd >= threshold_A)
    n_folded = replicas // 2 if folded.size and unfolded.size else (replicas if folded.size else 0)

    def spread(frames, n):
        return frames[np.linspace(0, frames.size - 1, n).round().astype(int)] if n else frames[:0]

    return np.concatenate([spread(folded, n_folded), spread(unfolded, replicas - n_folded)]), n_folded


def md_engines(platform: str):
    """The MD device for ``platform`` ('auto', 'cuda', 'cpu') and the runs on it as
    (backend, precision) pairs: the fused kernels in bf16 and fp32 on a GPU, the
    reference in fp32 elsewhere."""
    device = resolve_device(platform)
    if device.type == "cuda":
        return device, (("fused", "bf16"), ("fused", "fp32"))
    return device, (("reference", "fp32"),)


class _Budget:
    """A call's time limit (None: none), judged by the longest segment so far:
    a segment starts only if one that long would end in time, and the first
    one always does."""

    def __init__(self, seconds: float | None):
        self.deadline = None if seconds is None else time.perf_counter() + seconds
        self.longest = 0.0

    def allows_another(self) -> bool:
        return self.deadline is None or not self.longest or time.perf_counter() + self.longest <= self.deadline

    def took(self, seconds: float) -> None:
        self.longest = max(self.longest, seconds)


def _segments(folder: Path) -> list[Path]:
    found = []
    while (path := folder / f"segment-{len(found):03d}.npz").is_file():
        found.append(path)
    return found


def _run(model, starts: list[Atoms], folder: Path, md: ValidationMD, backend: str, precision: str, device,
         temperature_K: float, budget: _Budget, bar) -> bool:
    """Run the segments ``folder`` lacks, while ``budget`` allows; True when all are there."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(len(_segments(folder)), md.segments):
        if not budget.allows_another():
            return False
        if k:
            with np.load(folder / f"segment-{k - 1:03d}.npz") as last:
                starts = [Atoms(numbers=a.numbers, positions=p, masses=a.get_masses(), velocities=v)
                          for a, p, v in zip(starts, last["final_positions"], last["final_velocities"])]
        began = time.perf_counter()
        result = run_replicas(model, starts, steps=md.segment_steps, dt_fs=md.dt_fs, temperature_K=temperature_K,
                              friction_per_fs=md.friction_per_fs, device=device, precision=precision,
                              backend=backend, traj_interval=md.traj_interval, seed=md.seed + k, progress=False)
        keep = slice(0 if k == 0 else 1, None)  # a later segment's first frame is the last one of the one before
        tmp = folder / f"segment-{k:03d}.tmp.npz"
        np.savez(tmp, positions=result.positions[keep].astype(np.float32),
                 steps=result.steps[keep] + k * md.segment_steps, final_positions=result.final_positions,
                 final_velocities=result.final_velocities, wall_s=result.wall_time_s, engine=result.engine)
        os.replace(tmp, folder / f"segment-{k:03d}.npz")
        budget.took(time.perf_counter() - began)
        bar.update(md.segment_steps)
    return True


def _frames(folder: Path, md: ValidationMD):
    """The run's frames after equilibration (frames, replicas, N, 3), its engine and its MD wall time."""
    positions, steps, wall, engine = [], [], 0.0, ""
    for path in _segments(folder):
        with np.load(path) as segment:
            positions.append(segment["positions"])
            steps.append(segment["steps"])
            wall += float(segment["wall_s"])
            engine = str(segment["engine"])
    steps = np.concatenate(steps)
    return np.concatenate(positions)[steps >= md.equilibration_steps], engine, wall


def validate(out_dir, model_file, dataset: CGDataset, md: ValidationMD, platform: str = "auto",
             time_limit_s: float | None = None, progress: bool = True) -> tuple[str, dict]:
    """Run (or go on running) the validation MD into ``out_dir`` and, once every
    run is complete, compare each with ``dataset``. Returns ``(status, summary)``:
    'done' with what ``summary.json`` holds, or 'partial' (stopped at
    ``time_limit_s``; a rerun goes on) with the segments each run has so far.

    ``out_dir`` receives, for each run ``LABEL`` (``fused-bf16``, ``fused-fp32``
    or ``reference-fp32``), ``LABEL/md/segment-NNN.npz`` and what
    :func:`~.validation.compare` writes into ``LABEL/``, and ``summary.json``:
    the MD settings, the starting basins and, for each run, its engine, speed
    and comparison.
    """
    budget = _Budget(time_limit_s)
    out, model = Path(out_dir), load_model(model_file)
    device, engines = md_engines(platform)
    structure = most_populated_structure(dataset.positions)
    frames, n_folded = starting_frames(dataset.positions, structure, md.replicas)
    masses = np.full(dataset.n_beads, BEAD_MASS_AMU)
    starts = [Atoms(numbers=dataset.types, positions=dataset.positions[f], masses=masses) for f in frames]
    folders = {f"{backend}-{precision}": out / f"{backend}-{precision}" for backend, precision in engines}
    with tqdm(total=md.steps * len(engines), disable=not progress, unit="step", desc="validation MD",
              dynamic_ncols=True) as bar:
        for folder, (backend, precision) in zip(folders.values(), engines):
            bar.update(len(_segments(folder / "md")) * md.segment_steps)
            if not _run(model, starts, folder / "md", md, backend, precision, device, dataset.temperature_K,
                        budget, bar):
                return PARTIAL, {"segments": {label: f"{len(_segments(folder / 'md'))} of {md.segments}"
                                              for label, folder in folders.items()}}
    summary = {"temperature_K": dataset.temperature_K, "device": str(device), "md": asdict(md),
               "bead_mass_amu": BEAD_MASS_AMU, "reference_frames": dataset.n_frames,
               "starts": {"folded": int(n_folded), "unfolded": int(md.replicas - n_folded),
                          "threshold_A": FOLDED_RMSD_A, "frames": frames.tolist()},
               "runs": {}}
    for label, folder in folders.items():
        positions, engine, wall = _frames(folder / "md", md)
        compared = compare(dataset.positions, positions, dataset.temperature_K, folder,
                           labels=("all-atom reference", f"CG model ({engine})"), reference_structure=structure,
                           reference_trajectory=dataset.trajectory)
        simulated_ns = md.replicas * md.steps * md.dt_fs * 1e-6
        summary["runs"][label] = {"engine": engine, "md_wall_s": round(wall, 2), "simulated_ns": simulated_ns,
                                  "ns_per_day": simulated_ns / wall * 86400.0 if wall > 0 else None,
                                  "frames_compared": int(positions.shape[0] * positions.shape[1]),
                                  **{key: compared[key] for key in ("folded_fraction", "cvs", "js_divergence",
                                                                    "sampling", "sampling_note")},
                                  "files": [f"{label}/{name}" for name in compared["files"]]}
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    return DONE, summary
