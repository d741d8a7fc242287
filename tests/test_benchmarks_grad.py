"""benchmarks/grad_vs_gpu4pyscf.py without a GPU: its options, the dry run and
the refusal to run."""
import pytest

from gpucore import gpu_available


@pytest.fixture(scope="module")
def bench(benchmark_script):
    return benchmark_script("grad_vs_gpu4pyscf")


def test_cases_and_unknown_ones(bench):
    assert [c.name for c in bench.parse_args(["--quick"]).selected] == ["vitc-def2-tzvp"]
    assert {"vitc-def2-qzvp", "water-cc-pv5z"} <= {c.name for c in bench.parse_args([]).selected}
    with pytest.raises(SystemExit):
        bench.parse_args(["--cases", "benzene-sto3g"])


def test_dry_run_says_which_cases_have_a_baseline(bench, capsys):
    """The cc-pV5Z case (h shells) is FusionRCG's alone: GPU4PySCF's gradients refuse it."""
    bench.main(["--dry-run", "--cases", "vitc-def2-tzvp,water-cc-pv5z"])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert lines["vitc-def2-tzvp"].endswith("vs GPU4PySCF") and "max l 3" in lines["vitc-def2-tzvp"]
    assert lines["water-cc-pv5z"].endswith("FusionRCG only") and "max l 5" in lines["water-cc-pv5z"]


@pytest.mark.skipif(gpu_available(), reason="needs a machine without a usable GPU")
def test_without_a_gpu_it_says_so(bench, refuses_without_gpu):
    refuses_without_gpu(bench.main, ["--quick"])
