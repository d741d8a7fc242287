"""Force-matching training on a synthetic chain whose forces come from a known potential,
through the API and through ``flashschnet-train``."""
import csv
import importlib

import numpy as np
import pytest
import torch
from ase.units import kB

from ase_flashschnet.model import UnknownElementError, load_model
from ase_flashschnet.train import trainer
from ase_flashschnet.train.checkpoint import load_checkpoint
from ase_flashschnet.train.config import TrainConfig
from ase_flashschnet.train.cli import main, summary
from ase_flashschnet.train.dataset import make_dataset, save_dataset
from ase_flashschnet.train.metrics import FIELDS
from ase_flashschnet.train.trainer import train

T = 300.0
TYPES = [1, 2, 1, 2, 1, 2]
K_BOND, R0, K_ANGLE, THETA0 = 10.0, 1.5, 3.0, 1.9
EPS, WIDTH = 1.0, 2.0  # Gaussian pair term between beads three or more apart


def reference_forces(positions: np.ndarray) -> np.ndarray:
    """-dE/dx of bonds + angles + pair term, exact (autograd of the closed form)."""
    pos = torch.tensor(positions, requires_grad=True)
    r = (pos[:, 1:] - pos[:, :-1]).norm(dim=2)
    u, v = pos[:, :-2] - pos[:, 1:-1], pos[:, 2:] - pos[:, 1:-1]
    theta = torch.atan2(torch.linalg.cross(u, v).norm(dim=2), (u * v).sum(dim=2))
    n = pos.shape[1]
    i, j = torch.triu_indices(n, n, offset=3)
    d = (pos[:, i] - pos[:, j]).norm(dim=2)
    energy = (0.5 * K_BOND * (r - R0) ** 2).sum() + (0.5 * K_ANGLE * (theta - THETA0) ** 2).sum() \
        + (EPS * torch.exp(-(d / WIDTH) ** 2)).sum()
    return -torch.autograd.grad(energy, pos)[0].numpy()


@pytest.fixture
def chain_data(boltzmann_chain):
    positions = boltzmann_chain(48, len(TYPES), K_BOND, R0, K_ANGLE, THETA0, kB * T)
    return make_dataset(positions, reference_forces(positions), TYPES, np.repeat(np.arange(4), 12), T)


def tiny(out_dir, **options):
    settings = dict(epochs=10, batch_frames=8, lr=5e-3, weight_decay=0.0, patience=50, seed=1, device="cpu",
                    cutoff=4.0, hidden_channels=16, num_filters=16, num_interactions=2, num_rbf=12, val_fraction=0.25,
                    progress=False)
    settings.update(options)
    return TrainConfig(out_dir=out_dir, **settings)


def losses(result, key):
    with open(result.metrics_file) as f:
        return [float(row[key]) for row in csv.DictReader(f)]


def val_loss_of(model, data, val_trajectory):
    frames = data.frames(data.trajectory == val_trajectory)
    loss = trainer.force_loss(model, model.types_from_numbers(frames.types), torch.as_tensor(frames.positions),
                              torch.as_tensor(frames.forces), trainer.NeighborList(model.cutoff), create_graph=False)
    return loss.item()


def test_training_lowers_the_force_error_and_saves_a_loadable_model(chain_data, tmp_path):
    config = tiny(tmp_path / "run")
    result = train(chain_data, config)
    train_loss, val_loss = losses(result, "train_loss"), losses(result, "val_loss")
    assert len(train_loss) == 10 and result.epochs_run == 10 and not result.stopped_early
    assert result.best_val_loss == min(val_loss) and val_loss[result.best_epoch - 1] == min(val_loss)
    assert result.plot_file.stat().st_size > 0 and result.device == "cpu"
    val_trajectory = load_checkpoint(tmp_path / "run")["val_trajectories"][0]
    untrained = val_loss_of(trainer._new_model(chain_data, config), chain_data, val_trajectory)
    assert result.best_val_loss < 0.5 * untrained and train_loss[-1] < 0.5 * train_loss[0]

    model = load_model(result.model_file)
    assert model.config["type_map"] == {1: 0, 2: 1}
    assert [type(p).__name__ for p in model.priors] == ["HarmonicBonds", "HarmonicAngles", "Repulsion"]
    assert model.priors[0].r0[0].item() == pytest.approx(R0, abs=0.05)
    # the saved model is the best one: its validation loss is the best recorded
    assert val_loss_of(model, chain_data, val_trajectory) == pytest.approx(result.best_val_loss, rel=1e-4)


def test_an_interrupted_run_resumes_to_the_same_model(chain_data, tmp_path, monkeypatch):
    config = tiny(tmp_path / "whole", epochs=4)
    whole = train(chain_data, config)
    validate = trainer._validate
    calls = []

    def crash_in_third_epoch(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return validate(*args)

    monkeypatch.setattr(trainer, "_validate", crash_in_third_epoch)
    part = tiny(tmp_path / "part", epochs=4)
    with pytest.raises(KeyboardInterrupt):
        train(chain_data, part)
    checkpoint = load_checkpoint(tmp_path / "part")
    assert checkpoint["progress"].epoch == 2 and checkpoint["optimizer"]["state"][0]["step"].item() == 10
    monkeypatch.setattr(trainer, "_validate", validate)
    resumed = train(chain_data, tiny(tmp_path / "part", epochs=4, resume=True))
    assert resumed.epochs_run == 4
    for key in ("train_loss", "val_loss", "lr"):
        assert losses(resumed, key) == losses(whole, key)
    first, second = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "part")
    for name, weights in first["model_state"].items():
        assert torch.equal(weights, second["model_state"][name]), name
    assert first["scheduler"] == second["scheduler"]


