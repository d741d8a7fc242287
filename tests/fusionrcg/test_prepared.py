"""The on-disk cache of prepared per-class objects (pyscf_fusionrcg.prepared), CPU only.

Each test points gpucore's cache at a temporary folder and forgets the
in-process caches, so that "a new process" is simulated by clearing them.
"""
import dataclasses
import threading

import numpy as np
import pytest

from pyscf_fusionrcg import codegen, host, ir, kernels, pairmaps, prepared, tiers
from pyscf_fusionrcg.options import PREPARED_ENV

REGISTER = (2, 1, 1, 0)     # register tier, straight form: the source is what is cached
WARP = (2, 2, 2, 2)         # warp tier, levels form, pairmap: table, source and side maps


def _forget():
    """What a new process would not have: programs, tables, side maps in memory."""
    host.clear_cache()
    kernels.table.cache_clear()
    pairmaps._MAPS.clear()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache folder, the cache on, and counters of every builder call."""
    monkeypatch.setenv('FUSION_KERNEL_CACHE', str(tmp_path / 'kernels'))
    monkeypatch.delenv(PREPARED_ENV, raising=False)
    calls = []
    for mod, name in ((host, 'orchestrate'), (codegen, 'encode_table'),
                      (codegen, 'emit_kernel_source'), (pairmaps, '_side_map')):
        real = getattr(mod, name)

        def counted(*a, _real=real, _name=name, **k):
            calls.append(_name)
            return _real(*a, **k)
        monkeypatch.setattr(mod, name, counted)
    _forget()
    yield calls
    _forget()


def _prepare(ls):
    """What launch.ClassKernel builds for a class, on the host."""
    p = host.get_program(*ls)
    v = tiers.variant_for(p, tiers.choose_tier(p))
    table = kernels.table(p, v) if v.form in ('table', 'levels') else None
    maps = (pairmaps.side_map(p, 'bra'), pairmaps.side_map(p, 'ket')) if v.ctr == 'pairmap' else None
    return p, v, table, kernels.kernel_source(p, v), maps


def _fresh(ls, monkeypatch):
    """The same, built with the cache off."""
    monkeypatch.setenv(PREPARED_ENV, '0')
    _forget()
    try:
        return _prepare(ls)
    finally:
        monkeypatch.delenv(PREPARED_ENV)
        _forget()


def _assert_same_arrays(a, b):
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), f.name
        else:
            assert x == y, f.name


def _assert_same(got, want):
    (p, v, table, source, maps), (p0, v0, table0, source0, maps0) = got, want
    assert v == v0
    for f in dataclasses.fields(ir.Program):
        x, y = getattr(p, f.name), getattr(p0, f.name)
        if isinstance(x, ir.OpTable):
            _assert_same_arrays(x, y)
        else:
            assert x == y, f.name
    assert (table is None) == (table0 is None)
    if table is not None:
        _assert_same_arrays(table, table0)
    assert source == source0
    assert (maps is None) == (maps0 is None)
    for m, m0 in zip(maps or (), maps0 or ()):
        _assert_same_arrays(m, m0)


def _files(tmp_path):
    return sorted((tmp_path / 'kernels' / 'fusionrcg-prepared').rglob('*.pkl'))


@pytest.mark.parametrize('ls', [REGISTER, WARP])
def test_round_trip_equals_fresh_build_without_rebuilding(ls, cache, tmp_path, monkeypatch):
    want = _fresh(ls, monkeypatch)
    cache.clear()
    _assert_same(_prepare(ls), want)                # cold: built and stored
    assert 'orchestrate' in cache and 'emit_kernel_source' in cache
    n_files = len(_files(tmp_path))
    assert n_files == (2 if ls == REGISTER else 5)  # program, source (+ table, two side maps)
    cache.clear()
    _forget()
    got = _prepare(ls)                              # warm: everything from disk
    assert cache == []
    _assert_same(got, want)
    assert len(_files(tmp_path)) == n_files
    # the loaded program still drives the host interpreter and the pair products
    if ls == WARP:
        pairmaps.PairProducts(got[0])


def test_variants_of_one_program_are_kept_apart(cache, tmp_path):
    p = host.get_program(*WARP)
    warp, glob = tiers.variant_for(p, 'warp'), tiers.variant_for(p, 'global')
    sources = kernels.kernel_source(p, warp), kernels.kernel_source(p, glob)
    assert sources[0] != sources[1]
    _forget()
    cache.clear()
    p = host.get_program(*WARP)
    assert (kernels.kernel_source(p, warp), kernels.kernel_source(p, glob)) == sources
    assert cache == []


def test_changed_code_digest_misses(cache, tmp_path, monkeypatch):
    _prepare(REGISTER)
    first = _files(tmp_path)
    # any change of a generator source changes the folder name
    monkeypatch.setattr(prepared, 'generator_version', lambda: 'another generator')
    assert prepared.version.__wrapped__() != prepared.version()
    monkeypatch.setattr(prepared, 'version', prepared.version.__wrapped__)
    _forget()
    cache.clear()
    _prepare(REGISTER)
    assert 'orchestrate' in cache and 'emit_kernel_source' in cache
    assert len(_files(tmp_path)) == 2 * len(first)


@pytest.mark.parametrize('damage', ['truncate', 'flip', 'garbage', 'empty', 'other_key'])
def test_corrupt_file_is_rebuilt_and_repaired(damage, cache, tmp_path, monkeypatch):
    want = _fresh(WARP, monkeypatch)
    _prepare(WARP)
    files = _files(tmp_path)
    original = [path.read_bytes() for path in files]
    for n, path in enumerate(files):
        data = original[n]
        if damage == 'truncate':
            data = data[:len(data) // 2]
        elif damage == 'flip':
            i = len(data) - 3
            data = data[:i] + bytes([data[i] ^ 0x40]) + data[i + 1:]
        elif damage == 'garbage':
            data = b'not a cache file at all'
        elif damage == 'empty':
            data = b''
        else:                           # a valid file of another object under this name
            data = original[(n + 1) % len(files)]
        path.write_bytes(data)
    _forget()
    cache.clear()
    _assert_same(_prepare(WARP), want)
    assert {'orchestrate', 'encode_table', 'emit_kernel_source', '_side_map'} <= set(cache)
    # repaired: the next process loads every file again
    _forget()
    cache.clear()
    _assert_same(_prepare(WARP), want)
    assert cache == []


def test_loaded_object_of_the_wrong_type_is_rebuilt(cache, tmp_path, monkeypatch):
    want = _fresh(REGISTER, monkeypatch)
    _prepare(REGISTER)
    key = f'program|{host._key(*REGISTER, False, None)!r}'
    path = prepared._path('program', key)
    assert path in _files(tmp_path)
    fields = prepared._read(path, key)
    prepared._write(path, key, {'la': 9})   # sound files, but no program of this class
    _forget()
    _assert_same(_prepare(REGISTER), want)
    prepared._write(path, key, dict(fields, la=3))
    _forget()
    cache.clear()
    _assert_same(_prepare(REGISTER), want)
    assert cache == ['orchestrate']
    assert prepared._read(path, key)['la'] == REGISTER[0]     # repaired


@pytest.mark.parametrize('where', ['cache_dir', 'folder'])
def test_unwritable_cache_still_works(where, cache, tmp_path, monkeypatch):
    want = _fresh(REGISTER, monkeypatch)
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    if where == 'cache_dir':        # gpucore.cache_dir() itself cannot be made
        monkeypatch.setenv('FUSION_KERNEL_CACHE', str(blocker / 'kernels'))
    else:                           # the cache dir is there, our folder cannot be made
        (tmp_path / 'kernels').mkdir()
        (tmp_path / 'kernels' / 'fusionrcg-prepared').write_text('')
    _assert_same(_prepare(REGISTER), want)
    assert not _files(tmp_path) and not list(tmp_path.rglob('*.tmp*'))


def test_environment_variable_turns_it_off(cache, tmp_path, monkeypatch):
    monkeypatch.setenv(PREPARED_ENV, '0')
    _prepare(REGISTER)
    assert not (tmp_path / 'kernels' / 'fusionrcg-prepared').exists()


def test_programs_from_elsewhere_are_not_cached(cache, tmp_path):
    p = host.get_program(*REGISTER)
    other = dataclasses.replace(p)          # same content, but not made by prepared.program
    v = tiers.variant_for(p, 'register')
    cache.clear()
    source = kernels.kernel_source(other, v)
    assert cache == ['emit_kernel_source'] and len(_files(tmp_path)) == 1     # the program only
    assert kernels.kernel_source(p, v) == source and len(_files(tmp_path)) == 2


def test_threads_share_one_cache(cache, tmp_path, monkeypatch):
    want = _fresh(WARP, monkeypatch)
    classes = [WARP, REGISTER, WARP, REGISTER]
    for rnd in range(2):                    # cold, then warm
        _forget()
        out, errors = [None] * len(classes), []

        def run(i):
            try:
                out[i] = _prepare(classes[i])
            except Exception as exc:        # pragma: no cover - reported below
                errors.append(exc)
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(classes))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        for i in (0, 2):
            _assert_same(out[i], want)
        assert out[1][3] == out[3][3]
    assert not list(tmp_path.rglob('*.tmp*'))


def test_old_version_folders_are_pruned(cache, tmp_path, monkeypatch):
    """A version's first use marks its folder and keeps only the
    KEEP_VERSIONS most recently used ones (itself included): upgrades do not
    pile up.  The folder in use and its objects survive."""
    import os
    root = tmp_path / 'kernels' / 'fusionrcg-prepared'
    for age, name in enumerate(['v-new', 'v-mid', 'v-old', 'v-oldest']):
        (root / name).mkdir(parents=True)
        (root / name / 'program-x.pkl').write_bytes(b'stale')
        os.utime(root / name, (1e9 - age * 1e6,) * 2)
    prepared._used.clear()
    p, *_ = _prepare(REGISTER)
    kept = sorted(d.name for d in root.iterdir())
    assert kept == sorted([prepared.version(), 'v-new', 'v-mid'][:prepared.KEEP_VERSIONS])
    assert any((root / prepared.version()).iterdir())
    _forget()
    built = cache.count('orchestrate')
    assert host.get_program(*REGISTER).n_acc == p.n_acc and cache.count('orchestrate') == built


def test_the_generator_version_covers_the_shipped_cuda_headers(tmp_path, monkeypatch):
    """The digest reads the headers where gpucore finds the shipped sources
    (an installed wheel's gpucore.csrc, a checkout's csrc/), so a changed
    header misses the cache instead of reusing objects built for the old one."""
    import gpucore
    shipped = tmp_path / 'csrc'
    (shipped / 'fusionrcg').mkdir(parents=True)
    header = shipped / 'fusionrcg' / 'eri_common.cuh'
    header.write_text('// one version\n')
    monkeypatch.setattr(gpucore, 'csrc_root', lambda: shipped)
    first = prepared.generator_version.__wrapped__()
    header.write_text('// another version\n')
    assert prepared.generator_version.__wrapped__() != first
