"""FusionRCG J/K against PySCF's direct J/K (1e-9), with the host engine and libcint blocks."""
import numpy as np
import pytest
from pyscf import gto, scf

from pyscf_fusionrcg.jk import JKContext, LibcintBlocks, cpu_engine, get_jk
from pyscf_fusionrcg.screening import schwarz_bounds, to_host

H2O = "O 0 0 0.117; H 0 0.757 -0.469; H 0 -0.757 -0.469"
NH3 = "N 0 0 0.116; H 0 0.939 -0.271; H 0.813 -0.470 -0.271; H -0.813 -0.470 -0.271"
ATOL = 1e-9

MOLS = {
    "h2o-sto3g": dict(atom=H2O, basis="sto-3g"),
    "nh3-631gs": dict(atom=NH3, basis="6-31g*"),
    "h2o-def2svp": dict(atom=H2O, basis="def2-svp"),
    "n2-ccpvtz": dict(atom="N 0 0 0; N 0 0 1.1", basis="cc-pvtz"),   # f, nctr = 2
    "h2o-631gs-cart": dict(atom=H2O, basis="6-31g*", cart=True),
    "h2o-ghosts": dict(atom=H2O + "; ghost-O 0 0 2.6; X-H 0 0.8 3.1", basis="6-31g"),
}
ENGINES = {"libcint": LibcintBlocks, "host": cpu_engine}


def _mol(name):
    return gto.M(verbose=0, **MOLS[name])


def _dms(mol, nset, hermi, seed=7):
    rng = np.random.default_rng(seed)
    dm = rng.standard_normal((nset, mol.nao, mol.nao)) * 0.3
    if hermi == 1:
        dm = dm + dm.transpose(0, 2, 1)
    return dm[0] if nset == 1 else dm


def _check(mol, dm, hermi=1, omega=None, engine="host", with_j=True, with_k=True):
    om = mol.omega if omega is None else omega
    eng = ENGINES[engine](mol, om)
    vj, vk = get_jk(mol, dm, hermi, with_j, with_k, omega, engine=eng)
    rj, rk = scf.hf.get_jk(mol, dm, hermi, omega=omega)
    if with_j:
        assert vj.shape == np.shape(dm)
        np.testing.assert_allclose(vj, rj, atol=ATOL, rtol=0)
    else:
        assert vj is None
    if with_k:
        assert vk.shape == np.shape(dm)
        np.testing.assert_allclose(vk, rk, atol=ATOL, rtol=0)
    else:
        assert vk is None


# The host engine's first f-shell build compiles every class up to (ff|ff): slow.
@pytest.mark.parametrize("name,engine", [
    pytest.param(n, e, marks=pytest.mark.slow if (n, e) == ("n2-ccpvtz", "host") else ())
    for n in MOLS for e in ENGINES])
def test_jk_matches_pyscf(name, engine):
    mol = _mol(name)
    _check(mol, _dms(mol, 1, 1), engine=engine)


@pytest.mark.parametrize("engine", ENGINES)
def test_stacked_uhf_densities(engine):
    mol = _mol("nh3-631gs")
    _check(mol, _dms(mol, 2, 1), engine=engine)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("nset", [1, 3])
def test_non_hermitian_densities(nset, engine):
    mol = _mol("h2o-def2svp")
    _check(mol, _dms(mol, nset, 0), hermi=0, engine=engine)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("omega", [0.4, -0.4])
@pytest.mark.parametrize("name", ["h2o-def2svp", "h2o-631gs-cart"])
def test_range_separated(name, omega, engine):
    mol = _mol(name)
    _check(mol, _dms(mol, 2, 1), omega=omega, engine=engine)


def test_mol_omega_is_the_default_operator():
    mol = _mol("h2o-sto3g")
    mol.omega = 0.5
    _check(mol, _dms(mol, 1, 1))


@pytest.mark.parametrize("hermi", [1, 0])
@pytest.mark.parametrize("only", ["j", "k"])
def test_j_only_and_k_only(only, hermi):
    mol = _mol("nh3-631gs")
    _check(mol, _dms(mol, 2, hermi), hermi=hermi, with_j=only == "j", with_k=only == "k")


