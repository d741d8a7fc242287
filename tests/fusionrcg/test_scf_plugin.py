"""The PySCF plugin: SCF energies equal PySCF's, mixin life cycle, clear refusals.

CPU tests use backend='cpu' (the engine's host path); ``gpu`` tests are skipped
without a GPU by tests/conftest.py, and those on GPU4PySCF objects without it.
"""
import io

import numpy as np
import pytest
from pyscf import dft, gto, scf
from pyscf.lib import logger

from gpucore import GPUUnavailableError, gpu_available
from pyscf_fusionrcg.scf import _FusionRCGMixin, fusionrcg, max_l
from pyscf_fusionrcg.screening import to_host

H2O = "O 0 0 0.117; H 0 0.757 -0.469; H 0 -0.757 -0.469"
NH3 = "N 0 0 0.116; H 0 0.939 -0.271; H 0.813 -0.470 -0.271; H -0.813 -0.470 -0.271"
CH2O = "C 0 0 -0.529; O 0 0 0.677; H 0 0.935 -1.116; H 0 -0.935 -1.116"
E_TOL = 1e-8


def _water(basis="6-31g", **kw):
    return gto.M(atom=H2O, basis=basis, verbose=0, **kw)


def _ks(xc):
    def make(mol):
        mf = (dft.UKS if mol.spin else dft.RKS)(mol, xc=xc)
        mf.grids.atom_grid = (30, 110)
        return mf
    return make


# DFT on STO-3G with a small grid keeps the CPU suite short; the J/K paths are the same.
METHODS = {
    "rhf": (scf.RHF, {}),
    "uhf": (scf.UHF, dict(charge=1, spin=1)),
    "rohf": (scf.ROHF, dict(charge=1, spin=1)),
    "b3lyp": (_ks("b3lyp"), dict(basis="sto-3g")),
    "wb97x": (_ks("wb97x"), dict(basis="sto-3g")),
    "camb3lyp": (_ks("camb3lyp"), dict(basis="sto-3g")),
    "uks-pbe0": (_ks("pbe0"), dict(charge=1, spin=1, basis="sto-3g")),
    "uks-wb97x": (_ks("wb97x"), dict(charge=1, spin=1, basis="sto-3g")),
}


def _energy(mf):
    mf.conv_tol = 1e-10
    e = mf.kernel()
    assert mf.converged
    return e


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m in ("b3lyp", "uks-pbe0") else m
                                    for m in METHODS])
def test_cpu_energy_equals_pyscf(method):
    make, kw = METHODS[method]
    mol = _water(**kw)
    mf = make(mol).apply(fusionrcg, backend="cpu")
    assert isinstance(mf, _FusionRCGMixin)
    assert _energy(mf) == pytest.approx(_energy(make(mol)), abs=E_TOL)


def test_j_then_k_of_one_density_share_one_build(monkeypatch):
    """GPU4PySCF's get_veff asks get_j(ddm) then get_k(ddm): after one such pair,
    get_j builds J and K together and get_k returns that K (scaled by
    GPU4PySCF's RKS factors), and pairing stops when the K goes unused."""
    from pyscf_fusionrcg import scf as plugin
    mol = _water()
    ref = scf.RHF(mol)
    mf = scf.RHF(mol).apply(fusionrcg, backend="cpu")
    builds = []
    real = plugin._jk.JKContext.get_jk

    def counted(context, dm, hermi, with_j, with_k, *args, **kw):
        builds.append((with_j, with_k))
        return real(context, dm, hermi, with_j, with_k, *args, **kw)
    monkeypatch.setattr(plugin._jk.JKContext, "get_jk", counted)
    dm = ref.get_init_guess(key="minao")
    vj_ref, vk_ref = ref.get_jk(mol, dm)

    def cycle(scale, *k_args):
        builds.clear()
        vj = mf.get_j(mol, scale * dm)
        vk = mf.get_k(mol, scale * dm, 1, *k_args)
        return vj, vk, list(builds)

    vj, vk, seen = cycle(1.0)                      # first pair: two builds, then learnt
    assert seen == [(True, False), (False, True)]
    vj, vk, seen = cycle(0.5)
    assert seen == [(True, True)]
    np.testing.assert_allclose(vj, 0.5 * vj_ref, atol=1e-10)
    np.testing.assert_allclose(vk, 0.5 * vk_ref, atol=1e-10)
    vj, vk, seen = cycle(0.25, 0.0, 0.2, 0.2)     # RKS: get_k(mol, dm, hermi, omega, alpha, hyb)
    assert seen == [(True, True)]
    np.testing.assert_allclose(vk, 0.2 * 0.25 * vk_ref, atol=1e-10)

    builds.clear()                                 # a K for another density is built afresh
    mf.get_j(mol, dm)
    np.testing.assert_allclose(mf.get_k(mol, 0.5 * dm), 0.5 * vk_ref, atol=1e-10)
    assert builds == [(True, True), (False, True)]
    builds.clear()                                 # that K built with J went unused: J alone
    mf.get_j(mol, dm)
    mf.get_j(mol, dm)
    assert builds == [(True, False), (True, False)]


