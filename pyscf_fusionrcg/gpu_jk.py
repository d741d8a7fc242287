"""J and K on the GPU from the generated class kernels.

Entry point (called by :func:`pyscf_fusionrcg.jk.get_jk` with ``backend='gpu'``)::

    vj, vk = get_jk_gpu(mol, dms, hermi, with_j, with_k, omega, tasks,
                        options=None, budget=None)

* ``dms``: (nset, nao, nao) NumPy or CuPy (real or complex); several sets
  (e.g. UHF's alpha and beta) are digested together from one set of blocks.
* ``hermi``: 1 treats the densities as hermitian (K from ``Kh + Kh^T``);
  anything else as general (``Kh[D] + Kh[D^T]^T``).
* ``omega``: 0 plain Coulomb, > 0 erf (long range), < 0 erfc (short range).
* ``tasks``: :func:`pyscf_fusionrcg.screening.build_tasks` output for these
  densities and omega (NumPy or CuPy task arrays); the 8-fold degeneracy
  convention is that module's.  Or a :class:`JKPlan`: the same quartets
  already oriented and ordered on the device, kept across builds (all of
  them), or such a plan kept to the quartets of a density's own shell blocks
  (:meth:`JKPlan.restricted`, what the plugin's builds use).
  Or an :func:`~pyscf_fusionrcg.screening.iter_tasks` stream: the classes are
  then screened, ordered and digested one chunk at a time (:class:`StreamedPlan`).
* ``options``: :class:`~pyscf_fusionrcg.options.Options` (the kernels'
  tier, contracted stage and fused digestion, the scratch budget, the
  progress bar; default :func:`~pyscf_fusionrcg.options.from_env`; a plan
  carries its own);
  ``budget``: scratch bytes per class (see :func:`launch.budget_bytes`);
  ``profile``: a dict that receives, per class, the quartet count and the
  GPU milliseconds of its ERI kernels, of its digestion and of its kernel
  that does both (``eri_ms``, ``digest_ms``, ``fused_ms``; CUDA events; the
  call synchronises once at the end), for ``benchmarks/rcg_jk_breakdown.py``;
  ``basis``: the molecule's :class:`~pyscf_fusionrcg.launch.DeviceBasis`
  (a :class:`~pyscf_fusionrcg.jk.JKContext` keeps one), else uploaded anew;
  ``share``: a :class:`~pyscf_fusionrcg.distributed.Share`: only its part
  of each class is computed, J and K are then that part's, to be summed
  with the other parts' (a build shared by ranks or GPUs).

Returns ``(vj, vk)`` shaped (nset, nao, nao), None for the one not asked;
CuPy arrays when ``dms`` is a CuPy array, NumPy otherwise.

Each class is computed in batches (:func:`launch.class_blocks`, output laid
out ``[element][quartet]``) and digested at once by a kernel of
``csrc/fusionrcg/digest.cu``: one thread per quartet for small blocks, per
quartet and slab for some larger ones, else per quartet and output element
(:func:`digest_layout`), double-precision atomics aggregated over a warp's lanes.
Small register-tier blocks are digested inside their ERI kernel instead, in
one launch over all the class's quartets (:func:`launch.jk_kernel`).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache
from math import prod

import numpy as np
from tqdm import tqdm

from . import launch
from .options import PROGRESS_DELAY_S, Options, from_env
from .screening import (CHUNK_QUARTETS, PLAN_BLOCK, PLAN_ROUNDS, ClassTasks, TaskStream, iter_tasks,
                        joined_rows, plan_kernel, schwarz_bounds, sorted_pair_bounds)

_DIGEST_BLOCK = 128
#: Blocks of at most this many elements are digested one quartet per thread
#: (digest.cu's fr_digest_quartet), the whole block in registers (docs/routing.md).
QUARTET_DIGEST_MAX = 81
#: Larger blocks go in slabs, one thread per quartet and value of the leading
#: index, where a slab has at most this many elements and the second index
#: more than one (:func:`digest_layout`, docs/routing.md).
SLAB_DIGEST_MAX = 63
_COMPILE_THREADS = max(1, min(8, os.cpu_count() or 1))

#: A plan screened for densities up to ``bound`` serves densities whose largest
#: element is at least ``bound / PLAN_REUSE_RANGE``; smaller ones (the density
#: changes of incremental SCF cycles) are screened block by block instead.
PLAN_REUSE_RANGE = 8.0
#: Such a smaller density filters the plan's quartets (:meth:`JKPlan.restricted`)
#: when screening it anew would look at least this share of the plan's count
#: (:func:`~pyscf_fusionrcg.screening.schwarz_candidates`), else it is screened
#: and sorted anew (docs/routing.md).
PLAN_RESTRICT_SHARE = 0.25
#: Rows of a plan filtered at once by :meth:`JKPlan.restricted`, or decoded
#: at once for the kernels from an unfiltered plan (bounds their temporaries
#: to 1 GiB).
_RESTRICT_ROWS = 1 << 26
#: A plan keeps its shell indices in 16 bits (csrc/fusionrcg/plan.cu reads
#: them so): molecules with more shells stream their builds.
PLAN_INDEX_DTYPE = np.uint16
PLAN_QUARTET_BYTES = 4 * np.dtype(PLAN_INDEX_DTYPE).itemsize
PLAN_MAX_SHELLS = int(np.iinfo(PLAN_INDEX_DTYPE).max) + 1


def digest_layout(dims, kind=None) -> tuple:
    """``(kind, compiled dims, slabs)``: how digest.cu digests blocks of
    ``dims`` (see its fr_digest_quartet).  'quartet': whole blocks of at most
    ``QUARTET_DIGEST_MAX`` elements, one thread per quartet; 'slab': larger
    ones one thread per quartet and value of the leading index, where
    ``SLAB_DIGEST_MAX`` allows it; 'element' otherwise (fr_digest).  ``kind``
    forces one (``benchmarks/rcg_digest_kernels.py``: a whole block of any
    size, slabs of up to ``QUARTET_DIGEST_MAX`` elements)."""
    if kind not in (None, 'element', 'quartet', 'slab'):
        raise ValueError(f"digestion kind must be 'element', 'quartet' or 'slab', not {kind!r}")
    dims = tuple(int(d) for d in dims)
    slab = prod(dims[1:])
    if kind is None:
        kind = ('quartet' if prod(dims) <= QUARTET_DIGEST_MAX
                else 'slab' if dims[1] > 1 and slab <= SLAB_DIGEST_MAX else 'element')
    if kind != 'slab':
        return kind, dims, 1
    if not slabs_fit(dims):
        raise ValueError(f'blocks of {dims} have no slabs of at most {QUARTET_DIGEST_MAX} elements')
    return 'slab', (1,) + dims[1:], dims[0]


def slabs_fit(dims) -> bool:
    """Whether blocks of ``dims`` can be digested as slabs: each slab (one value
    of the leading index) a whole block fr_digest_quartet takes."""
    return prod(int(d) for d in dims[1:]) <= QUARTET_DIGEST_MAX


class _Digestion:
    """digest.cu for one block shape, laid out by :func:`digest_layout`:
    ``fr_digest_quartet`` compiled for the block's or the slab's dims, or
    ``fr_digest``."""

    def __init__(self, dims, kind=None):
        from gpucore import compile_file
        self.dims = tuple(int(d) for d in dims)
        self.kind, compiled, self.slabs = digest_layout(self.dims, kind)
        if self.kind == 'element':
            self.kernel = compile_file('fusionrcg/digest.cu').get_kernel('fr_digest')
        else:
            defines = dict(zip(('FR_DI', 'FR_DJ', 'FR_DK', 'FR_DL'), compiled))
            self.kernel = compile_file('fusionrcg/digest.cu', defines=defines).get_kernel('fr_digest_quartet')

    def __call__(self, g, nq, quartets, ao_loc, nao, dm_j, jh, nset_j, dm_k, kh, nset_k):
        """Add a batch's blocks ``g`` ([element][quartet]) to Jh and Kh (digest.cu)."""
        sets = (dm_j, jh, np.int32(nset_j), dm_k, kh, np.int32(nset_k))
        if self.kind != 'element':
            self.kernel((-(-nq // _DIGEST_BLOCK), self.slabs), (_DIGEST_BLOCK,),
                        (g, np.int32(nq), quartets, ao_loc, np.int32(nao)) + sets)
            return
        di, dj, dk, dl = self.dims
        n_elem = (di * dj + dk * dl) * bool(nset_j) + (di + dj) * (dk + dl) * bool(nset_k)
        self.kernel(digest_grid(n_elem, nq), (_DIGEST_BLOCK,),
                    (g, np.int32(nq), quartets, ao_loc, *(np.int32(x) for x in self.dims),
                     np.int32(nao)) + sets)


@lru_cache(maxsize=None)
def _digestion(dims) -> _Digestion:
    return _Digestion(dims)


def _block_dims(kern, nctr) -> tuple:
    """AO block dims of a class kernel's program with contraction shape ``nctr``."""
    return tuple(n * c for n, c in zip(kern.program.shape, nctr))


def _prepare_digestions(kernels: dict) -> None:
    """Compile the digestion of every block shape of ``kernels`` ((class,
    nctr) -> kernel) on a few threads: NVRTC takes a second or two for each
    shape of fr_digest_quartet the first time on a machine."""
    device = launch._cupy().cuda.Device()

    def prepare(dims):
        with device:
            return _digestion(dims)

    shapes = {_block_dims(kern, nctr) for (_, nctr), kern in kernels.items() if not kern.variant.digest}
    with ThreadPoolExecutor(max_workers=_COMPILE_THREADS) as pool:
        list(pool.map(prepare, sorted(shapes)))


@dataclass
class _ClassPlan:
    key: tuple              # (la, lb, lc, ld) and the contracted functions per
    nctr: tuple             # shell, as a ClassTasks' (a Share cuts either)
    kern: launch.ClassKernel
    quartets: object        # CuPy (n, 4) shell indices: oriented, in primitive order
                            # (the digestion derives each one's degeneracy); int32
                            # for the kernels, uint16 where a JKPlan keeps them
    digestion: _Digestion   # for the AO block dims of the class and contraction shape;
                            # None where the kernel digests its blocks itself

    def __len__(self):
        return len(self.quartets)

    def rows(self):
        """Views of at most ``_RESTRICT_ROWS`` of the quartets each, in order."""
        step = _RESTRICT_ROWS
        return (self.quartets[lo:lo + step] for lo in range(0, len(self.quartets), step))

    def with_quartets(self, quartets):
        """The class with other quartets, as int32 for the kernels."""
        return replace(self, quartets=launch._cupy().ascontiguousarray(quartets, dtype=np.int32))


def _class_kernels(shapes, cart, omega, options: Options) -> dict:
    """The kernel of every (class, contraction shape) (:func:`launch.jk_kernel`),
    first uses compiled by a
    few threads at once (NVRTC releases the GIL; a triple-zeta molecule's
    register-tier classes take 1-20 s each, and a cc-pV5Z molecule's 400
    classes minutes the first time in a process), with a progress bar on
    stderr once that takes more than ``PROGRESS_DELAY_S`` (unless
    ``options.progress`` is off)."""
    device = launch._cupy().cuda.Device()

    def kernel(shape):
        with device:    # the worker thread loads modules into this device's context
            return launch.jk_kernel(shape[0], cart, omega, shape[1], options)

    shapes = sorted(shapes)
    kernels = {}
    with ThreadPoolExecutor(max_workers=_COMPILE_THREADS) as pool, \
            tqdm(total=len(shapes), desc='FusionRCG kernels', unit='class', delay=PROGRESS_DELAY_S,
                 leave=False, disable=not options.progress) as bar:
        for shape, kern in zip(shapes, pool.map(kernel, shapes)):
            kernels[shape] = kern
            bar.update()
    return kernels


class PlanTooLarge(MemoryError):
    """A plan's quartets would take more than the memory allowed for them."""

    def __init__(self, nbytes: int, max_bytes: int):
        super().__init__(f'the screened quartets take more than {nbytes / 2**30:.1f} GiB '
                         f'of GPU memory, above the {max_bytes / 2**30:.1f} GiB allowed for a plan')
        self.nbytes, self.max_bytes = nbytes, max_bytes


class JKPlan:
    """Every class's screened quartets on the device, oriented and ordered for
    launch (``launch.orient``, ``launch.primitive_order``), with the kernels;
    kept as 16-bit shell indices (8 bytes a quartet; the kernels get int32
    copies of a few million at a time as a build reaches them).

    Screening, orienting and ordering the tens of millions of quartets of a
    triple-zeta molecule take about a fifth of a J+K build; a plan does it once
    per geometry and operator and is reused by every build whose density it
    covers (:meth:`covers`).  ``tasks``: a task list or a
    :class:`~pyscf_fusionrcg.screening.TaskStream`, whose chunks are dropped as
    they are ordered; ``bound``: the density bound the tasks were screened with
    (``build_tasks(density_bound=)``), None for tasks screened for one
    particular density; ``max_bytes``: raise :class:`PlanTooLarge` as soon as
    the ordered quartets pass it; ``basis``: the molecule's
    :class:`~pyscf_fusionrcg.launch.DeviceBasis` when the caller keeps one;
    ``share``: a :class:`~pyscf_fusionrcg.distributed.Share`, whose part of
    each ordered class alone the plan keeps (the plan of one GPU of a build
    shared by several: each keeps and filters its own part, and
    :attr:`screened` counts every part's quartets).
    """

    def __init__(self, mol, tasks, omega=0.0, options: Options = None, bound=None, max_bytes=None,
                 basis=None, share=None):
        self.options = options = options or from_env()
        self.omega, self.bound = float(omega), bound
        self.tol = self.q32 = self.pair_bounds = None    # the screening of a plan made by screen()
        self.nao, self.nbas = mol.nao, mol.nbas
        self.basis = launch.DeviceBasis(mol) if basis is None else basis
        self.ao_loc = self.basis.ao_loc
        self._cart = bool(mol.cart)
        ordered, nbytes, self.screened = [], 0, 0
        for t in tasks:
            q = self._stored(t)
            self.screened += len(q)
            if share is not None:
                mine = list(share([ClassTasks(t.key, t.nctr, q)]))
                if not mine:
                    continue
                q = mine[0].quartets
            nbytes += q.nbytes
            if max_bytes is not None and nbytes > max_bytes:
                raise PlanTooLarge(nbytes, max_bytes)
            ordered.append((t.key, t.nctr, q))
        kernels = _class_kernels({(k, n) for k, n, _ in ordered}, self._cart, omega, options)
        _prepare_digestions(kernels)
        self.classes = [self._class_plan(kernels[k, n], k, n, q) for k, n, q in ordered]

    @classmethod
    def screen(cls, mol, density_max, omega=0.0, direct_scf_tol=1e-13, q_cond=None, options=None,
               max_bytes=None, basis=None, share=None):
        """A plan for every density with ``max |D| <= density_max`` (Schwarz
        screening with that bound on every block); ``share``: keep one part's (see the class)."""
        import cupy
        if q_cond is None:
            q_cond = schwarz_bounds(mol, omega)
        tasks = iter_tasks(mol, None, omega, direct_scf_tol, q_cond, xp=cupy,
                           density_bound=density_max)
        plan = cls(mol, tasks, omega, options, float(density_max), max_bytes, basis, share)
        plan.tol, plan.q32 = float(direct_scf_tol), cupy.asarray(np.asarray(q_cond, dtype=np.float32))
        plan.pair_bounds = sorted_pair_bounds(q_cond)   # for the candidate counts of density changes
        return plan

    def _ordered(self, t):
        oriented = launch.orient(self.basis, t.quartets)[0]
        order = launch.primitive_order(self.basis, oriented)
        return launch._cupy().ascontiguousarray(oriented[order])

    def _stored(self, t):
        """The ordered quartets of ``t`` as a plan keeps them."""
        if self.nbas > PLAN_MAX_SHELLS:
            raise ValueError(f'a J/K plan keeps 16-bit shell indices, and this molecule has {self.nbas} '
                             f'shells (at most {PLAN_MAX_SHELLS}): stream its tasks (iter_tasks) instead')
        return self._ordered(t).astype(PLAN_INDEX_DTYPE)

    @staticmethod
    def _class_plan(kern, key, nctr, quartets):
        digestion = None if kern.variant.digest else _digestion(_block_dims(kern, nctr))
        return _ClassPlan(key, nctr, kern, quartets, digestion)

    def __iter__(self):
        """Every class, all its quartets (unfiltered), a few million at a time."""
        return (c.with_quartets(rows) for c in self.classes for rows in c.rows())

    def covers(self, density_max: float) -> bool:
        """True when the plan's quartets are right (every quartet that matters is
        in) and not wasteful (bound at most PLAN_REUSE_RANGE times too large)."""
        if self.bound is None:
            return False
        return self.bound / PLAN_REUSE_RANGE <= density_max <= self.bound

    def restricted(self, dcond, with_j=True, with_k=True) -> RestrictedPlan:
        """The plan kept to the quartets that screening a density of shell
        block maxima ``dcond`` (at most :attr:`bound`) would keep: a build of a
        density its bound covers computes no more quartets than one that
        screens it anew (GPU4PySCF's guess density of (H2O)20/def2-QZVP
        keeps 3.9% of its plan, benchmarks/results/rcg_jk_breakdown_water20_qzvp_guess)."""
        if self.tol is None:
            raise ValueError('only a plan made by JKPlan.screen can be restricted')
        return RestrictedPlan(self, dcond, with_j, with_k)

    @property
    def quartets(self) -> int:
        """The quartets this plan keeps (its part's, for a plan of one part)."""
        return sum(len(c.quartets) for c in self.classes)

    @property
    def nbytes(self) -> int:
        return sum(c.quartets.nbytes for c in self.classes)


class RestrictedPlan:
    """A screened plan's classes kept to the quartets of a smaller density
    (the test of :func:`~pyscf_fusionrcg.screening.kept_quartets`, counted and
    compacted by ``csrc/fusionrcg/plan.cu``), in the plan's order, so that
    nothing is sorted again.  Every class is counted first, with one read of
    the counts by the host; each is compacted when a build reaches it, handed
    on at most ``CHUNK_QUARTETS`` at a time and dropped after.  Iterable once."""

    def __init__(self, plan: JKPlan, dcond, with_j=True, with_k=True):
        cp = launch._cupy()
        self.nao, self.omega, self.basis, self.ao_loc = plan.nao, plan.omega, plan.basis, plan.ao_loc
        self.options = plan.options
        self._plan, self._with = plan, tuple(np.int32(bool(w)) for w in (with_j, with_k))
        self._d32 = cp.ascontiguousarray(cp.asarray(dcond, dtype=cp.float32))

    def __iter__(self):
        cp = launch._cupy()
        counted = [(c, [self._counted(rows) for rows in c.rows()]) for c in self._plan.classes]
        totals = _host_totals(cp, [ends for _, pieces in counted for _, _, ends in pieces])
        first = 0
        for c, pieces in counted:
            n_kept, first = totals[first:first + len(pieces)], first + len(pieces)
            kept = (self._compact(rows, ends - counts, n)
                    for (rows, counts, ends), n in zip(pieces, n_kept))
            for rows in joined_rows(kept, CHUNK_QUARTETS, cp):
                yield c.with_quartets(rows)

    def _args(self, rows):
        plan = self._plan
        return (rows, np.int32(len(rows)), plan.q32, self._d32, np.int32(plan.nbas), np.float32(plan.tol),
                *self._with)

    def _counted(self, rows):
        """(rows, kept rows of each tile, their running sum) for rows (uint16,
        of one class): plan.cu's first pass, on the device only."""
        cp = launch._cupy()
        tiles = -(-len(rows) // (PLAN_ROUNDS * PLAN_BLOCK))
        counts = cp.empty(tiles, dtype=cp.int32)
        plan_kernel('fr_plan_count')((tiles,), (PLAN_BLOCK,), self._args(rows) + (counts,))
        return rows, counts, cp.cumsum(counts, dtype=cp.int64)

    def _compact(self, rows, starts, n_kept):
        """The ``n_kept`` rows the density keeps, int32, in order (plan.cu's
        second pass, each tile's rows from ``starts`` on)."""
        cp = launch._cupy()
        kept = cp.empty((n_kept, 4), dtype=cp.int32)
        if n_kept:
            plan_kernel('fr_plan_compact')((len(starts),), (PLAN_BLOCK,), self._args(rows) + (starts, kept))
        return kept


def _host_totals(cp, ends) -> list:
    """The last element of each of the device arrays ``ends``, in one copy to
    the host: a build of a filtered plan counts every class first and then
    waits once, not once a class with the GPU idle until the host launched the
    next class (a (H2O)20/def2-QZVP guess build from the filtered plan took
    351 ms that way and 316 ms this way on an H200,
    benchmarks/results/rcg_jk_breakdown_water20_qzvp_guess at a0d09ad and
    20c19f5)."""
    if not ends:
        return []
    return cp.stack([e[-1] for e in ends]).get().tolist()


class StreamedPlan(JKPlan):
    """The classes of a :class:`~pyscf_fusionrcg.screening.TaskStream`, each
    ordered when a build reaches it and dropped after: a build of any size in
    the memory of one chunk.  Its kernels are prepared first, for every shape
    the stream can have.  Iterable once."""

    def __init__(self, mol, stream, omega=0.0, options: Options = None, basis=None):
        super().__init__(mol, (), omega, options, basis=basis)
        self._kernels = _class_kernels(stream.shapes, self._cart, omega, self.options)
        _prepare_digestions(self._kernels)
        self._stream = stream

    def __iter__(self):
        for t in self._stream:
            yield self._class_plan(self._kernels[t.key, t.nctr], t.key, t.nctr, self._ordered(t))


def digest_grid(n_elem: int, nq: int, block: int = _DIGEST_BLOCK, limit: int = 65535) -> tuple:
    """(output elements, quartet blocks split over y and z): digest.cu's grid,
    the element fastest; gridDim.y and z are at most ``limit`` (CUDA's 65535)."""
    blocks = -(-nq // block)
    z = -(-blocks // limit)
    return n_elem, -(-blocks // z), z


class _ClassTimer:
    """CUDA-event spans per (class, stage); a no-op without a profile dict."""

    def __init__(self, cp, profile):
        self.cp, self.profile, self.spans = cp, profile, []

    def mark(self):
        if self.profile is None:
            return None
        ev = self.cp.cuda.Event()
        ev.record()
        return ev

    def add(self, key, stage, start, stop, n=0):
        if self.profile is not None:
            self.spans.append((key, stage, start, stop, n))

    def finish(self):
        if self.profile is None or not self.spans:
            return
        self.spans[-1][3].synchronize()
        for key, stage, start, stop, n in self.spans:
            row = self.profile.setdefault(key, {'quartets': 0, 'eri_ms': 0.0, 'digest_ms': 0.0, 'fused_ms': 0.0})
            row[f'{stage}_ms'] += self.cp.cuda.get_elapsed_time(start, stop)
            row['quartets'] += n


def get_jk_gpu(mol, dms, hermi=1, with_j=True, with_k=True, omega=0.0, tasks=(),
               options: Options = None, budget=None, profile=None, basis=None, share=None):
    """J/K of ``dms`` from the screened ``tasks`` (see the module docstring)."""
    cp = launch._cupy()
    on_device = isinstance(dms, cp.ndarray)
    nao = mol.nao
    d = cp.asarray(dms).reshape(-1, nao, nao)
    if d.dtype.kind == 'c':
        # The integrals are real: J and K are linear in the density.  Both
        # parts go as sets of one build: a plan or stream is iterable once.
        n = len(d)
        parts = cp.concatenate((d.real, d.imag))
        vj, vk = get_jk_gpu(mol, parts, 0, with_j, with_k, omega, tasks, options, budget, profile, basis, share)
        vj = vj[:n] + 1j * vj[n:] if with_j else None
        vk = vk[:n] + 1j * vk[n:] if with_k else None
        return _out(vj, on_device), _out(vk, on_device)
    d = cp.ascontiguousarray(d, dtype=cp.float64)
    nset = len(d)
    dm_j = cp.ascontiguousarray(d + d.transpose(0, 2, 1)) if with_j else None
    dm_k = None
    if with_k:
        dm_k = d if hermi == 1 else cp.ascontiguousarray(cp.concatenate([d, d.transpose(0, 2, 1)]))
    jh = cp.zeros((nset, nao, nao)) if with_j else None
    kh = cp.zeros(dm_k.shape) if with_k else None

    timer = _ClassTimer(cp, profile)
    if isinstance(tasks, (JKPlan, RestrictedPlan)):
        plan = tasks
    elif isinstance(tasks, TaskStream):
        plan = StreamedPlan(mol, tasks, omega, options, basis)
    else:
        plan = JKPlan(mol, tasks, omega, options, basis=basis)
    if plan.nao != nao or plan.omega != float(omega):
        raise ValueError(f'the J/K plan is for nao={plan.nao}, omega={plan.omega}; '
                         f'this build has nao={nao}, omega={float(omega)}')
    if with_j or with_k:
        basis, ao_loc = plan.basis, plan.ao_loc
        null = cp.zeros(1)
        nset_j = nset if with_j else 0
        nset_k = len(dm_k) if with_k else 0
        sets = (dm_j if with_j else null, jh if with_j else null, nset_j,
                dm_k if with_k else null, kh if with_k else null, nset_k)
        for c in plan if share is None else share(plan):
            kern, qdev = c.kern, c.quartets
            if c.digestion is None:
                t0 = timer.mark()
                kern.launch_digest(qdev, len(qdev), basis, omega, ao_loc, nao, sets)
                timer.add(kern.program.name, 'fused', t0, timer.mark(), len(qdev))
                continue
            blocks = launch.class_blocks(kern, basis, qdev, omega, budget, plan.options.scratch_mb)
            while True:
                t0 = timer.mark()
                try:
                    lo, hi, g = next(blocks)
                except StopIteration:
                    break
                t1 = timer.mark()
                c.digestion(g, hi - lo, qdev[lo:hi], ao_loc, nao, *sets)
                t2 = timer.mark()
                timer.add(kern.program.name, 'eri', t0, t1, hi - lo)
                timer.add(kern.program.name, 'digest', t1, t2)
    timer.finish()

    vj = vk = None
    if with_j:
        vj = jh + jh.transpose(0, 2, 1)
    if with_k:
        vk = kh + kh.transpose(0, 2, 1) if hermi == 1 else kh[:nset] + kh[nset:].transpose(0, 2, 1)
    return _out(vj, on_device), _out(vk, on_device)


def _out(a, on_device):
    if a is None or on_device:
        return a
    return a.get()
