"""benchmarks/scf_vs_gpu4pyscf.py without a GPU: its options and the dry run."""
import pathlib

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench(benchmark_script):
    return benchmark_script("scf_vs_gpu4pyscf")


def test_pure_functional_and_unknown_methods(bench):
    assert bench.parse_args(["--scf-methods", "PBE,RHF"]).scf_methods == ["PBE", "RHF"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--scf-methods", "MP2"])


def test_dry_run_says_where_joltqc_runs(bench, capsys):
    """JoltQC's kernels stop at g: the cc-pV5Z case (h shells) runs without it."""
    bench.main(["--dry-run", "--cases", "vitc-def2-tzvp,water-cc-pv5z", "--scf-methods", "PBE", "--joltqc"])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert "PBE" in lines["vitc-def2-tzvp"] and lines["vitc-def2-tzvp"].endswith("and JoltQC")
    assert lines["water-cc-pv5z"].endswith("JoltQC cannot (l > 4)")
