"""GPU path: generated kernels against libcint, and J/K against PySCF's CPU get_jk.

Skipped cleanly without a GPU (the ``gpu`` marker).  References are computed
fresh on the CPU each run; densities are minao guesses, which keeps PySCF's
reference quick on the large bases.
"""
import os
import pathlib

import numpy as np
import pytest
from pyscf import gto, scf

from pyscf_fusionrcg import launch
from pyscf_fusionrcg.jk import JKContext, get_jk
from pyscf_fusionrcg.options import Options

pytestmark = pytest.mark.gpu

REPO = pathlib.Path(__file__).resolve().parents[2]
TOL = 1e-9


def molecules_dir() -> pathlib.Path:
    """$FUSION_MOLECULES, else the geometries shipped in benchmarks/molecules."""
    return pathlib.Path(os.environ.get('FUSION_MOLECULES') or REPO / 'benchmarks' / 'molecules')


def vitamin_c(basis):
    path = molecules_dir() / 'organic' / '020_Vitamin_C.xyz'
    if not path.is_file():
        pytest.skip(f'{path} not found (FUSION_MOLECULES names another folder?)')
    return gto.M(atom=str(path), basis=basis, verbose=0)


def minao_dm(mol):
    return scf.RHF(mol).get_init_guess(key='minao')


def reference_jk(mol, dm, hermi=1, omega=0.0):
    """PySCF's CPU J/K through an SCF object: its direct-SCF screening keeps
    the (VitC/QZVP) reference to a minute on 16 cores."""
    return scf.RHF(mol).get_jk(mol, dm, hermi=hermi, omega=omega or None)


def _check(mol, dm, hermi=1, omega=0.0):
    ref_j, ref_k = reference_jk(mol, dm, hermi, omega)
    vj, vk = get_jk(mol, dm, hermi=hermi, omega=omega, backend='gpu')
    assert np.abs(vj - ref_j).max() < TOL
    assert np.abs(vk - ref_k).max() < TOL


# -------------------------------------------------------------- blocks

SAMPLE = launch.canonical_classes(2) + [
    (3, 0, 0, 0), (3, 1, 2, 0), (3, 3, 1, 1), (3, 3, 3, 3), (4, 0, 0, 0), (4, 2, 3, 1),
    (4, 4, 2, 2), (4, 3, 4, 2), (4, 4, 4, 4), (5, 0, 0, 0), (5, 3, 2, 1), (5, 5, 5, 5)]


@pytest.mark.parametrize('cart', [False, True])
@pytest.mark.parametrize('omega', [0.0, 0.4, -0.4])
def test_engine_blocks_match_libcint(synth, cart, omega):
    from pyscf_fusionrcg.launch import GPUEngine
    mol = synth.mol(cart)
    eng = GPUEngine(mol, omega)
    classes = SAMPLE if omega == 0.0 else SAMPLE[::3]
    for ls in classes:
        got = synth.assemble(eng.quartet_blocks(synth.quartets(ls)))
        err = synth.rel_err(got, synth.reference(mol, ls, omega))
        assert err < (1e-12 if sum(ls) <= 8 else 1e-10), (ls, cart, omega, err)


@pytest.mark.parametrize('tier', ['register', 'shared', 'warp', 'global'])
def test_every_tier_computes_the_same_blocks(synth, tier):
    from pyscf_fusionrcg.launch import GPUEngine
    mol = synth.mol(False)
    eng = GPUEngine(mol, options=Options(tier=tier))
    for ls in [(0, 0, 0, 0), (1, 0, 0, 0), (1, 1, 0, 0), (2, 1, 1, 0)]:
        got = synth.assemble(eng.quartet_blocks(synth.quartets(ls)))
        assert synth.rel_err(got, synth.reference(mol, ls)) < 1e-12, (ls, tier)


def test_classes_sharing_a_warp_kernel_keep_their_shared_memory(synth, monkeypatch):
    """With the interpreter's contracted stage (the accumulators in shared
    memory), (gg|dp) and (gf|gs) run the same levels kernel (max_m 11) with 91
    and 69 KB of shared memory: setting up the smaller one must not lower the
    kernel's limit below what the larger one launches with."""
    from pyscf_fusionrcg.launch import GPUEngine
    mol = synth.mol(False)
    eng = GPUEngine(mol, options=Options(ctr='ops'))
    big, small = (4, 4, 2, 1), (4, 3, 4, 0)
    kb, ks = (launch.get_kernel(ls, False, 0.0, (1, 1, 1, 1), None, 'ops') for ls in (big, small))
    assert kb.variant.tier == ks.variant.tier == 'warp' and kb.name == ks.name
    assert kb.shared > ks.shared > 48 * 1024
    for ls in (big, small, big):
        got = synth.assemble(eng.quartet_blocks(synth.quartets(ls)))
        assert synth.rel_err(got, synth.reference(mol, ls)) < 1e-10, ls


