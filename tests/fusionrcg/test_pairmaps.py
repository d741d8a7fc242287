"""The pairmap contracted stage on the CPU: pair matrices from the graph
against the program's own contracted stage and libcint, and the GPU path
(accumulators from the levels kernel emulated with g++, then the products of
pairmaps.PairProducts, with NumPy where the GPU runs them with CuPy)."""
import ctypes
import pathlib
import tempfile

import numpy as np
import pytest

from pyscf_fusionrcg import codegen, host, kernels, launch, pairmaps
from pyscf_fusionrcg.codegen import emit, encoding, statements

from emulation import emulated, needs_gxx, needs_nvcc, stream_ctypes

# Classes of the synthetic molecule whose shells have one contracted function
# (l = 0, 2, 4, 5), both pair-build centres, Cartesian and spherical.
CASES = [((2, 0, 0, 0), False, None), ((4, 2, 4, 0), False, None), ((5, 0, 2, 2), True, None),
         ((4, 4, 2, 2), False, None), ((2, 4, 0, 2), False, ('b', 'd')), ((4, 2, 2, 2), True, ('b', 'c'))]


@pytest.mark.parametrize('ls,cart,builds', CASES)
def test_pair_matrices_equal_the_contracted_stage(synth, ls, cart, builds):
    mol = synth.mol(cart)
    eng = host.HostEngine(mol)
    q = synth.quartets(ls)
    comp = host.compiled(*ls, cart=cart, builds=builds)
    acc = eng._primitive_stage(comp, q, (1, 1, 1, 1))
    ref = eng._contracted_stage(comp, q, acc, (1, 1, 1, 1)).reshape(len(q), -1)
    cen = host.shell_centres(mol)
    out = np.empty((int(np.prod(comp.program.shape)), len(q)))
    pairmaps.PairProducts(comp.program)(np.ascontiguousarray(acc.T).reshape(-1), cen[q[:, 0]] - cen[q[:, 1]],
                                        cen[q[:, 2]] - cen[q[:, 3]], out)
    got = out.T
    assert np.abs(got - ref).max() <= 1e-12 * np.abs(ref).max()
    blocks = got.reshape((len(q),) + comp.program.shape)
    assert synth.rel_err(synth.assemble(blocks), synth.reference(mol, ls)) < 1e-12


def test_side_maps_are_shared_between_classes_of_one_pair():
    a = pairmaps.side_map(host.get_program(4, 2, 3, 2), 'bra')
    b = pairmaps.side_map(host.get_program(4, 2, 2, 1), 'bra')
    assert a is b
    assert a.n_start == 15 + 21 + 28 and a.n_rows == 9 * 5


def test_products_stay_inside_the_work_buffer_they_are_given():
    """launch.class_blocks hands the products exactly nq * work_doubles
    doubles: the result must not depend on what was in them, nor reach past."""
    prog = host.get_program(4, 2, 2, 1)
    products = pairmaps.PairProducts(prog)
    rng = np.random.default_rng(1)
    nq = 5
    acc, ab, cd = rng.normal(size=nq * prog.n_acc), rng.normal(size=(nq, 3)), rng.normal(size=(nq, 3))
    n_elem = int(np.prod(prog.shape))
    ref = products(acc, ab, cd, np.empty((n_elem, nq)))
    work = np.full(nq * products.work_doubles + 7, np.nan)
    got = products(acc, ab, cd, np.empty((n_elem, nq)), work[:-7])
    assert np.array_equal(got, ref) and not np.isnan(ref).any()
    assert np.isnan(work[-7:]).all()
    # one quartet: the matrices' product with the accumulator matrix, written out
    bra, ket = products.bra, products.ket
    # the size the routing reads from the graph's labels is the one built here
    assert pairmaps.matrix_doubles(prog) == bra.n_start * bra.n_rows + ket.n_start * ket.n_rows
    mb = np.einsum('m,mur->ru', pairmaps.monomials(bra.powers, ab[:1])[0], bra.coef)
    mk = np.einsum('m,mvr->vr', pairmaps.monomials(ket.powers, cd[:1])[0], ket.coef)
    one = mb @ acc[:prog.n_acc].reshape(bra.n_start, ket.n_start) @ mk
    assert np.allclose(ref[:, 0], one.reshape(-1), rtol=1e-13, atol=1e-13 * np.abs(one).max())


