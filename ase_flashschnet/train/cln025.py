"""The coarse-grained CLN025 model from all-atom data to its validation, in
stages that each fit a 9-minute slot of one GPU (``flashschnet-cln025``,
``docs/cln025.md``).

    from ase_flashschnet.train.cln025 import run_stages
    for stage in run_stages("cln025", platform="cuda"):
        print(stage.name, stage.status, stage.seconds)

Each stage reads what the one before left in the run's folder:

* ``reference``: all-atom OpenMM runs of CLN025 mapped to C-alpha beads
  (:func:`.reference.generate_reference`) into ``reference/``;
* ``train``: priors fitted to those data and a SchNet trained by force
  matching (:func:`.trainer.train`) into ``train/``;
* ``validate``: replica MD of the trained model from reference structures of
  both basins, compared with the reference (:mod:`.cln025_validate`) in
  ``validation/``.

Each stage stops itself at its time limit at a point it can go on from (a
chunk of reference frames, an epoch, a segment of MD) and is then 'partial';
the next call goes on with it. ``pipeline.json`` (:mod:`.pipeline`) records
what each stage did, so a call skips the stages that are done. :data:`FULL`
sizes are for a GPU, :data:`QUICK` ones run on a CPU in seconds (tests, smoke
checks).
"""
from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .checkpoint import CHECKPOINT_NAME
from .cln025_validate import BEAD_MASS_AMU, SUMMARY_NAME, ValidationMD, md_engines, validate
from .config import TrainConfig
from .dataset import load_dataset
from .pipeline import DONE, FAILED, PARTIAL, Manifest
from .reference import DATASET_NAME, PLATFORMS, generate_reference
from .trainer import MODEL_NAME, train
from .validation import most_populated_structure

__all__ = ["STAGES", "Sizes", "FULL", "QUICK", "StageResult", "run_stages", "REFERENCE_DIR", "TRAIN_DIR",
           "VALIDATION_DIR", "export_model"]

STAGES = ("reference", "train", "validate")
REFERENCE_DIR, TRAIN_DIR, VALIDATION_DIR = "reference", "train", "validation"
#: Each stage's default time limit: it then ends within a 9-minute slot.
TIME_LIMIT_MINUTES = 8.0


@dataclass(frozen=True)
class Sizes:
    """How much each stage does: the keyword arguments of
    :func:`~.reference.generate_reference` (``reference``) and the
    :class:`~.config.TrainConfig` fields (``training``) that differ from their
    defaults, and the validation MD on a GPU (``md``) and on a CPU
    (``cpu_md``: the PyTorch reference on a CPU runs some 200 times slower
    than the fused kernels, so a GPU's validation would take it days)."""

    name: str
    reference: dict
    training: dict
    md: ValidationMD
    cpu_md: ValidationMD

    def validation_md(self, platform: str) -> ValidationMD:
        """The validation MD where ``platform`` runs it."""
        return self.md if md_engines(platform)[0].type == "cuda" else self.cpu_md


#: For one GPU: 12 x 0.3 ns of reference, 100 epochs, 64 replicas x 1 ns in bf16 and fp32
#: (on a CPU: 16 replicas x 0.1 ns in fp32).
FULL = Sizes("full",
             reference=dict(n_trajectories=12, n_frames=300, save_every_steps=500, temperature_K=350.0,
                            pull_steps=5_000, equilibration_steps=10_000),
             training=dict(epochs=100, batch_frames=32, dihedral_harmonics=3),
             md=ValidationMD(replicas=64, steps=500_000, segments=10, traj_interval=1_000,
                             equilibration_steps=50_000),
             cpu_md=ValidationMD(replicas=16, steps=50_000, segments=5, traj_interval=500,
                                 equilibration_steps=10_000))
#: For tests and a smoke check on a CPU: 2 trajectories x 5 frames, a small model for 2 epochs, 2 replicas x 20 steps.
QUICK = Sizes("quick",
              reference=dict(n_trajectories=2, n_frames=5, save_every_steps=10, temperature_K=350.0, pull_steps=20,
                             equilibration_steps=10),
              training=dict(epochs=2, batch_frames=4, hidden_channels=16, num_filters=16, num_interactions=1,
                            num_rbf=10, dihedral_harmonics=1),
              md=ValidationMD(replicas=2, steps=20, segments=2, traj_interval=5, equilibration_steps=0),
              cpu_md=ValidationMD(replicas=2, steps=20, segments=2, traj_interval=5, equilibration_steps=0))


