"""flashschnet-md end to end with a tiny model file, and ``python -m ase_flashschnet``."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.io import read

import gpucore
from ase_flashschnet.cli import build_parser, config_from_args, main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def files(tmp_path, small_model):
    model = tmp_path / "tiny.pt"
    small_model(cutoff=3.0).float().save(model)
    structure = tmp_path / "ethanol.xyz"
    molecule("CH3CH2OH").write(structure)
    return model, structure


def run_module(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=REPO)


def test_cli_runs_checkpoints_and_restarts(files, tmp_path, capsys):
    model, structure = files
    out = tmp_path / "run"
    common = ["--model", str(model), "--replicas", "2", "--dt", "0.5", "--temperature", "250", "350",
              "--device", "cpu", "--out", str(out), "--traj-interval", "10", "--checkpoint-interval", "10",
              "--seed", "4", "--no-progress"]
    assert main([*common, "--structure", str(structure), "--steps", "20"]) == 0
    text = capsys.readouterr().out
    assert "2 replica(s) x 9 atoms" in text and "ns/day" in text
    assert (out / "checkpoint.pt").is_file()
    assert main([*common, "--steps", "30", "--restart", str(out)]) == 0
    frames = read(out / "replica_001.traj", ":")
    assert [a.info["step"] for a in frames] == [0, 10, 20, 30]


def test_restart_keeps_the_runs_dynamics(files, tmp_path, capsys, caplog):
    """Left out on a restart, --dt, --temperature and --friction are the checkpointed
    run's (not the command line's defaults), so it continues that run exactly; one
    given anew is used, with a warning; a checkpoint that records no settings
    (format version 1) still loads, the command line filling in."""
    model, structure = files
    common = ["--model", str(model), "--structure", str(structure), "--replicas", "2", "--device", "cpu",
              "--precision", "fp64", "--traj-interval", "10", "--checkpoint-interval", "10", "--seed", "4",
              "--no-progress"]
    dynamics = ["--dt", "0.5", "--temperature", "250", "350", "--friction", "0.05"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*common, *dynamics, "--steps", "20", "--out", str(straight)]) == 0
    assert main([*common, *dynamics, "--steps", "10", "--out", str(split)]) == 0
    capsys.readouterr()
    with caplog.at_level(logging.WARNING):
        assert main([*common, "--steps", "20", "--out", str(split), "--restart", str(split)]) == 0
    assert not caplog.records
    assert "dt 0.5 fs" in capsys.readouterr().out
    np.testing.assert_allclose(read(split / "replica_001.traj", -1).positions,
                               read(straight / "replica_001.traj", -1).positions, atol=1e-10)

    with caplog.at_level(logging.WARNING):
        assert main([*common, "--dt", "0.25", "--steps", "30", "--out", str(split), "--restart", str(split)]) == 0
    assert "dt 0.25 fs" in capsys.readouterr().out
    assert "was run with dt_fs=0.5; continuing with dt_fs=0.25" in caplog.text
    assert "temperature_K" not in caplog.text and "friction_per_fs" not in caplog.text

    old = torch.load(split / "checkpoint.pt", weights_only=True)
    for name in ("temperature_K", "friction_per_fs"):
        del old[name]
    old["version"] = 1
    (tmp_path / "old").mkdir()
    torch.save(old, tmp_path / "old" / "checkpoint.pt")
    assert main([*common, "--steps", "40", "--restart", str(tmp_path / "old")]) == 0
    assert "dt 0.25 fs" in capsys.readouterr().out


def test_cli_entry_point_as_a_process(files, tmp_path):
    model, structure = files
    proc = run_module("ase_flashschnet.cli", "--model", str(model), "--structure", str(structure),
                      "--steps", "10", "--integrator", "nve", "--precision", "fp64", "--out", str(tmp_path / "o"),
                      "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "reference fp64 on cpu" in proc.stdout
    assert (tmp_path / "o" / "replica_000.traj").is_file()


def test_cli_errors_are_one_line_with_status_2(files, tmp_path, capsys, small_model):
    model, structure = files
    assert main(["--model", str(tmp_path / "missing.pt"), "--structure", str(structure)]) == 2
    assert "neither a model file nor a shipped model name" in capsys.readouterr().err
    assert main(["--model", str(model)]) == 2
    assert "--structure is needed" in capsys.readouterr().err
    typed = tmp_path / "typed.pt"
    small_model(cutoff=3.0, type_map={"C": 0, "O": 1}).save(typed)
    assert main(["--model", str(typed), "--structure", str(structure), "--no-progress"]) == 2
    assert "element(s) H not known" in capsys.readouterr().err
    if not (gpucore.gpu_available() and torch.cuda.is_available()):
        assert main(["--model", str(model), "--structure", str(structure), "--precision", "bf16"]) == 2
        assert "needs a GPU" in capsys.readouterr().err


def test_devices_share_the_replicas_in_one_process(files, tmp_path, capsys):
    """--devices LIST runs what --device runs, the replicas split among the devices
    of the list; with --device too it is a usage error."""
    model, structure = files
    common = ["--model", str(model), "--structure", str(structure), "--replicas", "3", "--steps", "10",
              "--traj-interval", "5", "--precision", "fp64", "--seed", "2", "--no-progress"]
    assert main([*common, "--device", "cpu", "--out", str(tmp_path / "one")]) == 0
    assert main([*common, "--devices", "cpu,cpu", "--out", str(tmp_path / "two")]) == 0
    assert capsys.readouterr().out.count("3 replica(s) x 9 atoms") == 2
    for r in range(3):
        one, two = (read(tmp_path / out / f"replica_{r:03d}.traj", ":") for out in ("one", "two"))
        assert [a.info["step"] for a in two] == [0, 5, 10]
        np.testing.assert_allclose(two[-1].positions, one[-1].positions, rtol=0, atol=1e-10)
    assert main([*common, "--devices", "cpu,cpu", "--device", "cpu"]) == 2
    assert "give device (one) or devices (several), not both" in capsys.readouterr().err
    for flag in ("all", "cuda:0,cuda:1", "0,1"):
        assert config_from_args(build_parser().parse_args(["--model", "m", "--devices", flag])).devices == flag
    assert config_from_args(build_parser().parse_args(["--model", "m"])).devices is None
    assert "--devices all|LIST" in build_parser().format_help()


def test_shipped_model_brings_its_structure(capsys):
    assert main(["--model", "cg-demo", "--steps", "0", "--device", "cpu", "--no-progress"]) == 0
    assert "1 replica(s) x 269 atoms" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_main_job_runs_on_its_default():
    """``python -m ase_flashschnet``: the shipped cg-demo model on its own chain."""
    proc = run_module("ase_flashschnet", "--steps", "2", "--replicas", "1", timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "269 atoms" in proc.stdout and "ns/day" in proc.stdout


@pytest.mark.parametrize("device", ["gpu", "cuda:7"])
def test_demo_main_job_names_a_bad_device(device, capsys):
    """A device the machine cannot serve is a usage error, not a traceback."""
    from ase_flashschnet.__main__ import main as demo_main
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(SystemExit) as stop:
        demo_main(["--device", device])
    assert stop.value.code == 2 and f"--device {device}:" in capsys.readouterr().err
