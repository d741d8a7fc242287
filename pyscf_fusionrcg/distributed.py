"""J/K builds shared by MPI ranks and by the GPUs of a process: who computes which quartets, and the sums.

``fusionrcg(mf, comm=MPI.COMM_WORLD)`` runs the same SCF on every rank;
only the J/K builds are shared, on the host path (``backend='cpu'``) and on
the GPU path alike.  ``fusionrcg(mf, devices=[0, 1])`` shares the GPU path's
builds of one process over its GPUs.  In each build

1. every rank takes rank 0's density (:meth:`Reducer.broadcast`), so that
   all ranks screen the same density into the same tasks;
2. each part (a rank; on the GPU path, a GPU of a rank) keeps its share of
   the quartets, cut by estimated cost (:class:`ProgramCost`) in a way every
   part computes identically, so every quartet is computed by exactly one:

   * on the host, the task list (:func:`~pyscf_fusionrcg.screening.build_tasks`)
     in its own order, cut into ``size`` runs of equal cost (:func:`split_tasks`);
   * on the GPU, every chunk of a class the build reaches (the kept plan's
     quartets of the density, or a class screened as the build streams),
     cut the same way chunk by chunk (:class:`Share`): a GPU build never
     holds its whole task list at once, and a chunk's cut needs no other;
     each part runs its piece of every class;

3. the parts' J and K are summed: over the GPUs of a process onto the
   caller's (:func:`summed`), over the ranks once (:meth:`Reducer.sum`, an
   ``Allreduce``).

Every rank then holds the same J and K, so PySCF's and GPU4PySCF's drivers
(and their convergence tests) take the same path on every rank.  The
screening and the O(nao^2) set-up are repeated by every part (on the GPU
also the restriction of the kept plan to the density and the cost of each
chunk); the integrals, which are the cost, are not.  The GPU parts must see
the same chunks in the same order, so a context takes its decisions for
all of them (a plan or streamed classes, one memory limit for the plans:
:meth:`Reducer.minimum`).

The ranks meet through a :class:`Reducer`.  :class:`MPIReducer` sums and
broadcasts through mpi4py on the host: a CuPy array goes through a host copy
(two copies of nao^2 numbers per build), which needs no CUDA-aware MPI and
works where ranks share a GPU.  Each rank takes one GPU
(:func:`rank_device`); the GPUs of a process are :func:`part_devices`,
each part's work run on its own thread (:func:`on_parts`).
"""
from __future__ import annotations

import contextlib
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

from pyscf_fusionrcg.screening import array_module, on_gpu, to_host

#: Work per primitive quartet outside the primitive statements (its exponents,
#: centres, prefactor and Boys values), in statements (docs/distributed.md).
PRIMITIVE_OVERHEAD = 50
#: Relative weight of a contracted-stage statement (it also gathers the
#: accumulators and digests the block).
CONTRACTED_WEIGHT = 2
#: The fixed cost of one class's digestion on the host (its programs' calls,
#: one per build choice, and the set-up of its batches), in statements.
CLASS_OVERHEAD = 300_000


class Reducer:
    """What the ranks of one J/K build share: ``rank`` and ``size``, a
    broadcast from rank 0, a sum and a minimum over all ranks.  This base
    class is one process alone (each call gives its argument back);
    :class:`MPIReducer` is the ranks of an MPI communicator."""

    rank = 0
    size = 1

    def broadcast(self, a):
        """Rank 0's ``a`` on every rank (same shape and dtype on all)."""
        return a

    def sum(self, a):
        """The sum of ``a`` over the ranks, on every rank; None stays None."""
        return a

    def minimum(self, x):
        """The least of the numbers ``x`` of the ranks, on every rank."""
        return x

    def local_rank(self) -> int:
        """This rank's place among the ranks of its host; every rank must
        ask at the same time (a collective call)."""
        return self.rank


class MPIReducer(Reducer):
    """:class:`Reducer` over an mpi4py communicator, on the host: NumPy arrays
    directly, CuPy arrays through a host copy, back on their GPU.

    The sum is one ``Allreduce``, whose result the MPI standard asks to be
    the same on every rank (MPICH's is, to the bit: the tests compare the
    ranks' J, K and energies), which keeps the ranks' SCF iterations in step.
    """

    def __init__(self, comm):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()

    def broadcast(self, a):
        if on_gpu(a):
            return _through_host(a, self.broadcast)
        a = np.array(a, order="C")     # a copy: the caller's array stays as it was
        self.comm.Bcast(a, root=0)
        return a

    def sum(self, a):
        if a is None:
            return None
        if on_gpu(a):
            return _through_host(a, self.sum)
        from mpi4py import MPI
        a = np.ascontiguousarray(a)
        self.comm.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM)
        return a

    def minimum(self, x):
        from mpi4py import MPI
        return self.comm.allreduce(x, op=MPI.MIN)

    def local_rank(self) -> int:
        from mpi4py import MPI
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        try:
            return node.Get_rank()
        finally:
            node.Free()