def test_a_time_limit_stops_at_an_epoch_boundary_and_resume_goes_on(chain_data, tmp_path, capsys):
    limited = train(chain_data, tiny(tmp_path, epochs=3, max_minutes=1e-9))
    assert limited.time_limited and not limited.stopped_early and limited.epochs_run == 1
    assert load_checkpoint(tmp_path)["progress"].epoch == 1 and limited.model_file.is_file()
    resumed = train(chain_data, tiny(tmp_path, epochs=3, resume=True, max_minutes=60.0))
    assert not resumed.time_limited and resumed.epochs_run == 3
    assert [int(e) for e in losses(resumed, "epoch")] == [1, 2, 3]
    assert "stopped at --max-minutes" in summary(limited) and "stopped at" not in summary(resumed)
    with pytest.raises(ValueError, match="max_minutes must be positive"):
        tiny(tmp_path, max_minutes=0)


def test_early_stopping_and_what_resume_refuses(chain_data, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "_validate", lambda *args: 1.0)  # never improves after epoch 1
    result = train(chain_data, tiny(tmp_path, epochs=10, patience=2, schedule="plateau"))
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1
    assert [int(e) for e in losses(result, "epoch")] == [1, 2, 3]
    # the plateau schedule halves the rate after max(1, patience // 2) epochs without improvement
    assert load_checkpoint(tmp_path)["optimizer"]["param_groups"][0]["lr"] == pytest.approx(2.5e-3)
    with pytest.raises(ValueError, match="holds the checkpoint of an earlier run"):
        train(chain_data, tiny(tmp_path, epochs=10))
    with pytest.raises(ValueError, match="validated on trajectories .* resume with the dataset, seed and val_fraction"):
        train(chain_data, tiny(tmp_path, epochs=10, seed=2, schedule="plateau", resume=True))
    with pytest.raises(ValueError, match="used the ReduceLROnPlateau schedule, this one asks for 'cosine'"):
        train(chain_data, tiny(tmp_path, epochs=10, resume=True))
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(chain_data, tiny(tmp_path / "empty", resume=True))


def test_bad_data_and_settings_stop_before_training(chain_data, tmp_path):
    with pytest.raises(UnknownElementError, match=r"bead type\(s\) \[2\]"):
        train(chain_data, tiny(tmp_path / "a", type_map={1: 0, 3: 1}))
    one_run = make_dataset(chain_data.positions, chain_data.forces, TYPES, np.zeros(48, dtype=int), T)
    with pytest.raises(ValueError, match="needs at least 2 trajectories"):
        train(one_run, tiny(tmp_path / "b"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="schedule must be one of"):
        tiny(tmp_path, schedule="linear")
    with pytest.raises(ValueError, match="repulsion_cutoff must lie in"):
        tiny(tmp_path, repulsion_cutoff=6.0)
    assert FIELDS == ("epoch", "train_loss", "val_loss", "lr", "seconds")


def test_cli_trains_end_to_end_and_resumes(chain_data, tmp_path, capsys):
    dataset = tmp_path / "chain.npz"
    save_dataset(dataset, chain_data.positions, chain_data.forces, chain_data.types, chain_data.trajectory, T)
    out = tmp_path / "run"
    common = [str(dataset), "--out", str(out), "--device", "cpu", "--cutoff", "4", "--hidden-channels", "16",
              "--num-filters", "16", "--num-interactions", "2", "--num-rbf", "12", "--batch-frames", "8",
              "--val-fraction", "0.25", "--no-progress"]
    assert main([*common, "--epochs", "2"]) == 0
    text = capsys.readouterr().out
    assert "epochs       : 2 on cpu" in text and f"model        : {out / 'model.pt'}" in text
    for name in ("model.pt", "checkpoint.pt", "metrics.csv", "loss.png"):
        assert (out / name).stat().st_size > 0, name
    assert load_model(out / "model.pt").config["num_filters"] == 16
    assert main([*common, "--epochs", "3", "--resume"]) == 0
    assert "epochs       : 3 on cpu" in capsys.readouterr().out
    with open(out / "metrics.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2", "3"]


def test_cli_errors_are_one_line_with_status_2(chain_data, tmp_path, capsys):
    assert main([str(tmp_path / "missing.npz"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"flashschnet-train: error: no dataset file at {tmp_path / 'missing.npz'}"
    dataset = tmp_path / "one.npz"
    save_dataset(dataset, chain_data.positions, chain_data.forces, chain_data.types, np.zeros(48, dtype=int), T)
    assert main([str(dataset), "--out", str(tmp_path / "o")]) == 2
    assert "needs at least 2 trajectories" in capsys.readouterr().err
    assert main([str(dataset), "--out", str(tmp_path / "o"), "--epochs", "0"]) == 2
    assert "epochs must be a positive whole number" in capsys.readouterr().err
    assert main([str(dataset), "--out", str(tmp_path / "o"), "--dihedral-harmonics", "-1"]) == 2
    assert "dihedral_harmonics must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_console_scripts_name_functions_that_exist(console_scripts):
    assert console_scripts["flashschnet-train"] == "ase_flashschnet.train.cli:main"
    for target in console_scripts.values():
        module, name = target.split(":")
        assert callable(getattr(importlib.import_module(module), name)), target
