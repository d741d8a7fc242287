"""Run under ``mpiexec`` by test_md_mpi.py: replica MD of ethanol shared by the
ranks, in OUT; rank 0 writes the result (and whether every rank got the same)
to OUT/result.npz.

    mpiexec -n 2 python mpi_md_job.py MODEL OUT STEPS [restart]
"""
import sys
from pathlib import Path

import numpy as np
import torch
from ase.build import molecule
from mpi4py import MPI

from ase_flashschnet.md import run_replicas

#: The run's settings, shared with the one-process runs it is compared to.
COMMON = dict(replicas=3, dt_fs=0.5, temperature_K=[200.0, 300.0, 400.0], friction_per_fs=[0.01, 0.02, 0.05],
              precision="fp64", device="cpu", traj_interval=5, checkpoint_interval=10, progress=False)
SEED = 11


def main(model, out, steps, restart=None):
    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    # a restart takes the checkpoint's seed: the ranks agree on a fresh one meanwhile
    start = dict(restart=out, seed=None) if restart else dict(seed=SEED)
    result = run_replicas(model, None if restart else molecule("CH3CH2OH"), steps=int(steps), out_dir=out,
                          comm=comm, **COMMON, **start)
    mine = np.concatenate([result.positions.ravel(), result.final_velocities.ravel(), result.energies.ravel()])
    every = comm.gather(mine)
    if comm.rank == 0:
        np.savez(Path(out) / "result.npz", steps=result.steps, positions=result.positions,
                 final_velocities=result.final_velocities, energies=result.energies, seed=result.seed,
                 same_on_every_rank=all(np.array_equal(every[0], m) for m in every))


if __name__ == "__main__":
    main(*sys.argv[1:])
