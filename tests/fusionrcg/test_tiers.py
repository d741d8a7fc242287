"""Tier routing: the static choice from the peak live set, and the measured
re-routing on spills (with a fake compiler on the CPU, the real one on a GPU)."""
import json
import multiprocessing
import os
import shutil

import pytest

from pyscf_fusionrcg import codegen, host, kernels, launch, pairmaps, tiers
from pyscf_fusionrcg.options import Options


@pytest.fixture
def fresh_cache(monkeypatch, tmp_path):
    """Routing decisions in a private file, none in memory."""
    monkeypatch.setattr(tiers, '_decisions', {})
    monkeypatch.setattr(tiers, '_disk_path', lambda: tmp_path / 'tiers.json')
    return tmp_path / 'tiers.json'


def test_static_choice_follows_program_size(monkeypatch):
    assert tiers.choose_tier(host.get_program(0, 0, 0, 0)) == 'register'
    assert tiers.choose_tier(host.get_program(2, 1, 2, 1)) == 'register'    # 2134 statements
    assert tiers.choose_tier(host.get_program(2, 2, 2, 2)) == 'warp'        # 11420 statements
    assert tiers.choose_tier(host.get_program(4, 4, 4, 4)) == 'warp'        # 2377 slots a warp (23402 with its acc.)
    prog = host.get_program(1, 0, 0, 0)
    for size, tier in ((tiers.REG_STATEMENTS_MAX, 'register'), (tiers.REG_STATEMENTS_MAX + 1, 'warp')):
        monkeypatch.setattr(tiers, 'n_statements', lambda p, v=size: v)
        assert tiers.choose_tier(prog) == tier
    monkeypatch.setattr(codegen, 'warp_block', lambda p, v, t=None: 0)   # one warp's slots do not fit
    assert tiers.choose_tier(prog) == 'global'


def test_form_follows_program_size():
    small, big = host.get_program(1, 1, 0, 0), host.get_program(2, 2, 2, 2)
    assert tiers.variant_for(small, 'shared').form == 'straight'
    assert tiers.variant_for(big, 'shared').form == 'table'
    assert tiers.variant_for(big, 'global').form == 'levels'
    assert tiers.variant_for(small, 'register').form == 'straight'
    assert tiers.variant_for(small, 'warp').form == tiers.variant_for(big, 'warp').form == 'levels'


def test_contracted_stage_mode_follows_size_and_requests(monkeypatch):
    mid, big = host.get_program(3, 3, 2, 0), host.get_program(4, 3, 4, 2)
    # (hh|ds): enough accumulators, but pair matrices 20 times as large;
    # (gd|gs): an s shell, which no longer keeps the interpreter
    skinny, with_s = host.get_program(5, 5, 2, 0), host.get_program(4, 2, 4, 0)
    assert mid.n_acc < tiers.PAIRMAP_ACC_MIN <= min(skinny.n_acc, with_s.n_acc, big.n_acc)
    assert pairmaps.matrix_doubles(skinny) > tiers.PAIRMAP_MATRIX_RATIO * skinny.n_acc
    for p in (with_s, big):
        assert pairmaps.matrix_doubles(p) <= tiers.PAIRMAP_MATRIX_RATIO * p.n_acc
    assert tiers.variant_for(skinny, 'warp').ctr == tiers.variant_for(mid, 'warp').ctr == 'ops'
    assert tiers.variant_for(with_s, 'warp').ctr == 'pairmap'
    assert tiers.variant_for(big, 'warp').ctr == tiers.variant_for(big, 'global').ctr == 'pairmap'
    # only the levels form with one contraction tuple has the choice
    assert tiers.variant_for(big, 'shared').ctr == 'ops'
    assert tiers.variant_for(big, 'warp', nctr=(1, 2, 1, 1)).ctr == 'ops'
    assert tiers.variant_for(mid, 'warp', ctr='pairmap').ctr == 'pairmap'
    assert tiers.variant_for(big, 'register').ctr == 'ops'
    assert tiers.variant_for(big, 'warp', ctr='ops').ctr == 'ops'
    with pytest.raises(ValueError, match='contracted stage must be one of'):
        tiers.variant_for(big, 'warp', ctr='dense')


def _fake_measure(spills, calls):
    def measure(program, variant):
        calls.append(variant.tier)
        return {'registers': 255, 'spill_bytes': spills[variant.tier], 'shared_bytes': 0,
                'compiler': 'fake'}
    return measure


def test_spilling_register_variant_moves_to_warp_then_global(monkeypatch, fresh_cache):
    prog = host.get_program(1, 0, 0, 0)
    calls = []
    monkeypatch.setattr(tiers, 'measure', _fake_measure(
        {'register': tiers.SPILL_BYTES_MAX + 8, 'warp': 0, 'global': 0}, calls))
    variant, stats = tiers.route(prog)
    assert variant.tier == stats['tier'] == 'warp' and calls == ['register', 'warp']

    prog2 = host.get_program(1, 1, 0, 0)
    calls.clear()
    monkeypatch.setattr(tiers, 'measure', _fake_measure(
        dict.fromkeys(codegen.TIERS, tiers.SPILL_BYTES_MAX + 8), calls))
    variant, stats = tiers.route(prog2)
    assert variant.tier == 'warp' and calls == ['register', 'warp']

    calls.clear()
    monkeypatch.setattr(tiers, '_decisions', {})
    fresh_cache.unlink()
    monkeypatch.setattr(codegen, 'warp_block', lambda p, v, t=None: 0)
    variant, stats = tiers.route(prog2)
    assert variant.tier == 'global' and calls == ['register', 'global']


