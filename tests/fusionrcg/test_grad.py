"""Derivative J/K and per-atom two-electron forces (grad.py) equal PySCF's."""
import numpy as np
import pytest
from pyscf import gto
from pyscf.grad import rhf as rhf_grad

from pyscf_fusionrcg import grad as fgrad
from pyscf_fusionrcg.grad import DerivativeContext
from pyscf_fusionrcg.options import Options

H2O = "O 0 0 0.117; H 0.05 0.757 -0.469; H 0 -0.757 -0.48"
OPTIONS = Options(backend="cpu", progress=False)


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
