"""Cartesian -> spherical coefficients (PySCF conventions) and stepwise fusion."""
import numpy as np
import pytest
from pyscf import gto

from pyscf_fusionrcg import spherical
from pyscf_fusionrcg.host import get_program
from pyscf_fusionrcg.schedule import orchestrate, stage_peaks


@pytest.mark.parametrize('l', range(7))
def test_cart2sph_matches_pyscf(l):
    ref = gto.cart2sph(l)
    ours = spherical.cart2sph(l)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-13 * max(1.0, np.abs(ref).max())


def test_cartesian_order_matches_pyscf():
    mol = gto.M(atom='He 0 0 0', basis={'He': [[l, [1.0, 1.0]] for l in range(5)]},
                cart=True, verbose=0)
    labels = [lab[3] for lab in mol.cart_labels(fmt=False)]
    ours = [''.join(c * n for c, n in zip('xyz', t)) or ''
            for l in range(5) for t in spherical.cart_components(l)]
    assert labels == ours


def test_low_l_factors():
    assert np.allclose(spherical.transform_matrix(0), np.eye(1))
    assert np.allclose(spherical.transform_matrix(1), np.eye(3))
    assert spherical.angular_factor(2) == 1.0


def test_fused_step_order():
    """ket HRR, d, c, then bra HRR on spherical ket columns, b, a."""
    steps = spherical.contracted_steps((4, 4, 4, 4), cart=False, first='ket', fused=True)
    assert [s for _, s in steps] == ['hrr_ket', 'sph_d', 'sph_c', 'hrr_bra', 'sph_b', 'sph_a']
    unfused = spherical.contracted_steps((4, 4, 4, 4), cart=False, first='ket', fused=False)
    assert [s for _, s in unfused] == ['hrr_ket', 'hrr_bra', 'sph_d', 'sph_c', 'sph_b', 'sph_a']
    assert spherical.contracted_steps((4, 4, 4, 4), cart=True, first='bra', fused=True) == \
        [('bra', 'hrr_bra'), ('ket', 'hrr_ket')]
    # s and p indices are never transformed; HRR onto l = 0 is skipped
    assert [s for _, s in spherical.contracted_steps((1, 0, 2, 1), False, 'ket', True)] == \
        ['hrr_ket', 'sph_c']


@pytest.mark.parametrize('ls', [(2, 2, 2, 2), (3, 2, 3, 1)])
def test_program_transforms_each_index_when_its_hrr_is_done(ls):
    """In the fused program each side's transforms precede the other side's HRR."""
    p = get_program(*ls)
    first = [op.step for op in p.ctr_ops if op.step.startswith('hrr')][0][4:]
    mine, other = ('cd', 'ab') if first == 'ket' else ('ab', 'cd')
    pos = {}
    for k, op in enumerate(p.ctr_ops):
        pos.setdefault(op.step, k)
    second_hrr = pos['hrr_' + ('bra' if first == 'ket' else 'ket')]
    for idx in mine:
        if ls['abcd'.index(idx)] >= 2:
            assert pos['sph_' + idx] < second_hrr
    for idx in other:
        if ls['abcd'.index(idx)] >= 2:
            assert pos['sph_' + idx] > second_hrr


def test_fusion_shrinks_contracted_stage():
    fused, unfused = get_program(2, 2, 2, 2), orchestrate(2, 2, 2, 2, fused=False)
    assert len(fused.ctr) < len(unfused.ctr)
    assert stage_peaks(fused)[1] < stage_peaks(unfused)[1]
    assert stage_peaks(unfused)[1] >= 6 ** 4                     # all Cartesians at once
