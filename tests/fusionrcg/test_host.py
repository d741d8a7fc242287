"""Host (numpy) path against libcint, for every class with l <= 4."""
import itertools

import mpmath
import numpy as np
import pytest
from pyscf import gto

from pyscf_fusionrcg import host
from pyscf_fusionrcg.boys import boys
from pyscf_fusionrcg.host import HostEngine, eri_full

TOL = 1e-10
OMEGAS = (0.0, 0.45, -0.45)
L5_SAMPLE = ((5, 0, 0, 0), (0, 5, 2, 1), (1, 2, 5, 3), (5, 1, 3, 2), (2, 3, 0, 5),
             (5, 5, 1, 0))


def _check_classes(synth, classes, omegas=OMEGAS, cart=True):
    """Each class in spherical form for every omega, then Cartesian: one
    after the other, so the two programs share their primitive stage."""
    variants = [(False, om) for om in omegas] + ([(True, 0.0)] if cart else [])
    engines = {v: HostEngine(synth.mol(v[0]), v[1]) for v in variants}
    for ls in classes:
        for (is_cart, om), eng in engines.items():
            ours = synth.assemble(eng.quartet_blocks(synth.quartets(ls)))
            err = synth.rel_err(ours, synth.reference(eng.mol, ls, om))
            assert err < TOL, (ls, is_cart, om, err)
        host.clear_cache()            # keep memory flat over many classes


def _mirror_groups(lmax):
    """All classes, grouped as {(ab), (ba)} x {(cd), (dc)}: programs of one
    group share their primitive stages (see schedule._prim_stage)."""
    pairs = [(a, b) for a in range(lmax + 1) for b in range(a + 1)]
    return [sorted(set(itertools.product({bra, bra[::-1]}, {ket, ket[::-1]})))
            for bra in pairs for ket in pairs]


GROUPS = _mirror_groups(4)


@pytest.mark.parametrize('part', [0] + [pytest.param(p, marks=pytest.mark.slow) for p in range(1, 5)])
def test_every_class(synth, part):
    """int2e_sph, erf (omega > 0), erfc (omega < 0) and int2e_cart for every
    class with l <= 4 (625, in five parts)."""
    classes = [b + k for group in GROUPS[part::5] for b, k in group]
    _check_classes(synth, classes)


def test_every_class_is_covered():
    classes = [b + k for group in GROUPS for b, k in group]
    assert sorted(classes) == sorted(itertools.product(range(5), repeat=4))


def test_l5_sample(synth):
    _check_classes(synth, L5_SAMPLE[:3])
    _check_classes(synth, L5_SAMPLE[3:], cart=False)


def test_layout_matches_intor_by_shell(synth):
    """One generally contracted quartet against intor_by_shell directly."""
    mol = synth.mol()
    q = (3, 4, 6, 1)                    # p (nctr 2), d, f (nctr 2), s
    blk = HostEngine(mol).quartet_blocks(np.array([q]))[0]
    ref = mol.intor_by_shell('int2e_sph', q)
    assert blk.shape == ref.shape
    assert np.abs(blk - ref).max() < 1e-12 * np.abs(ref).max()


def test_builds_and_orient(synth):
    """Per-quartet build centres follow the tighter shell; orient() reaches the
    same result for equal-l pairs with the default program only."""
    mol = synth.mol()
    eng = HostEngine(mol)
    ls = (2, 2, 3, 1)
    q = synth.quartets(ls)
    on_b, _ = eng.builds(q)
    e = eng._min_exp
    assert np.array_equal(on_b, e[q[:, 1]] > e[q[:, 0]]) and on_b.any() and not on_b.all()
    oriented, swap_bra, swap_ket = eng.orient(q)
    assert swap_bra.any() and not swap_ket.any()
    out = eng.quartet_blocks(oriented, host.get_program(*ls))
    out[swap_bra] = out[swap_bra].transpose(0, 2, 1, 3, 4)
    assert synth.rel_err(synth.assemble(out), synth.reference(mol, ls)) < TOL


def test_engine_uses_mol_omega(synth):
    mol = synth.mol()
    q = synth.quartets((1, 1, 2, 0))
    with mol.with_range_coulomb(0.3):
        a = HostEngine(mol).quartet_blocks(q)
    b = HostEngine(mol, omega=0.3).quartet_blocks(q)
    assert np.array_equal(a, b)


def test_rejects_mixed_classes(synth):
    with pytest.raises(ValueError):
        HostEngine(synth.mol()).quartet_blocks(np.array([[0, 0, 0, 0], [2, 0, 0, 0]]))


def test_program_cache():
    assert host.get_program(1, 0, 2, 1) is host.get_program(1, 0, 2, 1)
    assert host.get_program(1, 0, 2, 1, cart=True) is not host.get_program(1, 0, 2, 1)


@pytest.mark.parametrize('basis', ['sto-3g', 'def2-svp'])
def test_eri_full_h2o(basis):
    mol = gto.M(atom='O 0 0 0.1173; H 0 0.7572 -0.4692; H 0 -0.7572 -0.4692',
                basis=basis, verbose=0)
    ref = mol.intor('int2e')
    err = np.abs(eri_full(mol) - ref).max() / np.abs(ref).max()
    assert err < TOL


def test_eri_full_general_contraction_cart():
    """cc-pVDZ keeps nctr = 2 s shells; Cartesian d."""
    mol = gto.M(atom='N 0 0 0; N 0.2 0 1.1', basis='cc-pvdz', cart=True, verbose=0)
    ref = mol.intor('int2e')
    assert np.abs(eri_full(mol) - ref).max() / np.abs(ref).max() < TOL


def _boys_ref(m, t):
    t = mpmath.mpf(t)
    if t == 0:
        return mpmath.mpf(1) / (2 * m + 1)
    a = m + mpmath.mpf(1) / 2
    return mpmath.gammainc(a, 0, t) / (2 * t ** a)


def test_boys_accuracy():
    mpmath.mp.dps = 40
    rng = np.random.default_rng(3)
    ts = np.concatenate([[0.0, 1e-14, 1e-8, 1e-3, 0.5, 29.999, 30.0, 30.001, 49.9, 50.0,
                          50.1, 120.0, 1e4], rng.uniform(0, 60, 60), 10 ** rng.uniform(-6, 2, 30)])
    mmax = 25
    vals = boys(mmax, ts)
    worst = 0.0
    for j, t in enumerate(ts):
        for m in range(mmax + 1):
            ref = _boys_ref(m, float(t))
            worst = max(worst, abs(float((vals[m, j] - ref) / ref)))
    assert worst < 1e-14


def test_boys_shape():
    t = np.linspace(0, 40, 12).reshape(3, 4)
    assert boys(7, t).shape == (8, 3, 4)
