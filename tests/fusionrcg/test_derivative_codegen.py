"""Derivative-block kernels (``ir.DerivProgram``: straight and levels forms),
checked on the CPU: the emitted ``__global__`` kernel, built with g++ under
the emulation of emulation.py and launched as ``launch.DerivativeKernel``
launches it (oriented quartets, [element][quartet] output, put back by
``launch.unorient_derivatives``), gives the host's derivative blocks; its
text is deterministic; the op streams give raised terms weights of their own.
The kernel compiles for sm_90 where nvcc is installed; the GPU engine
itself is checked against libcint where there is a GPU."""
import ctypes
import hashlib

import numpy as np
import pytest

from pyscf_fusionrcg import codegen, host, kernels, launch, tiers
from pyscf_fusionrcg.codegen import emit, encoding
from pyscf_fusionrcg.derivative import derivative_program

from emulation import emulated_many, needs_nvcc, printed_by_other_processes, stream_ctypes

TOL = 1e-12

# (class, cart, tier, omega, lanes): s to f at every position, the synthetic
# molecule's p and f shells generally contracted (nctr = 2; (ps|ss) groups two
# tuples a thread), both range-separated operators, the straight form's
# shared tier and the levels form of the warp and global tiers; ``lanes``:
# the levels form as the GPU runs it, 32 lanes splitting each level (one host
# thread per lane), else one thread running all lanes.
CASES = [((0, 0, 0, 0), False, 'register', 0.0, False),
         ((1, 0, 0, 0), False, 'register', 0.0, False),
         ((0, 1, 1, 0), True, 'register', 0.0, False),
         ((1, 1, 1, 1), False, 'register', 0.0, False),
         ((2, 0, 1, 0), True, 'register', 0.0, False),
         ((3, 0, 0, 0), False, 'register', 0.0, False),
         ((0, 3, 1, 0), True, 'register', 0.0, False),
         ((1, 2, 3, 0), False, 'register', 0.0, False),
         ((2, 2, 0, 1), True, 'register', 0.0, False),
         ((2, 1, 2, 1), False, 'register', 0.0, False),
         ((3, 1, 0, 2), True, 'register', 0.0, False),
         ((1, 1, 1, 0), False, 'register', 0.35, False),
         ((2, 1, 1, 0), True, 'register', -0.35, False),
         ((1, 1, 0, 0), True, 'shared', 0.3, False),
         ((2, 1, 1, 0), False, 'global', -0.3, False),
         ((1, 0, 0, 0), True, 'warp', 0.0, False),
         ((2, 1, 2, 1), True, 'warp', 0.0, False),
         ((3, 2, 1, 1), False, 'warp', 0.35, False),
         ((3, 3, 2, 0), True, 'global', 0.0, False),
         ((2, 1, 1, 1), False, 'warp', -0.3, True)]


def _case_id(case):
    ls, cart, tier, omega, lanes = case
    return (f'{"".join("spdf"[l] for l in ls)}-{"cart" if cart else "sph"}-{tier}'
            f'{"+lanes" if lanes else ""}-w{omega:g}')


