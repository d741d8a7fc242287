"""J/K builds shared by MPI ranks: the split of the task list (without MPI),
and 2 and 3 ranks giving one process's J, K and RHF energy (under mpiexec)."""
import pathlib

import numpy as np
import pytest
from pyscf import gto, scf

from pyscf_fusionrcg import fusionrcg
from pyscf_fusionrcg.distributed import HostCost, Reducer, as_reducer, block_cost, split_tasks, task_owners
from pyscf_fusionrcg.jk import NOT_DISTRIBUTED, JKContext
from pyscf_fusionrcg.screening import build_tasks

HERE = pathlib.Path(__file__).resolve().parent
H2O = "O 0 0 0.117; H 0 0.757 -0.469; H 0 -0.757 -0.469"


@pytest.fixture(scope="module")
def dimer():
    """A water dimer in cc-pVDZ: classes up to (dd|dd), two with general contraction."""
    return gto.M(atom=H2O + "; O 3 0 0.117; H 3 0.757 -0.469; H 3 -0.757 -0.469", basis="cc-pvdz", verbose=0)


def _rows(tasks):
    """Every quartet of a task list as a (key, nctr, a, b, c, d) tuple."""
    return [(t.key, t.nctr, *map(int, q)) for t in tasks for q in t.quartets]


@pytest.mark.parametrize("size", [2, 3, 7])
def test_the_shares_partition_the_task_list(dimer, size):
    tasks = build_tasks(dimer, np.eye(dimer.nao)[None])
    shares = [split_tasks(tasks, rank, size, HostCost(dimer)) for rank in range(size)]
    # each rank's runs in order, ranks one after the other: the list itself, each quartet once
    assert sum((_rows(s) for s in shares), []) == _rows(tasks)
    assert all(len(t) for s in shares for t in s)


@pytest.mark.parametrize("cost", [block_cost, "host"])
def test_the_shares_have_equal_estimated_costs(dimer, cost):
    """Each rank's estimated cost is within one quartet's of the mean."""
    cost = HostCost(dimer) if cost == "host" else cost
    tasks = build_tasks(dimer, np.eye(dimer.nao)[None])
    size = 3
    owners = np.concatenate(task_owners(tasks, size, cost))
    costs = np.concatenate([cost(t) for t in tasks])
    per_rank = np.bincount(owners, weights=costs, minlength=size)
    assert np.abs(per_rank - costs.sum() / size).max() <= costs.max()
    assert per_rank.min() > 0.9 * per_rank.max()


def test_split_edge_cases(dimer):
    tasks = build_tasks(dimer, np.eye(dimer.nao)[None])
    assert split_tasks(tasks, 0, 1) == tasks
    assert split_tasks([], 1, 3) == []
    with pytest.raises(ValueError, match="rank 3 is not one of 3"):
        split_tasks(tasks, 3, 3)


class _OneRank(Reducer):
    """Rank ``rank`` of ``size`` without the others: its sum is its own part."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size


@pytest.mark.parametrize("hermi", [0, 1])
def test_the_parts_of_the_ranks_add_up_to_one_build(hermi):
    mol = gto.M(atom=H2O, basis="6-31g", verbose=0)
    rng = np.random.default_rng(5)
    dm = rng.standard_normal((2, mol.nao, mol.nao))
    if hermi:
        dm = dm + dm.transpose(0, 2, 1)
    whole = JKContext(mol).get_jk(dm, hermi)
    parts = [JKContext(mol, comm=_OneRank(rank, 3)).get_jk(dm, hermi) for rank in range(3)]
    for n, v in enumerate(whole):
        np.testing.assert_allclose(sum(p[n] for p in parts), v, atol=1e-12, rtol=0)


def test_a_communicator_needs_the_host_path():
    mol = gto.M(atom=H2O, basis="sto-3g", verbose=0)
    with pytest.raises(ValueError, match="GPU path is not yet distributed"):
        JKContext(mol, backend="gpu", comm=Reducer())
    assert "backend='cpu'" in NOT_DISTRIBUTED
    with pytest.raises(TypeError, match="mpi4py communicator"):
        as_reducer(object())
    with pytest.raises(ValueError, match="GPU path is not yet distributed"):
        fusionrcg(scf.RHF(mol), backend="auto", comm=Reducer())   # the GPU, or PySCF's own J/K
    mf = fusionrcg(scf.RHF(mol), backend="cpu", comm=Reducer())
    assert mf._fusionrcg_comm is not None
    assert "_fusionrcg_comm" not in mf.undo_fusionrcg().__dict__


@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_give_one_process_jk_and_energy(mpirun, ranks, tmp_path):
    out = tmp_path / "out.npz"
    mpirun(ranks, HERE / "mpi_jk_job.py", out)
    got = np.load(out)
    assert got["same_on_every_rank"] and got["converged"]
    from mpi_jk_job import densities, water
    mol = water()
    sym, pair = densities(mol)
    context = JKContext(mol)
    for (vj, vk), key in ((context.get_jk(sym, hermi=1), ""), (context.get_jk(pair, hermi=0), "2")):
        np.testing.assert_allclose(got["vj" + key], vj, atol=1e-12, rtol=0)
        np.testing.assert_allclose(got["vk" + key], vk, atol=1e-12, rtol=0)
    # the J engine's builds take the same shares
    np.testing.assert_allclose(got["vj_engine"], context.get_jk(sym, hermi=1)[0], atol=1e-12, rtol=0)
    energy = fusionrcg(scf.RHF(mol), backend="cpu", progress=False).kernel()
    assert abs(float(got["energy"]) - energy) < 1e-10