def test_complex_density_is_linear_in_real_and_imaginary_parts():
    mol = _mol("h2o-sto3g")
    re, im = _dms(mol, 1, 0, 1), _dms(mol, 1, 0, 2)
    vj, vk = get_jk(mol, re + 1j * im, hermi=0)
    for v, r, i in zip((vj, vk), scf.hf.get_jk(mol, re, 0), scf.hf.get_jk(mol, im, 0)):
        np.testing.assert_allclose(v, r + 1j * i, atol=ATOL)


def test_cached_schwarz_bounds_are_reused():
    mol = _mol("h2o-def2svp")
    dm = _dms(mol, 1, 1)
    q = schwarz_bounds(mol)
    np.testing.assert_allclose(get_jk(mol, dm, q_cond=q)[1], get_jk(mol, dm)[1], atol=1e-14)


def test_scf_density_matches_mf_get_jk():
    mol = _mol("h2o-def2svp")
    mf = scf.RHF(mol).run()
    dm = mf.make_rdm1()
    for got, ref in zip(get_jk(mol, dm), mf.get_jk(mol, dm)):
        np.testing.assert_allclose(got, ref, atol=ATOL)


def test_a_density_of_the_wrong_shape_is_refused_clearly():
    mol = _mol("h2o-sto3g")
    for bad in (np.zeros((3, 3)), np.zeros((mol.nao, mol.nao + 1)), np.zeros(mol.nao),
                np.zeros((1, 2, mol.nao, mol.nao))):
        with pytest.raises(ValueError, match=f"nao = {mol.nao} .*not of shape"):
            get_jk(mol, bad)


def test_a_list_of_densities_is_stacked():
    mol = _mol("h2o-sto3g")
    dms = _dms(mol, 2, 1)
    for got, want in zip(get_jk(mol, list(dms)), get_jk(mol, dms)):
        np.testing.assert_array_equal(got, want)


def test_a_context_keeps_its_bounds_and_engine_for_its_molecule_and_operator():
    mol = _mol("h2o-def2svp")
    dm = _dms(mol, 1, 1)
    context = JKContext(mol, omega=0.3)
    vj, vk = context.get_jk(dm)
    engine, q_cond = context.engine, context.q_cond
    vj2, vk2 = context.get_jk(0.5 * dm)
    assert context.engine is engine and context.q_cond is q_cond
    np.testing.assert_allclose(vk2, 0.5 * vk, atol=1e-12)
    rj, rk = scf.hf.get_jk(mol, dm, omega=0.3)
    np.testing.assert_allclose(vj, rj, atol=ATOL)
    np.testing.assert_allclose(vk, rk, atol=ATOL)
    assert context.serves(mol, 0.3) and not context.serves(mol, 0.0)
    moved = mol.set_geom_(mol.atom_coords() + 0.01, unit="Bohr", inplace=False)
    assert not context.serves(moved, 0.3)


def test_unknown_backend_is_refused():
    mol = _mol("h2o-sto3g")
    with pytest.raises(ValueError, match="backend"):
        get_jk(mol, _dms(mol, 1, 1), backend="tpu")


def test_only_a_screened_plan_can_be_restricted():
    """JKPlan.restricted needs the threshold and Schwarz bounds JKPlan.screen
    keeps: a plan of given tasks says so (checked before any GPU work)."""
    from pyscf_fusionrcg.gpu_jk import JKPlan
    plan = JKPlan.__new__(JKPlan)
    plan.tol = plan.q32 = None
    with pytest.raises(ValueError, match='only a plan made by JKPlan.screen can be restricted'):
        plan.restricted(np.zeros((2, 2)))


def test_gpu_backend_without_gpu_raises():
    from gpucore import GPUUnavailableError, gpu_available
    if gpu_available():
        pytest.skip("a GPU is present")
    mol = _mol("h2o-sto3g")
    with pytest.raises(GPUUnavailableError, match="GPU"):
        get_jk(mol, _dms(mol, 1, 1), backend="gpu")