class Emulated:
    """Every case's kernel built under the emulation, a library each (their
    Boys tables would clash), two builds at a time."""

    def __init__(self, synth, tmp):
        self.synth = synth
        self.entries, sources = {}, []
        for n, (ls, cart, tier, omega, lanes) in enumerate(CASES):
            mol = synth.mol(cart)
            prog = host.get_derivative_program(*ls, cart=cart)
            nctr = tuple(int(mol._bas[2 * l, 3]) for l in ls)
            var = tiers.derivative_variant(prog, tier, omega, nctr)
            src, name = kernels.kernel_source(prog, var)
            targs, tpass = emit._stream_signature(var.form)
            sources.append((lanes, [src, (
                f'extern "C" void run{n}(int grid, int block, const int* q, int nq, const int* shl, '
                f'const double* env, double omega, double* out, double* scratch, int ns{targs}) '
                f'{{ fr_launch{"_warps" if lanes else ""}({name}, grid, block, q, nq, shl, env, omega, '
                f'out, scratch, ns{tpass}); }}\n')]))
            self.entries[n] = (prog, var)
        self.libs = {}
        for lanes in (False, True):
            mine = [n for n, (flag, _) in enumerate(sources) if flag == lanes]
            for k in range(0, len(mine), 2):
                pair = mine[k:k + 2]
                (tmp / str(pair[0])).mkdir()
                built = emulated_many([sources[n][1] for n in pair], tmp / str(pair[0]), warp_lanes=lanes)
                self.libs.update(zip(pair, built))

    def blocks(self, n):
        """(16, 3, 3, di, dj, dk, dl) of case ``n``'s class, quartet by quartet."""
        ls, cart, tier, omega, _ = CASES[n]
        prog, var = self.entries[n]
        mol = self.synth.mol(cart)
        quartets, swap_bra, swap_ket = launch.orient(launch.ShellKeys(mol), self.synth.quartets(ls))
        quartets = np.ascontiguousarray(quartets, dtype=np.int32)
        shl = launch.shell_table(mol)
        env = np.ascontiguousarray(mol._env)
        # the register tier runs fewer threads than work items, so that the grid strides;
        # the memory tiers address their slots with the compiled block size
        block = 8 if tier == 'register' else codegen.block_size(prog, var)
        grid = 2
        dims = [3, 3] + [n * c for n, c in zip(prog.shape[1:], var.nctr)]
        out = np.full((int(np.prod(dims)), len(quartets)), np.nan)
        scratch = np.zeros(max(1, grid * codegen.scratch_per_block(prog, var)))
        P = ctypes.c_void_p
        getattr(self.libs[n], f'run{n}')(
            ctypes.c_int(grid), ctypes.c_int(block), P(quartets.ctypes.data), ctypes.c_int(len(quartets)),
            P(shl.ctypes.data), P(env.ctypes.data), ctypes.c_double(omega), P(out.ctypes.data),
            P(scratch.ctypes.data), ctypes.c_int(codegen.scratch_doubles(prog, var)),
            *stream_ctypes(prog, var))
        return launch.unorient_derivatives(out.T.reshape([len(quartets)] + dims), swap_bra, swap_ket)


@pytest.fixture(scope='module')
def emulated(synth, emulation_dir):
    return Emulated(synth, emulation_dir)


@pytest.mark.parametrize('n', range(len(CASES)), ids=[_case_id(c) for c in CASES])
def test_emulated_kernel_gives_the_host_blocks(emulated, synth, n):
    ls, cart, _, omega, _ = CASES[n]
    got = emulated.blocks(n)
    ref = host.HostEngine(synth.mol(cart), omega).derivative_blocks(synth.quartets(ls))
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() / np.abs(ref).max() < TOL


def test_unorient_derivatives_undoes_each_swap(synth):
    """Blocks of the swapped quartets, put back, are the quartets' own: a ket
    swap's d/dC comes from translational invariance."""
    mol = synth.mol(False)
    eng = host.HostEngine(mol)
    quartets = np.array([[2, 3, 2, 3], [3, 2, 2, 3], [2, 3, 3, 2], [3, 2, 3, 2]])
    swapped = quartets[:, [1, 0, 3, 2]]
    swap = np.ones(4, dtype=bool)
    none = np.zeros(4, dtype=bool)
    ref = eng.derivative_blocks(quartets)
    both = launch.unorient_derivatives(eng.derivative_blocks(swapped), swap, swap)
    bra = launch.unorient_derivatives(eng.derivative_blocks(quartets[:, [1, 0, 2, 3]]), swap, none)
    ket = launch.unorient_derivatives(eng.derivative_blocks(quartets[:, [0, 1, 3, 2]]), none, swap)
    for got in (both, bra, ket):
        assert np.abs(got - ref).max() / np.abs(ref).max() < TOL


_HASH_SCRIPT = '''
import hashlib
from pyscf_fusionrcg import codegen
from pyscf_fusionrcg.derivative import derivative_program
prog = derivative_program(2, 1, 1, 0, cart=False)
src, name = codegen.emit_kernel_source(prog, codegen.make_variant(prog, 'register', 0.3, (1, 2, 2, 1)))
print(hashlib.sha256((name + src).encode()).hexdigest())
'''


def test_generated_source_is_deterministic():
    """Two generations from fresh programs, in this process and in two others
    of different string hashing, give one text."""
    def generate():
        prog = derivative_program(2, 1, 1, 0, cart=False)
        src, name = codegen.emit_kernel_source(prog, codegen.make_variant(prog, 'register', 0.3, (1, 2, 2, 1)))
        return hashlib.sha256((name + src).encode()).hexdigest()

    here = generate()
    assert generate() == here
    assert printed_by_other_processes(_HASH_SCRIPT) == [here, here]


