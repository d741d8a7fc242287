"""CUDA-graph capture of the pieces of an MD step.

A piece (a whole step, or one half of it) only updates pre-allocated tensors
in place, so it can be captured once and replayed. Capture executes nothing:
a capture that fails leaves the state untouched, the piece simply runs
eagerly, and CUDA graphs stay off for the rest of the run.

Several devices may run in threads of one process (:mod:`.devices`): each
run captures on a stream of its own device, one capture at a time in the
process (a capture's set-up synchronises its device and empties PyTorch's
memory cache, which must not happen under another's capture), and in CUDA's
thread-local capture mode, in which what the other threads do meanwhile
(launches, copies, allocations) is no concern of this capture.
"""
from __future__ import annotations

import logging
import threading

import torch

__all__ = ["GraphControl", "GraphedCall"]

log = logging.getLogger(__name__)

# Eager calls on a side stream before each capture: lazy initialisation (cuBLAS
# workspaces, the fused kernels' per-graph CSR cache) needs host syncs, which a
# capture forbids.
WARMUP_CALLS = 1

# One capture at a time in this process (see the module docstring).
_CAPTURE_LOCK = threading.Lock()


class GraphControl:
    """Whether CUDA graphs are in use, shared by all graphed pieces of a run;
    turned off for good (with a warning) the first time a capture fails. The
    pieces warm up and are captured on ``side_stream``, on the run's device."""

    def __init__(self, enabled: bool, device: torch.device):
        self.enabled = enabled and device.type == "cuda"
        if enabled and device.type != "cuda":
            log.info("CUDA graphs need a CUDA device; running the steps eagerly on %s", device)
        if self.enabled:
            self.side_stream = torch.cuda.Stream(device)
        self.captured = False

    def disable(self, exc: BaseException) -> None:
        self.enabled = False
        torch.cuda.synchronize()
        log.warning("CUDA graph capture failed (%s: %s); continuing without CUDA graphs", type(exc).__name__, exc)


class GraphedCall:
    """Calls ``fn`` eagerly, or replays it as a captured CUDA graph.

    ``fn`` must only update pre-allocated tensors in place. Before each
    capture it runs eagerly on a side stream (see ``WARMUP_CALLS``); after
    :meth:`reset` (new neighbour-list buffers) it warms up and captures again.
    """

    def __init__(self, fn, control: GraphControl):
        self.fn = fn
        self.control = control
        self.graph = None
        self.warm_calls = 0

    def reset(self) -> None:
        # Drops the graph and its private memory pool. Each capture gets a fresh pool:
        # re-capturing into the pool of a destroyed graph trips an internal assert of
        # PyTorch's caching allocator.
        self.graph = None
        self.warm_calls = 0

    def __call__(self) -> None:
        control = self.control
        if not control.enabled:
            self.fn()
        elif self.graph is not None:
            self.graph.replay()
        elif self.warm_calls < WARMUP_CALLS:
            self.warm_calls += 1
            current = torch.cuda.current_stream()
            control.side_stream.wait_stream(current)
            with torch.cuda.stream(control.side_stream):
                self.fn()
            current.wait_stream(control.side_stream)
        else:
            graph = torch.cuda.CUDAGraph()
            try:
                with _CAPTURE_LOCK, torch.cuda.graph(graph, stream=control.side_stream,
                                                     capture_error_mode="thread_local"):
                    self.fn()
            except Exception as exc:  # anything not capturable: fall back, never fail the run
                control.disable(exc)
                self.fn()
                return
            self.graph = graph
            control.captured = True
            graph.replay()