def test_small_budget_splits_batches(synth):
    from pyscf_fusionrcg.launch import GPUEngine
    mol = synth.mol(False)
    ls = (2, 2, 2, 2)
    eng = GPUEngine(mol)
    full = eng.quartet_blocks(synth.quartets(ls))
    kern = launch.get_kernel(ls, False, 0.0, (1, 1, 1, 1))
    # three quartets a batch (with the pairmap stage's buffers where it has them)
    tiny = 8 * (kern.nelem + kern.work_per_quartet) * 3 + 8 * kern.scratch_per_block
    # the pairmap stage's GEMMs may sum in another order for another batch size
    assert np.abs(eng.quartet_blocks(synth.quartets(ls), budget=tiny) - full).max() <= 1e-14 * np.abs(full).max()
    with pytest.raises(MemoryError):
        eng.quartet_blocks(synth.quartets(ls), budget=1024)


@pytest.mark.parametrize('tier,classes', [('warp', [(2, 2, 2, 0), (4, 2, 4, 0), (4, 4, 2, 2)]),
                                           ('global', [(2, 2, 2, 0), (4, 2, 4, 0), (4, 4, 2, 2)])])
def test_pairmap_and_interpreted_contracted_stages_agree(synth, monkeypatch, tier, classes):
    """The levels tiers' default pairmap contracted stage against the same
    kernels running the program's contracted ops, and both against libcint;
    a budget of three quartets a batch splits the pairmap buffers too."""
    from pyscf_fusionrcg.launch import GPUEngine
    mol = synth.mol(False)
    pairmap, interpreted = Options(tier=tier, ctr='pairmap'), Options(tier=tier, ctr='ops')
    for ls in classes:
        q = synth.quartets(ls)
        kern = launch.get_kernel(ls, False, 0.0, (1, 1, 1, 1), tier, 'pairmap')
        assert kern.pairmap and kern.name.endswith('_pm')
        pm = GPUEngine(mol, options=pairmap).quartet_blocks(q)
        tiny = 8 * (kern.nelem + kern.work_per_quartet) * 3 + 8 * kern.scratch_per_block
        assert np.abs(GPUEngine(mol, options=pairmap).quartet_blocks(q, budget=tiny) - pm).max() <= 1e-14 * np.abs(pm).max()
        assert not launch.get_kernel(ls, False, 0.0, (1, 1, 1, 1), tier, 'ops').pairmap
        ops = GPUEngine(mol, options=interpreted).quartet_blocks(q)
        ref = synth.reference(mol, ls)
        assert synth.rel_err(synth.assemble(pm), ref) < 1e-12, ls
        assert np.abs(pm - ops).max() < 1e-12 * np.abs(ops).max(), ls


# -------------------------------------------------------------- J and K

@pytest.mark.parametrize('basis', ['def2-TZVP', 'def2-QZVP', 'cc-pVQZ'])
def test_vitamin_c_jk(basis):
    mol = vitamin_c(basis)
    _check(mol, minao_dm(mol))


def test_cc_pv5z_small_molecule():
    mol = gto.M(atom='O 0 0 0.1173; H 0 0.7572 -0.4692; H 0 -0.7572 -0.4692',
                basis='cc-pV5Z', verbose=0)
    _check(mol, minao_dm(mol))


def test_uhf_stacked_and_general_densities():
    mol = vitamin_c('def2-TZVP')
    dm = minao_dm(mol)
    rng = np.random.default_rng(3)
    noise = rng.normal(scale=1e-2, size=dm.shape)
    dms = np.stack([dm, dm + noise + noise.T])           # alpha, beta
    _check(mol, dms, hermi=1)
    _check(mol, dm + noise, hermi=0)                     # non-hermitian


@pytest.mark.parametrize('omega', [0.3, -0.3])
def test_range_separated_jk(omega):
    mol = vitamin_c('def2-TZVP')
    _check(mol, minao_dm(mol), omega=omega)


