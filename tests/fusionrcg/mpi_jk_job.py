"""Run under ``mpiexec`` by test_distributed.py (host path) and
test_distributed_gpu.py (GPU path, ranks sharing the GPUs): J/K builds and
an RHF of water whose builds the ranks share; rank 0 writes what every rank
got to OUT (.npz).

    mpiexec -n 3 python mpi_jk_job.py OUT [cpu|gpu]
"""
import sys

import numpy as np
from mpi4py import MPI
from pyscf import gto, scf

from pyscf_fusionrcg import fusionrcg
from pyscf_fusionrcg.distributed import MPIReducer
from pyscf_fusionrcg.jk import JKContext
from pyscf_fusionrcg.options import from_env

#: The basis of each path's water: the GPU's with d shells (more classes to share).
BASIS = {"cpu": "6-31g", "gpu": "cc-pvdz"}


def water(backend="cpu"):
    return gto.M(atom="O 0 0 0.117; H 0 0.757 -0.469; H 0 -0.757 -0.469", basis=BASIS[backend], verbose=0)


def densities(mol):
    """A symmetric density and a general pair (hermi=0), the same on every rank."""
    rng = np.random.default_rng(3)
    d = rng.standard_normal((3, mol.nao, mol.nao)) * 0.3
    return d[0] + d[0].T, d[1:]


def main(out, backend="cpu"):
    comm = MPI.COMM_WORLD
    mol = water(backend)
    sym, pair = densities(mol)
    context = JKContext(mol, backend=backend, comm=comm)
    got = {}
    got["vj"], got["vk"] = context.get_jk(sym, hermi=1)
    got["vj2"], got["vk2"] = context.get_jk(pair, hermi=0)
    if backend == "cpu":    # the GPU's J engine has not run on a GPU yet
        got["vj_engine"] = JKContext(mol, options=from_env(j_engine="on"), comm=comm).get_jk(sym, with_k=False)[0]
    mf = fusionrcg(scf.RHF(mol), backend=backend, comm=comm, progress=False)
    energy = mf.kernel()
    mine = np.concatenate([v.ravel() for v in got.values()] + [[energy, mf.cycles]])
    every = comm.gather(mine)
    ranks = MPIReducer(comm)
    least, local_ranks = ranks.minimum(comm.rank + 5), comm.gather(ranks.local_rank())
    if comm.rank == 0:
        np.savez(out, **got, energy=energy, converged=mf.converged,
                 same_on_every_rank=all(np.array_equal(every[0], m) for m in every),
                 least=least, local_ranks=local_ranks)


if __name__ == "__main__":
    main(*sys.argv[1:])