def test_ghost_atoms_and_ecp():
    mol = gto.M(atom="Na 0 0 0; H 0 0 1.9; ghost-H 0 0 3.5", basis="lanl2dz",
                ecp={"Na": "lanl2dz"}, verbose=0)
    assert mol.has_ecp()
    assert _energy(scf.RHF(mol).apply(fusionrcg, backend="cpu")) == pytest.approx(
        _energy(scf.RHF(mol)), abs=E_TOL)


def test_rsh_factors_of_gpu4pyscf_get_k():
    """get_k(mol, dm, hermi, omega, lr_factor, sr_factor) as GPU4PySCF's RKS calls it."""
    mol = _water()
    mf = scf.RHF(mol).apply(fusionrcg, backend="cpu")
    ref = scf.RHF(mol)
    dm = ref.get_init_guess()
    k_lr, k_sr, k = (ref.get_k(mol, dm, omega=w) for w in (0.3, -0.3, 0.0))
    for args, expect in [((0.3, 1.0, 0.157), k_lr + 0.157 * k_sr),
                         ((0.3, 0.0, 0.25), 0.25 * k_sr),
                         ((0.0, 0.2, 0.2), 0.2 * k),
                         ((0.3, 0.5, None), 0.5 * k_lr),
                         ((0.3, 0.4, 0.4), 0.4 * k)]:
        np.testing.assert_allclose(mf.get_k(mol, dm, 1, *args), expect, atol=1e-10)
    vj, vk = mf.get_jk(mol, dm, 1, True, True, 0.3, 1.0, 0.0)
    np.testing.assert_allclose(vj, ref.get_j(mol, dm), atol=1e-10)
    np.testing.assert_allclose(vk, k_lr, atol=1e-10)
    with pytest.raises(ValueError, match="differ, but omega = 0.*nonzero omega, or equal factors"):
        mf.get_k(mol, dm, 1, 0.0, 1.0, 0.5)


def test_undo_reset_copy_and_reapply():
    mol = _water()
    mf = scf.RHF(mol).apply(fusionrcg, backend="cpu", direct_scf_tol=1e-12)
    assert type(mf).__name__ == "FusionRCGRHF"
    assert mf.reset() is mf and isinstance(mf, _FusionRCGMixin)
    cp = mf.copy()
    assert isinstance(cp, _FusionRCGMixin) and cp.fusionrcg_options.direct_scf_tol == 1e-12
    again = mf.apply(fusionrcg, backend="cpu")
    assert again.fusionrcg_options.direct_scf_tol is None
    assert [c for c in type(again).__mro__ if c is _FusionRCGMixin] == [_FusionRCGMixin]
    plain = mf.undo_fusionrcg()
    assert type(plain) is scf.hf.RHF
    assert not any(k.startswith(("fusionrcg", "_fusionrcg")) for k in plain.__dict__)


