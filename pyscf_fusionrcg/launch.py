"""Compiled class kernels, device basis data and batched launches.

* :func:`get_kernel`: the kernel of one (class, Cartesian, operator kind,
  contraction shape, tier), routed by :mod:`pyscf_fusionrcg.tiers` and
  compiled by gpucore (NVRTC, disk cache), kept per process and GPU.
* :class:`DeviceBasis`: ``mol._env`` and a per-shell table
  ``[nprim, ptr_exp, ptr_coeff, ptr_coord]`` on the device, made once per
  molecule; the kernels read exponents, PySCF's normalised contraction
  coefficients and centres from them exactly as the host path does.
* :func:`class_blocks`: runs a class over any number of quartets in batches
  whose output buffer and global-tier scratch fit a memory budget (and, for
  the pairmap contracted stage, its accumulator and product buffers: the
  levels kernel writes the accumulators, then :func:`contracted_stage`'s
  :class:`SidePasses` run the graph's bra and ket steps on them, or
  :class:`pyscf_fusionrcg.pairmaps.PairProducts` multiplies them by each
  quartet's pair matrices with cuBLAS); on CuPy's
  OutOfMemoryError the batch is halved and retried, and a clear MemoryError
  says how much one quartet needs when even that does not fit.
* :func:`jk_kernel`: the kernel a J/K build runs for a class: for small
  register-tier blocks the variant that digests them itself.
* :class:`GPUEngine`: ``quartet_blocks(shls)`` and ``derivative_blocks(shls)``
  like ``host.HostEngine``, the latter through :func:`get_derivative_kernel`
  (``Options.gpu_gradients``).
* :class:`GPUJEngine`: the J engine's kernels (:func:`get_j_kernel`) behind
  ``jengine.HostJEngine``'s interface (``Options.j_engine``, docs/jengine-gpu.md).
* :func:`precompile`: what ``fusion-warmup`` calls.
"""
from __future__ import annotations

import dataclasses
import threading
from math import prod

import numpy as np

from . import codegen, host, ir, jengine, kernels, pairmaps, tiers
from .options import Options, from_env

ATOM_OF, ANG_OF, NPRIM_OF, NCTR_OF, PTR_EXP, PTR_COEFF = 0, 1, 2, 3, 5, 6
PTR_COORD = 1

#: Most scratch (bytes) of one class launch sequence when ``Options.scratch_mb``
#: is not given (a quarter of the free device memory, at most this).
BUDGET_MAX = 8 << 30
#: Global tier: resident blocks per SM at most (the grid strides over the rest).
GLOBAL_BLOCKS_PER_SM = 6
#: Largest block (elements) of a register-tier class of one contraction tuple
#: that J/K builds digest inside its integral kernel (docs/routing.md).
FUSED_DIGEST_MAX = 441

_lock = threading.Lock()
_kernels: dict = {}


def _cupy():
    from gpucore import require_gpu
    return require_gpu('FusionRCG GPU kernels')


def canonical_classes(lmax: int):
    """Classes (la, lb, lc, ld) with la >= lb, lc >= ld, (la, lb) >= (lc, ld)."""
    pairs = [(a, b) for a in range(lmax + 1) for b in range(a + 1)]
    return [p + k for p in pairs for k in pairs if p >= k]