@dataclass
class StageResult:
    """What a call did with a stage: ``status`` 'done', 'partial' (stopped at its
    time limit: call again to go on) or 'skipped' (done by an earlier call);
    ``seconds`` of this call; ``record``, the stage's manifest record."""

    name: str
    status: str
    seconds: float
    record: dict


def _reference(out: Path, sizes: Sizes, platform: str, time_limit_s, progress: bool):
    """Simulate, or go on simulating, the all-atom reference and map it to beads."""
    result = generate_reference(out / REFERENCE_DIR, platform=platform, time_limit_s=time_limit_s, progress=progress,
                                **sizes.reference)
    note = "" if result.complete else (f"{result.finished_trajectories} of {result.n_trajectories} trajectories "
                                       "finished at the time limit")
    outputs = {"dataset": f"{REFERENCE_DIR}/{DATASET_NAME}", "frames": result.n_frames,
               "trajectories_finished": result.finished_trajectories, "platform": result.platform,
               "ns_per_day": round(result.ns_per_day, 1)}
    return DONE if result.complete else PARTIAL, {**sizes.reference, "platform": platform}, outputs, note


def _train(out: Path, sizes: Sizes, platform: str, time_limit_s, progress: bool):
    """Fit the priors and train, or go on from the checkpoint of an earlier call."""
    folder = out / TRAIN_DIR
    config = TrainConfig(out_dir=folder, device=platform, resume=(folder / CHECKPOINT_NAME).is_file(),
                         max_minutes=None if time_limit_s is None else time_limit_s / 60.0, progress=progress,
                         **sizes.training)
    result = train(out / REFERENCE_DIR / DATASET_NAME, config)
    settings = {name: value for name, value in asdict(config).items()
                if name not in ("out_dir", "resume", "max_minutes", "progress")}
    outputs = {"model": f"{TRAIN_DIR}/{MODEL_NAME}", "metrics": f"{TRAIN_DIR}/{result.metrics_file.name}",
               "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
               "best_val_loss": result.best_val_loss, "stopped_early": result.stopped_early, "device": result.device}
    note = f"stopped at the time limit after epoch {result.epochs_run}" if result.time_limited else ""
    return PARTIAL if result.time_limited else DONE, settings, outputs, note


def _validate(out: Path, sizes: Sizes, platform: str, time_limit_s, progress: bool):
    """Run, or go on running, the validation MD; compare it with the reference once complete."""
    dataset = load_dataset(out / REFERENCE_DIR / DATASET_NAME)
    md = sizes.validation_md(platform)
    status, summary = validate(out / VALIDATION_DIR, out / TRAIN_DIR / MODEL_NAME, dataset, md, platform,
                               time_limit_s, progress)
    settings = {**asdict(md), "platform": platform}
    if status == PARTIAL:
        return status, settings, summary, "stopped at the time limit; segments so far: " + ", ".join(
            f"{label} {done}" for label, done in summary["segments"].items())
    outputs = {"summary": f"{VALIDATION_DIR}/{SUMMARY_NAME}", "device": summary["device"],
               "reference_folded_fraction": next(iter(summary["runs"].values()))["folded_fraction"]["reference"],
               "runs": {label: {"engine": run["engine"], "folded_fraction": run["folded_fraction"]["model"],
                                "js_divergence_rmsd_rg": run["js_divergence"]["rmsd_rg"],
                                "ns_per_day": run["ns_per_day"]} for label, run in summary["runs"].items()}}
    return status, settings, outputs, ""


#: The stages, each returning (status, settings, outputs, note) for its manifest record.
_RUN = {"reference": _reference, "train": _train, "validate": _validate}
#: The file each stage leaves for the next (or for people): a stage recorded as done runs again without it.
_PRODUCT = {"reference": f"{REFERENCE_DIR}/{DATASET_NAME}", "train": f"{TRAIN_DIR}/{MODEL_NAME}",
            "validate": f"{VALIDATION_DIR}/{SUMMARY_NAME}"}


def _done(manifest: Manifest, out: Path, stage: str) -> bool:
    return manifest.status(stage) == DONE and (out / _PRODUCT[stage]).is_file()


def _check_inputs(manifest: Manifest, out: Path, stage: str) -> None:
    """``FileNotFoundError`` saying which stage to run when what ``stage`` reads is not there yet."""
    for before in STAGES[:STAGES.index(stage)]:
        if _done(manifest, out, before):
            continue
        status = manifest.status(before)
        if status in (PARTIAL, FAILED):
            raise FileNotFoundError(f"stage {stage} needs the {before} stage, which is {status} in {out} "
                                    f"({manifest.stage(before)['note']}): run --stage {before} again to finish it")
        raise FileNotFoundError(f"stage {stage} needs {out / _PRODUCT[before]}, which is not there: run --stage "
                                f"{before} first")


