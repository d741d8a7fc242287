"""The J engine's GPU kernels (codegen/jkernel.py), checked on the CPU: the
emitted ``__global__`` kernel, built with g++ under the emulation of
emulation.py and run by ``launch.GPUJEngine`` as it runs the GPU's (oriented
quartets in primitive order, host pair densities, [element][quartet]
output), gives the host J engine's blocks and, digested by ``jk.digest_j``,
PySCF's J; its text is deterministic and named apart from the J/K kernels'.
The GPU engine itself is checked against PySCF where there is a GPU."""
import ctypes
import hashlib
import os

import numpy as np
import pytest
from pyscf import gto, scf

from pyscf_fusionrcg import codegen, host, jengine, jk, launch
from pyscf_fusionrcg.jk import digest_j
from pyscf_fusionrcg.options import Options, from_env
from pyscf_fusionrcg.screening import build_tasks, to_host

from emulation import emulated_many, printed_by_other_processes

TOL = 1e-11

# (class, cart, omega): s to f, the synthetic molecule's p and f shells
# generally contracted (nctr = 2), equal pairs that orient swaps, both
# range-separated operators
CASES = [((0, 0, 0, 0), False, 0.0), ((1, 0, 0, 0), True, 0.0), ((1, 0, 1, 0), False, 0.3),
         ((1, 1, 1, 1), False, 0.0), ((2, 1, 1, 0), True, -0.3), ((2, 2, 2, 0), False, 0.0),
         ((3, 0, 2, 1), False, 0.0), ((3, 1, 1, 1), True, 0.3), ((3, 2, 0, 0), False, -0.3),
         ((2, 2, 2, 2), True, 0.0)]


def _case_id(case):
    ls, cart, omega = case
    return f'{"".join("spdf"[l] for l in ls)}-{"cart" if cart else "sph"}-w{omega:g}'


class EmulatedJKernel:
    """A J kernel built under the emulation, launched as ``launch.JKernel``
    launches it but with 8 threads a block, so that the grid strides."""

    def __init__(self, lib, name, program):
        self.entry, self.program = getattr(lib, f'run_{name}'), program

    def launch(self, nq, args):
        P = ctypes.c_void_p
        conv = [P(a.ctypes.data) if isinstance(a, np.ndarray) else
                (ctypes.c_double(a) if isinstance(a, np.floating) else ctypes.c_int(int(a))) for a in args]
        q, r, off = (np.ascontiguousarray(a) for a in (args[0], args[5], args[6]))
        assert q.dtype == np.int32 and off.dtype == np.int64 and r.dtype == np.float64
        conv[0], conv[5], conv[6] = P(q.ctypes.data), P(r.ctypes.data), P(off.ctypes.data)
        self.entry(ctypes.c_int(2), ctypes.c_int(8), *conv)


def _sources(items):
    """One library source per (program, omega kind, nctr): the kernel and a launch entry."""
    out = []
    for prog, kind, nctr in items:
        src, name = codegen.j_kernel_source(prog, kind, nctr)
        out.append((name, [src, (
            f'extern "C" void run_{name}(int grid, int block, const int* q, int nq, const int* shl, '
            f'const double* env, double omega, const double* rho, const long* off, double* out) '
            f'{{ fr_launch({name}, grid, block, q, nq, shl, env, omega, rho, off, out); }}\n')]))
    return out


class EmulatedJEngine(launch.GPUJEngine):
    """``launch.GPUJEngine`` with NumPy for the device and the emulated kernels
    (built once a process for each class, operator kind and nctr)."""

    built = {}      # (cart, omega kind, ls, nctr) -> EmulatedJKernel

    def __init__(self, mol, omega, tmp):
        self.tmp = tmp
        super().__init__(mol, omega)
        self.head = (bool(mol.cart), codegen.omega_kind(self.omega))

    def _device(self):
        self.xp = np
        self.shl = launch.shell_table(self.mol)
        self.env = np.ascontiguousarray(self.mol._env, dtype=np.float64)

    def build(self, classes):
        """Build the kernels of ``classes`` ((ls, nctr) pairs), two libraries at a time."""
        kind = self.head[1]
        todo = list(dict.fromkeys(c for c in classes if self.head + c not in self.built))
        progs = [jengine.j_program(*ls, bool(self.mol.cart)) for ls, _ in todo]
        srcs = _sources([(p, kind, nctr) for p, (_, nctr) in zip(progs, todo)])
        for k in range(0, len(todo), 2):
            folder = self.tmp / f'{len(os.listdir(self.tmp))}'
            folder.mkdir()
            libs = emulated_many([s for _, s in srcs[k:k + 2]], folder)
            for (key, prog, (name, _)), lib in zip(zip(todo[k:k + 2], progs[k:k + 2], srcs[k:k + 2]), libs):
                self.built[self.head + key] = EmulatedJKernel(lib, name, prog)

    def kernel(self, ls, nctr):
        key = (tuple(ls), tuple(nctr))
        self.build([key])
        return self.built[self.head + key]


