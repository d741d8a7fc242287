"""Where the time of an MD step goes, piece by piece (for
``benchmarks/md_throughput.py --profile``; a CUDA device only)."""
from __future__ import annotations

import time

import torch

__all__ = ["profile_steps"]


def profile_steps(sim, repeats: int = 20) -> dict:
    """Milliseconds per piece of a step of the simulation ``sim``, each timed on
    its own with CUDA events (eager, synchronised), and per step of back-to-back
    captured steps. Advances the simulation; for measurements only."""
    if sim.x.device.type != "cuda":
        raise RuntimeError("profiling needs a CUDA device")

    def timed(fn, n=repeats):
        torch.cuda.synchronize()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(n):
            fn()
        end.record()
        torch.cuda.synchronize()
        return begin.elapsed_time(end) / n

    def wall(fn, n=repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        return 1e3 * (time.perf_counter() - start) / n

    out = {"neighbor_mode": sim.neighbor_mode, "edge_capacity": sim.nl.capacity,
           "edges": int(sim.graph.dst_ptr[-1])}
    out["noise_ms"] = timed(lambda: sim.noise_all.normal_(generator=sim.generator))
    out["first_half_ms"] = timed(sim.first_half)
    out["force_call_ms"] = timed(sim.second_half)
    out["force_call_wall_ms"] = wall(sim.second_half)
    if sim.nl.use_kernels:
        nl = sim.nl
        out["rebuild_ms"] = timed(lambda: nl.build_gated(sim.x_ref, None, nl.ones, nl.stat))
        out["rebuild_skipped_ms"] = timed(lambda: nl.build_gated(sim.x_ref, None, sim.gate.mul(0), nl.stat))
    out["status_read_ms"] = wall(lambda: sim.stat.cpu())
    if sim.device_mode:
        steps = max(1, sim.check_interval)
        out["block_steps"] = steps
        sim.advance(steps)  # warm-up and capture
        out["step_ms_in_blocks"] = wall(lambda: sim.advance(steps), n=max(1, repeats // steps)) / steps
    out["cuda_graph"] = bool(sim.control.enabled and sim.control.captured)
    return out
