"""Task lists: canonical unique quartets, degeneracies, Schwarz and density screening."""
import numpy as np
import pytest
from pyscf import gto

from pyscf_fusionrcg.jk import LibcintBlocks, get_jk
from pyscf_fusionrcg.screening import (build_tasks, iter_tasks, kept_quartets, schwarz_bounds,
                                       schwarz_candidates, shell_density_max, sorted_pair_bounds)

WATER = "O 0 0 0.117; H 0 0.757 -0.469; H 0 -0.757 -0.469"


@pytest.fixture(scope="module")
def water_ccpvdz():
    # cc-pVDZ has generally contracted shells (nctr = 2): several shapes per class.
    return gto.M(atom=WATER, basis="cc-pvdz", verbose=0)


def _rand_dm(mol, seed=0, sym=True):
    rng = np.random.default_rng(seed)
    dm = rng.standard_normal((mol.nao, mol.nao))
    return dm + dm.T if sym else dm


@pytest.mark.parametrize("omega", [0.0, 0.3, -0.3])
@pytest.mark.parametrize("cart", [False, True])
def test_schwarz_bounds_match_diagonal_integrals(omega, cart):
    mol = gto.M(atom=WATER, basis="6-31g*", cart=cart, verbose=0)
    intor = "int2e_cart" if cart else "int2e_sph"
    ref = np.empty((mol.nbas, mol.nbas))
    with mol.with_range_coulomb(omega):
        for i in range(mol.nbas):
            for j in range(mol.nbas):
                ref[i, j] = np.sqrt(abs(mol.intor_by_shell(intor, (i, j, i, j))).max())
    np.testing.assert_allclose(schwarz_bounds(mol, omega), ref, rtol=1e-12, atol=1e-14)


def test_shell_density_max_covers_both_orientations(water_ccpvdz):
    mol = water_ccpvdz
    dm = np.zeros((2, mol.nao, mol.nao))
    dm[1, 0, mol.nao - 1] = -3.0
    d = shell_density_max(mol, dm)
    assert d[0, mol.nbas - 1] == d[mol.nbas - 1, 0] == 3.0
    assert d.sum() == 6.0


def test_tasks_from_given_block_maxima_do_not_read_the_density(water_ccpvdz):
    """iter_tasks with the density's block maxima (``block_max``, as a GPU
    build passes them) screens the same quartets without reading ``dms``."""
    mol = water_ccpvdz
    dm = _rand_dm(mol)
    want = build_tasks(mol, dm, direct_scf_tol=1e-8)
    got = list(iter_tasks(mol, None, direct_scf_tol=1e-8, chunk=None, block_max=shell_density_max(mol, dm)))
    assert [(t.key, t.nctr) for t in got] == [(t.key, t.nctr) for t in want]
    assert all(np.array_equal(g.quartets, w.quartets) for g, w in zip(got, want))
    assert sum(map(len, got)) > 0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_density_is_refused_not_screened_away(water_ccpvdz, bad):
    """A NaN passes no screening bound: the tasks would be empty and J = K = 0.
    The screening (of every path: tasks, plans, get_jk) refuses it instead."""
    mol = water_ccpvdz
    dm = _rand_dm(mol)
    dm[3, 5] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        build_tasks(mol, dm)
    with pytest.raises(ValueError, match="NaN or infinite"):
        get_jk(mol, dm, engine=LibcintBlocks(mol))
    with pytest.raises(ValueError, match="NaN or infinite"):
        iter_tasks(mol, None, density_bound=bad)


def test_unscreened_tasks_enumerate_each_unique_quartet_once(water_ccpvdz):
    mol = water_ccpvdz
    tasks = build_tasks(mol, _rand_dm(mol), direct_scf_tol=0.0)
    ls = mol._bas[:, gto.ANG_OF]
    nctr = mol._bas[:, gto.NCTR_OF]
    seen = set()
    for t in tasks:
        q = t.quartets
        assert q.dtype == np.int32 and q.shape[1] == 4
        assert t.degeneracy.dtype == np.float64 and t.degeneracy.shape == (len(q),)
        assert (ls[q] == t.key).all() and (nctr[q] == t.nctr).all()
        la, lb, lc, ld = t.key
        assert la >= lb and lc >= ld and (la, lb) >= (lc, ld)
        a, b, c, d = q.T
        assert ((ls[a] > ls[b]) | (a >= b)).all() and ((ls[c] > ls[d]) | (c >= d)).all()
        if (la, lb) == (lc, ld):
            assert ((a > c) | ((a == c) & (b >= d))).all()
        expect = 0.5 ** ((a == b).astype(int) + (c == d) + ((a == c) & (b == d)))
        np.testing.assert_array_equal(t.degeneracy, expect)
        for row in q:
            i, j, k, l = (int(x) for x in row)
            ij, kl = (max(i, j), min(i, j)), (max(k, l), min(k, l))
            key = (max(ij, kl), min(ij, kl))
            assert key not in seen
            seen.add(key)
    npair = mol.nbas * (mol.nbas + 1) // 2
    assert len(seen) == npair * (npair + 1) // 2


