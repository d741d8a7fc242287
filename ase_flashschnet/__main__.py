"""``python -m ase_flashschnet``: the package's main job on its embedded default.

Runs the shipped ``cg-demo`` model (untrained, CGSchNet-sized, with priors)
on its 269-bead chain as a batch of Langevin replicas on the best available
device (fused fp32 kernels with CUDA graphs on a GPU, the PyTorch reference on
the CPU), and prints what it measured. On the CPU one replica and a few steps
keep it short: one force call there takes of the order of a second.
"""
from __future__ import annotations

import argparse
import sys

from gpucore import GPUUnavailableError

from . import shipped
from .calculator import resolve_device
from .cli import summary
from .md import run_replicas

MODEL = "cg-demo"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ase_flashschnet", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, help="default: 300 on a GPU, 10 on the CPU")
    p.add_argument("--replicas", type=int, help="default: 64 on a GPU, 1 on the CPU")
    args = p.parse_args(argv)
    try:
        on_gpu = resolve_device(args.device, "fp32").type == "cuda"
    except (ValueError, GPUUnavailableError) as err:
        p.error(f"--device {args.device}: {err}")
    steps = args.steps if args.steps is not None else (300 if on_gpu else 10)
    replicas = args.replicas if args.replicas is not None else (64 if on_gpu else 1)
    chain = shipped.default_structure(MODEL)
    print(f"FlashSchNet demo: shipped model {MODEL!r} (untrained, for speed tests), {len(chain)}-bead chain, "
          f"{replicas} replica(s), {steps} BAOAB steps of 4 fs at 300 K")
    result = run_replicas(shipped.get(MODEL), chain, replicas=replicas, steps=steps, dt_fs=4.0,
                          temperature_K=300.0, friction_per_fs=0.001, device=args.device, traj_interval=max(steps, 1),
                          progress=False, seed=0)
    print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