def test_derivative_kernels_have_names_of_their_own():
    prog, plain = host.get_derivative_program(1, 0, 1, 0), host.get_program(1, 0, 1, 0)
    var = codegen.make_variant(prog, 'register')
    assert codegen.kernel_name(prog, var) == 'fr_deriv_abc_psps_sph_register_c_n1111_g1'
    assert codegen.kernel_name(plain, var) != codegen.kernel_name(prog, var)
    src, _ = codegen.emit_kernel_source(prog, var)
    assert 'const double wa0 = 2.0 * ai * wt0;' in src


def test_derivative_blocks_are_not_digested():
    prog = host.get_derivative_program(1, 0, 1, 0)
    with pytest.raises(ValueError, match='not digested'):
        codegen.emit_kernel_source(prog, codegen.Variant('register', digest=True))


def test_weighted_accumulates_read_slots_of_their_own():
    """A derivative's op stream: the raised terms' accumulates read the
    exponent-weighted weights, reserved after the Boys values, and the
    levels kernel names the centres it writes them for."""
    prog = host.get_derivative_program(1, 0, 1, 0)
    var = tiers.derivative_variant(prog, 'warp')
    assert codegen.kernel_name(prog, var) == 'fr_deriv_abc_levels_m3_warp_c_n1111_g1'
    table = codegen.encode_table(prog, var)
    slot0 = encoding._weight_slot0(prog, 1)
    symbol_slots = set((table.prim_pairs >> 16).tolist())
    assert {encoding._SYM_SLOTS, slot0, slot0 + 1, slot0 + 2} <= symbol_slots
    assert encoding._pair_slot0(prog, 1) == slot0 + 3


def test_a_bad_tier_is_no_kernel_too_large():
    """Only an op stream's overflow reads as KernelTooLarge (which the GPU
    engine answers with the host's blocks); a wrong tier stays an error."""
    with pytest.raises(ValueError, match='tier must be one of') as err:
        tiers.derivative_variant(host.get_derivative_program(1, 0, 1, 0), 'bogus')
    assert not isinstance(err.value, tiers.KernelTooLarge)


@pytest.mark.slow
def test_a_derivative_no_op_stream_can_encode_is_too_large():
    """(gg|gg)'s derivative overflows the levels form's fields: a
    KernelTooLarge, which the GPU engine answers with the host's blocks,
    while (gg|gf)'s still gets a kernel."""
    with pytest.raises(tiers.KernelTooLarge, match='gggg: no derivative kernel can encode it'):
        tiers.derivative_variant(host.get_derivative_program(4, 4, 4, 4))
    assert tiers.derivative_variant(host.get_derivative_program(4, 4, 4, 3)).tier == 'global'


@needs_nvcc
@pytest.mark.parametrize('ls,tier', [((1, 0, 1, 0), 'register'), ((2, 2, 2, 1), 'warp'),
                                     ((2, 2, 2, 1), 'global')])
def test_derivative_kernel_compiles_with_nvcc(ls, tier):
    """As CUDA for sm_90, the p and f shells' nctr 2 as in the synthetic
    molecule; the levels form's interpreter without spills."""
    prog = host.get_derivative_program(*ls)
    nctr = tuple(2 if l in (1, 3) else 1 for l in ls)
    var = tiers.derivative_variant(prog, tier, 0.3, nctr)
    stats = tiers._nvcc_stats(*kernels.kernel_source(prog, var))
    assert 0 < stats['registers'] <= 255
    if tier != 'register':
        assert stats['spill_bytes'] == 0


@pytest.mark.gpu
@pytest.mark.parametrize('cart', [False, True])
def test_gpu_derivative_blocks_match_int2e_ip1(synth, cart):
    """GPUEngine.derivative_blocks: d/dA is minus libcint's int2e_ip1, and all
    three centres are the host's."""
    mol = synth.mol(cart)
    intor = 'int2e_ip1_cart' if cart else 'int2e_ip1_sph'
    for omega in (0.0, 0.3, -0.3):
        eng = launch.GPUEngine(mol, omega)
        for ls, *_ in CASES:
            shls = synth.quartets(ls)
            got = eng.derivative_blocks(shls)
            with mol.with_range_coulomb(omega):
                ip1 = -np.array([mol.intor_by_shell(intor, tuple(int(s) for s in q)) for q in shls])
            assert np.abs(got[:, 0] - ip1).max() / np.abs(ip1).max() < 1e-11, (ls, omega)
            ref = host.HostEngine(mol, omega).derivative_blocks(shls)
            assert np.abs(got - ref).max() / np.abs(ref).max() < TOL, (ls, omega)
