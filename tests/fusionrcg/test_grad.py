"""Nuclear gradients with FusionRCG's derivative integrals (grad.py) equal PySCF's.

The SCF runs once in plain PySCF; the plugin is then applied to the converged
object, so the two gradients differ only in their two-electron part.
"""
import io

import numpy as np
import pytest
from pyscf import gto, scf
from pyscf.grad import rhf as rhf_grad
from pyscf.lib import logger

from gpucore import gpu_available
from pyscf_fusionrcg import grad as fgrad
from pyscf_fusionrcg import scf as plugin
from pyscf_fusionrcg.grad import DerivativeContext, _FusionRCGGrad, fusionrcg_gradients
from pyscf_fusionrcg.options import Options, from_env
from pyscf_fusionrcg.scf import fusionrcg
from test_gpu_jk import vitamin_c
from test_scf_plugin import METHODS as SCF_METHODS

H2O = "O 0 0 0.117; H 0.05 0.757 -0.469; H 0 -0.757 -0.48"
G_TOL = 1e-8
OPTIONS = Options(backend="cpu", progress=False)
GPU_GRADIENTS = OPTIONS.replace(gpu_gradients=True)


#: test_scf_plugin's methods, all on 6-31G here
METHODS = {name: (make, {k: v for k, v in kw.items() if k != "basis"})
           for name, (make, kw) in SCF_METHODS.items()
           if name in ("rhf", "uhf", "rohf", "b3lyp", "wb97x", "uks-wb97x")}


def _converged(make, atom=H2O, basis="6-31g", **kw):
    mf = make(gto.M(atom=atom, basis=basis, verbose=0, **kw))
    mf.conv_tol = 1e-10
    mf.kernel()
    assert mf.converged
    return mf