def run_stages(out_dir, stage: str = "all", *, platform: str = "auto", quick: bool = False,
               time_limit_minutes: float | None = TIME_LIMIT_MINUTES, progress: bool = True) -> list[StageResult]:
    """Run ``stage`` ('reference', 'train', 'validate', or 'all' of them in turn)
    of the run in ``out_dir``, at :data:`QUICK` or :data:`FULL` sizes.

    Stages that are done are skipped, unless the file they leave for the next
    stage is gone (deleting a stage's folder redoes it); a partial one goes
    on. 'all' stops after a stage that ends partial. ``platform`` ('auto',
    'cuda', 'cpu') chooses where everything runs: OpenMM's platform, and the
    device of training and MD. ``time_limit_minutes`` bounds each stage of
    this call (None: no bound).

    Raises ``FileNotFoundError`` when a stage's inputs are missing (naming the
    stage to run first), ``ValueError`` for bad settings or a folder of another
    run; a stage's own errors pass through after the stage is recorded as
    failed.
    """
    if stage not in (*STAGES, "all"):
        raise ValueError(f"stage must be one of {STAGES} or 'all', got {stage!r}")
    if platform not in PLATFORMS:
        raise ValueError(f"platform must be one of {PLATFORMS}, got {platform!r}")
    if time_limit_minutes is not None and not time_limit_minutes > 0:
        raise ValueError(f"time_limit_minutes must be positive (None: no limit), got {time_limit_minutes}")
    sizes = QUICK if quick else FULL
    out = Path(out_dir)
    manifest = Manifest(out, sizes.name)
    time_limit_s = None if time_limit_minutes is None else 60.0 * time_limit_minutes
    results = []
    for name in STAGES if stage == "all" else (stage,):
        if _done(manifest, out, name):
            results.append(StageResult(name, "skipped", 0.0, manifest.stage(name)))
            continue
        _check_inputs(manifest, out, name)
        started = time.perf_counter()
        try:
            status, settings, outputs, note = _RUN[name](out, sizes, platform, time_limit_s, progress)
        except Exception as exc:
            before = manifest.stage(name)
            manifest.record(name, FAILED, time.perf_counter() - started, before.get("settings", {}),
                            before.get("outputs", {}), f"{type(exc).__name__}: {exc}")
            raise
        seconds = time.perf_counter() - started
        results.append(StageResult(name, status, seconds,
                                   manifest.record(name, status, seconds, settings, outputs, note)))
        if status != DONE:
            break
    return results


def export_model(out_dir, dest_dir, name: str = "cln025") -> tuple[Path, Path]:
    """Copy a finished run's model to ``dest_dir/NAME.pt`` and write the structure
    it starts from to ``dest_dir/NAME.npz``: how the package's shipped ``cln025``
    (``ase_flashschnet/data/``) is made from a run of this pipeline.

    The structure is the reference's most populated one
    (:func:`~.validation.most_populated_structure`), with its bead ``types``
    and ``bead_names``, every bead at :data:`~.cln025_validate.BEAD_MASS_AMU`,
    and the reference's ``temperature_K``; ``reference_positions`` and
    ``reference_trajectory`` are the reference's bead frames, for comparing a
    model's runs with them (:func:`~.validation.compare`). Only a run whose three stages are
    done is exported (``ValueError`` otherwise): a shipped model comes with its
    validation.
    """
    out, dest = Path(out_dir), Path(dest_dir)
    manifest = Manifest(out, None)
    missing = [stage for stage in STAGES if not _done(manifest, out, stage)]
    if missing:
        raise ValueError(f"{out}: stage(s) {', '.join(missing)} not done; a model is exported after its validation")
    dataset = load_dataset(out / REFERENCE_DIR / DATASET_NAME)
    dest.mkdir(parents=True, exist_ok=True)
    model_file, structure_file = dest / f"{name}.pt", dest / f"{name}.npz"
    shutil.copyfile(out / TRAIN_DIR / MODEL_NAME, model_file)
    np.savez_compressed(structure_file, positions=most_populated_structure(dataset.positions).astype(np.float64),
                        types=dataset.types, bead_names=dataset.bead_names,
                        masses=np.full(dataset.n_beads, BEAD_MASS_AMU),
                        temperature_K=np.float64(dataset.temperature_K),
                        reference_positions=dataset.positions.astype(np.float32),
                        reference_trajectory=dataset.trajectory)
    return model_file, structure_file
