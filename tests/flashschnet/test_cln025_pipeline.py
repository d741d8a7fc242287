"""flashschnet-cln025: every stage at --quick sizes on the CPU, the manifest, a call
that goes on after the reference stage or after a time limit, and the errors for
inputs that are not there yet. The runs skip cleanly without OpenMM or
PeptideBuilder (the reference stage needs them)."""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ase_flashschnet.model import load_model
from ase_flashschnet.train.cln025 import STAGES
from ase_flashschnet.train.cln025_cli import main
from ase_flashschnet.train.cln025_validate import ValidationMD, starting_frames

QUICK = ["--quick", "--platform", "cpu", "--no-progress"]
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
CLN025_TYPES = {20, 3, 13, 4, 17, 6, 19}


@pytest.fixture(scope="module")
def after_reference(tmp_path_factory):
    """A run's folder after the reference stage alone, at --quick sizes."""
    pytest.importorskip("openmm")
    pytest.importorskip("PeptideBuilder")
    out = tmp_path_factory.mktemp("cln025") / "run"
    assert main([str(out), "--stage", "reference", *QUICK]) == 0
    return out


@pytest.fixture
def run(after_reference, tmp_path):
    """A copy of :func:`after_reference` for one test to go on with."""
    return Path(shutil.copytree(after_reference, tmp_path / "run"))


def _manifest(out):
    return json.loads((out / "pipeline.json").read_text())