@pytest.fixture
def calls(monkeypatch):
    """How often the per-atom forces and the derivative matrices were built."""
    count = {"forces": 0, "jk": 0}
    for name in count:
        original = getattr(DerivativeContext, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            count[_name] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(DerivativeContext, name, counted)
    return count


@pytest.mark.parametrize("method", list(METHODS))
def test_gradients_equal_pyscf(method, calls):
    make, kw = METHODS[method]
    mf = _converged(make, **kw)
    ref = mf.nuc_grad_method().kernel()
    g = fusionrcg(mf, options=OPTIONS).nuc_grad_method()
    assert isinstance(g, _FusionRCGGrad)
    assert np.abs(g.kernel() - ref).max() < G_TOL
    # straight to per-atom forces: one per operator, no derivative matrix
    assert calls == {"forces": 2 if "wb97x" in method else 1, "jk": 0}


@pytest.mark.parametrize("method", ["b3lyp", "wb97x"])
def test_kohn_sham_terms_with_numint_of_pyscf_before_2_15(method, monkeypatch):
    """PySCF before 2.15 has no NumInt.is_hybrid_xc (only NumInt.libxc's):
    the exchange terms of a hybrid gradient must not need it."""
    from pyscf.dft import numint
    make, kw = METHODS[method]
    mf = _converged(make, **kw)
    g = fusionrcg(mf, options=OPTIONS).nuc_grad_method()
    omega, alpha, hyb = mf._numint.rsh_and_hybrid_coeff(mf.xc)
    want = [(0.0, 1.0, 0.5 * hyb)] + ([(omega, 0.0, 0.5 * (alpha - hyb))] if omega else [])
    for cls in numint.NumInt.__mro__:
        if "is_hybrid_xc" in vars(cls):
            monkeypatch.delattr(cls, "is_hybrid_xc")
    assert np.allclose(g._fusionrcg_terms(), want, rtol=1e-14, atol=0)


def test_gradients_method_and_undo():
    mf = fusionrcg(_converged(scf.RHF), options=OPTIONS)
    g = mf.Gradients()
    assert isinstance(g, _FusionRCGGrad)
    assert not isinstance(g.undo_fusionrcg(), _FusionRCGGrad)
    assert type(g.undo_fusionrcg()) is rhf_grad.Gradients
    assert type(mf.undo_fusionrcg().nuc_grad_method()) is rhf_grad.Gradients
    assert np.abs(g.kernel() - g.undo_fusionrcg().kernel()).max() < G_TOL


def test_ghost_atoms():
    """Ghost atoms carry basis functions but no charge: their rows are the
    integrals' alone, and must agree too."""
    mf = _converged(scf.RHF, atom=H2O + "; ghost-O 0 0 2.2; X-H 1.5 0 0")
    ref = mf.nuc_grad_method().kernel()
    ours = fusionrcg(mf, options=OPTIONS).nuc_grad_method().kernel()
    assert ref.shape == (5, 3) and np.abs(ref[3:]).max() > 1e-4
    assert np.abs(ours - ref).max() < G_TOL


def test_other_get_veff_gets_derivative_matrices(calls):
    """A get_veff that is not PySCF's own is served the derivative matrices."""
    class Custom(rhf_grad.Gradients):
        def get_veff(self, mol=None, dm=None):
            vj, vk = self.get_jk(mol or self.mol, self.base.make_rdm1() if dm is None else dm)
            return vj - vk * 0.5

    mf = fusionrcg(_converged(scf.RHF), options=OPTIONS)
    ours = fusionrcg_gradients(Custom(mf), OPTIONS).kernel()
    assert np.abs(ours - mf.undo_fusionrcg().nuc_grad_method().kernel()).max() < G_TOL
    assert calls == {"forces": 0, "jk": 1}


@pytest.mark.parametrize("omega", [0.0, 0.35, -0.35])
def test_derivative_matrices_and_forces_equal_pyscf(omega):
    """Both digestions against pyscf.grad.rhf.get_jk, for a general (not
    symmetric) density pair and the erf / erfc operators; d shells included."""
    mol = gto.M(atom=H2O, basis="6-31g*", verbose=0)
    rng = np.random.default_rng(5)
    dms = rng.standard_normal((2, mol.nao, mol.nao)) * 0.3
    context = DerivativeContext(mol, omega, OPTIONS)
    vj, vk = context.jk(dms)
    with mol.with_range_coulomb(omega):
        rj, rk = rhf_grad.get_jk(mol, dms)
    assert vj.shape == rj.shape == (2, 3, mol.nao, mol.nao)
    assert np.abs(vj - rj).max() < 1e-10 and np.abs(vk - rk).max() < 1e-10
    # E = j/2 (ij|kl) Dt Dt - k/2 sum_s (ij|kl) Ds Ds, with the symmetrised densities
    sym = (dms + dms.transpose(0, 2, 1)) / 2
    with mol.with_range_coulomb(omega):
        sj, sk = rhf_grad.get_jk(mol, sym)
    j, k = 0.7, 0.4
    vhf = j * (sj[0] + sj[1]) - k * sk
    ref = np.array([2 * np.einsum("sxij,sij->x", vhf[:, :, p0:p1], sym[:, p0:p1])
                    for _, _, p0, p1 in mol.aoslice_by_atom()])
    assert np.abs(context.forces(dms, j, k) - ref).max() < 1e-10


def test_derivative_bounds_bound_the_derivatives():
    mol = gto.M(atom=H2O, basis="6-31g*", verbose=0)
    q = fgrad.derivative_bounds(mol)
    ip1 = mol.intor("int2e_ip1", aosym="s1")
    loc = mol.ao_loc
    for i, j, k, l in [(0, 1, 2, 3), (4, 5, 4, 5), (8, 2, 6, 0), (9, 9, 1, 7)]:
        blk = ip1[:, loc[i]:loc[i + 1], loc[j]:loc[j + 1], loc[k]:loc[k + 1], loc[l]:loc[l + 1]]
        assert np.abs(blk).max() <= q[i, j] * q[k, l] * (1 + 1e-12)


def test_scanner_follows_the_geometry():
    mol = gto.M(atom=H2O, basis="sto-3g", verbose=0)
    ours = fusionrcg(scf.RHF(mol), options=OPTIONS).nuc_grad_method().as_scanner()
    ref = scf.RHF(mol).nuc_grad_method().as_scanner()
    for shift in (0.0, 0.08):
        coords = mol.atom_coords() + np.array([[0, 0, 0], [0, shift, 0], [0, 0, -shift]])
        new = mol.set_geom_(coords, unit="Bohr", inplace=False)
        e, g = ours(new)
        e_ref, g_ref = ref(new)
        assert abs(e - e_ref) < 1e-8 and np.abs(g - g_ref).max() < 1e-6
        assert isinstance(ours, _FusionRCGGrad)


def test_gpu_path_gradients_stay_pyscf_by_default(monkeypatch):
    monkeypatch.setattr(plugin, "_resolve_backend", lambda mf, backend: "gpu")
    mf = _converged(scf.RHF)
    mf.stdout = io.StringIO()
    mf.verbose = logger.WARN
    g = fusionrcg(mf, backend="gpu").nuc_grad_method()
    assert type(g) is rhf_grad.Gradients
    assert "gpu_gradients=True (FUSIONRCG_GPU_GRADIENTS=1)" in mf.stdout.getvalue()


def test_gpu_gradients_option(monkeypatch):
    monkeypatch.delenv("FUSIONRCG_GPU_GRADIENTS", raising=False)
    assert not from_env().gpu_gradients and from_env(gpu_gradients=True).gpu_gradients
    monkeypatch.setenv("FUSIONRCG_GPU_GRADIENTS", "1")
    assert from_env().gpu_gradients


def test_gpu_path_gradients_are_fusionrcg_on_the_gpu(monkeypatch):
    """With gpu_gradients the Gradients object on the GPU path takes its
    derivative integrals from the GPU (checked on one by the gpu tests below)."""
    monkeypatch.setattr(plugin, "_resolve_backend", lambda mf, backend: "gpu")
    mf = _converged(scf.RHF)
    g = fusionrcg(mf, backend="gpu", gpu_gradients=True).nuc_grad_method()
    assert isinstance(g, _FusionRCGGrad) and isinstance(g, rhf_grad.Gradients)
    assert g.fusionrcg_backend == "gpu"
    g.stdout = io.StringIO()
    g.verbose = logger.INFO
    g.dump_flags()
    assert "FusionRCG on the GPU" in g.stdout.getvalue()
    plain = g.undo_fusionrcg()
    assert type(plain) is rhf_grad.Gradients and "fusionrcg_backend" not in plain.__dict__


def test_gradients_backend_is_checked():
    with pytest.raises(ValueError, match="backend must be 'cpu' or 'gpu'"):
        fusionrcg_gradients(_converged(scf.RHF).nuc_grad_method(), OPTIONS, "auto")


def _gpu4pyscf_like(mf):
    """A stand-in for one of GPU4PySCF's Gradients classes (its module name
    and its per-atom hook), on a PySCF object: the hook gives PySCF's
    two-electron gradient, for one total density or an alpha/beta pair."""
    class Gpu4pyscfGradients(type(mf.nuc_grad_method())):
        __module__ = "gpu4pyscf.grad.rhf"

        def jk_energy_per_atom(self, dm=None, j_factor=1, k_factor=1, omega=None, lr_factor=None,
                               sr_factor=None, hermi=0, verbose=None):
            dms = np.asarray(dm).reshape(-1, self.mol.nao, self.mol.nao)
            with self.mol.with_range_coulomb(self.mol.omega if omega is None else omega):
                vj, vk = rhf_grad.get_jk(self.mol, dms)
            # E = j/2 (ij|kl) Dt Dt - k c (ij|kl) D D, c = 1/4 (one total density) or 1/2 (a pair)
            vhf = j_factor * vj.sum(axis=0) - k_factor * (0.5 if len(dms) == 1 else 1.0) * vk
            return np.array([2 * np.einsum("sxij,sij->x", vhf[:, :, p0:p1], dms[:, p0:p1])
                             for _, _, p0, p1 in self.mol.aoslice_by_atom()])

    return Gpu4pyscfGradients(mf)


@pytest.mark.parametrize("omega", [0.0, -0.3])
def test_gpu4pyscf_hook_is_fusionrcg(omega):
    """GPU4PySCF's per-atom hook, once wrapped, gives the same numbers from
    FusionRCG's derivative integrals: RHF's one density, UHF's pair, and an
    exchange-only term on the short-range operator."""
    rhf = _converged(scf.RHF, basis="6-31g*")
    uhf = _converged(scf.UHF, basis="6-31g*", spin=2)
    for mf in (rhf, uhf):
        stock = _gpu4pyscf_like(mf)
        ours = fusionrcg(mf, options=GPU_GRADIENTS)._fusionrcg_gradients(_gpu4pyscf_like(mf))
        assert isinstance(ours, fgrad._FusionRCGGpu4pyscfGrad) and ours.fusionrcg_backend == "cpu"
        dm = mf.make_rdm1()
        for j, k in ((1.0, 1.0), (0.0, 0.4)):
            ref = stock.jk_energy_per_atom(dm, j, k, omega=omega)
            assert np.abs(ours.jk_energy_per_atom(dm, j, k, omega=omega) - ref).max() < 1e-10
        plain = ours.undo_fusionrcg()
        assert type(plain).__name__ == "Gpu4pyscfGradients" and not isinstance(plain, fgrad._FusionRCGGradBase)


def test_gpu4pyscf_hook_refuses_more_than_a_spin_pair():
    mf = _converged(scf.RHF)
    ours = fusionrcg(mf, options=GPU_GRADIENTS)._fusionrcg_gradients(_gpu4pyscf_like(mf))
    dm = mf.make_rdm1()
    with pytest.raises(ValueError, match="one density or an alpha and beta pair, not 3"):
        ours.jk_energy_per_atom(np.stack([dm, dm, dm]))


def test_gpu4pyscf_class_without_the_hook_is_kept_with_a_warning():
    class Gpu4pyscfGradients(rhf_grad.Gradients):
        __module__ = "gpu4pyscf.grad.rhf"

    mf = fusionrcg(_converged(scf.RHF), options=GPU_GRADIENTS)
    mf.stdout = io.StringIO()
    mf.verbose = logger.WARN
    g = mf._fusionrcg_gradients(Gpu4pyscfGradients(mf))
    assert type(g) is Gpu4pyscfGradients
    assert "jk_energy_per_atom, which Gpu4pyscfGradients lacks" in mf.stdout.getvalue()


@pytest.mark.skipif(gpu_available(), reason="needs a machine without a usable GPU")
def test_native_path_keeps_pyscf_gradients():
    mf = _converged(scf.RHF)
    mf.verbose = 0
    assert type(fusionrcg(mf).nuc_grad_method()) is rhf_grad.Gradients


def _with_h_shell():
    """H2 with an h shell on the second atom (the issue asks for up to h), converged."""
    basis = {"H1": "sto-3g", "H2": gto.basis.parse("H S\n 1.2 1.0\nH H\n 1.5 1.0")}
    return _converged(scf.RHF, atom="H1 0 0 0; H2 0.1 0 0.74", basis=basis)


@pytest.mark.slow
def test_h_functions():
    mf = _with_h_shell()
    ref = mf.nuc_grad_method().kernel()
    ours = fusionrcg(mf, options=OPTIONS).nuc_grad_method().kernel()
    assert np.abs(ours - ref).max() < G_TOL


@pytest.mark.gpu
def test_gpu_gradients_with_h_functions():
    """Derivative kernels of classes with an h shell (an i shell once raised)."""
    mf = _with_h_shell()
    ref = mf.nuc_grad_method().kernel()
    g = fusionrcg(mf, options=Options(backend="gpu", progress=False, gpu_gradients=True)).nuc_grad_method()
    assert np.abs(g.kernel() - ref).max() < G_TOL


@pytest.mark.gpu
@pytest.mark.parametrize("omega", [0.0, 0.35, -0.35])
def test_gpu_forces_and_derivative_matrices_equal_the_host_path(omega):
    """DerivativeContext on the GPU against the host path, with d, f and g
    shells (cc-pVQZ on oxygen) and a density pair that is not symmetric."""
    mol = gto.M(atom=H2O, basis={"O": "cc-pvqz", "H": "6-31g*"}, verbose=0)
    rng = np.random.default_rng(7)
    dms = rng.standard_normal((2, mol.nao, mol.nao)) * 0.1
    host = DerivativeContext(mol, omega, OPTIONS)
    gpu = DerivativeContext(mol, omega, Options(progress=False), backend="gpu")
    ref, got = host.forces(dms, 0.7, 0.4), gpu.forces(dms, 0.7, 0.4)
    assert np.abs(got - ref).max() < 1e-10 * max(1.0, np.abs(ref).max())
    for r, g in zip(host.jk(dms), gpu.jk(dms)):
        assert np.abs(g - r).max() < 1e-10 * max(1.0, np.abs(r).max())


@pytest.mark.gpu
@pytest.mark.parametrize("method", list(METHODS))
def test_gpu_gradients_equal_pyscf(method):
    make, kw = METHODS[method]
    mf = _converged(make, basis="def2-tzvp", **kw)
    ref = mf.nuc_grad_method().kernel()
    g = fusionrcg(mf, options=Options(backend="gpu", progress=False, gpu_gradients=True)).nuc_grad_method()
    assert isinstance(g, _FusionRCGGrad) and g.fusionrcg_backend == "gpu"
    assert np.abs(g.kernel() - ref).max() < G_TOL


@pytest.mark.gpu
@pytest.mark.parametrize("method", list(METHODS))
def test_gpu_gradients_equal_gpu4pyscf_on_its_objects(method):
    """GPU4PySCF objects with the plugin: their gradients with FusionRCG's
    two-electron part against GPU4PySCF's own (ROHF has none there)."""
    pytest.importorskip("gpu4pyscf")
    make, kw = METHODS[method]
    if method == "rohf":
        pytest.skip("GPU4PySCF has no ROHF gradients")
    mf = make(gto.M(atom=H2O, basis="def2-tzvp", verbose=0, **kw)).to_gpu()
    mf.conv_tol = 1e-10
    mf.kernel()
    ref = mf.nuc_grad_method().kernel()
    g = mf.apply(fusionrcg, backend="gpu", progress=False, gpu_gradients=True).nuc_grad_method()
    assert isinstance(g, fgrad._FusionRCGGpu4pyscfGrad)
    assert np.abs(g.kernel() - ref).max() < G_TOL


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("basis", ["def2-TZVP", "def2-QZVP"])
def test_gpu_gradients_of_vitamin_c_equal_gpu4pyscf(basis):
    """The issue's molecule: GPU4PySCF's converged RHF, its gradient with
    FusionRCG's two-electron part against GPU4PySCF's own."""
    pytest.importorskip("gpu4pyscf")
    mf = scf.RHF(vitamin_c(basis)).to_gpu()
    mf.conv_tol = 1e-10
    mf.kernel()
    assert mf.converged
    ref = mf.nuc_grad_method().kernel()
    g = mf.apply(fusionrcg, backend="gpu", progress=False, gpu_gradients=True).nuc_grad_method().kernel()
    ref, g = (x.get() if hasattr(x, "get") else np.asarray(x) for x in (ref, g))
    assert np.abs(g - ref).max() < G_TOL


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_gradients_with_cc_pv5z_equal_pyscf():
    """h shells on the GPU, where GPU4PySCF's gradients refuse: water cc-pV5Z,
    converged with FusionRCG's GPU J/K, against PySCF's own gradient."""
    mf = fusionrcg(scf.RHF(gto.M(atom=H2O, basis="cc-pV5Z", verbose=0)), backend="gpu", progress=False)
    mf.conv_tol = 1e-10
    mf.kernel()
    assert mf.converged
    ref = mf.undo_fusionrcg().nuc_grad_method().kernel()
    g = fusionrcg(mf.undo_fusionrcg(), backend="gpu", progress=False, gpu_gradients=True).nuc_grad_method()
    assert np.abs(g.kernel() - ref).max() < G_TOL