def test_j_only_k_only_and_cupy_in_cupy_out():
    import cupy as cp
    mol = gto.M(atom='O 0 0 0.1173; H 0 0.7572 -0.4692; H 0 -0.7572 -0.4692',
                basis='def2-SVP', verbose=0)
    dm = minao_dm(mol)
    ref_j, ref_k = reference_jk(mol, dm)
    vj, vk = get_jk(mol, cp.asarray(dm), with_k=False, backend='gpu')
    assert isinstance(vj, cp.ndarray) and vk is None
    assert float(abs(vj.get() - ref_j).max()) < TOL
    vj, vk = get_jk(mol, dm, with_j=False, backend='gpu')
    assert vj is None and np.abs(vk - ref_k).max() < TOL


def test_digesting_kernels_match_separate_digestion(monkeypatch):
    """J/K with the small register-tier classes digested inside their ERI
    kernels (launch.jk_kernel, the default) equal those with every class in
    an ERI and a digestion kernel (Options(fuse_digestion=False)), and PySCF's, for one
    and two density sets (UHF); every fused class is one launch."""
    import cupy as cp
    from pyscf_fusionrcg.gpu_jk import get_jk_gpu
    from pyscf_fusionrcg.screening import build_tasks
    mol = gto.M(atom='O 0 0 0.1173; H 0 0.7572 -0.4692; H 0 -0.7572 -0.4692; '
                     'O 2.8 0 0; H 3.4 0.7 0.3; H 3.4 -0.7 -0.3', basis='def2-TZVP', verbose=0)
    dm = minao_dm(mol)
    rng = np.random.default_rng(5)
    noise = rng.normal(scale=1e-2, size=dm.shape)
    for dms in (dm[None], np.stack([dm, dm + noise + noise.T])):
        d = cp.asarray(dms)
        tasks = build_tasks(mol, d, xp=cp)
        profile = {}
        fused = get_jk_gpu(mol, d, tasks=tasks, profile=profile)
        assert any(r['fused_ms'] > 0 for r in profile.values())
        apart = get_jk_gpu(mol, d, tasks=tasks, options=Options(fuse_digestion=False))
        for a, b in zip(fused, apart):
            assert float(abs(a - b).max()) < 1e-12
        ref_j, ref_k = reference_jk(mol, dms)
        assert np.abs(fused[0].get() - ref_j).max() < TOL and np.abs(fused[1].get() - ref_k).max() < TOL


def test_profile_accounts_for_every_quartet():
    """get_jk_gpu(profile=) times every class's ERI and digestion kernels and
    counts each screened quartet once; the J/K it returns are unchanged."""
    import cupy as cp
    from pyscf_fusionrcg.gpu_jk import get_jk_gpu
    from pyscf_fusionrcg.screening import build_tasks
    mol = gto.M(atom='O 0 0 0.1173; H 0 0.7572 -0.4692; H 0 -0.7572 -0.4692',
                basis='def2-TZVP', verbose=0)
    dms = cp.asarray(minao_dm(mol))[None]
    tasks = build_tasks(mol, dms, xp=cp)
    profile = {}
    vj, vk = get_jk_gpu(mol, dms, tasks=tasks, profile=profile)
    plain = get_jk_gpu(mol, dms, tasks=tasks)
    # digestion adds with atomics, so the last bits follow the order of the adds
    assert float(abs(vj - plain[0]).max()) < 1e-12 and float(abs(vk - plain[1]).max()) < 1e-12
    assert sum(r['quartets'] for r in profile.values()) == sum(len(t.quartets) for t in tasks)
    # each class either in ERI and digestion kernels or in one kernel doing both
    assert all((r['eri_ms'] > 0 and r['digest_ms'] > 0) != (r['fused_ms'] > 0) for r in profile.values())
    assert any(r['fused_ms'] > 0 for r in profile.values()) and any(r['digest_ms'] > 0 for r in profile.values())


