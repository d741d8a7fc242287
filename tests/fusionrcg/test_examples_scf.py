"""Runnable surfaces: quickstart, geometry optimisations, notebook, ``python -m pyscf_fusionrcg``,
benchmark dry run."""
import ast
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
#: RHF/STO-3G water at its minimum, Hartree
E_WATER_STO3G_MIN = -74.9659012


def _env(**extra):
    env = dict(os.environ, MPLBACKEND="Agg", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def test_quickstart_runs():
    res = _run("examples/scf_quickstart.py", "--backend", "cpu", "--basis", "sto-3g")
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("dE =") == 3


def test_main_module_runs_the_default_job():
    res = _run("-m", "pyscf_fusionrcg")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PySCF     E =" in res.stdout and "OK" in res.stdout


@pytest.mark.parametrize("solver,package", [("geometric", "geometric"), ("berny", "berny")])
def test_geometry_optimisation_runs(solver, package):
    """PySCF's optimiser through the plugin's host path finds water's RHF/STO-3G minimum."""
    pytest.importorskip(package)
    res = _run("examples/geometry_optimisation.py", "--backend", "cpu", "--basis", "sto-3g",
               "--solver", solver)
    assert res.returncode == 0, res.stderr
    energy = float(re.search(r"converged in \d+ gradient evaluations: E = (\S+)", res.stdout).group(1))
    assert abs(energy - E_WATER_STO3G_MIN) < 1e-6, res.stdout


def test_ase_optimisation_runs():
    res = _run("examples/ase_optimisation.py", "--backend", "cpu", "--basis", "sto-3g", "--fmax", "0.05")
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"^converged in \d+ BFGS steps", res.stdout, re.M), res.stdout


@pytest.mark.parametrize("script", [("-m", "pyscf_fusionrcg"), ("examples/scf_quickstart.py",),
                                    ("examples/geometry_optimisation.py",),
                                    ("examples/ase_optimisation.py",)])
def test_backend_help_says_what_the_plugin_does(script):
    """--help says what fusionrcg(backend=...) does (scf._resolve_backend):
    'auto' is the GPU, else the SCF object's own PySCF J/K; 'cpu' the host
    path, a slow reference; the scripts' docstrings say the same."""
    res = _run(*script, "--help")
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())     # argparse wraps the help
    assert "auto: the GPU when one is usable, else the SCF object's own PySCF J/K" in text, text
    assert "cpu: FusionRCG's host path, a slow reference for checks" in text, text
    path = REPO / (script[0] if len(script) == 1 else "pyscf_fusionrcg/__main__.py")
    doc = " ".join(ast.get_docstring(ast.parse(path.read_text())).split())
    assert "own PySCF J/K" in doc and "slow reference" in doc, doc
    assert "host path otherwise" not in doc and "host (CPU) path otherwise" not in doc, doc


def test_main_module_auto_without_gpu_leaves_jk_to_pyscf(monkeypatch, capsys):
    """Without a GPU, --backend auto (the default) runs PySCF's own J/K, as
    fusionrcg(backend='auto') does, and says that this compares PySCF with itself."""
    from gpucore import gpu_available

    from pyscf_fusionrcg import jk
    from pyscf_fusionrcg.__main__ import main
    if gpu_available():
        pytest.skip("this machine has a GPU")

    def fusionrcg_jk(*args, **kwargs):
        raise AssertionError("FusionRCG's J/K ran without a GPU under backend='auto'")
    monkeypatch.setattr(jk, "get_jk", fusionrcg_jk)
    assert main(["--basis", "sto-3g"]) == 0
    out = capsys.readouterr().out
    assert "FusionRCG backend = auto" in out and "both runs below are PySCF's own" in out, out


