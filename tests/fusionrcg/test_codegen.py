"""The emitted CUDA C++, checked on the CPU: the per-quartet functions are
``__host__ __device__``, so g++ builds them into a shared library (ctypes) and
their blocks are compared with libcint.  Also: the device Boys function, and
(when nvcc is installed) that the kernels compile for sm_90.

g++ runs at -O0: the test is about what the emitter writes, and -O1 spends
minutes on a (dd|dd) function of 11k statements.
"""
import ctypes
import itertools
import pathlib
import subprocess
import tempfile

import numpy as np
import pytest

from pyscf_fusionrcg import codegen, host, kernels, launch, tiers
from pyscf_fusionrcg.codegen import emit, statements

from emulation import (CSRC, GXX, NVCC, build_many, emulated, emulated_many, needs_gxx, needs_nvcc,
                       stream_ctypes)



# (class, cart, tier, form, omega): every class with l <= 2 in registers and
# in the table form, the memory tiers' straight form on a few, and a sample up
# to l = 4 (Cartesian and spherical, both range-separated operators).
L2 = launch.canonical_classes(2)
CASES = (
    [(ls, False, 'register', 'straight', 0.0) for ls in L2]
    + [(ls, False, 'global', 'table', 0.0) for ls in L2]
    + [(ls, True, 'shared', 'table', 0.0) for ls in L2]
    + [((1, 1, 0, 0), False, 'shared', 'straight', 0.0),
       ((2, 1, 2, 1), False, 'global', 'straight', 0.0),
       ((2, 2, 1, 0), True, 'shared', 'straight', 0.0),
       ((1, 1, 1, 0), False, 'register', 'straight', 0.35),
       ((1, 1, 1, 0), True, 'register', 'straight', -0.35),
       ((2, 2, 1, 1), False, 'global', 'table', 0.35),
       ((2, 2, 1, 1), True, 'global', 'table', -0.35),
       ((3, 0, 0, 0), False, 'register', 'straight', 0.0),
       ((4, 0, 0, 0), True, 'register', 'straight', 0.0),
       ((3, 1, 2, 0), False, 'global', 'table', 0.0),
       ((3, 3, 0, 0), True, 'shared', 'table', 0.0),
       ((4, 1, 1, 0), False, 'global', 'table', -0.2),
       ((4, 2, 3, 1), False, 'global', 'table', 0.0),
       ((3, 3, 3, 3), True, 'global', 'table', 0.0),
       ((4, 4, 4, 4), False, 'global', 'table', 0.0),
       ((4, 3, 4, 2), True, 'global', 'table', 0.5)]
    + [(ls, False, 'warp', 'levels', 0.0) for ls in L2]
    + [((2, 2, 1, 1), True, 'warp', 'levels', 0.35),
       ((3, 1, 2, 0), False, 'warp', 'levels', -0.2),
       ((3, 3, 3, 3), True, 'warp', 'levels', 0.0),
       ((4, 2, 3, 1), False, 'warp', 'levels', 0.0),
       ((4, 4, 4, 4), False, 'warp', 'levels', 0.0),
       ((3, 2, 2, 1), True, 'global', 'levels', -0.35),
       ((5, 3, 2, 1), False, 'global', 'levels', 0.0)]
)


class HostLibs:
    """All CASES built into a few libraries; ``blocks`` runs one case."""

    def __init__(self, synth, tmp):
        self.synth = synth
        self.entries = {}
        chunks = [[] for _ in range(4)]
        for n, (ls, cart, tier, form, omega) in enumerate(CASES):
            mol = synth.mol(cart)
            prog = host.get_program(*ls, cart=cart)
            nctr = tuple(int(mol._bas[2 * l, 3]) for l in ls)
            var = codegen.make_variant(prog, tier, omega, nctr, form)
            self.entries[n] = (prog, var)
            chunks[n % len(chunks)].append((prog, var))
        libs = build_many([codegen.host_source(c) for c in chunks], tmp)
        self.lib = {n: libs[n % len(chunks)] for n in self.entries}

    def blocks(self, n):
        ls, cart, tier, form, omega = CASES[n]
        prog, var = self.entries[n]
        mol = self.synth.mol(cart)
        fn = getattr(self.lib[n], codegen.kernel_name(prog, var) + '_host')
        bas, env = mol._bas, mol._env
        P = ctypes.c_void_p
        scratch = np.zeros(max(1, codegen.scratch_doubles(prog, var)))
        extra = stream_ctypes(prog, var)
        # equal-l pairs in the orientation production uses (host.HostEngine.orient)
        quartets, swap_bra, swap_ket = host.HostEngine(mol).orient(self.synth.quartets(ls))
        out = []
        for shls in quartets:
            r = np.concatenate([mol.atom_coord(bas[s, 0]) for s in shls])
            npr = np.array([bas[s, 2] for s in shls], dtype=np.int32)
            exps = np.concatenate([mol.bas_exp(s) for s in shls])
            coefs = np.concatenate([env[bas[s, 6]:bas[s, 6] + bas[s, 2] * bas[s, 3]] for s in shls])
            blk = np.zeros([n * c for n, c in zip(prog.shape, var.nctr)])
            fn(P(r.ctypes.data), P(npr.ctypes.data), P(exps.ctypes.data), P(coefs.ctypes.data),
               ctypes.c_double(omega), P(blk.ctypes.data), P(scratch.ctypes.data), *extra)
            out.append(blk)
        out = np.array(out)
        if swap_bra.any():
            out[swap_bra] = out[swap_bra].transpose(0, 2, 1, 3, 4)
        if swap_ket.any():
            out[swap_ket] = out[swap_ket].transpose(0, 1, 2, 4, 3)
        return out