def test_plans_are_reused_within_their_density_range():
    """A JKContext screens one plan for the density's largest element,
    reuses it for densities it covers, builds a much smaller density change
    from that density's own blocks, and gives the J/K of a one-off build."""
    import cupy as cp
    from pyscf_fusionrcg.gpu_jk import PLAN_REUSE_RANGE, JKPlan
    mol = gto.M(atom='O 0 0 0.1173; H 0 0.7572 -0.4692; H 0 -0.7572 -0.4692',
                basis='def2-TZVP', verbose=0)
    dm = minao_dm(mol)
    ref_j, ref_k = reference_jk(mol, dm)
    context = JKContext(mol, backend='gpu')
    vj, vk = context.get_jk(dm)
    plan = context.plan
    assert isinstance(plan, JKPlan) and plan.bound == pytest.approx(np.abs(dm).max())
    assert np.abs(vj - ref_j).max() < TOL and np.abs(vk - ref_k).max() < TOL
    vj2, vk2 = context.get_jk(cp.asarray(0.9 * dm))
    assert context.plan is plan
    assert float(abs(vj2.get() - 0.9 * vj).max()) < TOL and float(abs(vk2.get() - 0.9 * vk).max()) < TOL
    small = dm / (2 * PLAN_REUSE_RANGE)
    vj3, _ = context.get_jk(small)
    assert context.plan is plan and np.abs(vj3 - ref_j / (2 * PLAN_REUSE_RANGE)).max() < TOL
    context.get_jk(2 * dm)
    assert context.plan is not plan and context.plan.bound == pytest.approx(2 * np.abs(dm).max())


@pytest.mark.parametrize('with_j,with_k', [(True, True), (True, False), (False, True)])
def test_density_change_filters_the_plan_or_screens_anew_with_the_same_jk(monkeypatch, with_j, with_k):
    """A density change far below the plan's bound either filters the plan's
    quartets (RestrictedPlan, when screening it anew would look at
    PLAN_RESTRICT_SHARE of the plan or more) or is screened and sorted anew;
    both give the J/K of PySCF, and each other's to 1e-12.  Either way the
    build takes its density's block maxima once, on the device.  A new
    screening threshold makes a new plan."""
    import cupy as cp
    from pyscf_fusionrcg import gpu_jk, jk, screening
    mol = vitamin_c('def2-SVP')
    dm = minao_dm(mol)
    change = 1e-4 * dm * np.exp(-0.02 * np.add.outer(np.arange(mol.nao), np.arange(mol.nao)))
    ref_j, ref_k = reference_jk(mol, change)
    context = JKContext(mol, backend='gpu')
    context.get_jk(dm)
    plan = context.plan
    taken = []
    monkeypatch.setattr(gpu_jk.RestrictedPlan, '__init__', _spy(gpu_jk.RestrictedPlan.__init__, taken, 'filtered'))
    monkeypatch.setattr(jk, 'iter_tasks', _spy(jk.iter_tasks, taken, 'screened'))
    monkeypatch.setattr(screening, "device_shell_density_max",
                        _spy(screening.device_shell_density_max, taken, 'block maxima'))
    out = {}
    for share, path in ((0.0, 'filtered'), (float('inf'), 'screened')):
        monkeypatch.setattr(gpu_jk, 'PLAN_RESTRICT_SHARE', share)
        del taken[:]
        out[path] = context.get_jk(cp.asarray(change), with_j=with_j, with_k=with_k)
        assert taken == ['block maxima', path] and context.plan is plan
    for got, want, ref in zip(out['filtered'], out['screened'], (ref_j, ref_k)):
        if ref is None or got is None:
            assert got is None and want is None
            continue
        assert float(abs(got - want).max()) < 1e-12
        assert np.abs(got.get() - ref).max() < TOL
    context.get_jk(dm, direct_scf_tol=1e-11)
    assert context.plan is not plan and context.plan.tol == 1e-11