def test_pairmap_variants_outside_the_levels_form_are_refused():
    prog = host.get_program(2, 2, 2, 0)
    for tier, form in (('register', 'straight'), ('shared', 'straight'), ('shared', 'table'),
                       ('global', 'table')):
        with pytest.raises(ValueError, match="needs the warp or global tier's levels form.* use ctr='ops'"):
            codegen.make_variant(prog, tier, form=form, ctr='pairmap')
    with pytest.raises(ValueError, match='one contraction tuple'):
        codegen.make_variant(prog, 'warp', nctr=(2, 1, 1, 1), ctr='pairmap')
    with pytest.raises(ValueError, match='no digestion'):
        codegen.Variant('warp', form='levels', ctr='pairmap', digest=True)
    assert codegen.make_variant(prog, 'global', ctr='pairmap').form == 'levels'
    with pytest.raises(ValueError, match='ctr must be one of'):
        codegen.make_variant(prog, 'warp', ctr='dense')


def test_a_program_without_its_graph_is_refused():
    prog = host.get_program(2, 0, 0, 0)
    bare = type(prog)(*(getattr(prog, f) for f in ('la', 'lb', 'lc', 'ld', 'cart', 'n_temps', 'n_acc',
                                                     'boys_const', 'prim', 'ctr', 'topology')))
    with pytest.raises(ValueError, match='no graph'):
        pairmaps.side_map(bare, 'bra')


def _pairmap_kernel(prog, var, tmp, lanes=False):
    """The kernel of a pairmap variant (levels form) built under the emulation
    (with ``lanes``, the 32 lanes of a warp as host threads), as a function
    (q, shl, env, omega) -> accumulators, [quartet][accumulator], written
    over NaN."""
    src, name = kernels.kernel_source(prog, var)
    assert name.endswith('_pm')
    targs, tpass = emit._stream_signature(var.form)
    entry = (f'extern "C" void run(int grid, int block, const int* q, int nq, const int* shl, '
             f'const double* env, double omega, double* out, double* scratch, int ns{targs}) '
             f'{{ fr_launch{"_warps" if lanes else ""}({name}, grid, block, q, nq, shl, env, omega, out, scratch, '
             f'ns{tpass}); }}\n')
    lib = emulated([src, entry], tmp, warp_lanes=lanes)

    def run(q, shl, env, omega):
        block, grid = codegen.block_size(prog, var), 2
        scratch = np.zeros(max(1, grid * codegen.scratch_per_block(prog, var)))
        acc = np.full(len(q) * prog.n_acc, np.nan)
        P, I = ctypes.c_void_p, ctypes.c_int
        lib.run(I(grid), I(block), P(q.ctypes.data), I(len(q)), P(shl.ctypes.data), P(env.ctypes.data),
                ctypes.c_double(omega), P(acc.ctypes.data), P(scratch.ctypes.data),
                I(codegen.scratch_doubles(prog, var)), *stream_ctypes(prog, var))
        return acc
    return run


@needs_gxx
@pytest.mark.parametrize('ls,cart,tier,omega,lanes', [((2, 2, 2, 0), False, 'warp', 0.0, False),
                                                      ((4, 2, 2, 2), True, 'global', 0.3, False),
                                                      ((4, 0, 2, 2), False, 'warp', -0.3, False),
                                                      ((4, 2, 2, 0), False, 'warp', 0.0, True)])
def test_pairmap_kernels_emulated_on_cpu(synth, ls, cart, tier, omega, lanes):
    """The kernel writing accumulators (the levels form), then the products,
    as launch.class_blocks runs them, against libcint; ``lanes``: the 32
    lanes of a warp as threads, as on the GPU (an accumulator set by one lane
    and added to by another in a later level or primitive quartet)."""
    mol = synth.mol(cart)
    prog = host.get_program(*ls, cart=cart)
    var = codegen.make_variant(prog, tier, omega, (1, 1, 1, 1), ctr='pairmap')
    assert var.ctr == 'pairmap' and var.form == 'levels'
    with tempfile.TemporaryDirectory() as tmp:
        kernel = _pairmap_kernel(prog, var, pathlib.Path(tmp), lanes)
    q = np.ascontiguousarray(synth.quartets(ls), dtype=np.int32)
    nq = len(q)
    acc = kernel(q, launch.shell_table(mol), np.ascontiguousarray(mol._env), omega)
    assert not np.isnan(acc).any()
    cen = host.shell_centres(mol)
    out = pairmaps.PairProducts(prog)(acc, cen[q[:, 0]] - cen[q[:, 1]], cen[q[:, 2]] - cen[q[:, 3]],
                                      np.full((int(np.prod(prog.shape)), nq), np.nan))
    assert not np.isnan(out).any()
    got = synth.assemble(out.T.reshape((nq,) + prog.shape))
    assert synth.rel_err(got, synth.reference(mol, ls, omega)) < 1e-12


