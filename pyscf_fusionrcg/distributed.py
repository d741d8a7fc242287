"""J/K builds shared by MPI ranks: which quartets each rank computes, and the reduction.

``fusionrcg(mf, backend='cpu', comm=MPI.COMM_WORLD)`` runs the same SCF on
every rank; only the J/K builds are shared.  In each build every rank

1. takes rank 0's density (:meth:`Reducer.broadcast`), so that all ranks
   screen the same density into the same task list
   (:func:`~pyscf_fusionrcg.screening.build_tasks`);
2. keeps its share of the quartets (:func:`split_tasks`): the task list in
   its own order, cut into ``size`` runs of equal estimated cost
   (:class:`HostCost`), a computation every rank makes identically, so every
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

import numpy as np

from pyscf_fusionrcg.screening import ClassTasks

#: Work per primitive quartet outside the primitive statements (its exponents,
#: centres, prefactor and Boys values), in statements (docs/distributed.md).
PRIMITIVE_OVERHEAD = 50
#: Relative weight of a contracted-stage statement (it also gathers the
#: accumulators and digests the block).
CONTRACTED_WEIGHT = 2
#: The fixed cost of one class's digestion (its programs' calls, one per
#: build choice, and the set-up of its batches), in statements.
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


class HostCost:
    """Estimated host-path cost of each quartet of a class, in statements run:
    its primitive quartets times the class program's primitive statements
    (plus :data:`PRIMITIVE_OVERHEAD`), its contracted-function tuples times
    the contracted statements (weighted :data:`CONTRACTED_WEIGHT`), and its
    part of the class's :data:`CLASS_OVERHEAD`.  The programs come from :func:`~pyscf_fusionrcg.host.get_program`'s cache,
    which the build needs anyway."""

    def __init__(self, mol):
        from pyscf_fusionrcg.host import NPRIM_OF
        self.nprim = mol._bas[:, NPRIM_OF].astype(np.float64)
        self.cart = bool(mol.cart)

    def __call__(self, task: ClassTasks) -> np.ndarray:
        from pyscf_fusionrcg.host import get_program
        program = get_program(*task.key, cart=self.cart)
        primitive = len(program.prim.kind) + PRIMITIVE_OVERHEAD
        contracted = CONTRACTED_WEIGHT * len(program.ctr.kind) * float(np.prod(task.nctr))
        return self.nprim[task.quartets].prod(axis=1) * primitive + (contracted + CLASS_OVERHEAD / len(task))


def block_cost(task: ClassTasks) -> np.ndarray:
    """Each quartet's Cartesian block size: a cost model that needs no molecule,
    coarser than :class:`HostCost` (docs/distributed.md compares the two)."""
    per_shell = [(l + 1) * (l + 2) // 2 * n for l, n in zip(task.key, task.nctr)]
    return np.full(len(task), float(np.prod(per_shell)))


def task_owners(tasks, size, cost=block_cost) -> list:
    """For each ClassTasks of ``tasks``, the rank (0 .. size-1) of each of its
    quartets: the task list in order, cut where the running estimated cost
    (``cost(task)``: per quartet) passes a multiple of total / size, each
    quartet going to the rank its cost midpoint falls in.  Each rank's
    estimated cost is then within one quartet's of total / size."""
    costs = [np.broadcast_to(np.asarray(cost(t), dtype=np.float64), (len(t),)) for t in tasks]
    flat = np.concatenate(costs) if costs else np.zeros(0)
    total = float(flat.sum())
    if total <= 0:
        # no work to weigh (or none at all): cut by count instead
        flat, total = np.ones(len(flat)), float(len(flat)) or 1.0
    mid = np.cumsum(flat) - 0.5 * flat
    owner = np.minimum((mid * (size / total)).astype(np.int64), size - 1)
    return np.split(owner, np.cumsum([len(t) for t in tasks])[:-1])


def split_tasks(tasks, rank, size, cost=block_cost) -> list:
    """Rank ``rank``'s share of ``tasks`` (ClassTasks of NumPy quartets) out of
    ``size`` ranks, as ClassTasks (the runs of each class it owns, in order):
    see :func:`task_owners`.  Every rank that calls this with the same tasks
    gets its own part, and the parts of ranks 0 .. size-1 partition the list."""
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} is not one of {size} ranks")
    tasks = list(tasks)
    if size == 1:
        return tasks
    mine = []
    for task, owner in zip(tasks, task_owners(tasks, size, cost)):
        rows = np.flatnonzero(owner == rank)
        if len(rows):
            # the owners rise along the list: a rank's rows of a class are one run
            mine.append(ClassTasks(task.key, task.nctr, task.quartets[rows[0]:rows[-1] + 1]))
    return mine