def test_device_block_maxima_equal_the_hosts():
    """shell_density_max of a CuPy density (plan.cu's fr_shell_block_max) is
    the host's to the last bit, over several non-symmetric matrices, and keeps
    a NaN in its block (both orientations), as NumPy does; for a complex
    density it bounds the modulus, as the host does (a build of one screens
    both of its parts with it)."""
    import cupy as cp
    from pyscf_fusionrcg.screening import shell_density_max
    mol = vitamin_c('def2-TZVP')
    rng = np.random.default_rng(7)
    dms = rng.standard_normal((3, mol.nao, mol.nao)) * np.exp(-rng.uniform(0, 20, (3, mol.nao, mol.nao)))
    got = shell_density_max(mol, cp.asarray(dms))
    assert isinstance(got, cp.ndarray) and got.dtype == np.float64
    np.testing.assert_array_equal(got.get(), shell_density_max(mol, dms))
    z = dms[0] + 1j * dms[1]
    got = shell_density_max(mol, cp.asarray(z)).get()
    np.testing.assert_allclose(got, shell_density_max(mol, z), rtol=1e-15, atol=0)
    for part in dms[:2]:    # the modulus, to its last bit
        assert (got >= (1 - 2**-52) * shell_density_max(mol, part)).all()
    dms[2, mol.ao_loc[5] + 1, mol.ao_loc[9]] = np.nan
    got, want = shell_density_max(mol, cp.asarray(dms)).get(), shell_density_max(mol, dms)
    assert np.isnan(got[5, 9]) and np.isnan(got[9, 5]) and np.isnan(got).sum() == 2
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('with_j,with_k,rows', [(True, True, None), (True, False, None), (False, True, None),
                                                (True, True, 10_001)])
def test_restricted_plan_keeps_what_kept_quartets_keeps(monkeypatch, with_j, with_k, rows):
    """A plan keeps 16-bit shell indices (8 bytes a quartet); restricting it
    to a density's blocks (plan.cu's count and compaction, also over pieces
    of ``rows`` that end inside a tile) keeps exactly the rows
    screening.kept_quartets keeps, in the plan's order, as int32 for the
    kernels, with one read of the counts by the host; iterating the whole
    plan hands on every row."""
    import cupy as cp
    from pyscf_fusionrcg import gpu_jk
    from pyscf_fusionrcg.gpu_jk import JKPlan
    from pyscf_fusionrcg.screening import kept_quartets, shell_density_max
    if rows is not None:
        monkeypatch.setattr(gpu_jk, '_RESTRICT_ROWS', rows)
    mol = vitamin_c('def2-SVP')
    dm = minao_dm(mol)
    plan = JKPlan.screen(mol, 4 * float(np.abs(dm).max()))
    assert all(c.quartets.dtype == np.uint16 for c in plan.classes)
    assert plan.nbytes == 8 * plan.quartets
    whole = cp.concatenate([c.quartets.astype(cp.int32) for c in plan.classes])
    listed = list(plan)
    assert all(c.quartets.dtype == np.int32 for c in listed)
    assert bool((cp.concatenate([c.quartets for c in listed]) == whole).all())
    dcond = shell_density_max(mol, dm)
    want = whole[kept_quartets(whole, plan.q32, cp.asarray(dcond, dtype=cp.float32), plan.tol,
                               with_j, with_k, xp=cp)]
    reads = []
    monkeypatch.setattr(gpu_jk, '_host_totals', _spy(gpu_jk._host_totals, reads, 'counts'))
    got = [c.quartets for c in plan.restricted(dcond, with_j, with_k)]
    assert reads == ['counts']      # the host waits once a build, not once a class
    assert all(c.dtype == np.int32 and c.flags.c_contiguous for c in got)
    got = cp.concatenate(got)
    assert 0 < len(got) < len(whole) and got.shape == want.shape and bool((got == want).all())


def _spy(fn, taken, name):
    def call(*args, **kwargs):
        taken.append(name)
        return fn(*args, **kwargs)
    return call


def test_streamed_build_equals_the_listed_one():
    """get_jk_gpu on an iter_tasks stream (small chunks: several per class)
    orders and digests one chunk at a time, and gives the listed tasks' J/K."""
    import cupy as cp
    from pyscf_fusionrcg.gpu_jk import get_jk_gpu
    from pyscf_fusionrcg.screening import build_tasks, iter_tasks
    mol = gto.M(atom='O 0 0 0.1173; H 0 0.7572 -0.4692; H 0 -0.7572 -0.4692',
                basis='def2-TZVP', verbose=0)
    dm = minao_dm(mol)
    dms = cp.asarray(dm)[None]
    listed = get_jk_gpu(mol, dms, tasks=build_tasks(mol, dms, xp=cp))
    streamed = get_jk_gpu(mol, dms, tasks=iter_tasks(mol, dms, xp=cp, chunk=5000))
    for a, b in zip(listed, streamed):
        assert float(abs(a - b).max()) < 1e-12
    ref_j, ref_k = reference_jk(mol, dm)
    assert np.abs(streamed[0].get()[0] - ref_j).max() < TOL
    assert np.abs(streamed[1].get()[0] - ref_k).max() < TOL