def test_a_copy_keeps_its_own_contexts():
    """mf.copy() gives an object whose J/K builds keep their own contexts:
    building with one leaves the other's untouched."""
    mf = scf.RHF(_water()).apply(fusionrcg, backend="cpu")
    dm = mf.get_init_guess()
    mf.get_jk(dm=dm)
    twin = mf.copy()
    assert twin._fusionrcg_contexts == {} and len(mf._fusionrcg_contexts) == 1
    context = mf._fusionrcg_contexts[0.0]
    for a, b in zip(twin.get_jk(dm=dm), mf.get_jk(dm=dm)):
        np.testing.assert_allclose(a, b, atol=1e-12)
    assert twin._fusionrcg_contexts[0.0] is not context and mf._fusionrcg_contexts[0.0] is context
    assert twin._fusionrcg_paired is not mf._fusionrcg_paired


def test_density_fit_after_fusionrcg_is_refused():
    """density_fit() after the plugin would silently bypass it: refused, and
    the error says how to get density fitting."""
    mf = scf.RHF(_water()).apply(fusionrcg, backend="cpu")
    with pytest.raises(ValueError, match=r"undo_fusionrcg\(\)\.density_fit\(\)"):
        mf.density_fit()


def test_scanner_keeps_the_mixin_across_geometries():
    mol = _water()
    ours = scf.RHF(mol).apply(fusionrcg, backend="cpu").as_scanner()
    ref = scf.RHF(mol).as_scanner()
    for mf in (ours, ref):
        mf.conv_tol = 1e-10
    for stretch in (0.0, 0.05):   # Angstrom, on both O-H bonds
        geom = mol.atom_coords(unit="Angstrom") + [[0, 0, 0], [0, stretch, 0], [0, -stretch, 0]]
        atoms = [(mol.atom_symbol(i), geom[i]) for i in range(mol.natm)]
        assert ours(atoms) == pytest.approx(ref(atoms), abs=E_TOL)
        assert isinstance(ours, _FusionRCGMixin)
        # the contexts kept are the current geometry's only
        assert ours._fusionrcg_contexts and all(c.serves(ours.mol, c.omega)
                                                for c in ours._fusionrcg_contexts.values())


def test_dump_flags_logs_the_settings():
    mf = scf.RHF(_water()).apply(fusionrcg, backend="cpu", tier="shared")
    mf.stdout = io.StringIO()
    mf.verbose = logger.INFO
    mf.dump_flags()
    out = mf.stdout.getvalue()
    assert "FusionRCG" in out and "backend = cpu" in out and "tier = shared" in out


def test_density_fitting_is_refused():
    with pytest.raises(ValueError, match="density_fit"):
        scf.RHF(_water()).density_fit().apply(fusionrcg, backend="cpu")


def test_unsupported_objects_are_refused():
    with pytest.raises(ValueError, match="GHF"):
        fusionrcg(scf.GHF(_water()), backend="cpu")
    high_l = gto.M(atom="H 0 0 0; H 0 0 0.74", verbose=0,
                   basis={"H": [[0, [1.0, 1.0]], [max_l() + 1, [1.0, 1.0]]]})
    with pytest.raises(ValueError, match="l = "):
        fusionrcg(scf.RHF(high_l), backend="cpu")
    with pytest.raises(ValueError, match="backend"):
        fusionrcg(scf.RHF(_water()), backend="fast")


def test_periodic_objects_are_refused():
    from pyscf.pbc import gto as pgto, scf as pscf
    cell = pgto.M(atom="He 0 0 0", a=np.eye(3) * 3.0, basis="sto-3g", verbose=0)
    with pytest.raises(ValueError, match="periodic"):
        fusionrcg(pscf.RHF(cell), backend="cpu")


@pytest.mark.skipif(gpu_available(), reason="needs a machine without a usable GPU")
def test_gpu_backend_without_gpu_raises_clearly():
    with pytest.raises(GPUUnavailableError, match="backend='cpu'"):
        scf.RHF(_water()).apply(fusionrcg, backend="gpu")