def _dms(nao, nset=2, seed=3):
    return np.random.default_rng(seed).standard_normal((nset, nao, nao))


@pytest.mark.parametrize('case', CASES, ids=[_case_id(c) for c in CASES])
def test_emulated_kernel_gives_the_host_j_blocks(synth, emulation_dir, case):
    """Both sides' blocks of every quartet of the class, for two general
    (non-symmetric) densities, as the host J engine's."""
    ls, cart, omega = case
    mol = synth.mol(cart)
    q = synth.quartets(ls)
    dms = _dms(mol.nao)
    got = EmulatedJEngine(mol, omega, emulation_dir).quartet_j(q, dms)
    with mol.with_range_coulomb(omega):
        ref = jengine.HostJEngine(host.HostEngine(mol, omega)).quartet_j(q, dms)
    for side in ('bra', 'ket'):
        assert got[side].shape == ref[side].shape
        assert np.abs(got[side] - ref[side]).max() <= TOL * np.abs(ref[side]).max(), side


@pytest.mark.parametrize('cart,omega', [(False, 0.0), (True, -0.3)])
def test_emulated_j_equals_pyscf(emulation_dir, cart, omega):
    """Every class of H2O/6-31G through the emulated kernels, digested with the
    task lists' degeneracy (``jk.digest_j``), is PySCF's J."""
    mol = gto.M(verbose=0, atom='O 0 0 0.117; H 0 0.757 -0.469; H 0 -0.757 -0.469', basis='6-31g', cart=cart)
    dm = _dms(mol.nao, 1)
    dm = dm + dm.transpose(0, 2, 1)
    tasks = build_tasks(mol, dm, omega, with_k=False)
    eng = EmulatedJEngine(mol, omega, emulation_dir)
    eng.build([(tuple(t.key), tuple(t.nctr)) for t in tasks])
    vj = digest_j(mol, dm, tasks, eng, progress=False)
    ref, _ = scf.hf.get_jk(mol, dm, hermi=1, omega=omega or None, with_k=False)
    assert np.abs(vj - ref).max() <= TOL * np.abs(ref).max()


H2O = 'O 0 0 0.117; H 0 0.757 -0.469; H 0 -0.757 -0.469'
ROUTED = Options(j_engine='on', progress=False)


class JKKernelsReached(Exception):
    """Raised where a build would reach the GPU's J/K kernels."""


def _no_jk_kernels():
    raise JKKernelsReached


@pytest.fixture
def emulated_gpu(monkeypatch, emulation_dir):
    """The GPU path with the emulated J engine as ``launch.GPUJEngine`` and
    the J/K kernels refusing (:class:`JKKernelsReached`); the engines made."""
    made = []

    def engine(mol, omega):
        made.append(EmulatedJEngine(mol, omega, emulation_dir))
        return made[-1]
    monkeypatch.setattr(launch, 'GPUJEngine', engine)
    monkeypatch.setattr(jk, '_gpu_get_jk', _no_jk_kernels)
    return made