def test_degeneracy_times_8_covers_every_ao_quartet(water_ccpvdz):
    mol = water_ccpvdz
    dims = np.diff(mol.ao_loc)
    total = sum(8 * (t.degeneracy * dims[t.quartets].prod(axis=1)).sum()
                for t in build_tasks(mol, _rand_dm(mol), direct_scf_tol=0.0))
    assert total == pytest.approx(mol.nao ** 4, rel=1e-14)


def test_zero_density_or_nothing_asked_gives_no_tasks(water_ccpvdz):
    mol = water_ccpvdz
    assert build_tasks(mol, np.zeros((mol.nao, mol.nao))) == []
    assert build_tasks(mol, _rand_dm(mol), with_j=False, with_k=False) == []


def test_density_screening_drops_far_blocks_and_keeps_accuracy():
    """Two waters 30 A apart with a block-diagonal density: K couples nothing across."""
    far = WATER + "; " + "; ".join(
        f"{s} {x} {y} {z + 30.0}" for s, x, y, z in
        (("O", 0, 0, 0.117), ("H", 0, 0.757, -0.469), ("H", 0, -0.757, -0.469)))
    mol = gto.M(atom=far, basis="6-31g", verbose=0)
    half = mol.nao // 2
    dm = np.zeros((mol.nao, mol.nao))
    dm[:half, :half] = dm[half:, half:] = _rand_dm(gto.M(atom=WATER, basis="6-31g"), 1)
    q = schwarz_bounds(mol)
    n_all = sum(len(t) for t in build_tasks(mol, dm, direct_scf_tol=0.0, q_cond=q))
    n_jk = sum(len(t) for t in build_tasks(mol, dm, q_cond=q))
    n_k = sum(len(t) for t in build_tasks(mol, dm, q_cond=q, with_j=False))
    n_j = sum(len(t) for t in build_tasks(mol, dm, q_cond=q, with_k=False))
    # K needs all four shells on one water; J also couples the two waters.
    assert n_k < n_j == n_jk < n_all
    ref = get_jk(mol, dm, direct_scf_tol=0.0, engine=LibcintBlocks(mol), q_cond=q)
    got = get_jk(mol, dm, direct_scf_tol=1e-13, engine=LibcintBlocks(mol), q_cond=q)
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g, r, atol=1e-11)


def test_density_bound_keeps_every_quartet_the_blocks_keep(water_ccpvdz):
    """Tasks screened with max |D| on every block (a reusable plan) hold every
    quartet that the density's own blocks keep, and more."""
    mol = water_ccpvdz
    dm = _rand_dm(mol, 2) * np.exp(-np.add.outer(np.arange(mol.nao), np.arange(mol.nao)))
    q = schwarz_bounds(mol)

    def quartets(tasks):
        return {tuple(x) for t in tasks for x in t.quartets.tolist()}

    tol = 1e-9
    own = quartets(build_tasks(mol, dm, direct_scf_tol=tol, q_cond=q))
    bound = quartets(build_tasks(mol, None, direct_scf_tol=tol, q_cond=q, density_bound=np.abs(dm).max()))
    assert own < bound
    assert build_tasks(mol, None, q_cond=q, density_bound=0.0) == []