def _through_host(a, op):
    """``op`` of a host copy of the CuPy array ``a``, copied back to ``a``'s GPU."""
    import cupy
    with a.device:
        return cupy.asarray(op(to_host(a)))


def as_reducer(comm) -> Reducer:
    """The :class:`Reducer` of ``comm``: one process for None, ``comm`` itself
    when it is a Reducer, else an :class:`MPIReducer` of the mpi4py communicator."""
    if comm is None:
        return Reducer()
    if isinstance(comm, Reducer):
        return comm
    if not all(hasattr(comm, name) for name in ("Get_rank", "Get_size", "Allreduce", "Bcast")):
        raise TypeError(f"comm must be an mpi4py communicator (e.g. MPI.COMM_WORLD) or a "
                        f"pyscf_fusionrcg.distributed.Reducer, not {type(comm).__name__}")
    return MPIReducer(comm)


class ProgramCost:
    """Estimated cost of each quartet of a class, in statements run: its
    primitive quartets times the class program's primitive statements (plus
    :data:`PRIMITIVE_OVERHEAD`), its contracted-function tuples times the
    contracted statements (weighted :data:`CONTRACTED_WEIGHT`), and its part
    of ``class_overhead`` (the host path's :data:`CLASS_OVERHEAD`; the GPU
    path's split, chunk by chunk, has none: see :class:`Share`).  The GPU
    kernels run the same programs (:func:`~pyscf_fusionrcg.host.get_program`'s
    cache).  Computed where the quartets are (NumPy or CuPy); without a class
    overhead the costs are exact integers (int64), so that their running sums
    are the same on every rank and GPU, whatever order a GPU adds them in."""

    def __init__(self, mol, class_overhead=CLASS_OVERHEAD):
        from pyscf_fusionrcg.host import NPRIM_OF
        self.nprim = mol._bas[:, NPRIM_OF].astype(np.int64)
        self.cart = bool(mol.cart)
        self.class_overhead = class_overhead
        self._on_gpu = {}       # device id -> nprim there

    def _nprim(self, quartets):
        """The shells' primitive counts where ``quartets`` are."""
        if not on_gpu(quartets):
            return self.nprim
        device = quartets.device
        if device.id not in self._on_gpu:
            with device:
                self._on_gpu[device.id] = array_module(quartets).asarray(self.nprim)
        return self._on_gpu[device.id]

    def __call__(self, task):
        from pyscf_fusionrcg.host import get_program
        program = get_program(*task.key, cart=self.cart)
        nprim, q = self._nprim(task.quartets), task.quartets
        cost = nprim[q[:, 0]]
        for i in (1, 2, 3):
            cost *= nprim[q[:, i]]      # in place: a GPU chunk holds up to 2**26 quartets
        cost *= len(program.prim.kind) + PRIMITIVE_OVERHEAD
        cost += CONTRACTED_WEIGHT * len(program.ctr.kind) * int(np.prod(task.nctr))
        if self.class_overhead:
            return cost + self.class_overhead / len(task)
        return cost


