"""Replica MD on several devices of one process (``run_replicas(..., devices=)``).

The replicas are split as over MPI ranks (:class:`~.distributed.ReplicaShare`):
device ``i`` of ``n`` runs the ``i``-th contiguous block of replicas as its own
batch, and the devices meet where the run is saved, through the calls the
ranks make (frames and the final state gathered, the checkpoint joined into
the one a single process writes, one instability error for all). Here each
rank is a thread driving one device, and a :class:`ThreadGroup` stands in for
the MPI communicator, so one code path serves both: the trajectories are
those of one device (to rounding: a smaller batch sums some terms in another
order), and a checkpoint restarts on any number of devices or ranks.

Why threads: each device is driven by a host loop that mostly waits, for the
GPU (CUDA-graph steps are queued, then one status read per block) or in
PyTorch's CPU kernels, and both waits release the GIL, so the devices advance
at once, while the model, the structures and the checkpoint stay in one
process and no MPI is needed. The Python of the loops does take turns: where
a step is so short that its host loop is the limit, or across hosts, run one
MPI rank per GPU instead (``comm=``). The two do not combine: ``devices``
with ``comm`` is refused.
"""
from __future__ import annotations

import copy
import threading
from dataclasses import dataclass

import torch

from gpucore import GPUUnavailableError

from ..calculator import resolve_device
from .config import device_entries

__all__ = ["ThreadGroup", "GroupMember", "resolve_devices", "on_devices"]


def resolve_devices(devices, precision: str) -> list[torch.device]:
    """The devices of ``MDConfig.devices`` ('all': every CUDA GPU PyTorch sees),
    each checked as the force engine checks its device
    (:func:`~ase_flashschnet.calculator.resolve_device`: one that is unknown or
    absent is an error); 'cuda' without an index is the current GPU."""
    if str(devices) == "all":
        count = torch.cuda.device_count()
        if not count:
            raise GPUUnavailableError("devices='all' runs on every CUDA GPU, but PyTorch sees none")
        devices = list(range(count))
    resolved = [resolve_device(device, precision) for device in device_entries(devices)]
    return [torch.device("cuda", torch.cuda.current_device()) if d.type == "cuda" and d.index is None else d
            for d in resolved]


class ThreadGroup:
    """``size`` threads of this process that meet as the ranks of a communicator do.

    :meth:`member` is one thread's end of it. As over MPI, a value travels as a
    copy, which its sender may change right after. :meth:`abort` (a thread has
    failed) breaks every meeting, now and later, with
    ``threading.BrokenBarrierError``, so that no thread waits for it for ever.
    """

    def __init__(self, size: int):
        self.size = size
        self._barrier = threading.Barrier(size)
        self._slots = [None] * size

    def member(self, rank: int) -> GroupMember:
        return GroupMember(self, rank)

    def allgather(self, rank: int, value) -> list:
        """Every member's ``value``, in rank order, for each member."""
        self._slots[rank] = copy.deepcopy(value)
        self._barrier.wait()  # every value is in
        values = list(self._slots)
        self._barrier.wait()  # every member holds its list: the slots may be filled again
        return values

    def abort(self) -> None:
        self._barrier.abort()


@dataclass(frozen=True)
class GroupMember:
    """Rank ``rank`` of a :class:`ThreadGroup`, with the calls of an mpi4py
    communicator that :class:`~.distributed.ReplicaShare` makes (by mpi4py's names)."""

    group: ThreadGroup
    rank: int

    def Get_rank(self) -> int:
        return self.rank

    def Get_size(self) -> int:
        return self.group.size

    def allgather(self, value) -> list:
        return self.group.allgather(self.rank, value)

    def gather(self, value, root: int = 0) -> list | None:
        values = self.allgather(value)
        return values if self.rank == root else None

    def bcast(self, value, root: int = 0):
        return self.allgather(value)[root]


def on_devices(run, devices: list):
    """``run(comm, device)`` on each of ``devices`` at once, in one thread each (the
    first in this thread, so that Ctrl-C stops the run), ``comm`` the thread's
    :class:`GroupMember`; returns the first device's result. A device that
    fails stops the others at their next meeting, and its exception is raised
    here (rather than the others' broken meetings)."""
    group = ThreadGroup(len(devices))
    results, errors = [None] * len(devices), [None] * len(devices)

    def work(rank):
        try:
            results[rank] = run(group.member(rank), devices[rank])
        except BaseException as exc:  # noqa: BLE001 - raised in the calling thread
            errors[rank] = exc
            group.abort()

    threads = [threading.Thread(target=work, args=(rank,), name=f"flashschnet-md-{devices[rank]}-{rank}",
                                daemon=True) for rank in range(1, len(devices))]
    for thread in threads:
        thread.start()
    try:
        work(0)
        for thread in threads:
            thread.join()
    except BaseException:  # interrupted while waiting for the others: stop them
        group.abort()
        raise
    failed = [exc for exc in errors if exc is not None]
    if failed:
        raise next((exc for exc in failed if not isinstance(exc, threading.BrokenBarrierError)), failed[0])
    return results[0]
