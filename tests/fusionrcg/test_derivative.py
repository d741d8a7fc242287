"""Derivative programs (derivative.py) and the host's derivative blocks
against libcint's int2e_ip1, on every centre (d/dD by translational invariance)."""
import numpy as np
import pytest

from pyscf_fusionrcg import host, ir
from pyscf_fusionrcg.derivative import derivative_program, terms
from pyscf_fusionrcg.host import HostEngine
from pyscf_fusionrcg.schedule import orchestrate, stage_peaks

TOL = 1e-10
#: (ff|ff) and up: the raised (gf|ff) terms and the combination 2 alpha R - a_x L
#: cost digits; the four build variants of Cartesian (ff|ff) spread by 1.2e-10
#: among themselves, as much as they differ from libcint.
TOL_HIGH_L = 5e-10
#: s to f at every position, mixed, with the generally contracted p and f
#: shells of the synthetic molecule.
CLASSES = ((0, 0, 0, 0), (1, 0, 0, 0), (0, 1, 1, 0), (1, 1, 1, 1), (2, 0, 1, 0), (0, 2, 0, 2),
           (2, 1, 2, 1), (3, 0, 0, 0), (0, 3, 1, 0), (1, 2, 3, 0), (0, 1, 2, 3), (3, 1, 0, 2))
SLOW_CLASSES = ((3, 3, 3, 3), (3, 2, 3, 3), (2, 2, 2, 2))
#: h shells (the issue asks for them) at the bra's and the ket's first and second place.
H_CLASSES = ((5, 0, 1, 0), (0, 1, 5, 2), (2, 5, 0, 1))


def reference(synth, mol, ls, omega=0.0):
    """(16, 4, 3, di, dj, dk, dl): d/dA..d/dD of the class's 16 quartets, from
    int2e_ip1 (which differentiates the electron coordinate, hence the minus)
    with each shell put first in turn."""
    intor = 'int2e_ip1_cart' if mol.cart else 'int2e_ip1_sph'
    out = []
    with mol.with_range_coulomb(omega):
        for a, b, c, d in synth.quartets(ls):
            ip = lambda *q: -mol.intor_by_shell(intor, tuple(int(s) for s in q))
            out.append([ip(a, b, c, d), ip(b, a, c, d).transpose(0, 2, 1, 3, 4),
                        ip(c, d, a, b).transpose(0, 3, 4, 1, 2),
                        ip(d, c, a, b).transpose(0, 3, 4, 2, 1)])
    return np.array(out)


def _check(synth, classes, cart, omegas=(0.0,), tol=TOL):
    mol = synth.mol(cart)
    for omega in omegas:
        eng = HostEngine(mol, omega)
        for ls in classes:
            ours = eng.derivative_blocks(synth.quartets(ls))
            ours = np.concatenate([ours, -ours.sum(axis=1, keepdims=True)], axis=1)
            ref = reference(synth, mol, ls, omega)
            assert ours.shape == ref.shape
            err = np.abs(ours - ref).max() / np.abs(ref).max()
            assert err < tol, (ls, cart, omega, err)
    host.clear_cache()


@pytest.mark.parametrize('cart', [False, True])
def test_blocks_match_int2e_ip1(synth, cart):
    _check(synth, CLASSES, cart)


def test_blocks_match_int2e_ip1_erf_erfc(synth):
    """The attenuated operators (omega > 0: erf, < 0: erfc), whose Boys
    values the derivative programs read one order higher."""
    _check(synth, CLASSES[::3], False, omegas=(0.45, -0.45))


@pytest.mark.slow
@pytest.mark.parametrize('cart', [False, True])
def test_blocks_match_int2e_ip1_f(synth, cart):
    _check(synth, SLOW_CLASSES, cart, tol=TOL_HIGH_L)


@pytest.mark.slow
def test_blocks_match_int2e_ip1_h(synth):
    _check(synth, H_CLASSES, False, tol=TOL_HIGH_L)
    _check(synth, H_CLASSES[:1], True, tol=TOL_HIGH_L)


def test_raised_terms_carry_the_exponent_weight():
    """Each centre has a raised term (weighted by twice its shell's exponent)
    and, above s, a lowered one (plain); every accumulator is fed once."""
    ls = (1, 0, 2, 0)
    prog = derivative_program(*ls)
    ts = terms(ls, False, ('a', 'c'))
    assert [(t.centre, t.raised) for t in ts] == [(0, True), (0, False), (1, True), (2, True),
                                                 (2, False)]
    assert [t.rcg.ls for t in ts] == [(2, 0, 2, 0), (0, 0, 2, 0), (1, 1, 2, 0), (1, 0, 3, 0),
                                      (1, 0, 1, 0)]
    acc = [op for op in prog.prim_ops if isinstance(op, ir.Accumulate)]
    assert sorted(op.dst for op in acc) == list(range(prog.n_acc))
    weight = {op.dst: op.weight for op in acc}
    for t in ts:
        fed = {weight[t.acc0 + i] for i in range(t.rcg.n_acc)}
        assert fed == {t.centre if t.raised else -1}
    assert prog.shape == (9, 3, 1, 5, 1) and prog.max_m == sum(ls) + 1
    assert any('2.0 * ea * w' in ir.c_statement(op) for op in acc)


def test_terms_share_one_primitive_stage():
    """The terms' VRR cones overlap: one primitive stage computes each vertex
    once, far fewer ops than the terms' own programs together."""
    ls = (2, 1, 2, 0)
    prog = derivative_program(*ls, builds=('a', 'c'))
    vrr = lambda p: int(((p.prim.kind == ir.LINCOMB) | (p.prim.kind == ir.BOYS)).sum())
    separate = sum(vrr(orchestrate(*t.rcg.ls, builds=('a', 'c')))
                   for t in terms(ls, False, ('a', 'c')))
    assert vrr(prog) < 0.5 * separate
    prim_peak, ctr_peak = stage_peaks(prog)
    assert prim_peak >= prog.n_acc and ctr_peak > 0


def test_centres_are_checked():
    with pytest.raises(ValueError, match='centres'):
        derivative_program(1, 0, 0, 0, centres=(2, 0))