@pytest.mark.parametrize('basis,cart,omega,nset', [('6-31g*', False, 0.0, 0), ('6-31g', True, -0.3, 2)])
def test_j_only_gpu_builds_route_through_the_j_engine(emulated_gpu, basis, cart, omega, nset):
    """With j_engine='on' a J-only build on the GPU path (jk.get_jk with
    backend='gpu') runs the J engine's kernels (emulated, NumPy for CuPy):
    PySCF's J, a NumPy density giving NumPy J of its shape, (nao, nao) or
    stacked, or complex; its J+K builds still take the J/K kernels."""
    mol = gto.M(verbose=0, atom=H2O, basis=basis, cart=cart)
    dm = _dms(mol.nao, max(nset, 1))
    dm = dm + dm.transpose(0, 2, 1)
    if not nset:
        dm = dm[0]
    vj, vk = jk.get_jk(mol, dm, with_k=False, omega=omega, backend='gpu', options=ROUTED)
    ref, _ = scf.hf.get_jk(mol, dm, hermi=1, omega=omega or None, with_k=False)
    assert vk is None and isinstance(vj, np.ndarray) and vj.shape == dm.shape
    assert np.abs(vj - ref).max() <= TOL * np.abs(ref).max()
    assert len(emulated_gpu) == 1 and emulated_gpu[0].omega == omega
    if not nset:    # a complex density: J of its real and imaginary parts
        vc, _ = jk.get_jk(mol, (1 + 0.5j) * dm, with_k=False, omega=omega, backend='gpu', options=ROUTED)
        assert np.abs(vc - (1 + 0.5j) * vj).max() <= TOL * np.abs(ref).max()
    with pytest.raises(JKKernelsReached):
        jk.get_jk(mol, dm, omega=omega, backend='gpu', options=ROUTED)


def test_emulated_pure_functional_scf_routes_its_j(emulated_gpu, monkeypatch):
    """A PBE SCF wrapped by fusionrcg(backend='gpu', j_engine='on') asks only
    J-only builds, all served by one J engine: PySCF's energy."""
    from pyscf import dft

    from pyscf_fusionrcg import fusionrcg, scf as fscf
    monkeypatch.setattr(fscf, '_resolve_backend', lambda mf, backend: 'gpu')
    mol = gto.M(verbose=0, atom=H2O, basis='6-31g')
    ref = dft.RKS(mol, xc='pbe').run(conv_tol=1e-11).e_tot
    mf = fusionrcg(scf.RKS(mol, xc='pbe'), backend='gpu', j_engine='on', progress=False).run(conv_tol=1e-11)
    assert mf.converged and len(emulated_gpu) == 1
    assert abs(mf.e_tot - ref) < 1e-9


def test_j_engine_off_never_makes_a_gpu_j_engine(monkeypatch):
    """j_engine='off' (the default) leaves every build where it was: GPU
    builds, J-only included, go to the J/K kernels, the host path's J to the
    integral blocks; j_engine='on' on the host path keeps the host J engine."""
    def refuse(mol, omega):
        raise AssertionError('GPUJEngine made')
    monkeypatch.setattr(launch, 'GPUJEngine', refuse)
    monkeypatch.setattr(jk, '_gpu_get_jk', _no_jk_kernels)
    monkeypatch.delenv('FUSIONRCG_J_ENGINE', raising=False)
    mol = gto.M(verbose=0, atom=H2O, basis='sto-3g')
    dm = _dms(mol.nao, 1)[0]
    dm = dm + dm.T
    for opts in (Options(progress=False), from_env(progress=False)):
        for with_k in (False, True):
            with pytest.raises(JKKernelsReached):
                jk.get_jk(mol, dm, with_k=with_k, backend='gpu', options=opts)
    ref, _ = scf.hf.get_jk(mol, dm, hermi=1, with_k=False)
    for j_engine in ('off', 'on'):
        vj, _ = jk.get_jk(mol, dm, with_k=False, options=Options(j_engine=j_engine, progress=False))
        assert np.abs(vj - ref).max() <= TOL * np.abs(ref).max(), j_engine


_HASH_SCRIPT = '''
import hashlib
from pyscf_fusionrcg import codegen, jengine
src, name = codegen.j_kernel_source(jengine.j_program(2, 1, 1, 0, False), 1, (1, 2, 2, 1))
print(hashlib.sha256((name + src).encode()).hexdigest())
'''


def test_j_kernel_source_is_deterministic():
    """One text in this process and in two others of different string hashing."""
    src, name = codegen.j_kernel_source(jengine.j_program(2, 1, 1, 0, False), 1, (1, 2, 2, 1))
    here = hashlib.sha256((name + src).encode()).hexdigest()
    assert printed_by_other_processes(_HASH_SCRIPT) == [here, here]