@pytest.mark.gpu
@pytest.mark.parametrize("hermi", [1, 0])
@pytest.mark.parametrize("omega", [0.0, 0.3, -0.3])
def test_gpu_backend_matches_pyscf(omega, hermi):
    mol = _mol("n2-ccpvtz")
    dm = _dms(mol, 2, hermi)
    vj, vk = get_jk(mol, dm, hermi, omega=omega, backend="gpu")
    rj, rk = scf.hf.get_jk(mol, dm, hermi, omega=omega)
    np.testing.assert_allclose(to_host(vj), rj, atol=ATOL)
    np.testing.assert_allclose(to_host(vk), rk, atol=ATOL)


@pytest.mark.parametrize("progress", ["1", "0"])
def test_kernel_preparation_shows_progress_unless_turned_off(monkeypatch, capsys, progress):
    """gpu_jk prepares a plan's kernels on a few threads behind a progress bar
    (stderr), off with Options(progress=False) ($FUSIONRCG_PROGRESS=0); every
    shape gets its kernel.
    Fakes stand in for the device and the compiler."""
    import contextlib
    from types import SimpleNamespace

    from pyscf_fusionrcg import gpu_jk, launch
    fake_cupy = SimpleNamespace(cuda=SimpleNamespace(Device=contextlib.nullcontext))
    monkeypatch.setattr(launch, "_cupy", lambda: fake_cupy)
    from pyscf_fusionrcg.options import from_env
    monkeypatch.setattr(launch, "jk_kernel", lambda ls, cart, omega, nctr, options: (ls, nctr, options.tier))
    monkeypatch.setattr(gpu_jk, "PROGRESS_DELAY_S", 0.0)
    monkeypatch.setenv("FUSIONRCG_PROGRESS", progress)
    shapes = {((l, 0, 0, 0), (1, 1, 1, 1)) for l in range(5)} | {((2, 2, 1, 0), (2, 1, 1, 1))}
    kernels = gpu_jk._class_kernels(shapes, False, 0.0, from_env(tier="warp"))
    assert kernels == {s: (s[0], s[1], "warp") for s in shapes}
    err = capsys.readouterr().err
    assert ("FusionRCG kernels" in err and "/6 " in err) == (progress == "1"), err


@pytest.mark.parametrize("progress", [True, False])
def test_host_build_shows_progress_unless_turned_off(monkeypatch, capsys, progress):
    """The host path's digestion shows a progress bar over the quartets (stderr)
    once a build takes PROGRESS_DELAY_S, off with Options(progress=False),
    also for a complex density (built from two real ones)."""
    from pyscf_fusionrcg import jdigest
    from pyscf_fusionrcg.options import Options
    monkeypatch.setattr(jdigest, "PROGRESS_DELAY_S", 0.0)
    mol = _mol("h2o-sto3g")
    dm = _dms(mol, 1, 1)
    for d in (dm, dm + 0.1j * dm):
        get_jk(mol, d, options=Options(backend="cpu", progress=progress))
        err = capsys.readouterr().err
        assert ("FusionRCG host J/K" in err and "quartet" in err) == progress, err


def test_host_path_says_once_what_it_is_for(monkeypatch):
    """The first host engine of a process that may speak (PySCF's default
    verbosity) says that the path is a slow reference for checks; a molecule
    at verbose 0 hears nothing and does not use up the message."""
    import io

    from pyscf.lib import logger

    from pyscf_fusionrcg import jk
    monkeypatch.setattr(jk, "_host_path_noted", False)
    quiet = _mol("h2o-sto3g")
    quiet.stdout = io.StringIO()
    cpu_engine(quiet)
    mol = _mol("h2o-sto3g")
    mol.verbose, mol.stdout = logger.NOTE, io.StringIO()
    for omega in (0.0, 0.3):
        cpu_engine(mol, omega)
    cpu_engine(_mol("nh3-631gs"))
    assert quiet.stdout.getvalue() == ""
    said = mol.stdout.getvalue()
    assert said.count("FusionRCG's host path (backend='cpu') is a reference for checks, far slower "
                      "than PySCF's own J/K") == 1, said