def test_a_pairmap_stream_keeps_its_accumulators_in_out():
    """The pairmap variant's op stream is the primitive stage alone, its
    accumulates (kind 3) address each accumulator of out once, and its slots
    are the primitive temporaries: fewer than the accumulators alone for
    (gf|fd), so that more warps fit an SM."""
    prog = host.get_program(4, 3, 3, 2)
    pm, ops = (kernels.table(prog, codegen.make_variant(prog, 'warp', 0.0, (1, 1, 1, 1), 'levels', ctr=c))
               for c in ('pairmap', 'ops'))
    assert len(pm.ctr) == 0 and len(pm.ctr_levels) == 0 and pm.n_acc == ops.n_acc == prog.n_acc
    base, count, width = codegen.level_rows(pm.prim_levels)
    row_start = np.cumsum(width, axis=1) - width        # words of the rows before
    heads = np.concatenate([pm.prim[base[L] + 32 * row_start[L, k] + np.arange(32)]
                            for L in range(len(base)) for k in range(width.shape[1]) if width[L, k]])
    heads = heads[heads != 0].astype(np.int64)
    acc = heads[(heads & 3) == encoding._ACC_OUT] >> 6
    assert np.array_equal(np.sort(acc), np.arange(prog.n_acc))
    assert not ((heads & 3) == encoding._ADD).any()
    assert pm.n_slots < prog.n_acc < ops.n_slots
    assert codegen.warp_block(prog, codegen.make_variant(prog, 'warp', 0.0, (1, 1, 1, 1), 'levels',
                                                         ctr='pairmap')) == 32 * codegen.WARP_BLOCK_WARPS


def test_a_pairmap_stream_that_misses_an_accumulator_is_refused(monkeypatch):
    """The first primitive quartet sets every accumulator in out (none is
    zeroed first), so a stream without an accumulate for one of them would
    leave it as the memory was: encode_table refuses it."""
    prog = host.get_program(2, 2, 2, 0)
    var = codegen.make_variant(prog, 'warp', 0.0, (1, 1, 1, 1), 'levels', ctr='pairmap')
    seq, level, n_body = codegen.level_sequence(prog, 1)
    keep = np.arange(len(seq.kind)) != np.nonzero(seq.kind == statements._ACC)[0][-1]
    doctored = (statements._permuted(seq, np.nonzero(keep)[0], seq.end_body - 1), level[keep], n_body)
    monkeypatch.setattr(encoding, 'level_sequence', lambda program, group=1: doctored)
    with pytest.raises(AssertionError, match='every accumulator once'):
        codegen.encode_table(prog, var)


@needs_gxx
def test_a_quartet_whose_primitives_are_all_screened_gets_zero_accumulators(synth):
    """Where no primitive quartet runs (the shells of the bra 100 bohr apart,
    every primitive pair past FR_EXP_CUTOFF), nothing sets the accumulators
    in out: the kernel writes them zero; the other quartets are as before."""
    ls = (4, 0, 2, 2)
    mol = synth.mol(False)
    prog = host.get_program(*ls)
    var = codegen.make_variant(prog, 'warp', 0.0, (1, 1, 1, 1), ctr='pairmap')
    with tempfile.TemporaryDirectory() as tmp:
        kernel = _pairmap_kernel(prog, var, pathlib.Path(tmp))
    q = np.ascontiguousarray(synth.quartets(ls), dtype=np.int32)
    shl, env = launch.shell_table(mol), np.ascontiguousarray(mol._env)
    near = kernel(q, shl, env, 0.0).reshape(len(q), -1)
    far_shell = q[0, 0]                 # the first g shell; its atom is its own
    moved = env.copy()
    moved[shl[far_shell, 3]:shl[far_shell, 3] + 3] += 100.0
    far = kernel(q, shl, moved, 0.0).reshape(len(q), -1)
    screened = q[:, 0] == far_shell
    assert screened.any() and (~screened).any() and np.abs(near[screened]).max() > 0
    assert np.array_equal(far[screened], np.zeros_like(far[screened]))
    assert np.array_equal(far[~screened], near[~screened])


# Classes for the side passes: both pair-build centres, Cartesian and
# spherical, an s shell on a side, and the largest warp-tier sides of def2-QZVP.
PASS_CASES = [((3, 2, 3, 1), False), ((4, 2, 2, 2), True), ((2, 4, 0, 2), False), ((4, 4, 2, 2), False),
              ((5, 0, 2, 2), True), ((3, 3, 3, 0), False)]


