"""benchmarks/scaling.py without a GPU: its cases, the projection from a
breakdown (the model's arithmetic, its inputs, its refusals) and the refusal
to measure."""
import json
import pathlib

import pytest

from gpucore import gpu_available

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench(benchmark_script):
    return benchmark_script("scaling")


def _breakdown(bench, path, kernels=(600.0, 100.0, 300.0), host=50.0, nao=500):
    """A breakdown result of one build: the three kernel parts and the host work."""
    records = [{"part": n, "ms": ms} for n, ms in zip(bench.KERNEL_PARTS, kernels)]
    records.append({"part": bench.HOST_PART, "ms": host})
    records.append({"part": bench.KERNEL_PARTS[0], "ms": 1e6})     # a second mode's row: not read
    meta = {"molecule": "mol", "basis": "basis", "gpu": "Some GPU", "nao": nao, "density": "guess"}
    path.write_text(json.dumps({"name": path.stem, "meta": meta, "records": records}))
    return path


def test_cases(bench):
    assert [c.name for c in bench.parse_args(["--quick"]).selected] == ["vitc-def2-tzvp"]
    names = {c.name for c in bench.parse_args([]).selected}
    assert {"water20-def2-qzvp", "gly30-def2-tzvp", "vitc-def2-qzvp"} <= names
    with pytest.raises(SystemExit):
        bench.parse_args(["--cases", "benzene"])


def test_breakdown_inputs_take_the_first_mode(bench, tmp_path):
    inputs = bench.breakdown_inputs(_breakdown(bench, tmp_path / "b.json"))
    assert inputs["kernels_ms"] == 1000.0 and inputs["host_ms"] == 50.0 and inputs["nao"] == 500
    assert inputs["gpu"] == "Some GPU" and inputs["case"] == "mol / basis"


def test_a_file_without_the_parts_is_refused(bench, tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"meta": {"nao": 3}, "records": [{"part": "something", "ms": 1.0}]}))
    with pytest.raises(ValueError, match="not a J\\+K breakdown"):
        bench.breakdown_inputs(path)


def test_projection_is_the_model(bench, tmp_path):
    """t_n = K/n + R (repeated) or R/n (split) + the sums; one GPU is efficiency 1."""
    args = bench.parse_args(["--project"])
    inputs = bench.breakdown_inputs(_breakdown(bench, tmp_path / "b.json"))
    rows = {(r["design"], r["gpus"]): r for r in bench.project(inputs, args, counts=(1, 4, 16))}
    for design, _, _ in bench.DESIGNS:
        assert rows[design, 1]["efficiency"] == pytest.approx(1.0)
        assert rows[design, 1]["reduction_ms"] == 0.0
    nbytes = 2 * 500 * 500 * 8
    built = rows["host work repeated", 4]
    assert built["reduction_ms"] == pytest.approx(3 * nbytes / (args.peer_gbs * 1e6))
    assert built["build_ms"] == pytest.approx(1000.0 / 4 + 50.0 + built["reduction_ms"])
    assert built["efficiency"] == pytest.approx(1050.0 / (4 * built["build_ms"]))
    split = rows["host work split", 4]
    assert split["host_ms"] == pytest.approx(12.5) and split["efficiency"] > built["efficiency"]
    ring = rows["host work split, ring sum", 4]
    assert ring["reduction_ms"] == pytest.approx(1.5 * nbytes / (args.peer_gbs * 1e6))
    # 16 GPUs are two nodes of 8: a host copy each way and the network's ring join the sum
    assert rows["host work repeated", 16]["reduction_ms"] > 7 * nbytes / (args.peer_gbs * 1e6)


def test_projection_of_the_shipped_breakdowns(bench, tmp_path):
    """The default inputs are results in the repository; the projection writes its table."""
    args = bench.parse_args(["--project", "--name", "projection", "--results-dir", str(tmp_path)])
    for stem in bench.BREAKDOWNS:
        assert (BENCH / "results" / f"{stem}.json").is_file()
    assert bench.run_projection(args) == 0
    data = json.loads((tmp_path / "projection.json").read_text())
    assert {r["gpus"] for r in data["records"]} == set(bench.PROJECTED_PARTS)
    assert "projection is arithmetic" in data["meta"]["gpu"]


def test_projection_names_a_missing_breakdown(bench, capsys):
    assert bench.main(["--project", "--breakdowns", "no_such_breakdown"]) == 2
    assert "no_such_breakdown" in capsys.readouterr().err


def test_dry_run(bench, capsys):
    assert bench.main(["--dry-run", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "vitc-def2-tzvp" in out and "ok" in out


@pytest.mark.skipif(gpu_available(), reason="needs a machine without a usable GPU")
def test_without_a_gpu_it_says_so(bench, refuses_without_gpu):
    refuses_without_gpu(bench.main, ["--quick"])


def test_one_gpu_is_refused_with_the_way_out(bench, monkeypatch, capsys):
    """Scaling needs two GPUs; with one the measured mode says so, points to
    --project, and writes nothing."""
    class OneGPU:
        class cuda:
            class runtime:
                @staticmethod
                def getDeviceCount():
                    return 1
    monkeypatch.setattr(bench, "gpu_or_none", lambda *names: OneGPU)
    results = sorted((BENCH / "results").iterdir())
    assert bench.main(["--quick"]) == 2
    err = capsys.readouterr().err
    assert "has 1 GPU" in err and "needs 2 or more" in err and "--project" in err
    assert sorted((BENCH / "results").iterdir()) == results