@pytest.mark.skipif(gpu_available(), reason="needs a machine without a usable GPU")
def test_auto_without_gpu_falls_back_with_a_notice():
    mol = _water()
    mf = scf.RHF(mol)
    mf.stdout = io.StringIO()
    mf.verbose = logger.WARN
    mf = mf.apply(fusionrcg)
    assert "fall back" in mf.stdout.getvalue()
    assert mf._fusionrcg_path == "native"
    assert _energy(mf) == pytest.approx(_energy(scf.RHF(mol)), abs=E_TOL)


# ---------------------------------------------------------------- GPU tests
GPU_MOLS = {"h2o": H2O, "nh3": NH3, "ch2o": CH2O}
GPU_CASES = [(m, "def2-tzvp") for m in GPU_MOLS] + [("h2o", "def2-qzvp")]
GPU_METHODS = {
    "rhf": (lambda mol: scf.RHF(mol), 0),
    "uhf": (lambda mol: scf.UHF(mol), 1),
    "b3lyp": (lambda mol: dft.RKS(mol, xc="b3lyp"), 0),
    "wb97x": (lambda mol: dft.RKS(mol, xc="wb97x"), 0),
}


def _gpu_mol(name, basis, spin):
    return gto.M(atom=GPU_MOLS[name], basis=basis, charge=spin, spin=spin, verbose=0)


@pytest.mark.gpu
@pytest.mark.parametrize("method", list(GPU_METHODS))
@pytest.mark.parametrize("name,basis", GPU_CASES)
def test_gpu_energy_equals_pyscf_on_pyscf_objects(name, basis, method):
    make, spin = GPU_METHODS[method]
    mol = _gpu_mol(name, basis, spin)
    mf = make(mol).apply(fusionrcg, backend="gpu")
    assert mf._fusionrcg_path == "gpu"
    assert _energy(mf) == pytest.approx(_energy(make(mol)), abs=E_TOL)


@pytest.mark.gpu
@pytest.mark.parametrize("method", list(GPU_METHODS))
@pytest.mark.parametrize("name,basis", GPU_CASES)
def test_gpu_energy_equals_pyscf_on_gpu4pyscf_objects(name, basis, method):
    """Same driver (GPU4PySCF's), J/K from FusionRCG vs from GPU4PySCF."""
    pytest.importorskip("gpu4pyscf")
    make, spin = GPU_METHODS[method]
    mol = _gpu_mol(name, basis, spin)
    ours = make(mol).to_gpu().apply(fusionrcg, backend="gpu")
    assert _energy(ours) == pytest.approx(_energy(make(mol).to_gpu()), abs=E_TOL)
    assert _energy(ours) == pytest.approx(_energy(make(mol)), abs=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["gpu", "cpu"])
def test_cupy_in_cupy_out_on_gpu4pyscf_objects(backend):
    pytest.importorskip("gpu4pyscf")
    import cupy
    mol = gto.M(atom=H2O, basis="def2-svp", verbose=0)
    ref = scf.RHF(mol)
    dm = ref.get_init_guess()
    mf = scf.RHF(mol).to_gpu().apply(fusionrcg, backend=backend)
    vj = mf.get_j(mol, cupy.asarray(dm))
    vk = mf.get_k(mol, cupy.asarray(dm), 1, 0.3, 1.0, 0.157)
    assert isinstance(vj, cupy.ndarray) and isinstance(vk, cupy.ndarray)
    np.testing.assert_allclose(to_host(vj), ref.get_j(mol, dm), atol=1e-9)
    np.testing.assert_allclose(to_host(vk), ref.get_k(mol, dm, omega=0.3)
                               + 0.157 * ref.get_k(mol, dm, omega=-0.3), atol=1e-9)


@pytest.mark.gpu
def test_auto_uses_the_gpu_and_to_gpu_keeps_the_plugin():
    mf = scf.RHF(_water()).apply(fusionrcg)
    assert mf._fusionrcg_path == "gpu"
    pytest.importorskip("gpu4pyscf")
    g = mf.to_gpu()
    assert isinstance(g, _FusionRCGMixin) and g.fusionrcg_options.backend == "auto"