@pytest.fixture(scope='module')
def host_libs(synth, emulation_dir):
    return HostLibs(synth, emulation_dir)


def _case_id(case):
    ls, cart, tier, form, omega = case
    name = ''.join('spdfghi'[l] for l in ls)
    return f'{name}-{"cart" if cart else "sph"}-{tier}-{form}-w{omega:g}'


@needs_gxx
@pytest.mark.parametrize('n', [pytest.param(n, marks=pytest.mark.slow) if c == ((3, 3, 3, 3), True, 'warp', 'levels', 0.0)
                               else n for n, c in enumerate(CASES)], ids=[_case_id(c) for c in CASES])
def test_emitted_code_matches_libcint(host_libs, synth, n):
    ls, cart, _, _, omega = CASES[n]
    mol = synth.mol(cart)
    got = synth.assemble(host_libs.blocks(n))
    ref = synth.reference(mol, ls, omega)
    # HRR cancellation at high l costs digits relative to the largest element
    # (the host path shows the same: 7e-12 on (gg|gg))
    assert synth.rel_err(got, ref) < (1e-12 if sum(ls) <= 8 else 1e-10)


# ----------------------------------------------------------------- Boys

_BOYS_WRAPPER = r'''
#include "fusionrcg/boys.cuh"
extern "C" void boys_many(int mmax, const double* t, int n, double* out) {
  for (int i = 0; i < n; ++i) fusionrcg::boys(mmax, t[i], out + (long)i * (mmax + 1));
}
'''


def test_boys_reciprocal_table_is_correctly_rounded():
    """boys.cuh's kInvOdd, which the series and the downward recursion
    multiply by: entry j is 1 / (2j + 1) rounded to the nearest double."""
    import re
    text = (CSRC / 'fusionrcg' / 'boys.cuh').read_text()
    body = text[text.index('#define FR_INV_ODD_VALUES'):text.index('#if defined(__CUDA_ARCH__)')]
    values = [float(v) for v in re.findall(r'[0-9]+\.[0-9e-]+', body)]
    assert len(values) >= 32 + 200
    assert all(v == 1.0 / (2 * j + 1) for j, v in enumerate(values))


_BOYS_KERNEL = r'''
#include "fusionrcg/boys.cuh"
extern "C" __global__ void boys_many(int mmax, const double* t, int n, double* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) fusionrcg::boys(mmax, t[i], out + (long)i * (mmax + 1));
}
'''