@needs_gxx
@pytest.mark.parametrize('ls,cart', PASS_CASES)
def test_side_passes_emulated_on_cpu_equal_the_products(ls, cart):
    """codegen.side_pass_source's kernel, its blocks' threads run as host
    threads (__syncthreads), against pairmaps.PairProducts on the same
    accumulators: three blocks, the last one short, into NaN-filled output."""
    prog = host.get_program(*ls, cart=cart)
    src, name = codegen.side_pass_source(prog)
    entry = (f'extern "C" void run(int grid, const double* acc, const double* ab, const double* cd, '
             f'double* out, int nq) {{ fr_launch_blocks({name}, grid, {codegen.PASS_THREADS}, acc, ab, cd, '
             'out, nq); }\n')
    with tempfile.TemporaryDirectory() as tmp:
        lib = emulated([src, entry], pathlib.Path(tmp))
    qb = codegen.pass_quartets(prog)
    nq = 2 * qb + max(1, qb // 2)
    rng = np.random.default_rng(3)
    acc, ab, cd = rng.normal(size=nq * prog.n_acc), rng.normal(size=(nq, 3)), rng.normal(size=(nq, 3))
    n_elem = int(np.prod(prog.shape))
    ref = pairmaps.PairProducts(prog)(acc, ab, cd, np.empty((n_elem, nq)))
    out = np.full((n_elem, nq), np.nan)
    P = ctypes.c_void_p
    lib.run(ctypes.c_int(-(-nq // qb)), P(acc.ctypes.data), P(ab.ctypes.data), P(cd.ctypes.data),
            P(out.ctypes.data), ctypes.c_int(nq))
    assert np.abs(out - ref).max() <= 1e-12 * np.abs(ref).max()


def test_side_passes_fit_every_warp_tier_class_up_to_gg():
    """Every class up to (gg|gg) stages at least one quartet per block in the
    shared memory the passes are given, so none is left to the products."""
    from pyscf_fusionrcg import launch
    for ls in launch.canonical_classes(4):
        prog = host.get_program(*ls)
        assert codegen.pass_quartets(prog) >= 1, prog.name
        assert codegen.pass_shared_bytes(prog) <= codegen.PASS_SHARED_BYTES


@needs_nvcc
def test_side_passes_build_with_nvcc():
    """The passes build for sm_90 (nvcc -Xptxas -v): without spills where
    no side is above (ff|, and still where (gg| sides spill."""
    from pyscf_fusionrcg.tiers import _nvcc_stats
    for ls, spills in [((3, 2, 3, 1), False), ((3, 3, 3, 2), False), ((4, 4, 4, 3), True)]:
        stats = _nvcc_stats(*codegen.side_pass_source(host.get_program(*ls)))
        assert stats['registers'] <= 255 and (spills or stats['spill_bytes'] == 0), (ls, stats)


def test_the_pairmap_stage_takes_the_products_where_the_passes_do_not_fit(monkeypatch):
    prog = host.get_program(3, 2, 3, 1)
    monkeypatch.setattr(codegen, 'pass_quartets', lambda p: 0)
    assert isinstance(launch.contracted_stage(prog, np), pairmaps.PairProducts)


@pytest.mark.gpu
@pytest.mark.parametrize('ls', [(3, 2, 3, 1), (4, 3, 3, 2), (4, 4, 4, 3)])
def test_side_passes_on_the_gpu_equal_the_products(ls):
    """launch.SidePasses against pairmaps.PairProducts (cuBLAS) on the same
    random accumulators, several blocks and a short last one."""
    import cupy as cp
    from pyscf_fusionrcg import launch
    prog = host.get_program(*ls)
    passes, products = launch.SidePasses(prog), pairmaps.PairProducts(prog, cp)
    nq = 7 * passes.quartets_per_block + 1
    rng = np.random.default_rng(4)
    acc, ab, cd = (cp.asarray(rng.normal(size=n)) for n in (nq * prog.n_acc, (nq, 3), (nq, 3)))
    n_elem = int(np.prod(prog.shape))
    ref = products(acc, ab, cd, cp.empty((n_elem, nq)))
    got = passes(acc, ab, cd, cp.full((n_elem, nq), cp.nan))
    assert float(abs(got - ref).max()) <= 1e-12 * float(abs(ref).max())


def test_side_passes_cost_less_than_the_products():
    """codegen.pass_cost against PairProducts.cost: the passes move only the
    accumulators and the blocks through device memory, and for every class
    up to (gg|gg) with a graph they do fewer multiply-adds and move fewer bytes."""
    from pyscf_fusionrcg import launch
    for ls in launch.canonical_classes(4):
        prog = host.get_program(*ls)
        passes, products = codegen.pass_cost(prog), pairmaps.PairProducts(prog).cost()
        assert passes['bytes'] == 8 * (prog.n_acc + int(np.prod(prog.shape))), prog.name
        assert passes['fma'] < products['fma'] and passes['bytes'] < products['bytes'], prog.name
