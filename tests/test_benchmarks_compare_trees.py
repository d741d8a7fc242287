"""benchmarks/compare_trees.py: the before/after table of two trees' result sets."""
import json
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "compare_trees.py"


def _write(log_dir, stem, label, gpu, records):
    meta = {"gpu": gpu, "date": "2026-12-07", "versions": {}}
    (log_dir / f"compare_{stem}_{label}.json").write_text(json.dumps({"meta": meta, "records": records}))


def _scf(seconds):
    return [{"case": "vitc-def2-tzvp", "task": "warm-up", "fusionrcg_s": 3 * seconds, "max_abs_diff": None},
            {"case": "vitc-def2-tzvp", "task": "J+K", "fusionrcg_s": seconds, "max_abs_diff": 1e-11}]


def _run(log_dir, results):
    return subprocess.run([sys.executable, str(SCRIPT), str(log_dir), "--results", str(results)],
                          capture_output=True, text=True)


def test_pairs_each_case_of_the_two_trees_with_their_ratio(tmp_path):
    _write(tmp_path, "scf", "before", "H100", _scf(0.20))
    _write(tmp_path, "scf", "after", "H100", _scf(0.21))
    _write(tmp_path, "schnet", "before", "H100", [{"replicas": 64, "method": "fused bf16", "ms_per_eval": 4.0}])
    _write(tmp_path, "schnet", "after", "H100", [{"replicas": 64, "method": "fused bf16", "ms_per_eval": 3.8}])
    done = _run(tmp_path, tmp_path / "results")
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "results" / "compare_trees.json").read_text())["records"]
    ratio = {r["case"]: r["after / before"] for r in rows}
    assert set(ratio) == {"vitc-def2-tzvp / warm-up", "vitc-def2-tzvp / J+K", "64 / fused bf16"}
    assert abs(ratio["vitc-def2-tzvp / J+K"] - 1.05) < 1e-12 and abs(ratio["64 / fused bf16"] - 0.95) < 1e-12
    assert "0.950 to 1.050" in (tmp_path / "results" / "compare_trees.md").read_text()


def test_refuses_runs_from_different_gpus_or_nothing_to_pair(tmp_path):
    assert _run(tmp_path, tmp_path / "results").returncode == 1
    _write(tmp_path, "scf", "before", "H100", _scf(0.2))
    _write(tmp_path, "scf", "after", "H200", _scf(0.2))
    done = _run(tmp_path, tmp_path / "results")
    assert done.returncode == 1 and "different GPUs" in done.stderr
    assert not (tmp_path / "results").exists()