@pytest.mark.gpu
def test_boys_on_the_gpu_matches_boys_py_and_mpmath():
    """boys.cuh as the GPU runs it (its rsqrt, exp and erf, not the host's)."""
    import cupy
    from gpucore import compile_source
    try:
        import mpmath
        mpmath.mp.dps = 40
    except ImportError:
        mpmath = None
    from pyscf_fusionrcg.boys import boys
    kernel = compile_source(_BOYS_KERNEL, name='boys_many').get_kernel('boys_many')
    t = np.concatenate([[0.0, 1e-14, 1e-8, 1e-3], np.linspace(0.01, 60, 1201), [75.0, 100.0, 1e3, 1e5, 1e8]])
    for mmax in (0, 1, 4, 8, 16, 24, 28):
        out = cupy.empty((len(t), mmax + 1))
        kernel((-(-len(t) // 128),), (128,), (np.int32(mmax), cupy.asarray(t), np.int32(len(t)), out))
        got = out.get()
        ref = boys(mmax, t).T
        assert np.all(np.abs(got - ref) <= 5e-14 * np.abs(ref) + 1e-300), mmax
        for i in np.flatnonzero(np.isin(t, t[[5, 300, 650, 1100, 1204]])) if mpmath else ():
            for m in range(mmax + 1):
                exact = float(mpmath.gammainc(m + 0.5, 0, t[i]) / (2 * mpmath.mpf(t[i]) ** (m + 0.5)))
                assert abs(got[i, m] - exact) <= 5e-15 * exact, (mmax, t[i], m)


@needs_gxx
def test_device_boys_matches_boys_py():
    from pyscf_fusionrcg.boys import boys
    with tempfile.TemporaryDirectory() as tmp:
        src = pathlib.Path(tmp) / 'boys.cpp'
        src.write_text(_BOYS_WRAPPER)
        so = pathlib.Path(tmp) / 'boys.so'
        subprocess.run([GXX, '-O2', '-shared', '-fPIC', f'-I{CSRC}', str(src), '-o', str(so)],
                       check=True)
        lib = ctypes.CDLL(str(so))
    t = np.concatenate([[0.0, 1e-14, 1e-8, 1e-3], np.linspace(0.01, 60, 1201),
                        [75.0, 100.0, 1e3, 1e5, 1e8]])
    for mmax in (0, 1, 4, 8, 16, 24, 25, 28):
        out = np.empty((len(t), mmax + 1))
        lib.boys_many(ctypes.c_int(mmax), ctypes.c_void_p(t.ctypes.data), ctypes.c_int(len(t)),
                      ctypes.c_void_p(out.ctypes.data))
        ref = boys(mmax, t).T
        assert np.all(np.abs(out - ref) <= 5e-14 * np.abs(ref) + 1e-300), mmax
    try:
        import mpmath
    except ImportError:
        return
    mpmath.mp.dps = 40
    for mmax, tv in itertools.product((4, 24), (0.7, 13.0, 25.4, 26.1, 40.0)):
        out = np.empty(mmax + 1)
        arr = np.array([tv])
        lib_out = out.ctypes.data
        lib.boys_many(ctypes.c_int(mmax), ctypes.c_void_p(arr.ctypes.data), ctypes.c_int(1),
                      ctypes.c_void_p(lib_out))
        for m in range(mmax + 1):
            exact = mpmath.gammainc(m + 0.5, 0, tv) / (2 * mpmath.mpf(tv) ** (m + 0.5))
            assert abs(out[m] - float(exact)) <= 5e-15 * float(exact), (mmax, tv, m)


_TAYLOR_ORDERS = (0, 1, 2, 4, 7, 12, 16, 20, 24, 28)


@needs_gxx
def test_boys_of_a_compile_time_order_match_mpmath_and_the_series():
    """boys<M> (the generated kernels' Boys values: the Taylor table of
    codegen's prelude below the switch point, erf above) against mpmath to
    4e-15 of each F_m and against the series form boys(mmax, ...) to 5e-15, on
    grid points, midpoints (the farthest from a grid point) and around the
    switch point, for top orders up to 28."""
    from pyscf_fusionrcg.boys import TAYLOR_STEPS, series_limit
    src = '#include "fusionrcg/boys.cuh"\n' + ''.join(emit._boys_table_source(m) for m in _TAYLOR_ORDERS)
    src += _BOYS_WRAPPER.replace('#include "fusionrcg/boys.cuh"', '')
    for m in _TAYLOR_ORDERS:
        src += (f'extern "C" void boys_top_{m}(const double* t, int n, double* out) {{\n'
                f'  for (int i = 0; i < n; ++i) fusionrcg::boys<{m}>(t[i], out + (long)i * {m + 1});\n}}\n')
    with tempfile.TemporaryDirectory() as tmp:
        cpp = pathlib.Path(tmp) / 'taylor.cpp'
        cpp.write_text(src)
        so = pathlib.Path(tmp) / 'taylor.so'
        subprocess.run([GXX, '-O2', '-shared', '-fPIC', f'-I{CSRC}', str(cpp), '-o', str(so)], check=True)
        lib = ctypes.CDLL(str(so))
    mpmath = pytest.importorskip('mpmath')
    mpmath.mp.dps = 40
    P = ctypes.c_void_p
    for m in _TAYLOR_ORDERS:
        limit = series_limit(m)
        grid = np.arange(0, limit, 1 / TAYLOR_STEPS)
        t = np.concatenate([grid, grid + 0.5 / TAYLOR_STEPS - 1e-12, [1e-300, 1e-9, limit - 1e-9, limit,
                                                                       limit + 1e-9, 2 * limit + 3]])
        t = np.ascontiguousarray(t[t >= 0])
        got, series = np.empty((len(t), m + 1)), np.empty((len(t), m + 1))
        getattr(lib, f'boys_top_{m}')(P(t.ctypes.data), ctypes.c_int(len(t)), P(got.ctypes.data))
        lib.boys_many(ctypes.c_int(m), P(t.ctypes.data), ctypes.c_int(len(t)), P(series.ctypes.data))
        assert np.all(np.abs(got - series) <= 5e-15 * series), m
        for tv, row in list(zip(t, got))[::7]:
            for k in range(m + 1):
                exact = (mpmath.gammainc(k + 0.5, 0, tv) / (2 * mpmath.mpf(tv) ** (k + 0.5)) if tv > 0
                         else mpmath.mpf(1) / (2 * k + 1))
                assert abs(row[k] - float(exact)) <= 4e-15 * float(exact), (m, tv, k)


# ----------------------------------------------------------- slots / tables

def test_slots_never_exceed_peak_live():
    """The linear scan reuses slots: the footprint is the orchestrated peak."""
    from pyscf_fusionrcg.schedule import peak_live
    for ls in [(1, 1, 1, 1), (2, 1, 2, 0), (2, 2, 2, 2)]:
        prog = host.get_program(*ls)
        assert codegen.assign_slots(prog)[1] <= peak_live(prog)


def test_table_kernels_are_shared_between_classes():
    """The table form's text depends only on (max_m, operator, tier) for nctr = 1."""
    a, b = host.get_program(2, 2, 0, 0), host.get_program(1, 1, 1, 1)
    va, vb = (codegen.make_variant(p, 'global', form='table') for p in (a, b))
    assert kernels.kernel_source(a, va) == kernels.kernel_source(b, vb)
    big = host.get_program(2, 2, 2, 2)
    assert tiers.variant_for(big, 'shared').form == 'table'
    assert tiers.variant_for(big, 'global').form == 'levels'


@pytest.mark.parametrize('ls,group', [((2, 1, 2, 1), 1), ((3, 2, 2, 2), 1), ((2, 1, 1, 0), 3)])
def test_levels_are_free_of_hazards(ls, group):
    """The lanes of a warp run a level's ops in any order: within a level no op
    writes a slot that another op of the level reads or writes, a level has at
    most LEVEL_WIDTH ops, and every value is written in an earlier level than
    its readers (the levels form's CPU runs go backwards through a level too)."""
    prog = host.get_program(*ls)
    seq, level, _ = codegen.level_sequence(prog, group)
    slots, n_slots = statements._assign(seq, first=0, level=level)
    assert np.all(np.diff(level) >= 0)
    assert np.bincount(level)[1:].max() <= codegen.LEVEL_WIDTH
    written_at = {}
    for k in range(len(seq.kind)):
        if seq.kind[k] in (statements._BOYS, statements._LIN, statements._ZERO):
            written_at[int(seq.dst[k])] = level[k]
    for lv in np.unique(level):
        ks = np.nonzero(level == lv)[0]
        writes, reads = {}, {}
        for k in ks:
            srcs = seq.src[seq.ptr[k]:seq.ptr[k + 1]]
            for s_ in srcs:
                assert written_at.get(int(s_), -1) < lv or seq.kind[k] == statements._ZERO
                reads.setdefault(int(slots[s_]), set()).add(k)
            if seq.kind[k] != statements._OUTPUT:
                w = int(slots[seq.dst[k]])
                assert w not in writes, f'level {lv}: slot {w} written twice'
                writes[w] = k
        for w, k in writes.items():
            assert reads.get(w, set()) <= {k}, f'level {lv}: slot {w} written and read by another op'
    # the level-granular slots stay near the orchestrated footprint
    assert n_slots <= 1.5 * codegen.assign_slots(prog, group)[1] + 2 * codegen.LEVEL_WIDTH


@pytest.mark.parametrize('ls', [(2, 1, 2, 1), (3, 2, 3, 1)])
def test_levels_store_to_distinct_banks_per_half_warp(ls):
    """With levels, an op takes a free slot of its lane's shared-memory bank:
    the stores of nearly every half warp of a level go to distinct banks (a
    first-free choice gave 13-27% of them, this one 93-94%)."""
    prog = host.get_program(*ls)
    seq, level, _ = codegen.level_sequence(prog, 1)
    slots, _ = statements._assign(seq, first=0, level=level)
    position = np.arange(len(level)) - np.searchsorted(level, level)
    stores = np.isin(seq.kind, (statements._BOYS, statements._LIN))
    half_warp = (level * codegen.LEVEL_WIDTH + position) // 16
    banks = slots[seq.dst[stores]] % statements.SHARED_BANKS_64
    groups = np.unique(half_warp[stores])
    distinct = sum(len(set(banks[half_warp[stores] == g])) == np.sum(half_warp[stores] == g) for g in groups)
    assert distinct >= 0.85 * len(groups)


@pytest.mark.parametrize('ls,width', [((2, 1, 2, 1), 64), ((3, 2, 2, 0), 16)])
def test_level_schedule_takes_the_lowest_ready_statements_first(ls, width):
    """The list schedule: a statement waits for the statements that write what
    it reads; a level takes the lowest-numbered ready statements, as many as
    ``width`` allows, and only leaves ready ones behind when it is full."""
    seq = codegen.sequence(host.get_program(*ls), 1)
    n_zero = int((seq.kind == statements._ZERO).sum())
    for lo, hi in ((n_zero, seq.end_body + 1), (seq.end_body + 1, len(seq.kind))):
        level = codegen.level_schedule(seq, lo, hi, width)
        writer = {int(seq.dst[k]): k - lo for k in range(lo, hi)
                  if seq.kind[k] in (statements._BOYS, statements._LIN)}
        needs = [{writer[int(x)] for x in seq.src[seq.ptr[k]:seq.ptr[k + 1]] if int(x) in writer}
                 for k in range(lo, hi)]
        for lv in range(int(level.max()) + 1):
            taken = np.nonzero(level == lv)[0]
            ready = [k for k in range(hi - lo) if level[k] >= lv and all(level[w] < lv for w in needs[k])]
            assert set(taken) <= set(ready)
            assert list(taken) == sorted(ready)[:len(taken)]
            assert len(taken) == min(width, len(ready))


# ----------------------------------------------------------------- nvcc

@needs_nvcc
@pytest.mark.slow
@pytest.mark.parametrize('ls,tier', [((0, 0, 0, 0), 'register'), ((1, 1, 0, 0), 'register'),
                                     ((1, 1, 1, 1), 'shared'), ((2, 2, 2, 2), 'global'),
                                     ((2, 2, 2, 2), 'warp')])
def test_kernels_compile_with_nvcc(ls, tier):
    prog = host.get_program(*ls)
    stats = tiers.nvcc_stats(prog, tier)
    assert 0 < stats['registers'] <= 255
    if tier != 'register':
        assert stats['spill_bytes'] == 0


@needs_nvcc
@pytest.mark.parametrize('dims', [None, (3, 3, 3, 1), (1, 1, 1, 1), (1, 3, 3, 3)])
def test_digest_compiles_with_nvcc(dims):
    """digest.cu without spills: fr_digest, and fr_digest_quartet for block
    and slab shapes (the leading index fixed) below the 128 registers of its
    launch bound."""
    src = CSRC / 'fusionrcg' / 'digest.cu'
    defines = [f'-DFR_D{x}={n}' for x, n in zip('IJKL', dims or ())]
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run([NVCC, '-arch=sm_90', '-cubin', '-Xptxas', '-v', f'-I{CSRC}', *defines,
                              str(src), '-o', str(pathlib.Path(tmp) / 'd.cubin')],
                             capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    kernels = 2 if dims else 1
    assert res.stderr.count(' 0 bytes spill stores') == kernels, res.stderr
    assert ('fr_digest_quartet' in res.stderr) == bool(dims)


@needs_nvcc
def test_digesting_kernel_compiles_with_nvcc():
    """The register tier's digesting variant of (ds|ps) (a 15-element block)
    keeps block and digestion in registers, as the plain kernel does."""
    import dataclasses
    prog = host.get_program(2, 0, 1, 0)
    var = dataclasses.replace(tiers.variant_for(prog, 'register'), digest=True)
    stats = tiers._nvcc_stats(*kernels.kernel_source(prog, var))
    assert 0 < stats['registers'] <= 255 and stats['spill_bytes'] == 0


# ------------------------------------------------- kernels emulated on the CPU
# (emulation.py: the __global__ kernels themselves, thread by thread or with
# the 32 lanes of a warp as host threads)

@needs_gxx
@pytest.mark.parametrize('ls,tier,form,cart,omega', [
    ((1, 1, 1, 0), 'register', 'straight', False, 0.0),
    ((1, 1, 0, 0), 'shared', 'straight', True, 0.3),
    ((2, 1, 1, 0), 'global', 'straight', False, -0.3),
    ((2, 2, 1, 1), 'shared', 'table', False, 0.0),
    ((3, 2, 2, 1), 'global', 'table', True, 0.0),
    ((2, 1, 2, 1), 'warp', 'levels', False, 0.0),
    ((2, 2, 1, 0), 'global', 'levels', False, 0.3),
    ((3, 2, 1, 1), 'warp', 'levels', True, -0.3),
    ((2, 1, 2, 1), 'warp', 'levels+lanes', False, 0.0),
    pytest.param((3, 2, 1, 1), 'global', 'levels+lanes', True, -0.3, marks=pytest.mark.slow)])
def test_kernel_emulated_on_cpu(synth, ls, tier, form, cart, omega):
    """``levels+lanes``: the levels form as the GPU runs it, 32 lanes splitting
    each level and fetching the next one ahead (one host thread per lane)."""
    _check_emulated(synth, ls, tier, form, cart, omega)


@needs_gxx
def test_levels_ops_wider_than_seven_words_emulated_on_cpu(synth):
    """(is|ss): the spherical transform of l = 6 has ops of 10 terms, so the
    levels kernel holds 11 words an op (its own kernel, ``_w11``)."""
    synth6 = type(synth)(lmax=6)
    prog = host.get_program(6, 0, 0, 0)
    assert codegen.level_op_words(prog) == 11
    assert '_w11' in codegen.kernel_name(prog, codegen.make_variant(prog, 'warp'))
    _check_emulated(synth6, (6, 0, 0, 0), 'warp', 'levels+lanes', False, 0.0)


def _check_emulated(synth, ls, tier, form, cart, omega):
    lanes = form == 'levels+lanes'
    form = 'levels' if lanes else form
    mol = synth.mol(cart)
    prog = host.get_program(*ls, cart=cart)
    nctr = tuple(int(mol._bas[2 * l, 3]) for l in ls)
    var = codegen.make_variant(prog, tier, omega, nctr, form)
    src, name = kernels.kernel_source(prog, var)
    targs, tpass = emit._stream_signature(form)
    entry = (f'extern "C" void run(int grid, int block, const int* q, int nq, const int* shl, '
             f'const double* env, double omega, double* out, double* scratch, int ns{targs}) '
             f'{{ fr_launch{"_warps" if lanes else ""}({name}, grid, block, q, nq, shl, env, omega, out, '
             f'scratch, ns{tpass}); }}\n')
    with tempfile.TemporaryDirectory() as tmp:
        lib = emulated([src, entry], pathlib.Path(tmp), warp_lanes=lanes)
    quartets = np.ascontiguousarray(synth.quartets(ls), dtype=np.int32)
    shl = launch.shell_table(mol)
    env = np.ascontiguousarray(mol._env)
    # memory tiers address slots with the compiled block size; the register
    # tier runs fewer threads than work items so that the grid strides
    block = 8 if tier == 'register' else codegen.block_size(prog, var)
    grid = 2
    n_slots = codegen.scratch_doubles(prog, var)
    nelem = int(np.prod(prog.shape)) * int(np.prod(nctr))
    out = np.full((nelem, len(quartets)), np.nan)
    scratch = np.zeros(max(1, grid * codegen.scratch_per_block(prog, var)))
    P = ctypes.c_void_p
    args = [ctypes.c_int(grid), ctypes.c_int(block), P(quartets.ctypes.data),
            ctypes.c_int(len(quartets)), P(shl.ctypes.data), P(env.ctypes.data),
            ctypes.c_double(omega), P(out.ctypes.data), P(scratch.ctypes.data), ctypes.c_int(n_slots)]
    args += stream_ctypes(prog, var)
    lib.run(*args)
    dims = [n * c for n, c in zip(prog.shape, nctr)]
    got = synth.assemble(out.T.reshape([len(quartets)] + dims))
    assert synth.rel_err(got, synth.reference(mol, ls, omega)) < 1e-12


def test_digest_layout_splits_some_large_blocks_into_slabs():
    """Whole blocks up to QUARTET_DIGEST_MAX elements; larger ones in slabs (the
    leading index fixed) that tile the block where a slab has at most
    SLAB_DIGEST_MAX elements and the second index more than one function;
    fr_digest otherwise; a forced kind the shape cannot take is refused."""
    from pyscf_fusionrcg.gpu_jk import QUARTET_DIGEST_MAX, SLAB_DIGEST_MAX, digest_layout
    assert digest_layout((5, 3, 3, 1)) == ('quartet', (5, 3, 3, 1), 1)
    assert digest_layout((5, 3, 3, 3)) == ('slab', (1, 3, 3, 3), 5)
    assert digest_layout((7, 1, 5, 3))[0] == 'element'          # (fs|dp): an s second
    assert digest_layout((5, 5, 5, 5))[0] == 'element'
    for dims in itertools.product((1, 3, 5, 7, 9), repeat=4):
        kind, compiled, slabs = digest_layout(dims)
        assert np.prod(compiled) * slabs == np.prod(dims)
        assert (kind == 'quartet') == (np.prod(dims) <= QUARTET_DIGEST_MAX)
        slab = np.prod(dims[1:])
        assert (kind == 'slab') == (np.prod(dims) > QUARTET_DIGEST_MAX and dims[1] > 1
                                    and slab <= SLAB_DIGEST_MAX)
        if kind == 'slab':
            assert compiled == (1,) + dims[1:] and slabs == dims[0]
    assert digest_layout((9, 9, 9, 9), 'quartet') == ('quartet', (9, 9, 9, 9), 1)
    assert digest_layout((7, 1, 5, 3), 'slab') == ('slab', (1, 1, 5, 3), 7)
    with pytest.raises(ValueError, match='no slabs'):
        digest_layout((5, 5, 5, 5), 'slab')
    with pytest.raises(ValueError, match='digestion kind'):
        digest_layout((3, 3, 3, 3), 'warp')


#: The 8 orderings of a quartet's shells (a, b, c, d) with the same integrals.
_ORDERINGS = [(0, 1, 2, 3), (1, 0, 2, 3), (0, 1, 3, 2), (1, 0, 3, 2),
              (2, 3, 0, 1), (3, 2, 0, 1), (2, 3, 1, 0), (3, 2, 1, 0)]


#: the cases of the default run: both kernels, both hermi, runs across warps' edges and
#: 16 in a row (the slow ones: the 32-run path and slabs)
_DIGEST_FAST = {('element', 1, 'sto-3g', 3), ('element', 0, 'sto-3g', 3), ('routed', 0, 'sto-3g', 3),
                ('element', 1, 'sto-3g', 16)}


@needs_gxx
@pytest.mark.parametrize('kernel,hermi,basis,repeat', [
    pytest.param(kernel, hermi, basis, repeat, marks=() if (kernel, hermi, basis, repeat) in _DIGEST_FAST
                 else pytest.mark.slow) for hermi in (1, 0)
    for basis, repeat in (('6-31g*', 1), ('sto-3g', 3), ('sto-3g', 16), ('sto-3g', 32))
    for kernel in ('element', 'routed')
    # the routed kernels on half of them: the emulated warps take minutes in all
    if kernel == 'element' or (hermi == 1) != (repeat == 3)])
def test_digest_emulated_on_cpu(kernel, hermi, basis, repeat):
    """digest.cu against PySCF's get_jk from the full ERI tensor of a small molecule.

    Quartets come sorted by shells, as a plan orders them, so the lanes of a
    warp add to runs of equal addresses; ``repeat``: each quartet comes that
    many times in a row with its block divided as much (at 32 every warp adds
    to one address per output, at 16 to two (digest.cuh's fr_scatter_sum
    paths), at 3 runs cross the warps' edges).
    ``kernel``: every class by fr_digest (one thread per quartet and output
    element), or as gpu_jk routes them (digest_layout): fr_digest_quartet
    built for the shape of the blocks of at most QUARTET_DIGEST_MAX elements
    and of the slabs of larger ones."""
    from pyscf import gto
    from pyscf.scf import hf
    from pyscf_fusionrcg.gpu_jk import digest_grid, digest_layout
    from pyscf_fusionrcg.screening import build_tasks
    mol = gto.M(atom='O 0 0 0.1173; H 0 0.7572 -0.4692; H 0 -0.7572 -0.4692', basis=basis,
                verbose=0)
    nao = mol.nao
    rng = np.random.default_rng(1)
    d = rng.normal(size=(2, nao, nao))
    d = d + d.transpose(0, 2, 1) if hermi == 1 else d
    ao_loc = np.ascontiguousarray(mol.ao_loc, dtype=np.int32)
    batches = []
    for t in build_tasks(mol, d, 0.0, 1e-14):
        # any of the 8 orderings of a class (the plan's orientation may swap
        # shells): the kernel's degeneracy factor must not depend on it
        perm = list(_ORDERINGS[rng.integers(len(_ORDERINGS))])
        q = t.quartets[:, perm]
        q = q[np.lexsort(q.T[::-1])]
        q = np.ascontiguousarray(np.repeat(q, repeat, axis=0), dtype=np.int32)
        blocks = np.stack([mol.intor_by_shell('int2e_sph', tuple(int(x) for x in s)) for s in q])
        g = np.ascontiguousarray(blocks.reshape(len(q), -1).T / repeat)   # [element][quartet]
        batches.append((q, g, blocks.shape[1:]))
    digest = (CSRC / 'fusionrcg' / 'digest.cu').read_text()
    # grid (output elements, quartet blocks over y and z), as gpu_jk launches
    # it, with y at most 2 here so that z is used too
    sources = {None: [digest, (
        'extern "C" void run(int gx, int gy, int gz, const double* g, int nq, const int* q, '
        'const int* ao, int di, int dj, int dk, int dl, int nao, '
        'const double* dmj, double* jh, int nj, const double* dmk, double* kh, int nk) {\n'
        '  fr_launch_warps(fr_digest, FrDim{(unsigned)gx, (unsigned)gy, (unsigned)gz}, 64, g, nq, q, ao, '
        'di, dj, dk, dl, nao, dmj, jh, nj, dmk, kh, nk);\n}\n')]}
    layouts = {dims: digest_layout(dims) for _, _, dims in batches}
    if kernel == 'routed':
        for dims, (kind, compiled, _) in layouts.items():
            if kind == 'element':
                continue
            defines = ''.join(f'#define FR_D{x} {n}\n' for x, n in zip('IJKL', compiled))
            sources[dims] = [defines + digest, (
                'extern "C" void run(int gx, int gy, const double* g, int nq, const int* q, const int* ao, '
                'int nao, const double* dmj, double* jh, int nj, const double* dmk, double* kh, int nk) {\n'
                '  fr_launch_warps(fr_digest_quartet, FrDim{(unsigned)gx, (unsigned)gy}, 64, '
                'g, nq, q, ao, nao, dmj, jh, nj, dmk, kh, nk);\n}\n')]
    with tempfile.TemporaryDirectory() as tmp:
        libs = dict(zip(sources, emulated_many(list(sources.values()), pathlib.Path(tmp))))
    kinds = {layouts[dims][0] for dims in libs if dims}
    # 6-31g*'s d shells make blocks of more than QUARTET_DIGEST_MAX elements
    routed = {'quartet', 'slab'} if basis == '6-31g*' else {'quartet'}
    assert kinds == (routed if kernel == 'routed' else set()), kinds
    dm_j = np.ascontiguousarray(d + d.transpose(0, 2, 1))
    dm_k = np.ascontiguousarray(d if hermi == 1 else np.concatenate([d, d.transpose(0, 2, 1)]))
    jh, kh = np.zeros_like(dm_j), np.zeros_like(dm_k)
    P = ctypes.c_void_p
    for q, g, dims in batches:
        sets = (P(dm_j.ctypes.data), P(jh.ctypes.data), ctypes.c_int(2),
                P(dm_k.ctypes.data), P(kh.ctypes.data), ctypes.c_int(len(dm_k)))
        head = (P(g.ctypes.data), ctypes.c_int(len(q)), P(q.ctypes.data), P(ao_loc.ctypes.data))
        if dims in libs:
            libs[dims].run(ctypes.c_int(-(-len(q) // 64)), ctypes.c_int(layouts[dims][2]), *head,
                           ctypes.c_int(nao), *sets)
            continue
        di, dj, dk, dl = dims
        n_elem = di * dj + dk * dl + (di + dj) * (dk + dl)
        libs[None].run(*(ctypes.c_int(x) for x in digest_grid(n_elem, len(q), 64, limit=2)), *head,
                       *(ctypes.c_int(x) for x in dims), ctypes.c_int(nao), *sets)
    vj = jh + jh.transpose(0, 2, 1)
    vk = kh + kh.transpose(0, 2, 1) if hermi == 1 else kh[:2] + kh[2:].transpose(0, 2, 1)
    ref_j, ref_k = hf.get_jk(mol, d, hermi=hermi)
    assert np.abs(vj - ref_j).max() < 1e-11
    assert np.abs(vk - ref_k).max() < 1e-11


@needs_gxx
@pytest.mark.parametrize('hermi,repeat', [(1, 1), pytest.param(0, 1, marks=pytest.mark.slow),
                                          pytest.param(1, 16, marks=pytest.mark.slow)])
def test_digesting_kernels_emulated_on_cpu(hermi, repeat):
    """The register tier's kernels that digest their own blocks (codegen's
    digesting variant, launch.jk_kernel) against PySCF's get_jk: water in
    6-31g, whose classes up to (pp|pp) all have blocks of at most
    FUSED_DIGEST_MAX elements, so these kernels alone make J and K.  Two
    blocks of 64 threads stride over each class (lanes past the end in the
    last warp), quartets sorted by shells as a plan orders them; each quartet
    ``repeat`` times in a row (16: the lanes of a warp add to two addresses
    per output, and J and K come out 16 times over)."""
    import dataclasses
    from pyscf import gto
    from pyscf.scf import hf
    from pyscf_fusionrcg.screening import build_tasks
    mol = gto.M(atom='O 0 0 0.1173; H 0 0.7572 -0.4692; H 0 -0.7572 -0.4692', basis='6-31g',
                verbose=0)
    nao = mol.nao
    rng = np.random.default_rng(2)
    d = rng.normal(size=(2, nao, nao))
    d = d + d.transpose(0, 2, 1) if hermi == 1 else d
    tasks = list(build_tasks(mol, d, 0.0, 1e-14))
    sources, names = [], []
    for t in tasks:
        prog = host.get_program(*t.key)
        assert np.prod(prog.shape) <= launch.FUSED_DIGEST_MAX and tiers.choose_tier(prog) == 'register'
        var = dataclasses.replace(tiers.variant_for(prog, 'register'), digest=True)
        src, name = kernels.kernel_source(prog, var)
        sources.append([src, (
            'extern "C" void run(int grid, const int* q, int nq, const int* shl, const double* env, '
            'const int* ao, int nao, const double* dmj, double* jh, int nj, const double* dmk, double* kh, '
            f'int nk) {{\n  fr_launch_warps({name}, grid, 64, q, nq, shl, env, 0.0, ao, nao, dmj, jh, nj, '
            'dmk, kh, nk);\n}\n')])
        names.append(name)
    assert all(name.endswith('_dg') for name in names) and len(set(names)) == len(tasks)
    with tempfile.TemporaryDirectory() as tmp:
        libs = emulated_many(sources, pathlib.Path(tmp))
    shl = launch.shell_table(mol)
    env = np.ascontiguousarray(mol._env)
    ao_loc = np.ascontiguousarray(mol.ao_loc, dtype=np.int32)
    dm_j = np.ascontiguousarray(d + d.transpose(0, 2, 1))
    dm_k = np.ascontiguousarray(d if hermi == 1 else np.concatenate([d, d.transpose(0, 2, 1)]))
    jh, kh = np.zeros_like(dm_j), np.zeros_like(dm_k)
    P = ctypes.c_void_p
    strided = False
    for t, lib in zip(tasks, libs):
        q = np.repeat(t.quartets[np.lexsort(t.quartets.T[::-1])], repeat, axis=0)
        q = np.ascontiguousarray(q, dtype=np.int32)
        strided |= len(q) > 128 and len(q) % 32 != 0
        lib.run(ctypes.c_int(2), P(q.ctypes.data), ctypes.c_int(len(q)), P(shl.ctypes.data),
                P(env.ctypes.data), P(ao_loc.ctypes.data), ctypes.c_int(nao),
                P(dm_j.ctypes.data), P(jh.ctypes.data), ctypes.c_int(2),
                P(dm_k.ctypes.data), P(kh.ctypes.data), ctypes.c_int(len(dm_k)))
    assert strided      # some class strides and ends in a partial warp
    vj = (jh + jh.transpose(0, 2, 1)) / repeat
    vk = (kh + kh.transpose(0, 2, 1) if hermi == 1 else kh[:2] + kh[2:].transpose(0, 2, 1)) / repeat
    ref_j, ref_k = hf.get_jk(mol, d, hermi=hermi)
    assert np.abs(vj - ref_j).max() < 1e-10 * np.abs(ref_j).max()
    assert np.abs(vk - ref_k).max() < 1e-10 * np.abs(ref_k).max()


def test_only_the_register_tier_with_one_tuple_digests():
    """The digesting variant is refused where the kernel has no whole block of
    one quartet in registers; its kernel name differs from the plain one."""
    prog = host.get_program(1, 0, 0, 0)
    plain = codegen.make_variant(prog, 'register')
    assert codegen.kernel_name(prog, plain) + '_dg' == codegen.kernel_name(
        prog, codegen.Variant('register', digest=True))
    with pytest.raises(ValueError, match='register tier'):
        codegen.Variant('warp', form='levels', digest=True)
    with pytest.raises(ValueError, match='register tier'):
        codegen.Variant('register', nctr=(2, 1, 1, 1), digest=True)


@pytest.mark.parametrize('ls', [(2, 1, 2, 1), (3, 2, 3, 1), (2, 2, 2, 2)])
def test_level_records_hold_only_the_rows_fr_fetch_level_loads(ls):
    """Each op row of a level is as wide as its longest op (a level's ops
    longest first, so the second row holds the shorter ones), the records are
    those rows and nothing more, and every word fr_fetch_level loads lies
    inside them."""
    prog = host.get_program(*ls)
    t = kernels.table(prog, codegen.make_variant(prog, 'warp'))
    narrower = 0
    for rec, levels in ((t.prim, t.prim_levels), (t.ctr, t.ctr_levels)):
        base, count, width = codegen.level_rows(levels)
        size = 32 * width.sum(axis=1)
        assert np.array_equal(base, np.cumsum(size) - size) and len(rec) == size.sum()
        row_start = np.cumsum(width, axis=1) - width
        for L in range(len(base)):
            for k in range(codegen.LEVEL_OPS_PER_LANE):
                lanes = range(max(0, min(32, count[L] - 32 * k)))
                heads = [int(rec[base[L] + row_start[L, k] * 32 + ln]) for ln in lanes]
                words = [2 if h & 3 == 2 else 1 + (h >> 2 & 15) for h in heads]
                assert width[L, k] == max(words, default=0)
            assert (np.diff(width[L]) <= 0).all()
        narrower += int((width[:, 1] < width[:, 0]).sum())
        assert (count >= 1).all() and (width[:, 0] >= 1).all()
    assert narrower > 0