def test_a_plan_that_does_not_fit_streams_the_builds(monkeypatch):
    """A plan stops screening once its quartets pass max_bytes (PlanTooLarge,
    a MemoryError that says how much); get_jk then streams every build of the
    geometry instead of running out of GPU memory, with the same J/K."""
    from pyscf_fusionrcg import jk
    from pyscf_fusionrcg.gpu_jk import JKPlan, PlanTooLarge
    mol = gto.M(atom='O 0 0 0.1173; H 0 0.7572 -0.4692; H 0 -0.7572 -0.4692',
                basis='def2-TZVP', verbose=0)
    dm = minao_dm(mol)
    with pytest.raises(PlanTooLarge, match='GiB of GPU memory'):
        JKPlan.screen(mol, float(np.abs(dm).max()), max_bytes=1000)
    monkeypatch.setattr(jk, 'PLAN_MEMORY_SHARE', 1e-9)     # about 140 bytes of an H200
    context = JKContext(mol, backend='gpu')
    ref_j, ref_k = reference_jk(mol, dm)
    vj, vk = context.get_jk(dm)
    assert context.streams and context.plan is None
    assert np.abs(vj - ref_j).max() < TOL and np.abs(vk - ref_k).max() < TOL
    vj2, _ = context.get_jk(2 * dm)
    assert context.streams and context.plan is None and np.abs(vj2 - 2 * ref_j).max() < 2 * TOL


def test_a_molecule_beyond_the_plan_indices_streams_the_builds(monkeypatch):
    """A plan keeps 16-bit shell indices: for a molecule with more shells
    JKPlan says so, and get_jk streams every build (same J/K)."""
    from pyscf_fusionrcg import gpu_jk
    mol = gto.M(atom='O 0 0 0.1173; H 0 0.7572 -0.4692; H 0 -0.7572 -0.4692',
                basis='def2-TZVP', verbose=0)
    dm = minao_dm(mol)
    monkeypatch.setattr(gpu_jk, 'PLAN_MAX_SHELLS', mol.nbas - 1)
    with pytest.raises(ValueError, match='16-bit shell indices.*stream its tasks'):
        gpu_jk.JKPlan.screen(mol, float(np.abs(dm).max()))
    context = JKContext(mol, backend='gpu')
    ref_j, ref_k = reference_jk(mol, dm)
    vj, vk = context.get_jk(dm)
    assert context.streams and context.plan is None
    assert np.abs(vj - ref_j).max() < TOL and np.abs(vk - ref_k).max() < TOL


def test_plan_for_another_basis_or_operator_is_refused():
    """get_jk_gpu names both sides when handed a plan made for another
    molecule size or range-separation parameter, instead of digesting
    quartets that index the wrong AOs."""
    from pyscf_fusionrcg.gpu_jk import JKPlan, get_jk_gpu
    from pyscf_fusionrcg.screening import build_tasks
    small = gto.M(atom='He 0 0 0', basis='cc-pVDZ', verbose=0)
    large = gto.M(atom='He 0 0 0', basis='cc-pVTZ', verbose=0)
    dm = minao_dm(large)
    plan = JKPlan(small, build_tasks(small, minao_dm(small)))
    with pytest.raises(ValueError, match=f'nao={small.nao}.*nao={large.nao}'):
        get_jk_gpu(large, dm, tasks=plan)
    plan = JKPlan(large, build_tasks(large, dm, omega=0.3), omega=0.3)
    with pytest.raises(ValueError, match='omega=0.3.*omega=0.0'):
        get_jk_gpu(large, dm, tasks=plan)


def test_complex_density_gives_the_jk_of_its_parts():
    """A complex density (screened by its modulus' block maxima) gives J and K
    linear in its real and imaginary parts, each equal to PySCF's."""
    mol = gto.M(atom='O 0 0 0; H 0 0.76 0.59; H 0 -0.76 0.59', basis='def2-SVP', verbose=0)
    rng = np.random.default_rng(3)
    re, im = (rng.standard_normal((mol.nao, mol.nao)) for _ in range(2))
    im *= 1e-3
    vj, vk = get_jk(mol, re + 1j * im, hermi=0, backend='gpu')
    for v, parts in zip((vj, vk), zip(*(scf.hf.get_jk(mol, x, hermi=0) for x in (re, im)))):
        np.testing.assert_allclose(v, parts[0] + 1j * parts[1], atol=TOL, rtol=0)