def _mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def test_all_stages_go_on_after_the_reference_stage(run, capsys, monkeypatch, benchmark_script):
    chunks = _mtimes(run / "reference" / "chunks")
    assert _manifest(run)["stages"]["reference"]["status"] == "done"
    assert main([str(run), *QUICK]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("reference : done earlier") and lines[1].startswith("train     : done in")
    assert lines[2].startswith("validate  : done in") and lines[3].endswith("validation/summary.json")
    assert _mtimes(run / "reference" / "chunks") == chunks

    manifest = _manifest(run)
    assert manifest["sizes"] == "quick" and list(manifest["stages"]) == list(STAGES)
    for name, record in manifest["stages"].items():
        assert record["status"] == "done" and record["calls"] == 1 and record["seconds"] > 0, name
        assert record["settings"] and record["outputs"] and record["note"] == "", name
    assert manifest["stages"]["reference"]["settings"]["n_trajectories"] == 2
    assert manifest["stages"]["train"]["settings"]["epochs"] == 2
    assert manifest["stages"]["validate"]["settings"]["replicas"] == 2

    model = load_model(run / manifest["stages"]["train"]["outputs"]["model"])
    assert set(model.config["type_map"]) == CLN025_TYPES
    summary = json.loads((run / manifest["stages"]["validate"]["outputs"]["summary"]).read_text())
    assert summary["temperature_K"] == 350.0 and summary["md"]["steps"] == 20
    assert summary["starts"]["folded"] + summary["starts"]["unfolded"] == 2
    result = summary["runs"]["reference-fp32"]
    assert result["engine"] == "reference fp32 on cpu" and result["frames_compared"] == 2 * 5
    assert set(result["folded_fraction"]) == {"reference", "model"} and result["sampling_note"]
    assert set(result["js_divergence"]) == {"rmsd", "rg", "end_to_end", "rmsd_rg"}
    for name in result["files"]:
        assert (run / "validation" / name).stat().st_size > 0, name

    assert main([str(run), *QUICK]) == 0
    assert capsys.readouterr().out.count("done earlier") == 3
    assert _manifest(run)["stages"] == manifest["stages"]

    shutil.rmtree(run / "validation")  # a stage done whose folder is gone runs again
    assert main([str(run), "--stage", "validate", *QUICK]) == 0
    assert capsys.readouterr().out.startswith("validate  : done in")
    assert _manifest(run)["stages"]["validate"]["calls"] == 2

    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts benchmarks/ on it
    bench = benchmark_script("cln025_validation")
    results = sorted((BENCHMARKS / "results").iterdir())
    assert bench.main([str(run), "--quick", "--platform", "cpu"]) == 0
    assert "no results written" in capsys.readouterr().out and sorted((BENCHMARKS / "results").iterdir()) == results
    row, = bench.records(summary)
    assert row["run"] == "reference-fp32" and row["folded_model"] == result["folded_fraction"]["model"]
    assert "Stage times: reference" in bench.notes(manifest, summary)

    _export_ships_the_model(run, run.parent / "data", monkeypatch, capsys)


def _export_ships_the_model(run, data, monkeypatch, capsys):
    """--export writes what the package ships; shipped.load_model reads it by name."""
    from ase_flashschnet import shipped
    from ase_flashschnet.calculator import FlashSchNetCalculator
    from ase_flashschnet.train.dataset import load_dataset
    from ase_flashschnet.train.validation import most_populated_structure

    assert main([str(run), "--export", str(data)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"wrote {data / 'cln025.pt'}", f"wrote {data / 'cln025.npz'}"]
    monkeypatch.setattr(shipped, "_DATA", data)
    assert "cln025" in shipped.names()
    model, trained = shipped.load_model("cln025"), load_model(run / "train" / "model.pt")
    structure = shipped.default_structure("cln025")
    dataset = load_dataset(run / "reference" / "dataset.npz")
    assert list(structure.numbers) == list(dataset.types) and set(structure.get_masses()) == {110.0}
    assert np.allclose(structure.positions, most_populated_structure(dataset.positions))
    positions, trajectory, temperature_K = shipped.reference_frames("cln025")
    assert np.array_equal(positions, dataset.positions) and np.array_equal(trajectory, dataset.trajectory)
    assert temperature_K == dataset.temperature_K
    with pytest.raises(KeyError, match="no trained shipped model 'cg-demo'"):
        shipped.reference_frames("cg-demo")
    for ours, theirs in zip(model.state_dict().values(), trained.state_dict().values()):
        assert torch.equal(ours, theirs.float())
    by_name, by_object = structure.copy(), structure.copy()
    by_name.calc = FlashSchNetCalculator(model="cln025", device="cpu")
    by_object.calc = FlashSchNetCalculator(model=trained.float(), device="cpu")
    assert np.isfinite(by_name.get_forces()).all()
    assert np.array_equal(by_name.get_forces(), by_object.get_forces())
    assert by_name.get_potential_energy() == by_object.get_potential_energy()


def test_a_stage_stopped_at_its_time_limit_goes_on_in_the_next_call(run, capsys):
    assert main([str(run), "--stage", "train", "--time-limit", "1e-9", *QUICK]) == 1
    out = capsys.readouterr().out
    assert "train     : partial" in out and "run the same command again to go on" in out
    train = _manifest(run)["stages"]["train"]
    assert train["status"] == "partial" and train["outputs"]["epochs_run"] == 1

    assert main([str(run), "--stage", "validate", *QUICK]) == 2
    assert "needs the train stage, which is partial" in capsys.readouterr().err
    assert main([str(run), "--stage", "train", *QUICK]) == 0
    train = _manifest(run)["stages"]["train"]
    assert train["status"] == "done" and train["calls"] == 2 and train["outputs"]["epochs_run"] == 2

    assert main([str(run), "--time-limit", "1e-9", *QUICK]) == 1  # one MD segment of two
    validate = _manifest(run)["stages"]["validate"]
    assert validate["status"] == "partial" and validate["note"].endswith("reference-fp32 1 of 2")
    assert main([str(run), *QUICK]) == 0
    validate = _manifest(run)["stages"]["validate"]
    assert validate["status"] == "done" and validate["calls"] == 2
    summary = json.loads((run / "validation" / "summary.json").read_text())
    assert summary["runs"]["reference-fp32"]["frames_compared"] == 2 * 5


def test_export_refuses_a_run_not_validated(run, tmp_path, capsys):
    assert main([str(run), "--export", str(tmp_path / "data")]) == 2
    assert "stage(s) train, validate not done; a model is exported after its validation" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_missing_inputs_name_the_stage_to_run_first(run, tmp_path, capsys):
    assert main([str(run), "--stage", "validate", *QUICK]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flashschnet-cln025: error: stage validate needs") and "run --stage train first" in err
    assert main([str(run), "--stage", "train", "--platform", "cpu"]) == 2
    assert "holds a run of quick sizes, this call asks for full sizes" in capsys.readouterr().err


def test_a_stage_without_its_input_stops_before_writing(tmp_path, capsys):
    assert main([str(tmp_path / "new"), "--stage", "train", *QUICK]) == 2
    assert "reference/dataset.npz, which is not there: run --stage reference first" in capsys.readouterr().err
    assert main([str(tmp_path / "new"), "--time-limit", "-1", *QUICK]) == 2
    assert "--time-limit must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_replicas_start_in_both_basins():
    rng = np.random.default_rng(0)
    folded = rng.normal(size=(10, 3)) * 3.0
    frames = np.stack([folded + rng.normal(scale=0.1, size=folded.shape) for _ in range(6)]
                      + [folded * 2.0 for _ in range(4)])
    chosen, n_folded = starting_frames(frames, folded, replicas=5)
    assert n_folded == 2 and chosen.tolist() == [0, 5, 6, 8, 9]
    chosen, n_folded = starting_frames(frames[:6], folded, replicas=3)
    assert n_folded == 3 and chosen.tolist() == [0, 2, 5]


def test_validation_md_segments_end_on_frames():
    assert ValidationMD(replicas=2, steps=20, segments=2, traj_interval=5, equilibration_steps=0).segment_steps == 10
    with pytest.raises(ValueError, match="multiple of segments x traj_interval"):
        ValidationMD(replicas=2, steps=20, segments=3, traj_interval=5, equilibration_steps=0)
    with pytest.raises(ValueError, match="equilibration_steps must lie in"):
        ValidationMD(replicas=2, steps=20, segments=2, traj_interval=5, equilibration_steps=20)


def test_the_command_is_installed(console_scripts):
    assert console_scripts["flashschnet-cln025"] == "ase_flashschnet.train.cln025_cli:main"


def test_a_cpu_validates_with_fewer_replicas_for_less_time():
    from ase_flashschnet.train.cln025 import FULL

    md = FULL.validation_md("cpu")
    assert md is FULL.cpu_md and (md.replicas, md.steps) == (16, 50_000)
    assert md.replicas * md.steps * 10 < FULL.md.replicas * FULL.md.steps
