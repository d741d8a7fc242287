"""The J engine (jengine.py): pair densities, the J programs' blocks against
libcint's integrals contracted with a density, full J against PySCF, the
option through JKContext, and the accumulator counts of the report."""
import numpy as np
import pytest
from pyscf import gto, scf

from pyscf_fusionrcg import host, ir, jengine, pairmaps, schedule
from pyscf_fusionrcg.jk import JKContext, LibcintBlocks, digest_j
from pyscf_fusionrcg.options import Options, from_env
from pyscf_fusionrcg.screening import build_tasks

H2O = "O 0 0 0.117; H 0 0.757 -0.469; H 0 -0.757 -0.469"
ATOL = 1e-10


def _dms(nao, nset=2, seed=5):
    return np.random.default_rng(seed).standard_normal((nset, nao, nao))


def _libcint_j(mol, quartets, dms):
    """J blocks of each quartet from libcint's (ab|cd): the bra's from the
    ket pair's density block, the ket's from the bra pair's."""
    intor = 'int2e_cart' if mol.cart else 'int2e_sph'
    ao = mol.ao_loc
    bra, ket = [], []
    for q in quartets:
        g = mol.intor_by_shell(intor, tuple(int(s) for s in q))
        a, b, c, d = (slice(ao[s], ao[s + 1]) for s in q)
        bra.append(np.einsum('ijkl,skl->sij', g, dms[:, c, d]))
        ket.append(np.einsum('ijkl,sij->skl', g, dms[:, a, b]))
    return np.stack(bra, axis=1), np.stack(ket, axis=1)


@pytest.mark.parametrize('ls', [(2, 0, 0, 0), (4, 2, 2, 2), (2, 2, 4, 0)])
def test_pair_densities_carry_each_side_of_the_pair_matrices(synth, ls):
    """For any accumulators, the block that PairProducts makes contracted
    with a pair's density equals the other side's matrix times the
    accumulators times that pair's D~."""
    mol = synth.mol()
    q = synth.quartets(ls)
    prog = host.get_program(*ls)
    products = pairmaps.PairProducts(prog)
    rng = np.random.default_rng(2)
    acc = rng.standard_normal((len(q), len(prog.rcg.bra_start), len(prog.rcg.ket_start)))
    cen = host.shell_centres(mol)
    ab, cd = cen[q[:, 0]] - cen[q[:, 1]], cen[q[:, 2]] - cen[q[:, 3]]
    blocks = products(acc.reshape(-1), ab, cd, np.empty((int(np.prod(prog.shape)), len(q)))).T
    blocks = blocks.reshape((len(q),) + prog.shape)
    dms = _dms(mol.nao, 1)
    ao = mol.ao_loc
    d_cd = np.stack([dms[0, ao[c]:ao[c + 1], ao[d]:ao[d + 1]] for c, d in q[:, 2:]])
    d_ab = np.stack([dms[0, ao[a]:ao[a + 1], ao[b]:ao[b + 1]] for a, b in q[:, :2]])
    bra_map, ket_map = products.bra, products.ket
    dt_cd = jengine.pair_densities(mol, q[:, 2:], dms, ket_map)[0, :, 0, 0]
    dt_ab = jengine.pair_densities(mol, q[:, :2], dms, bra_map)[0, :, 0, 0]
    mb = np.einsum('qm,mur->qru', pairmaps.monomials(bra_map.powers, ab), bra_map.coef)
    mk = np.einsum('qm,mvr->qvr', pairmaps.monomials(ket_map.powers, cd), ket_map.coef)
    want_ab = np.einsum('qijkl,qkl->qij', blocks, d_cd).reshape(len(q), -1)
    want_cd = np.einsum('qijkl,qij->qkl', blocks, d_ab).reshape(len(q), -1)
    got_ab = np.einsum('qru,quv,qv->qr', mb, acc, dt_cd)
    got_cd = np.einsum('qu,quv,qvr->qr', dt_ab, acc, mk)
    for got, want in ((got_ab, want_ab), (got_cd, want_cd)):
        assert np.abs(got - want).max() <= 1e-12 * np.abs(want).max()


# up to f, the p and f shells of the synthetic molecule with two contracted
# functions each; its two shells per l make quartets of every build variant;
# (fs|dd) runs the J programs' own VRR (jengine.vrr_program)
CLASSES = [(0, 0, 0, 0), (1, 0, 0, 0), (1, 1, 1, 1), (2, 1, 3, 0), (3, 2, 1, 1), (0, 0, 3, 3),
           (2, 2, 2, 2), (3, 3, 3, 1), (3, 0, 2, 2), pytest.param((3, 3, 3, 3), marks=pytest.mark.slow)]