class ClassKernel:
    """One compiled class kernel with its launch geometry (and op stream)."""

    def __init__(self, ls, cart=False, omega=0.0, nctr=(1, 1, 1, 1), tier=None, ctr='auto', digest=False):
        self.program = host.get_program(*ls, cart=cart)
        self.variant, self.stats = tiers.route(self.program, omega, nctr, tier, ctr)
        if digest:
            self.variant = dataclasses.replace(self.variant, digest=True)
        self._load()
        if digest:      # the route measured the plain variant; the digesting one holds more
            self.stats = dict(self.stats, **tiers.kernel_stats(self.kernel, self.program, self.variant),
                              kernel=self.name)

    def _load(self):
        """Compile ``self.variant`` of ``self.program`` and size its launches."""
        cp = _cupy()
        self.kernel, self.from_cache = kernels.compile_variant(self.program, self.variant)
        p, v = self.program, self.variant
        table = kernels.variant_table(p, v)
        self.block = codegen.block_size(p, v, table)
        self.shared = codegen.shared_bytes(p, v, table)
        limit = cp.cuda.Device().attributes['MaxSharedMemoryPerBlockOptin']
        if self.shared > limit:
            raise RuntimeError(f'FusionRCG {p.name}: the {v.tier} tier needs {self.shared} bytes of shared memory '
                               f'per block, this GPU allows {limit} (the kernels are sized for compute '
                               'capability 9.0); force another tier with tier=\'global\'')
        if self.shared > 48 * 1024:
            self.kernel.set_max_dynamic_shared(self.shared)
        self.n_slots = codegen.scratch_doubles(p, v, table)
        self.nelem = prod(p.shape) * prod(v.nctr)
        self.table = None
        if table is not None:
            self.table = tuple(cp.asarray(a) if isinstance(a, np.ndarray) else np.int32(a)
                               for a in table.stream_args())
        self.items_per_block = codegen.items_per_block(p, v, table)
        self.scratch_per_block = codegen.scratch_per_block(p, v, table)
        self.pairmap = v.ctr == 'pairmap'
        self.products = contracted_stage(p, cp) if self.pairmap else None
        #: doubles per quartet besides the block: accumulators and the products' temporaries
        self.work_per_quartet = p.n_acc + self.products.work_doubles if self.pairmap else 0

    @property
    def name(self) -> str:
        return codegen.kernel_name(self.program, self.variant)

    def global_blocks(self, n_items: int, budget: int) -> int:
        """Resident blocks of the global tier: bounded by the SMs and the budget."""
        cp = _cupy()
        sms = cp.cuda.Device().attributes['MultiProcessorCount']
        per_block = 8 * self.scratch_per_block
        want = min(-(-n_items // self.items_per_block), GLOBAL_BLOCKS_PER_SM * sms)
        return max(1, min(want, budget // per_block))

    def launch(self, quartets, nq, basis, omega, out, scratch=None, blocks=None):
        """Compute the blocks of ``quartets`` (device (nq, 4) int32) into ``out``
        (device (nelem, nq)); the global tier needs ``scratch`` for ``blocks``."""
        cp = _cupy()
        n_items = nq * self.variant.n_groups
        if blocks is None:
            blocks = -(-n_items // self.items_per_block)
        null = cp.empty(1) if scratch is None else scratch
        args = (quartets, np.int32(nq), basis.shl, basis.env, np.float64(omega), out, null,
                np.int32(self.n_slots)) + (self.table or ())
        self.kernel((blocks,), (self.block,), args, shared_mem=self.shared)

    def launch_digest(self, quartets, nq, basis, omega, ao_loc, nao, sets):
        """The digesting variant on ``quartets``: their blocks added to J and K
        (``ao_loc``, ``nao`` and ``sets``, the density and output arguments,
        as gpu_jk's digestion takes them)."""
        if nq == 0:     # an empty grid is not a valid launch
            return
        args = (quartets, np.int32(nq), basis.shl, basis.env, np.float64(omega), ao_loc, np.int32(nao))
        dm_j, jh, nset_j, dm_k, kh, nset_k = sets
        self.kernel((-(-nq // self.block),), (self.block,),
                    args + (dm_j, jh, np.int32(nset_j), dm_k, kh, np.int32(nset_k)))

    def contract(self, quartets, nq, basis, acc, work, out):
        """The pairmap contracted stage of a batch: ``acc`` (nq, n_acc) from
        :meth:`launch` into the blocks ``out`` (nelem, nq), with ``work``
        (nq * products.work_doubles) for the temporaries (none for the passes)."""
        q = quartets[:nq]
        xyz = basis.coords
        self.products(acc, xyz[q[:, 0]] - xyz[q[:, 1]], xyz[q[:, 2]] - xyz[q[:, 3]], out, work)


class SidePasses:
    """The pairmap contracted stage as the generated side passes
    (codegen.side_pass_source), called as :class:`pairmaps.PairProducts` is:
    ``(acc, ab, cd, out, work=None)``, with no work buffer."""

    work_doubles = 0

    def __init__(self, program):
        self.kernel = kernels.compile_side_passes(program)
        self.quartets_per_block = codegen.pass_quartets(program)
        self.shared = codegen.pass_shared_bytes(program)
        if self.shared > 48 * 1024:
            self.kernel.set_max_dynamic_shared(self.shared)

    def __call__(self, acc, ab, cd, out, work=None):
        nq = len(ab)
        if nq:
            self.kernel((-(-nq // self.quartets_per_block),), (codegen.PASS_THREADS,),
                        (acc, ab, cd, out, np.int32(nq)), shared_mem=self.shared)
        return out


class DerivativeKernel(ClassKernel):
    """The kernel of a class's nuclear-derivative blocks
    (``host.get_derivative_program``: d/dA, d/dB, d/dC), in the tier and
    form of :func:`tiers.derivative_variant`; launched as a
    :class:`ClassKernel`, its elements ``(centre, direction, i, j, k, l)``,
    C order."""

    def __init__(self, ls, cart=False, omega=0.0, nctr=(1, 1, 1, 1), tier=None):
        self.program = host.get_derivative_program(*ls, cart=cart)
        self.variant = tiers.derivative_variant(self.program, tier, omega, nctr)
        self._load()
        v = self.variant
        self.stats = dict(tiers.kernel_stats(self.kernel, self.program, v), tier=v.tier, form=v.form,
                          ctr=v.ctr, kernel=self.name)


def contracted_stage(program, cp):
    """The pairmap contracted stage of a class: the side passes where a block
    of quartets fits their shared memory, else :class:`pairmaps.PairProducts`."""
    if codegen.pass_quartets(program):
        return SidePasses(program)
    return pairmaps.PairProducts(program, cp)


def _cached(key, make):
    """The kernel object of ``key`` on the current GPU, ``make()`` the first
    time: each GPU keeps its own, as they hold device arrays (op-stream
    tables, pair maps) and launch settings (dynamic shared memory) of the GPU
    they were made on (a build shared by GPUs runs on several)."""
    key = (_cupy().cuda.runtime.getDevice(),) + key
    with _lock:
        k = _kernels.get(key)
    if k is None:
        k = make()
        with _lock:
            k = _kernels.setdefault(key, k)
    return k


def get_kernel(ls, cart=False, omega=0.0, nctr=(1, 1, 1, 1), tier=None, ctr='auto',
               digest=False) -> ClassKernel:
    """Cached :class:`ClassKernel` (the kernel depends on omega only through its
    sign); ``tier`` and ``ctr`` as :func:`tiers.route`'s; ``digest``: the
    routed variant that digests its blocks (a register-tier class of one
    contraction tuple, see :func:`jk_kernel`)."""
    key = (tuple(int(l) for l in ls), bool(cart), codegen.omega_kind(omega),
           tuple(int(n) for n in nctr), tier, tiers.requested_ctr(ctr), bool(digest))
    return _cached(key, lambda: ClassKernel(key[0], key[1], omega, key[3], tier, ctr, key[6]))


def get_derivative_kernel(ls, cart=False, omega=0.0, nctr=(1, 1, 1, 1), tier=None) -> DerivativeKernel | None:
    """Cached :class:`DerivativeKernel` (omega enters through its sign only; ``tier`` as
    :func:`tiers.derivative_variant` takes it), or None for a class no kernel can encode."""
    key = ('deriv', tuple(int(l) for l in ls), bool(cart), codegen.omega_kind(omega),
           tuple(int(n) for n in nctr), tier or None)
    return _cached(key, lambda: _derivative_kernel_or_false(key[1], key[2], omega, key[4], key[5])) or None


def _derivative_kernel_or_false(*args):
    try:
        return DerivativeKernel(*args)
    except tiers.KernelTooLarge:    # cached as False: finding it out takes seconds
        return False


class JKernel:
    """The compiled J kernel of a class's two-sided J program (default build
    centres; ``codegen.j_kernel_source``): :meth:`launch` runs it on ``nq``
    quartets with the kernel's arguments."""

    def __init__(self, ls, cart=False, omega=0.0, nctr=(1, 1, 1, 1)):
        self.program = jengine.j_program(*ls, cart)
        self.nctr = tuple(int(n) for n in nctr)
        self.kernel = kernels.compile_j(self.program, codegen.omega_kind(omega), self.nctr)

    def launch(self, nq, args):
        self.kernel((-(-nq // codegen.BLOCK),), (codegen.BLOCK,), args)


def get_j_kernel(ls, cart=False, omega=0.0, nctr=(1, 1, 1, 1)) -> JKernel:
    """Cached :class:`JKernel` (omega enters through its sign only)."""
    key = ('j', tuple(int(l) for l in ls), bool(cart), codegen.omega_kind(omega), tuple(int(n) for n in nctr))
    return _cached(key, lambda: JKernel(key[1], key[2], omega, key[4]))


def fuses_digestion(kern: ClassKernel, options: Options) -> bool:
    """Whether a J/K build runs this routed kernel's digesting variant
    (:data:`FUSED_DIGEST_MAX`, ``options.fuse_digestion``)."""
    v = kern.variant
    return (options.fuse_digestion and v.tier == 'register' and prod(v.nctr) == 1
            and kern.nelem <= FUSED_DIGEST_MAX)


def jk_kernel(ls, cart=False, omega=0.0, nctr=(1, 1, 1, 1), options: Options = None) -> ClassKernel:
    """The kernel a J/K build runs for a class: the routed one (``options.tier``
    and ``options.ctr``), or its digesting variant where :func:`fuses_digestion`."""
    options = options or Options()
    kern = get_kernel(ls, cart, omega, nctr, options.tier, options.ctr)
    if fuses_digestion(kern, options):
        return get_kernel(ls, cart, omega, nctr, options.tier, options.ctr, digest=True)
    return kern


class ShellKeys:
    """Per-shell keys of :func:`orient` and :func:`primitive_order`, NumPy:
    ``l_nctr`` ((l, nctr) of each shell), ``min_exp`` (its smallest exponent),
    ``nprim_rank`` (its primitive count's rank among the molecule's) and
    ``nprim_levels`` (how many counts there are).  :class:`DeviceBasis` holds
    them on the device; this host copy orders quartets on the CPU."""

    def __init__(self, mol):
        bas = mol._bas
        counts, rank = np.unique(bas[:, NPRIM_OF], return_inverse=True)
        self.nprim_rank = rank.astype(np.int64)
        self.nprim_levels = len(counts)
        self.l_nctr = bas[:, ANG_OF].astype(np.int64) * 64 + bas[:, NCTR_OF]
        self.min_exp = host.min_exponents(mol)


def shell_table(mol) -> np.ndarray:
    """The kernels' ``shl`` argument: (nbas, 4) int32 ``[nprim, ptr_exp,
    ptr_coeff, ptr_coord]`` of each shell into ``mol._env``."""
    bas, atm = mol._bas, mol._atm
    return np.ascontiguousarray(np.stack([bas[:, NPRIM_OF], bas[:, PTR_EXP], bas[:, PTR_COEFF],
                                          atm[bas[:, ATOM_OF], PTR_COORD]], axis=1), dtype=np.int32)


class DeviceBasis:
    """Basis data of a molecule on the device (see the module docstring)."""

    def __init__(self, mol):
        cp = _cupy()
        shl = shell_table(mol)
        self.shl = cp.asarray(shl)
        keys = ShellKeys(mol)       # for orient and primitive_order
        self.nprim_rank, self.l_nctr, self.min_exp = (cp.asarray(a) for a in
                                                       (keys.nprim_rank, keys.l_nctr, keys.min_exp))
        self.nprim_levels = keys.nprim_levels
        self.env = cp.asarray(np.asarray(mol._env, dtype=np.float64))
        self.ao_loc = cp.asarray(np.asarray(mol.ao_loc, dtype=np.int32))
        # each shell's centre, for the pairmap stage's pair vectors
        self.coords = cp.asarray(host.shell_centres(mol))


def budget_bytes(scratch_mb: float = None) -> int:
    """Scratch budget of a class: ``scratch_mb`` MiB, else a quarter of the free
    device memory, at most :data:`BUDGET_MAX`."""
    if scratch_mb:
        return int(float(scratch_mb) * (1 << 20))
    free, _ = _cupy().cuda.runtime.memGetInfo()
    return int(min(BUDGET_MAX, free // 4))


def orient(basis, quartets):
    """Swap the shells of pairs with equal (l, nctr) so the tighter one (larger
    smallest exponent) comes first, as ``host.HostEngine.orient`` does: the
    programs build such a pair's angular momentum on its first shell, and the
    HRR that moves it to the other loses the fewest digits from there.
    Returns (oriented (n, 4) int32, swap_bra, swap_ket masks): CuPy with a
    :class:`DeviceBasis`, NumPy with :class:`ShellKeys`.
    The 8-fold digestion is invariant under these swaps."""
    cp = np if isinstance(basis, ShellKeys) else _cupy()
    q = cp.array(cp.asarray(quartets), dtype=cp.int32)
    swaps = []
    for i, j in ((0, 1), (2, 3)):
        a, b = q[:, i].copy(), q[:, j].copy()
        sw = (basis.l_nctr[a] == basis.l_nctr[b]) & (basis.min_exp[b] > basis.min_exp[a])
        q[:, i] = cp.where(sw, b, a)
        q[:, j] = cp.where(sw, a, b)
        swaps.append(sw)
    return q, swaps[0], swaps[1]


def primitive_order(basis, quartets):
    """Permutation grouping quartets (NumPy or CuPy (n, 4)) of equal
    primitive counts, so that the threads of a warp run the same number of
    primitive-loop iterations, and inside each group sorting them by shells
    (a, b, c, d): the lanes of a warp then mostly share a bra pair and often
    the ket's first shell, and the digestion adds their Jh[p,q], Kh[p,r] and
    Kh[q,r] with one atomic per run of equal addresses.  Molecules too large
    for that key in 63 bits keep screening's order (bra pair by bra pair).
    NumPy with :class:`ShellKeys` (ordering on the CPU), else on the device."""
    cp = np if isinstance(basis, ShellKeys) else _cupy()
    q = cp.asarray(quartets)
    nrank, nbas = basis.nprim_levels, len(basis.nprim_rank)
    key = cp.zeros(len(q), dtype=cp.int64)
    for i in range(4):          # in place: a plan's classes reach 10^8 quartets
        key *= nrank
        key += basis.nprim_rank[q[:, i]]
    if float(nrank) ** 4 * float(nbas) ** 4 < 2.0 ** 63:
        for i in range(4):
            key *= nbas
            key += q[:, i]
    else:
        key *= len(key)
        key += cp.arange(len(key), dtype=cp.int64)
    return cp.argsort(key)


def class_blocks(kern: ClassKernel, basis: DeviceBasis, quartets, omega, budget=None, scratch_mb=None):
    """Yield ``(lo, hi, out)`` over batches of ``quartets`` ((n, 4), NumPy or CuPy):
    ``out`` the CuPy ``(nelem, hi - lo)`` blocks ([element][quartet]); valid
    until the next batch is requested (the buffer is reused).  ``budget``:
    bytes of scratch (None: :func:`budget_bytes` of ``scratch_mb``)."""
    cp = _cupy()
    n = len(quartets)
    if n == 0:
        return
    budget = budget_bytes(scratch_mb) if budget is None else int(budget)
    per_quartet = 8 * (kern.nelem + kern.work_per_quartet)
    scratch, blocks = None, None
    if per_quartet > budget:
        raise MemoryError(
            f'FusionRCG {kern.program.name}: one quartet needs {per_quartet / 2**20:.2f} MiB of output, '
            f'the budget is {budget / 2**20:.2f} MiB (raise Options.scratch_mb, $FUSIONRCG_SCRATCH_MB)')
    if kern.variant.tier == 'global':
        per_block = 8 * kern.scratch_per_block
        if per_block + per_quartet > budget:
            raise MemoryError(
                f'FusionRCG {kern.program.name}: one block of the global tier needs '
                f'{(per_block + per_quartet) / 2**20:.1f} MiB of scratch, the budget is '
                f'{budget / 2**20:.1f} MiB (raise Options.scratch_mb, $FUSIONRCG_SCRATCH_MB)')
        blocks = kern.global_blocks(n * kern.variant.n_groups, budget // 2)
    step = max(1, min(n, (budget - 8 * kern.scratch_per_block * (blocks or 0)) // per_quartet))
    qdev = cp.ascontiguousarray(cp.asarray(quartets), dtype=cp.int32)
    while True:
        try:
            if blocks is not None and scratch is None:
                scratch = cp.empty(blocks * kern.scratch_per_block)
            out = cp.empty(kern.nelem * step)
            work = cp.empty(kern.work_per_quartet * step) if kern.pairmap else None
            break
        except cp.cuda.memory.OutOfMemoryError:
            out = work = None
            cp.get_default_memory_pool().free_all_blocks()
            if blocks is not None and blocks > 1 and scratch is None:
                blocks //= 2
                continue
            if step == 1:
                need = per_quartet + (0 if scratch is None else scratch.nbytes)
                raise MemoryError(
                    f'FusionRCG {kern.program.name}: not even one quartet fits on the device '
                    f'(needs {need / 2**20:.1f} MiB)') from None
            step = max(1, step // 2)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        nq = hi - lo
        buf = out[:kern.nelem * nq].reshape(kern.nelem, nq)
        g_blocks = None if blocks is None else min(blocks, -(-nq * kern.variant.n_groups // kern.items_per_block))
        if kern.pairmap:
            acc = work[:kern.program.n_acc * nq]
            kern.launch(qdev[lo:hi], nq, basis, omega, acc, scratch, g_blocks)
            kern.contract(qdev[lo:hi], nq, basis, acc, work[kern.program.n_acc * nq:], buf)
        else:
            kern.launch(qdev[lo:hi], nq, basis, omega, buf, scratch, g_blocks)
        yield lo, hi, buf


def unorient_derivatives(blocks, swap_bra, swap_ket):
    """Derivative blocks ``(n, 3, 3, di, dj, dk, dl)`` of quartets that
    :func:`orient` swapped, put back in the quartets' own order (NumPy or
    CuPy, a new array).  A bra swap exchanges the a and b components and
    indices; a ket swap computed d/dD in place of d/dC, which translational
    invariance turns back: d/dC = -(d/dA + d/dB + d/dD)."""
    xp = np if isinstance(blocks, np.ndarray) else _cupy()
    out = blocks.copy()
    if bool(swap_ket.any()):
        b = out[swap_ket]
        out[swap_ket] = xp.concatenate([b[:, :2], -b.sum(axis=1, keepdims=True)], axis=1).swapaxes(5, 6)
    if bool(swap_bra.any()):
        out[swap_bra] = out[swap_bra][:, [1, 0, 2]].swapaxes(3, 4)
    return out


def _class_of(mol, shls):
    """(ls, nctr) of quartets ``shls`` (n, 4), which must share them index by index."""
    keys = mol._bas[np.asarray(shls)][..., [ANG_OF, NCTR_OF]]
    if not (keys == keys[:1]).all():
        raise ValueError('quartet_blocks: all quartets must share one class (l and nctr at each index)')
    return tuple(int(x) for x in keys[0, :, 0]), tuple(int(x) for x in keys[0, :, 1])


class GPUEngine:
    """Contracted ERI blocks of shell quartets on the GPU (interface of HostEngine).

    ``omega``: as PySCF's ``mol.omega`` (> 0: erf, < 0: erfc); 0 means use
    ``mol.omega``.  ``options``: :class:`~pyscf_fusionrcg.options.Options`
    (its ``tier``, ``ctr`` and ``scratch_mb``; default :func:`from_env`).
    """

    def __init__(self, mol, omega=0.0, options: Options = None):
        self.mol = mol
        self.omega = float(omega) if omega else float(getattr(mol, 'omega', 0.0) or 0.0)
        self.cart = bool(mol.cart)
        self.options = options or from_env()
        self.basis = DeviceBasis(mol)

    def quartet_blocks(self, shls, as_cupy=False, budget=None):
        """(n, di, dj, dk, dl) integrals of n shell quartets of one class."""
        res, swap_bra, swap_ket = self._run(shls, 'quartet_blocks', budget, lambda ls, nctr: get_kernel(
            ls, self.cart, self.omega, nctr, self.options.tier, self.options.ctr))
        # equal (l, nctr) pairs are square in their two indices
        if bool(swap_bra.any()):
            res[swap_bra] = res[swap_bra].transpose(0, 2, 1, 3, 4)
        if bool(swap_ket.any()):
            res[swap_ket] = res[swap_ket].transpose(0, 1, 2, 4, 3)
        return res if as_cupy else res.get()

    def derivative_blocks(self, shls, as_cupy=False, budget=None):
        """(n, 3, 3, di, dj, dk, dl) nuclear derivatives of n shell quartets
        of one class, as ``host.HostEngine.derivative_blocks``: ``[q, s, x]``
        is d/dX_x of quartet q's block, X the centre of its shell s (a, b, c).
        Quartets are oriented as :meth:`quartet_blocks`' (the tighter shell of an
        equal pair first) and put back (:func:`unorient_derivatives`); a class no
        kernel can encode comes from the host engine."""
        cp = _cupy()
        run = self._run(shls, 'derivative_blocks', budget, lambda ls, nctr: (
            get_derivative_kernel(ls, self.cart, self.omega, nctr, self.options.tier)))
        if run is None:
            blocks = host.HostEngine(self.mol, self.omega).derivative_blocks(cp.asnumpy(shls).reshape(-1, 4))
            return cp.asarray(blocks) if as_cupy else blocks
        res, swap_bra, swap_ket = run
        res = unorient_derivatives(res.reshape((len(res), 3, 3) + res.shape[2:]), swap_bra, swap_ket)
        return res if as_cupy else res.get()

    def _run(self, shls, caller, budget, kernel_of):
        """(CuPy blocks of the oriented quartets, swap_bra, swap_ket) of quartets ``shls`` of one class
        (:func:`orient`), run in primitive order by ``kernel_of(ls, nctr)``'s kernel (None where that
        is None); ``caller`` names the method in errors."""
        cp = _cupy()
        shls = cp.asarray(shls, dtype=cp.int32).reshape(-1, 4)    # quartets on the device stay there
        if len(shls) == 0:
            raise ValueError(f'{caller} needs at least one quartet')
        keys = self.basis.l_nctr[shls]
        if not bool((keys == keys[:1]).all()):
            _class_of(self.mol, shls.get())     # says which differs
        ls, nctr = _class_of(self.mol, shls[:1].get())
        kern = kernel_of(ls, nctr)
        if kern is None:
            return None
        dims = host._block_shape(kern.program.shape, nctr)
        oriented, swap_bra, swap_ket = orient(self.basis, shls)
        pos = primitive_order(self.basis, oriented)
        res = cp.empty((len(shls),) + dims)
        for lo, hi, buf in class_blocks(kern, self.basis, oriented[pos], self.omega, budget,
                                        self.options.scratch_mb):
            res[pos[lo:hi]] = buf.T.reshape((hi - lo,) + dims)
        return res, swap_bra, swap_ket


class GPUJEngine:
    """J blocks of shell quartets through the J kernels: ``sides`` and
    ``quartet_j(shls, dms)`` as :class:`jengine.HostJEngine`'s, so that
    ``jdigest.digest_j(mol, dms, tasks, GPUJEngine(mol, omega))`` adds them
    into J with the task lists' 8-fold degeneracy, in :attr:`xp` (CuPy).

    Per class: the quartets oriented and put in primitive order as the J/K
    kernels' (:func:`orient`, :func:`primitive_order`), their pair densities
    made in :attr:`xp` (:func:`jengine.quartet_densities`), one launch per
    density set, the ``[element][quartet]`` output split into the sides'
    blocks and put back in the quartets' order on the device.
    :meth:`_device` and :meth:`kernel` are where a CPU emulation stands in
    for the GPU."""

    sides = jengine.SIDES[0]

    def __init__(self, mol, omega=0.0):
        self.mol = mol
        self.omega = float(omega) if omega else float(getattr(mol, 'omega', 0.0) or 0.0)
        self.keys = ShellKeys(mol)
        self._device()

    def _device(self):
        """The array module and the basis arguments (``shl``, ``env``) on the device."""
        self.xp = _cupy()
        self.shl = self.xp.asarray(shell_table(self.mol))
        self.env = self.xp.asarray(np.asarray(self.mol._env, dtype=np.float64))

    def kernel(self, ls, nctr) -> JKernel:
        return get_j_kernel(ls, bool(self.mol.cart), self.omega, nctr)

    def quartet_j(self, shls, dms) -> dict:
        """``{'bra': (nset, n, da, db), 'ket': (nset, n, dc, dd)}`` J blocks,
        in :attr:`xp`, of ``n`` quartets of one class for ``dms`` (nset, nao,
        nao), NumPy or in :attr:`xp`."""
        xp = self.xp
        shls = np.asarray(shls, dtype=np.int32).reshape(-1, 4)
        ls, nctr = _class_of(self.mol, shls)
        kern = self.kernel(ls, nctr)
        oriented, swap_bra, swap_ket = orient(self.keys, shls)
        pos = primitive_order(self.keys, oriented)
        rho, off = jengine.quartet_densities(self.mol, kern.program, oriented[pos], xp.asarray(dms),
                                             (swap_bra[pos], swap_ket[pos]))
        sizes = codegen.j_block_sizes(kern.program, nctr)
        nset, nelem, nq = len(dms), sum(sizes.values()), len(shls)
        args = (xp.asarray(oriented[pos]), np.int32(nq), self.shl, self.env, np.float64(self.omega))
        off = xp.asarray(off)
        res = xp.empty((nset, nelem, nq))
        put = xp.asarray(pos)
        for s in range(nset):
            out = xp.empty(nelem * nq)
            kern.launch(nq, args + (xp.ascontiguousarray(rho[s]), off, out))
            res[s][:, put] = out.reshape(nelem, nq)
        blocks, e0 = {}, 0
        for side, swap in zip(self.sides, (swap_bra, swap_ket)):
            dims = codegen.j_block_dims(kern.program, side, nctr)
            blk = res[:, e0:e0 + sizes[side]].reshape((nset,) + dims + (nq,)).transpose(0, 3, 1, 2)
            if swap.any():      # equal (l, nctr): square
                swap = xp.asarray(swap)
                blk[:, swap] = blk[:, swap].transpose(0, 1, 3, 2)
            blocks[side], e0 = blk, e0 + sizes[side]
        return blocks


def precompile(lmax: int = 4, cart: bool = False, options: Options = None) -> list[str]:
    """Compile (or load from the cache) every canonical class up to ``lmax``
    as a J/K build runs it (:func:`jk_kernel`); one line per class:
    compiled/cached, tier, form, registers, spill bytes, kernel."""
    lines = []
    for ls in canonical_classes(lmax):
        k = jk_kernel(ls, cart, options=options or from_env())
        s = k.stats
        name = ir.class_name(ls)
        lines.append(f'({name[:2]}|{name[2:]}) '
                     f'{"cached" if k.from_cache else "compiled"} tier={s["tier"]} form={s["form"]} '
                     f'registers={s["registers"]} spill_bytes={s["spill_bytes"]} '
                     f'shared_bytes={s["shared_bytes"]} kernel={k.name}')
    return lines