def test_j_kernels_have_names_of_their_own():
    """Named apart from the class kernels; the accumulations read the
    other pair's density, weighted by their own pair's coefficients."""
    prog = jengine.j_program(1, 0, 1, 0)
    name = codegen.j_kernel_name(prog, 0, (2, 1, 1, 1))
    assert name == 'fr_j_psps_sph_ac_bk_register_c_n2111'
    assert name != codegen.kernel_name(prog.eri, codegen.make_variant(prog.eri))
    src, _ = codegen.j_kernel_source(prog, 0, (2, 1, 1, 1))
    assert 'a1_0 += wb1 * dcd[' in src and 'a0_3 += wk0 * dab[' in src
    assert codegen.j_block_sizes(prog, (2, 1, 1, 1)) == {'bra': 6, 'ket': 3}


def test_too_many_accumulators_are_refused():
    """(ff|ss) with two functions on each f shell: 4 x 74 bra accumulators."""
    with pytest.raises(ValueError, match='more than the J kernel holds'):
        codegen.j_kernel_source(jengine.j_program(3, 3, 0, 0), 0, (2, 2, 1, 1))


def test_primitive_pair_densities_fold_the_contraction(synth):
    """Summed over the primitive pairs with the pair's own weights, D^ is D~
    summed over the contracted functions with the primitive coefficients."""
    mol = synth.mol()
    pairs = np.array([[6, 2], [7, 3]])      # f and p shells: nctr 2, 2 primitives each
    smap = jengine.pairmaps.side_map(host.get_program(3, 1, 0, 0), 'bra')
    dms = _dms(mol.nao, 1)
    dt = jengine.pair_densities(mol, pairs, dms, smap)[0]
    d = jengine.primitive_pair_densities(mol, pairs, dms, smap)[0].reshape(2, 2, 2, smap.n_start)
    for n, (x, y) in enumerate(pairs):
        cx, cy = (mol._env[mol._bas[s, 6]:mol._bas[s, 6] + 4].reshape(2, 2) for s in (x, y))
        want = np.einsum('ui,vj,uvf->ijf', cx, cy, dt[n])
        assert np.abs(d[n] - want).max() <= 1e-14 * np.abs(want).max()


@pytest.mark.gpu
def test_gpu_j_equals_pyscf():
    """The J kernels on the GPU, digested by digest_j on the GPU, against PySCF's get_j."""
    for basis, omega in (('6-31g*', 0.0), ('cc-pvtz', 0.3)):
        mol = gto.M(verbose=0, atom='O 0 0 0.117; H 0 0.757 -0.469; H 0 -0.757 -0.469', basis=basis)
        dm = _dms(mol.nao, 1)
        dm = dm + dm.transpose(0, 2, 1)
        tasks = build_tasks(mol, dm, omega, with_k=False)
        vj = to_host(digest_j(mol, dm, tasks, launch.GPUJEngine(mol, omega), progress=False))
        ref, _ = scf.hf.get_jk(mol, dm, hermi=1, omega=omega or None, with_k=False)
        assert np.abs(vj - ref).max() <= TOL * np.abs(ref).max(), (basis, omega)


@pytest.mark.gpu
def test_gpu_pure_functional_scf_through_the_j_engine(monkeypatch):
    """A PBE SCF on the GPU path with j_engine='on' builds its J (J-only
    builds) through the J kernels and has PySCF's energy."""
    from pyscf import dft

    from pyscf_fusionrcg import fusionrcg
    used = []

    class Counted(launch.GPUJEngine):
        def quartet_j(self, shls, dms):
            used.append(len(shls))
            return super().quartet_j(shls, dms)
    monkeypatch.setattr(launch, 'GPUJEngine', Counted)
    mol = gto.M(verbose=0, atom=H2O, basis='6-31g*')
    ref = dft.RKS(mol, xc='pbe').run(conv_tol=1e-11).e_tot
    mf = fusionrcg(scf.RKS(mol, xc='pbe'), backend='gpu', j_engine='on').run(conv_tol=1e-11)
    assert mf.converged and used
    assert abs(mf.e_tot - ref) < 1e-9
