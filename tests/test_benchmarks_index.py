"""benchmarks/: every result set comes from a script here, the index shows them all,
and every geometry the benchmarks and tests name ships in the repository."""
import json
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
RESULTS = BENCH / "results"
MOLECULES = BENCH / "molecules"
XYZ = re.compile(r"[\w-]+/[\w.-]+\.xyz")


@pytest.fixture(scope="module")
def common(benchmark_script):
    return benchmark_script("_common")


def _scripts():
    return {p.stem: p.read_text() for p in BENCH.glob("*.py") if not p.stem.startswith("_")}


def test_every_result_set_has_a_script_that_names_it(common):
    scripts = _scripts()
    stems = sorted({p.name.split(".")[0] for p in RESULTS.iterdir() if p.is_file()})
    assert stems
    for stem in stems:
        owner = common.script_of(stem)
        assert owner in scripts, f"results/{stem}.*: no lasting benchmark writes it"
        assert re.search(rf"\b{re.escape(stem)}\b", scripts[owner]), \
            f"results/{stem}.*: benchmarks/{owner}.py does not name it (its docstring lists the runs)"
        assert (RESULTS / f"{stem}.json").is_file() and (RESULTS / f"{stem}.md").is_file(), stem


def test_every_lasting_benchmark_is_a_script(common):
    assert set(common.BENCHMARKS) == set(_scripts())


def test_index_is_current(common):
    assert (BENCH / "README.md").read_text() == common.index_text(), \
        "benchmarks/README.md is stale: run python -c 'import _common; _common.update_index()' in benchmarks/"


def test_molecules_ship_in_the_repository(common, benchmark_script, monkeypatch):
    monkeypatch.delenv(common.MOLECULES_ENV, raising=False)
    assert common.molecules_dir() == MOLECULES
    named = {"organic/020_Vitamin_C.xyz"}      # tests/fusionrcg/test_gpu_jk.py
    for path in BENCH.glob("*.py"):
        named |= set(XYZ.findall(path.read_text()))
    named |= {case.xyz for case in benchmark_script("scf_vs_gpu4pyscf").CASES.values()}
    assert "gly/gly30.xyz" in named
    missing = sorted(name for name in named if not (MOLECULES / name).is_file())
    assert not missing, f"not in benchmarks/molecules: {missing}"


def test_a_run_stopped_part_way_says_so(common, tmp_path):
    """write_results marks the notes of a run whose meta says it is not
    complete yet, and leaves a complete run's notes as given."""
    for complete in (False, True):
        meta = {"complete": complete, "versions": {}}
        json_path, md_path = common.write_results("run", [{"a": 1}], meta, notes="Times in s.",
                                                  directory=tmp_path)
        notes = json.loads(json_path.read_text())["notes"]
        assert notes == ("Times in s." if complete else f"Times in s. {common.INCOMPLETE}")
        assert (common.INCOMPLETE in md_path.read_text()) == (not complete)