def test_main_module_fails_when_energies_differ(capsys):
    from pyscf_fusionrcg.__main__ import main
    assert main(["--basis", "sto-3g", "--backend", "cpu", "--tol", "-1"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_main_module_reads_xyz_and_runs_uhf(tmp_path, capsys):
    from pyscf_fusionrcg.__main__ import main
    xyz = tmp_path / "oh.xyz"
    xyz.write_text("2\nOH radical\nO 0 0 0\nH 0 0 0.97\n")
    assert main(["--mol", str(xyz), "--basis", "sto-3g", "--spin", "1", "--backend", "cpu"]) == 0
    assert "UHF" in capsys.readouterr().out


def test_main_module_names_a_missing_mol_file(tmp_path, capsys):
    """A --mol that looks like a file but is none is a usage error (status 2),
    not an atom symbol for PySCF; atoms given inline still work."""
    from pyscf_fusionrcg.__main__ import main
    for missing in ("missing.xyz", str(tmp_path / "water")):
        with pytest.raises(SystemExit) as exc:
            main(["--mol", missing])
        assert exc.value.code == 2
        assert f"--mol {missing}: no such file" in capsys.readouterr().err
    assert main(["--mol", "H 0 0 0; H 0 0 0.74", "--basis", "sto-3g", "--backend", "cpu"]) == 0


def test_benchmark_dry_run_lists_cases(tmp_path):
    res = _run("benchmarks/scf_vs_gpu4pyscf.py", "--dry-run")
    assert res.returncode == 0, res.stderr
    for name in ("vitc-def2-tzvp", "tamoxifen-def2-tzvp", "water20-def2-qzvp",
                 "water10-cc-pv5z", "gly30-def2-tzvp"):
        assert name in res.stdout
    quick = _run("benchmarks/scf_vs_gpu4pyscf.py", "--dry-run", "--quick",
                 "--molecules-dir", "/nonexistent")
    assert quick.returncode == 0 and "missing" in quick.stdout
    assert "tamoxifen" not in quick.stdout
    water = tmp_path / "water_clusters" / "002.xyz"
    water.parent.mkdir()
    water.write_text("3\n\nO 0 0 0.117\nH 0 0.757 -0.469\nH 0 -0.757 -0.469\n")
    only_jk = _run("benchmarks/scf_vs_gpu4pyscf.py", "--dry-run", "--cases", "water-cc-pv5z",
                   "--builds", "J+K", "--molecules-dir", str(tmp_path))
    assert only_jk.returncode == 0, only_jk.stderr
    line = next(l for l in only_jk.stdout.splitlines() if l.startswith("water-cc-pv5z"))
    assert line.rstrip().endswith("J+K, vs GPU4PySCF, converged density"), line
    guess = _run("benchmarks/scf_vs_gpu4pyscf.py", "--dry-run", "--cases", "water-cc-pv5z",
                 "--density", "guess", "--molecules-dir", str(tmp_path))
    assert guess.returncode == 0 and "guess density" in guess.stdout, guess.stderr
    bad = _run("benchmarks/scf_vs_gpu4pyscf.py", "--dry-run", "--builds", "J+X")
    assert bad.returncode != 0 and "unknown build(s) ['J+X']" in bad.stderr


def test_benchmark_plot_from_records(tmp_path, benchmark_script):
    bench = benchmark_script("scf_vs_gpu4pyscf")
    records = [dict(case=c, task=t, fusionrcg_s=1.0, gpu4pyscf_s=s, speedup=s)
               for c, s in (("a", 2.0), ("b", 0.5)) for t in ("J+K", "J", "K", "RHF")]
    records.append(dict(case="c", task="J+K", fusionrcg_s=1.0))     # no baseline
    bench.plot_speedups(records, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_breakdown_sums_the_classes_per_highest_l(benchmark_script):
    """rcg_jk_breakdown's summary rows: every class counted once, under its
    highest angular momentum, the shares of the build's total."""
    bench = benchmark_script("rcg_jk_breakdown")
    profile = {"hfgf": dict(quartets=10, eri_ms=7.0, digest_ms=1.0, fused_ms=0.0),
               "hsss": dict(quartets=5, eri_ms=0.0, digest_ms=0.0, fused_ms=2.0),
               "psss": dict(quartets=100, eri_ms=3.0, digest_ms=1.0, fused_ms=0.0),
               "fdfp": dict(quartets=20, eri_ms=5.0, digest_ms=1.0, fused_ms=0.0)}
    rows = bench.by_highest_l(profile, total_ms=25.0)
    assert [r["part"] for r in rows] == ["classes with highest l = 1 (p)", "classes with highest l = 3 (f)",
                                         "classes with highest l = 5 (h)"]
    h = rows[-1]
    assert (h["classes"], h["quartets"], h["eri_ms"], h["digest_ms"], h["fused_ms"], h["ms"]) == (2, 15, 7.0, 1.0, 2.0, 10.0)
    assert h["share"] == 0.4 and sum(r["ms"] for r in rows) == 20.0   # the rest is not in a class