def block_cost(task) -> np.ndarray:
    """Each quartet's Cartesian block size: a cost model that needs no molecule,
    coarser than :class:`ProgramCost` (docs/distributed.md compares the two)."""
    per_shell = [(l + 1) * (l + 2) // 2 * n for l, n in zip(task.key, task.nctr)]
    return np.full(len(task), float(np.prod(per_shell)))


def _midpoints(tasks, size, cost):
    """``(xp, mid, starts)``: twice each quartet's cost midpoint along the
    list, and twice the cost where each of the ranks 1 .. size-1 starts
    (``r * total / size``), in the costs' array module; exact for integer
    costs.  With no cost to weigh, the quartets are counted instead."""
    costs = [cost(t) for t in tasks]
    xp = array_module(costs[0]) if costs else np
    flat = costs[0] if len(costs) == 1 else xp.concatenate(costs) if costs else np.zeros(0)
    total = flat.sum().item()
    if total <= 0:
        flat, total = xp.ones(len(flat), dtype=np.int64), len(flat)
    mid = xp.cumsum(flat)
    mid *= 2
    mid -= flat
    if flat.dtype.kind in "iu":
        starts = [-(-2 * r * total // size) for r in range(1, size)]    # Python integers: exact
    else:
        starts = [2 * r * total / size for r in range(1, size)]
    return xp, mid, xp.asarray(starts, dtype=mid.dtype)


def split_tasks(tasks, rank, size, cost=block_cost) -> list:
    """Rank ``rank``'s share of ``tasks`` (:class:`~pyscf_fusionrcg.screening.ClassTasks`,
    or anything with a ``key``, ``nctr`` and ``quartets``, NumPy or CuPy) out
    of ``size`` ranks: the task list in order, cut where the running
    estimated cost (``cost(task)``: one number per quartet) passes a multiple
    of total / size, each quartet going to the rank its cost midpoint falls
    in, so that each rank's estimated cost is within one quartet's of total /
    size.  Returned as the run of each task the rank owns, in order, as the
    task with those quartets (``dataclasses.replace``).  Every rank that calls
    this with the same tasks gets its own part, and the parts of ranks 0 ..
    size-1 partition the list.  CuPy quartets are cut with one read by the host."""
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} is not one of {size} ranks")
    tasks = list(tasks)
    if size == 1:
        return tasks
    xp, mid, starts = _midpoints(tasks, size, cost)
    # the owners rise along the list: each rank's quartets are one run of it
    edges = [0] + to_host(xp.searchsorted(mid, starts, side="left")).tolist() + [len(mid)]
    lo, hi = edges[rank], edges[rank + 1]
    mine, offset = [], 0
    for task in tasks:
        a, b = max(lo - offset, 0), min(hi - offset, len(task))
        if a < b:
            mine.append(dataclasses.replace(task, quartets=task.quartets[a:b]))
        offset += len(task)
    return mine


@dataclass(frozen=True)
class Share:
    """Part ``part`` of ``parts`` of a GPU build: called on the build's
    chunks (:class:`~pyscf_fusionrcg.screening.ClassTasks` or the GPU's
    class plans, any iterable), it gives this part's run of each chunk in
    turn, cut by ``cost`` as :func:`split_tasks` cuts a list.  A chunk's cut
    needs no other chunk, so a build that screens or restricts its classes
    as it reaches them is cut as it goes, never held whole; every class is
    shared, so a fixed cost per class falls on every part alike and the
    cost model needs none.  The parts' runs partition the chunks where every
    part sees the same chunks in the same order (a
    :class:`~pyscf_fusionrcg.jk.JKContext` chooses them for all its parts).
    One part of one: the chunks themselves."""

    part: int = 0
    parts: int = 1
    cost: Callable = block_cost

    def __call__(self, chunks):
        if self.parts == 1:
            return chunks
        return (mine for chunk in chunks for mine in split_tasks([chunk], self.part, self.parts, self.cost))


def device_count() -> int:
    """How many GPUs this process sees."""
    import cupy
    return cupy.cuda.runtime.getDeviceCount()


def resolve_devices(devices, count: int = None) -> tuple:
    """The GPU ids of ``Options.devices`` ('all' or ids, checked there) on a
    machine of ``count`` GPUs (None: :func:`device_count`); a ValueError
    names one it does not have."""
    if count is None:
        count = device_count()
    if devices == "all":
        devices = tuple(range(count))
        if not devices:
            raise ValueError("devices='all': this process sees no GPU")
    missing = [d for d in devices if d >= count]
    if missing:
        raise ValueError(f"devices={list(devices)}: there is no GPU {missing[0]}; this process sees "
                         f"{count} (ids 0 .. {count - 1})")
    return tuple(devices)


def current_device() -> int:
    """The id of this thread's current GPU."""
    import cupy
    return cupy.cuda.runtime.getDevice()


def rank_device(local_rank: int, current: int, count: int) -> int:
    """The GPU of a rank of the GPU path: ``current`` where the program made
    a device other than 0 current (``cupy.cuda.Device(n).use()``), else the
    rank's place on its host (``local_rank``) modulo the host's GPU count
    ``count``: one GPU per rank, ranks beyond the count sharing them round robin."""
    return current if current != 0 else local_rank % count


def part_devices(devices, reducer: Reducer) -> list:
    """The GPU of each part of a context's GPU builds: ``devices``
    (``Options.devices``) resolved; else, with several ranks, this rank's
    (:func:`rank_device`); else ``[None]``, the device current at each
    build, as one process alone always took."""
    if devices is not None:
        return list(resolve_devices(devices))
    if reducer.size == 1:
        return [None]
    local = reducer.local_rank()    # collective: every rank asks, whatever it then takes
    return [rank_device(local, current_device(), device_count())]


def device_scope(device):
    """A context in which GPU ``device`` is current (None: the current one stays)."""
    if device is None:
        return contextlib.nullcontext()
    import cupy
    return cupy.cuda.Device(device)


def on_device(a, device):
    """``a`` on GPU ``device``: itself where it is there already, NumPy or
    ``device`` is None; else a copy there."""
    if device is None or not on_gpu(a) or a.device.id == device:
        return a
    with device_scope(device):
        return a.copy()     # CuPy copies onto the current device


def _in_scope(build, part):
    with device_scope(part.device):
        return build(part)


def on_parts(parts, build) -> list:
    """``[build(part) for part in parts]``, each with its GPU (``part.device``)
    current; several parts at once, one thread each (the launches are
    asynchronous, and CuPy lets go of the GIL while it waits).  An exception
    of a part is raised once every part has ended."""
    if len(parts) == 1:
        return [_in_scope(build, parts[0])]
    with ThreadPoolExecutor(max_workers=len(parts)) as pool:
        futures = [pool.submit(_in_scope, build, part) for part in parts]
    return [f.result() for f in futures]


def summed(values, device=None):
    """The sum of the parts' arrays ``values``: NumPy, or CuPy on any GPU
    summed onto GPU ``device``; None where they are None."""
    first = values[0]
    if first is None:
        return None
    if not on_gpu(first):
        return sum(values[1:], first)
    total = on_device(first, device)
    with device_scope(device):
        for v in values[1:]:
            total = total + on_device(v, device)
    return total
