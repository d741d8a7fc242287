"""J/K builds shared by MPI ranks: which quartets each rank computes, and the reduction.

``fusionrcg(mf, backend='cpu', comm=MPI.COMM_WORLD)`` runs the same SCF on
every rank; only the J/K builds are shared.  In each build every rank

1. takes rank 0's density (:meth:`Reducer.broadcast`), so that all ranks
   screen the same density into the same task list
   (:func:`~pyscf_fusionrcg.screening.build_tasks`);
2. keeps its share of the quartets (:func:`split_tasks`): the task list in
   its own order, cut into ``size`` runs of equal estimated cost
   (:class:`ProgramCost`), a computation every rank makes identically, so every
   quartet is computed by exactly one rank;
3. digests its share into partial J and K and sums them over the ranks once
   (:meth:`Reducer.sum`, an ``Allreduce``).

Every rank then holds the same J and K, so PySCF's drivers (and their
convergence tests) take the same path on every rank.  The screening and the
digestion's O(nao^2) set-up are repeated on every rank; the integrals, which
are the cost, are not.

The ranks meet through a :class:`Reducer`.  :class:`MPIReducer` sums NumPy
arrays on the host through mpi4py; a GPU path would plug in a reducer of
device arrays (NCCL) with the same two calls.
"""
from __future__ import annotations

import dataclasses
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
    broadcast from rank 0 and a sum over all ranks.  This base class is one
    process alone (both calls give their argument back); :class:`MPIReducer`
    is the host's over MPI."""

    rank = 0
    size = 1

    def broadcast(self, a):
        """Rank 0's ``a`` on every rank (same shape and dtype on all)."""
        return a

    def sum(self, a):
        """The sum of ``a`` over the ranks, on every rank; None stays None."""
        return a


class MPIReducer(Reducer):
    """:class:`Reducer` over an mpi4py communicator, of NumPy arrays on the host.

    The sum is one ``Allreduce``, whose result the MPI standard asks to be
    the same on every rank (MPICH's is, to the bit: the tests compare the
    ranks' J, K and energies), which keeps the ranks' SCF iterations in step.
    """

    def __init__(self, comm):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()

    def broadcast(self, a):
        a = np.array(a, order="C")     # a copy: the caller's array stays as it was
        self.comm.Bcast(a, root=0)
        return a

    def sum(self, a):
        if a is None:
            return None
        from mpi4py import MPI
        a = np.ascontiguousarray(a)
        self.comm.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM)
        return a


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
    flat = xp.concatenate(costs) if costs else np.zeros(0)
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


def task_owners(tasks, size, cost=block_cost) -> list:
    """For each task of ``tasks`` (:class:`~pyscf_fusionrcg.screening.ClassTasks`,
    or anything with a ``key``, ``nctr`` and ``quartets``, NumPy or CuPy) the
    rank (0 .. size-1) of each of its quartets: the task list in order, cut
    where the running estimated cost (``cost(task)``: one number per quartet)
    passes a multiple of total / size, each quartet going to the rank its
    cost midpoint falls in.  Each rank's estimated cost is then within one
    quartet's of total / size.  In the costs' array module."""
    xp, mid, starts = _midpoints(tasks, size, cost)
    owner = xp.searchsorted(starts, mid, side="right")
    return xp.split(owner, np.cumsum([len(t) for t in tasks])[:-1].tolist())


def split_tasks(tasks, rank, size, cost=block_cost) -> list:
    """Rank ``rank``'s share of ``tasks`` out of ``size`` ranks
    (:func:`task_owners`): the run of each task it owns, in order, as the task
    with those quartets (``dataclasses.replace``).  Every rank that calls this
    with the same tasks gets its own part, and the parts of ranks 0 .. size-1
    partition the list.  CuPy quartets are cut with one read by the host."""
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