@pytest.mark.parametrize("tol", [0.0, 1e-8])
def test_streamed_chunks_are_the_task_lists_rows_in_order(water_ccpvdz, tol):
    """iter_tasks gives build_tasks' rows per (class, contraction shape), in the
    same order, in contiguous chunks of at most `chunk` rows; its shapes, known
    before screening, cover every chunk's (equal to them without screening)."""
    mol = water_ccpvdz
    dm = _rand_dm(mol, seed=3)
    dm[: mol.nao // 2, mol.nao // 2:] = dm[mol.nao // 2:, : mol.nao // 2] = 0.0
    whole = {(t.key, t.nctr): t.quartets for t in build_tasks(mol, dm, direct_scf_tol=tol)}
    stream = iter_tasks(mol, dm, direct_scf_tol=tol, chunk=7)
    parts = {}
    for t in stream:
        assert 0 < len(t) <= 7 and t.quartets.flags.c_contiguous and t.quartets.dtype == np.int32
        parts.setdefault((t.key, t.nctr), []).append(t.quartets)
    assert parts.keys() == whole.keys() and set(whole) <= stream.shapes
    for shape, rows in parts.items():
        np.testing.assert_array_equal(np.concatenate(rows), whole[shape])
    assert any(len(rows) > 1 for rows in parts.values())
    if tol == 0.0:
        assert stream.shapes == set(whole)
    assert list(stream) == []       # iterable once: the chunks are not kept


def _unique(rows):
    """Quartets as sets of the canonical form of their 8 orderings."""
    pairs = np.sort(np.asarray(rows).reshape(-1, 2, 2), axis=2)
    return {tuple(sorted(map(tuple, q))) for q in pairs.tolist()}


@pytest.fixture(scope="module")
def two_waters():
    return gto.M(atom=WATER + "; O 3 0 0.117; H 3 0.757 -0.469; H 3 -0.757 -0.469",
                 basis="cc-pvdz", verbose=0)


@pytest.mark.parametrize("with_j,with_k", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("scale", [1e-2, 1e-4, 1e-6])
def test_filtering_a_bound_plan_keeps_what_screening_the_density_keeps(two_waters, scale, with_j, with_k):
    """kept_quartets on a plan's quartets (screened with a larger bound on
    every block, in any of their 8 orderings) keeps exactly the quartets that
    screening a smaller density's own blocks keeps: an SCF's density change
    can reuse the plan instead of screening and sorting anew."""
    mol, tol = two_waters, 1e-9
    q = schwarz_bounds(mol)
    dm = _rand_dm(mol, 4)
    plan = np.concatenate([t.quartets for t in build_tasks(mol, None, direct_scf_tol=tol, q_cond=q,
                                                           density_bound=np.abs(dm).max())])
    rng = np.random.default_rng(5)
    for i, j in ((0, 1), (2, 3)):       # the plan's orientation swaps shells within pairs
        swap = rng.random(len(plan)) < 0.5
        plan[swap, i], plan[swap, j] = plan[swap, j], plan[swap, i].copy()
    change = dm * scale * np.exp(-0.05 * np.add.outer(np.arange(mol.nao), np.arange(mol.nao)))
    own = _unique(np.concatenate([t.quartets for t in build_tasks(mol, change, direct_scf_tol=tol, q_cond=q,
                                                                  with_j=with_j, with_k=with_k)]))
    keep = kept_quartets(plan, q.astype(np.float32), shell_density_max(mol, change).astype(np.float32),
                         tol, with_j, with_k)
    assert 0 < len(own) < len(plan)
    assert _unique(plan[keep]) == own and keep.sum() == len(own)
    assert not kept_quartets(plan, q.astype(np.float32), np.ones((mol.nbas,) * 2, np.float32), tol,
                             False, False).any()


@pytest.mark.parametrize("tol", [1e-13, 1e-9, 1e-6])
@pytest.mark.parametrize("density_max", [1.0, 1e-3])
def test_schwarz_candidates_count_the_quartets_of_a_density_bound(two_waters, tol, density_max):
    """schwarz_candidates, counted from the sorted pair bounds alone, is the
    number of quartets that screening with that bound on every block keeps."""
    q = schwarz_bounds(two_waters)
    kept = sum(len(t) for t in build_tasks(two_waters, None, direct_scf_tol=tol, q_cond=q,
                                           density_bound=density_max))
    assert schwarz_candidates(sorted_pair_bounds(q), density_max, tol) == kept > 0
    assert schwarz_candidates(sorted_pair_bounds(q), 0.0, tol) == 0


def test_plan_kernels_get_every_macro_plan_cu_leaves_to_its_caller():
    """plan.cu uses FR_PLAN_ROUNDS without defining it: a misspelt define
    would only show as a compile error on the GPU."""
    import re

    from gpucore import read_source
    from pyscf_fusionrcg.screening import PLAN_DEFINES
    text = read_source('fusionrcg/plan.cu')
    code = re.sub(r'//.*', '', text)
    used = set(re.findall(r'\bFR_[A-Z_]+\b', code))
    defined = set(re.findall(r'#\s*define\s+(FR_[A-Z_]+)', code))
    assert used - defined == set(PLAN_DEFINES) and used - defined