@pytest.mark.parametrize('sides', jengine.SIDES)
@pytest.mark.parametrize('cart', [False, True])
@pytest.mark.parametrize('ls', CLASSES)
def test_j_blocks_equal_libcint(synth, ls, cart, sides):
    mol = synth.mol(cart)
    q = synth.quartets(ls)
    dms = _dms(mol.nao)
    on_b, on_d = host.HostEngine(mol).builds(q)
    if ls[0] == ls[1] and ls[2] == ls[3]:
        assert len(set(zip(on_b, on_d))) == 4          # every program of the class runs
    got = jengine.HostJEngine(host.HostEngine(mol), sides).quartet_j(q, dms)
    assert tuple(got) == sides
    want = dict(zip(('bra', 'ket'), _libcint_j(mol, q, dms)))
    for side in sides:
        assert np.abs(got[side] - want[side]).max() <= 1e-11 * np.abs(want[side]).max()


MOLS = {
    "h2o-631gs": (dict(atom=H2O, basis="6-31g*"), None),
    "h2o-631gs-cart": (dict(atom=H2O, basis="6-31g*", cart=True), None),
    "h2o-ghosts": (dict(atom=H2O + "; ghost-O 0 0 2.6; X-H 0 0.8 3.1", basis="6-31g"), None),
    "h2o-def2svp-erf": (dict(atom=H2O, basis="def2-svp"), 0.4),
    "h2o-def2svp-erfc": (dict(atom=H2O, basis="def2-svp"), -0.4),
    "n2-ccpvtz": (dict(atom="N 0 0 0; N 0 0 1.1", basis="cc-pvtz"), None),     # f, nctr = 2
}


def _j_context(mol, omega, j_engine="on"):
    return JKContext(mol, omega, options=Options(backend="cpu", j_engine=j_engine, progress=False))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow if n == "n2-ccpvtz" else ())
                                  for n in MOLS])
def test_j_equals_pyscf(name):
    kw, omega = MOLS[name]
    mol = gto.M(verbose=0, **kw)
    dm = _dms(mol.nao)
    vj, vk = _j_context(mol, omega).get_jk(dm, hermi=0, with_k=False)
    assert vk is None
    ref, _ = scf.hf.get_jk(mol, dm, hermi=0, omega=omega, with_k=False)
    np.testing.assert_allclose(vj, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("with_k", [False, True])
def test_the_option_changes_no_result(with_k):
    mol = gto.M(verbose=0, atom=H2O, basis="6-31g*")
    dm = _dms(mol.nao)
    dm = dm + dm.transpose(0, 2, 1)
    on = _j_context(mol, None).get_jk(dm, with_k=with_k)
    off = _j_context(mol, None, "off").get_jk(dm, with_k=with_k)
    for a, b in zip(on, off):
        if with_k or b is not None:
            np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)
    assert (on[1] is None) == (not with_k)


def test_the_option_comes_from_the_environment(monkeypatch):
    assert Options().j_engine == "off"
    monkeypatch.setenv("FUSIONRCG_J_ENGINE", "on")
    assert from_env().j_engine == "on"
    with pytest.raises(ValueError, match="j_engine must be one of"):
        Options(j_engine="yes")


def test_the_engine_needs_the_host_engine_and_both_sides_for_task_lists():
    mol = gto.M(verbose=0, atom=H2O, basis="sto-3g")
    with pytest.raises(TypeError, match="runs on the host engine"):
        jengine.HostJEngine(LibcintBlocks(mol))
    dms = _dms(mol.nao, 1)
    tasks = build_tasks(mol, dms, with_k=False)
    with pytest.raises(ValueError, match="two-sided"):
        digest_j(mol, dms, tasks, jengine.HostJEngine(host.HostEngine(mol), jengine.SIDES[1]))


@pytest.mark.parametrize("ls", [(1, 1, 1, 0), (2, 1, 2, 2)])
@pytest.mark.parametrize("sides", jengine.SIDES)
def test_the_program_retargets_the_class_programs_accumulations(ls, sides):
    """The J program's primitive stage is the class program's with each
    accumulation once per side; every accumulator of a side reads each start
    label of the other pair's density once; every temporary is written once."""
    prog = jengine.j_program(*ls, sides=sides)
    eri = prog.eri
    acc = prog.prim.kind == ir.ACCUMULATE
    assert np.array_equal(prog.prim.kind[~acc], eri.prim.kind[eri.prim.kind != ir.ACCUMULATE])
    assert acc.sum() == len(sides) * eri.n_acc
    for side in sides:
        ops = acc & np.isin(prog.prim.dst, list(prog.acc_range(side)))
        pairs = set(zip(prog.prim.dst[ops], prog.density[ops]))
        rho = prog.rho_range(side)
        assert len(pairs) == ops.sum() == len(prog.acc_range(side)) * len(rho)
        assert {d for _, d in pairs} == set(rho)
    written = np.concatenate([prog.prim.dst[~acc], prog.ctr.dst[prog.ctr.kind != ir.OUTPUT]])
    assert len(np.unique(written)) == len(written) and written.min() == prog.n_acc
    assert written.max() == prog.n_temps - 1