def test_decisions_are_cached_in_memory_and_on_disk(monkeypatch, fresh_cache):
    prog = host.get_program(1, 0, 0, 0)
    calls = []
    monkeypatch.setattr(tiers, 'measure', _fake_measure({'register': 0}, calls))
    first = tiers.compile_stats(prog)
    assert first['tier'] == 'register' and calls == ['register']
    assert tiers.compile_stats(prog) == first and calls == ['register']
    assert fresh_cache.is_file()
    monkeypatch.setattr(tiers, '_decisions', {})
    assert tiers.compile_stats(prog) == first and calls == ['register']   # from disk


def _save_keys(first, n):
    for k in range(first, first + n):
        tiers._save_disk(f'key{k}', {'tier': 'register', 'k': k})


@pytest.mark.skipif(not hasattr(os, 'fork'), reason='needs fork to share the patched path')
def test_decisions_saved_by_several_processes_at_once_are_all_kept(fresh_cache):
    """Each save reads the file, adds its key and replaces the file: processes
    routing at the same time (pytest-xdist, several SCF scripts) must not
    drop each other's decisions (gpucore.locked around the update)."""
    ctx = multiprocessing.get_context('fork')
    procs = [ctx.Process(target=_save_keys, args=(40 * i, 40)) for i in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 6
    saved = json.loads(fresh_cache.read_text())
    assert sorted(v['k'] for v in saved.values()) == list(range(240))


def test_routes_asked_for_different_contracted_stages_are_kept_apart(monkeypatch, fresh_cache):
    """A warp-tier class routed with ctr='pairmap' is another kernel than the
    one 'auto' routes (where pairmap does not pay): the two decisions do not
    share a cache entry."""
    calls = []
    monkeypatch.setattr(tiers, 'measure', _fake_measure({'warp': 0}, calls))
    prog = host.get_program(3, 3, 2, 0)
    assert not tiers.pairmap_pays(prog)
    assert tiers.route(prog, tier='warp')[0].ctr == 'ops'
    assert tiers.route(prog, tier='warp', ctr='pairmap')[0].ctr == 'pairmap'
    assert calls == ['warp', 'warp']


def test_asked_for_pairmap_the_register_tier_runs_the_ops(monkeypatch, fresh_cache):
    """The register tier has no pairmap form: a Variant asking for one is
    refused, and ctr='pairmap' (a choice where the form has one) gives that
    tier the ops, forced or routed there by size; (fd|fp), too large for the
    register tier, starts at the warp tier and takes the pairmap stage there."""
    small, prog = host.get_program(2, 1, 1, 0), host.get_program(3, 2, 3, 1)
    with pytest.raises(ValueError, match="ctr='pairmap' needs the warp or global tier's levels form"):
        codegen.Variant('register', ctr='pairmap')
    assert tiers.variant_for(prog, 'register', ctr='pairmap').ctr == 'ops'
    calls = []
    monkeypatch.setattr(tiers, 'measure', _fake_measure({'register': 0, 'warp': 0}, calls))
    assert tiers.route(prog, tier='register', ctr='pairmap')[0].ctr == 'ops'
    assert tiers.route(small, ctr='pairmap')[0] == tiers.variant_for(small, 'register')
    assert tiers.route(prog, ctr='pairmap')[0].ctr == 'pairmap'
    assert calls == ['register', 'register', 'warp']


def test_a_pairmap_kernel_does_not_digest():
    """The digesting variant computes blocks in registers; a pairmap one
    (levels form) leaves them to the side passes, so a J/K build never asks
    it to digest, and no variant digests them."""
    prog = host.get_program(1, 0, 0, 0)
    kern = type('K', (), {'variant': codegen.make_variant(prog, 'warp', ctr='pairmap'), 'nelem': 3})()
    plain = type('K', (), {'variant': codegen.make_variant(prog, 'register'), 'nelem': 3})()
    on, off = Options(), Options(fuse_digestion=False)
    assert launch.fuses_digestion(plain, on) and not launch.fuses_digestion(kern, on)
    assert not launch.fuses_digestion(plain, off)
    with pytest.raises(ValueError, match='no digestion'):
        codegen.Variant('warp', form='levels', ctr='pairmap', digest=True)


def test_override_forces_the_tier(monkeypatch, fresh_cache):
    calls = []
    monkeypatch.setattr(tiers, 'measure', _fake_measure({'global': 0, 'shared': 0}, calls))
    prog = host.get_program(0, 0, 0, 0)
    assert tiers.route(prog, tier='global')[0].tier == 'global'
    assert tiers.route(prog, tier='shared')[0].tier == 'shared'


def test_shared_tier_that_cannot_fit_is_skipped(monkeypatch, fresh_cache):
    prog = host.get_program(2, 2, 2, 2)          # 1127 slots: no warp fits 227 KiB
    monkeypatch.setattr(tiers, 'choose_tier', lambda p, nctr=None, ctr=None: 'shared')
    calls = []
    monkeypatch.setattr(tiers, 'measure', _fake_measure({'warp': 0}, calls))
    assert tiers.route(prog)[0].tier == 'warp' and calls == ['warp']
    with pytest.raises(ValueError):
        tiers.route(prog, tier='shared')


@pytest.mark.slow
@pytest.mark.skipif(shutil.which('nvcc') is None, reason='nvcc is not installed')
def test_nvcc_reports_registers_without_gpu():
    stats = tiers.nvcc_stats(host.get_program(0, 0, 0, 0))
    assert stats['tier'] == 'register' and stats['compiler'].startswith('nvcc')
    assert 0 < stats['registers'] <= 255 and stats['spill_bytes'] == 0


def test_compile_stats_needs_a_gpu(fresh_cache):
    from gpucore import GPUUnavailableError, gpu_available
    if gpu_available():
        pytest.skip('a GPU is present')
    with pytest.raises(GPUUnavailableError):
        tiers.compile_stats(host.get_program(0, 0, 0, 0))


@pytest.mark.gpu
def test_measured_routing_on_gpu(fresh_cache):
    """NVRTC + driver attributes; the chosen tier never spills beyond the limit."""
    for ls in [(0, 0, 0, 0), (1, 1, 0, 0), (1, 1, 1, 1), (2, 2, 2, 2), (4, 4, 4, 4)]:
        stats = tiers.compile_stats(host.get_program(*ls))
        assert stats['compiler'] == 'nvrtc' and 0 < stats['registers'] <= 255
        assert stats['tier'] in ('warp', 'global') or stats['spill_bytes'] <= tiers.SPILL_BYTES_MAX


@pytest.mark.gpu
def test_precompile_lists_every_class():
    lines = launch.precompile(lmax=2)
    assert len(lines) == len(launch.canonical_classes(2)) == 21
    assert all('tier=' in line and 'registers=' in line for line in lines)
    fused = launch.jk_kernel((1, 0, 0, 0))
    assert fused.variant.digest and fused.stats['kernel'] == fused.name
    assert fused.stats['registers'] == fused.kernel.attributes()['num_regs']


class _FakeKernel:
    """A compiled kernel as ClassKernel sees it, with the variant it was built for."""

    def __init__(self, variant):
        self.digest = variant.digest

    def attributes(self):
        return {'num_regs': 96 if self.digest else 40, 'local_size_bytes': 8 if self.digest else 0,
                'shared_size_bytes': 0}


def test_digesting_kernel_reports_its_own_registers(monkeypatch, fresh_cache):
    """The route measures the plain variant; a digesting ClassKernel's stats are
    those of the kernel it runs (its registers and spills), not the plain one's."""
    monkeypatch.setattr(launch, '_cupy', lambda: _fake_cupy(227 * 1024))
    monkeypatch.setattr(tiers, 'measure', _fake_measure({'register': 0}, []))
    monkeypatch.setattr(kernels, 'compile_variant', lambda p, v: (_FakeKernel(v), True))
    plain = launch.ClassKernel((1, 0, 0, 0))
    fused = launch.ClassKernel((1, 0, 0, 0), digest=True)
    assert (plain.stats['registers'], plain.stats['kernel']) == (255, plain.name)
    assert fused.stats['kernel'] == fused.name != plain.name
    assert (fused.stats['registers'], fused.stats['spill_bytes'], fused.stats['tier']) == (96, 8, 'register')


def _fake_cupy(shared_per_block):
    """What ClassKernel asks of CuPy, for a GPU with this much shared memory a block."""
    from types import SimpleNamespace
    device = SimpleNamespace(attributes={'MaxSharedMemoryPerBlockOptin': shared_per_block})
    return SimpleNamespace(cuda=SimpleNamespace(Device=lambda: device))


def test_a_gpu_with_less_shared_memory_refuses_the_warp_tier_clearly(monkeypatch, fresh_cache):
    """The warp tier is sized for 227 KiB a block (compute capability 9.0): on
    a GPU that allows less, the kernel says so and how to run anyway."""
    monkeypatch.setattr(launch, '_cupy', lambda: _fake_cupy(48 * 1024))
    monkeypatch.setattr(tiers, 'measure', _fake_measure({'warp': 0}, []))
    monkeypatch.setattr(kernels, 'compile_variant', lambda p, v: (_FakeKernel(v), True))
    with pytest.raises(RuntimeError, match=r"needs \d+ bytes of shared memory per block, this GPU allows 49152.*"
                                           r"tier='global'"):
        launch.ClassKernel((4, 4, 2, 1), tier='warp', ctr='ops')
