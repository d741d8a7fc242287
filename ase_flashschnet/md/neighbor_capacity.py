"""The neighbour list of a batched MD run: builds, capacity, and roll-back.

The list is a :class:`~ase_flashschnet.static_neighbors.StaticNeighborList`:
all pairs within cutoff + skin, in buffers of fixed capacity that keep their
addresses.
It is rebuilt in the step in which some atom has moved more than skin/2 since
the last build: the exact criterion of a per-step check, no missed neighbour,
no extra margin. On a GPU the rebuild runs inside the captured step, gated by
a device flag. If a rebuild there finds more edges than fit, it leaves the old
list untouched and records the step; the host then rolls the block of steps
back (positions, velocities, forces, status, RNG state; see
:class:`BlockStart`), grows the buffers and runs the block again, so nothing
computed with an incomplete list survives. Between blocks the capacity also
follows the edge count (grown early, shrunk when padding exceeds
2 x ``edge_margin``); new buffers mean the captured graphs must be recaptured.
"""
from __future__ import annotations

import time

import torch

from ..static_neighbors import StaticNeighborList, capacity_for
from ..step_status import STAT_MAX_TOTAL, STAT_TOTAL

__all__ = ["NeighborManager", "BlockStart"]


class NeighborManager:
    """A run's :class:`StaticNeighborList`, its capacity policy and the counters
    the result reports: host-driven builds and their time, builds inside
    captured steps (and the time of one, measured once), overflows,
    reallocations and the mean padding."""

    def __init__(self, nl: StaticNeighborList, skin: float):
        self.nl = nl
        self.rebuild_threshold = (0.5 * float(skin)) ** 2  # squared displacement that calls for a rebuild
        self.host_builds, self.host_build_time = 0, 0.0
        self.builds_in_graph, self.build_seconds = 0, float("nan")
        self.overflows, self.reallocations = 0, 0
        self.padding_steps, self.steps_counted = 0.0, 0

    @property
    def builds(self) -> int:
        return self.host_builds + self.builds_in_graph

    @property
    def build_time(self) -> float:
        """Seconds: measured for host-driven builds, estimated for those in captured steps."""
        return self.host_build_time + (self.builds_in_graph * self.build_seconds if self.builds_in_graph else 0.0)

    @property
    def mean_edge_padding(self) -> float:
        """Mean fraction of the edge slots that were padding, over the steps run."""
        return self.padding_steps / self.steps_counted if self.steps_counted else 0.0

    def build_now(self, x: torch.Tensor, x_ref: torch.Tensor, stat: torch.Tensor) -> bool:
        """Host-driven build at ``x`` (``x_ref`` follows; the edge totals of ``stat``
        are set); True if the buffers moved."""
        start = time.perf_counter()
        grown = self.nl.rebuild(x, x_ref)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        self.host_builds += 1
        self.host_build_time += time.perf_counter() - start
        stat[STAT_TOTAL] = self.nl.num_edges
        stat[STAT_MAX_TOTAL] = self.nl.num_edges
        return grown

    def time_build(self, x_ref: torch.Tensor) -> None:
        """Seconds per in-graph rebuild, timed once on an identical rebuild from x_ref."""
        nl = self.nl

        def sync():
            if x_ref.is_cuda:
                torch.cuda.synchronize(x_ref.device)

        for _ in range(2):  # the first call may still load the module
            sync()
            start = time.perf_counter()
            nl.build_gated(x_ref, None, nl.ones, nl.stat)
            sync()
            self.build_seconds = time.perf_counter() - start

    def capacity_wanted(self, total: int, max_total: int) -> int | None:
        """The new capacity that keeps it within [1 + margin/2, 1 + 2 margin] x the
        edge count (grow before a build can overflow, shrink so that padding stays
        cheap for consumers that process every slot), or None to keep it."""
        cap, margin = self.nl.capacity, self.nl.margin
        if max_total * (1.0 + 0.5 * margin) > cap:
            new = capacity_for(max_total, margin)
        elif total * (1.0 + 2.0 * margin) < cap:
            new = capacity_for(total, margin)
        else:
            return None
        return None if new == cap else new

    def record_overflow(self, needed: int) -> int:
        """Count a build that did not fit; returns the capacity for ``needed`` edges."""
        self.overflows += 1
        return capacity_for(needed, self.nl.margin)

    def reallocate(self, capacity: int, x_ref: torch.Tensor) -> None:
        """New buffers of ``capacity`` slots holding the list of ``x_ref`` again."""
        self.reallocations += 1
        self.nl.allocate(capacity)
        self.nl.rebuild(x_ref)

    def count_padding(self, n_steps: int, total: int) -> None:
        self.padding_steps += n_steps * (1.0 - total / self.nl.capacity)
        self.steps_counted += n_steps


class BlockStart:
    """A copy of the named tensors of ``owner`` and of a generator's state at the
    start of a block of captured steps, to run the block again after an overflow."""

    def __init__(self, owner, names, generator: torch.Generator):
        self.owner, self.generator = owner, generator
        self.saved = {k: torch.empty_like(getattr(owner, k)) for k in names}
        self.rng_state = None

    def save(self) -> None:
        for k, t in self.saved.items():
            t.copy_(getattr(self.owner, k))
        self.rng_state = self.generator.get_state()

    def restore(self) -> None:
        for k, t in self.saved.items():
            getattr(self.owner, k).copy_(t)
        self.generator.set_state(self.rng_state)