def test_the_report_counts_by_hand():
    """(ps|ss): three p accumulators on the bra; the VRR keeps G0, G1 and one
    p target live, so the class program peaks at 3 + 3, the two-sided J
    program at (3 + 1) + 3.  (ss|ss): one Boys value and the accumulator(s).
    (pp|pp) builds p and d on a and c: 3 + 6 start labels a pair."""
    assert jengine.reduction_row((1, 0, 0, 0)) == dict(
        {'class': 'psss'}, acc=3, acc_j=4, acc_j_bra=3, peak=6, peak_j=7, peak_j_ordered=7,
        peak_j_bra=6, peak_j_bra_ordered=6)
    assert jengine.reduction_row((0, 0, 0, 0)) == dict(
        {'class': 'ssss'}, acc=1, acc_j=2, acc_j_bra=1, peak=2, peak_j=3, peak_j_ordered=3,
        peak_j_bra=2, peak_j_bra_ordered=2)
    row = jengine.reduction_row((1, 1, 1, 1))
    assert (row['acc'], row['acc_j'], row['acc_j_bra']) == (81, 18, 9)
    # the primitive stage keeps the class program's VRR temporaries
    for sides in jengine.SIDES:
        prog = jengine.j_program(1, 1, 1, 1, sides=sides)
        prim_j, prim = schedule.stage_peaks(prog)[0], schedule.stage_peaks(prog.eri)[0]
        assert prim_j - prog.n_acc == prim - prog.eri.n_acc
    assert [r['class'] for r in jengine.reduction_report(1)] == [
        'ssss', 'psss', 'psps', 'ppss', 'ppps', 'pppp']


def test_the_j_order_never_raises_the_peak():
    """Up to f, the J programs' primitive stage never peaks above the class
    program's retargeted, and lowers it where the other electron's VRR does
    ((fs|dd): 4 temporaries fewer).  (gg|gg) keeps the class program's:
    its VRR peak (2053 temporaries) is the same either way."""
    lower = []
    for ls in jengine.canonical_classes(3):
        row = jengine.reduction_row(ls)
        assert row['peak_j_ordered'] <= row['peak_j'] and row['peak_j_bra_ordered'] <= row['peak_j_bra']
        if row['peak_j_ordered'] < row['peak_j']:
            lower.append(row['class'])
        eri, prog = host.get_program(*ls), jengine.j_program(*ls)
        assert (prog.eri is eri) == (row['peak_j_ordered'] == row['peak_j'])
    assert lower == ['fsdd']
    row = jengine.reduction_row((3, 0, 2, 2))
    assert (row['peak_j'] - row['peak_j_ordered'], row['peak_j_bra'] - row['peak_j_bra_ordered']) == (4, 4)


def test_j_programs_made_on_threads_at_once_are_those_of_one(monkeypatch):
    """The parts of a J build shared by GPUs make their J programs on threads
    of their own: made at once, they are the programs one thread makes."""
    from concurrent.futures import ThreadPoolExecutor
    from collections import OrderedDict
    classes = [(2, 1, 2, 1), (2, 2, 1, 0), (3, 1, 1, 0), (2, 2, 2, 0), (3, 2, 1, 1), (3, 3, 1, 0)] * 2
    monkeypatch.setattr(jengine, "_PROGRAMS", {})
    monkeypatch.setattr(schedule, "_PRIM_CACHE", OrderedDict())     # built anew, on the threads
    monkeypatch.setattr(schedule, "PRIM_CACHE_SIZE", 2)             # and evicted as they go
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda ls: jengine.j_program(*ls, cart=True), classes))
    monkeypatch.setattr(jengine, "_PROGRAMS", {})
    for ls, prog in zip(classes, got):
        want = jengine.j_program(*ls, cart=True)
        assert (prog.n_temps, prog.n_acc, prog.ctr_starts) == (want.n_temps, want.n_acc, want.ctr_starts)
        for a, b in ((prog.prim, want.prim), (prog.ctr, want.ctr)):
            assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("kind", "dst", "src", "coef"))
        assert np.array_equal(prog.density, want.density) and np.array_equal(prog.target, want.target)


def test_engine_j_takes_screened_tasks_read_once():
    """engine_j with ``tasks`` (as a kept plan hands them, an iterable read
    once) gives the J of screening the density itself; a complex density,
    built as two real ones, refuses them."""
    from pyscf_fusionrcg.jdigest import engine_j
    from pyscf_fusionrcg.jk import cpu_engine
    mol = gto.M(verbose=0, atom=H2O, basis="6-31g*")
    dm = _dms(mol.nao, nset=1)[0]
    dm = dm + dm.T
    engine = jengine.HostJEngine(cpu_engine(mol, 0.0))
    screened = engine_j(mol, dm, engine, progress=False)
    tasks = build_tasks(mol, dm, 0.0, 1e-13, None, True, False)
    given = engine_j(mol, dm, engine, progress=False, tasks=(t for t in tasks))
    np.testing.assert_allclose(given, screened, atol=1e-14, rtol=0)
    ref, _ = scf.hf.get_jk(mol, dm, with_k=False)
    np.testing.assert_allclose(given, ref, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="complex"):
        engine_j(mol, dm + 0.5j * dm, engine, progress=False, tasks=iter(tasks))
