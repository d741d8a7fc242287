"""J/K builds shared by MPI ranks: the split of the task list (without MPI),
and 2 and 3 ranks giving one process's J, K and RHF energy (under mpiexec)."""
import dataclasses
import pathlib

import numpy as np
import pytest
from pyscf import gto, scf

from pyscf_fusionrcg import fusionrcg
from pyscf_fusionrcg.distributed import ProgramCost, Reducer, Share, as_reducer, block_cost, split_tasks
from pyscf_fusionrcg.jk import JKContext
from pyscf_fusionrcg.screening import build_tasks, iter_tasks

HERE = pathlib.Path(__file__).resolve().parent
H2O = "O 0 0 0.117; H 0 0.757 -0.469; H 0 -0.757 -0.469"


@pytest.fixture(scope="module")
def dimer():
    """A water dimer in cc-pVDZ: classes up to (dd|dd), two with general contraction."""
    return gto.M(atom=H2O + "; O 3 0 0.117; H 3 0.757 -0.469; H 3 -0.757 -0.469", basis="cc-pvdz", verbose=0)


def _rows(tasks):
    """Every quartet of a task list as a (key, nctr, a, b, c, d) tuple."""
    return [(t.key, t.nctr, *map(int, q)) for t in tasks for q in t.quartets]


def _owners(tasks, size, cost):
    """The rank of each quartet of the task list, from split_tasks' shares
    (which, rank after rank, are the list in order)."""
    shares = [split_tasks(tasks, rank, size, cost) for rank in range(size)]
    assert sum((_rows(s) for s in shares), []) == _rows(tasks)
    return np.concatenate([np.full(sum(len(t) for t in s), rank, dtype=np.int64) for rank, s in enumerate(shares)])


@pytest.mark.parametrize("size", [2, 3, 7])
def test_the_shares_partition_the_task_list(dimer, size):
    tasks = build_tasks(dimer, np.eye(dimer.nao)[None])
    shares = [split_tasks(tasks, rank, size, ProgramCost(dimer)) for rank in range(size)]
    # each rank's runs in order, ranks one after the other: the list itself, each quartet once
    assert sum((_rows(s) for s in shares), []) == _rows(tasks)
    assert all(len(t) for s in shares for t in s)


@pytest.mark.parametrize("cost", [block_cost, "host"])
def test_the_shares_have_equal_estimated_costs(dimer, cost):
    """Each rank's estimated cost is within one quartet's of the mean."""
    cost = ProgramCost(dimer) if cost == "host" else cost
    tasks = build_tasks(dimer, np.eye(dimer.nao)[None])
    size = 3
    owners = _owners(tasks, size, cost)
    costs = np.concatenate([cost(t) for t in tasks])
    per_rank = np.bincount(owners, weights=costs, minlength=size)
    assert np.abs(per_rank - costs.sum() / size).max() <= costs.max()
    assert per_rank.min() > 0.9 * per_rank.max()


@dataclasses.dataclass
class _DeviceChunk:
    """A stand-in of the GPU path's chunks (gpu_jk's class plans): a task with
    more fields than ClassTasks (NumPy quartets for CuPy's)."""
    key: tuple
    nctr: tuple
    kern: str
    quartets: np.ndarray

    def __len__(self):
        return len(self.quartets)


def test_device_style_chunks_are_split_with_their_other_fields(dimer):
    """split_tasks cuts any task with a key, nctr and quartets, keeping its
    other fields; the runs of the ranks partition each chunk in order."""
    chunks = [_DeviceChunk(t.key, t.nctr, f"kernel {n}", t.quartets.astype(np.uint16))
              for n, t in enumerate(build_tasks(dimer, np.eye(dimer.nao)[None]))]
    cost = ProgramCost(dimer, class_overhead=0)
    shares = [split_tasks(chunks, rank, 3, cost) for rank in range(3)]
    assert sum((_rows(s) for s in shares), []) == _rows(chunks)
    kernels = {c.key + c.nctr: c.kern for c in chunks}
    assert all(type(c) is _DeviceChunk and kernels[c.key + c.nctr] == c.kern for s in shares for c in s)


def test_program_costs_without_class_overhead_are_exact_integers(dimer):
    """ProgramCost without a class overhead counts statements in int64 (the
    same running sums wherever they are added); with it, the host path's
    model adds each quartet's part of CLASS_OVERHEAD."""
    from pyscf_fusionrcg.distributed import CLASS_OVERHEAD
    tasks = build_tasks(dimer, np.eye(dimer.nao)[None])
    exact, host = ProgramCost(dimer, class_overhead=0), ProgramCost(dimer)
    for t in tasks:
        assert exact(t).dtype == np.int64
        np.testing.assert_allclose(host(t), exact(t) + CLASS_OVERHEAD / len(t), rtol=1e-15)


@pytest.mark.parametrize("size", [2, 3, 5])
def test_integer_costs_are_cut_exactly(dimer, size):
    """With integer costs each quartet goes to the rank its midpoint falls in,
    decided in exact arithmetic (Python fractions for reference)."""
    from fractions import Fraction
    tasks = build_tasks(dimer, np.eye(dimer.nao)[None])
    cost = ProgramCost(dimer, class_overhead=0)
    costs = [int(c) for t in tasks for c in cost(t)]
    total, running, want = sum(costs), 0, []
    for c in costs:
        mid = Fraction(2 * running + c, 2)
        want.append(min(int(mid * size / total), size - 1))
        running += c
    assert _owners(tasks, size, cost).tolist() == want


def test_a_share_cuts_every_chunk_of_a_stream(dimer):
    """Share(part, parts) takes its run of each chunk of a build in turn
    (iter_tasks, several chunks per class): the parts' runs of a chunk are
    the chunk in order, each of its estimated cost within one quartet's of
    an equal part; one part of one passes the chunks on untouched."""
    dm = np.eye(dimer.nao)[None]
    cost = ProgramCost(dimer, class_overhead=0)
    chunks = list(iter_tasks(dimer, dm, chunk=700))
    assert len(chunks) > len({(c.key, c.nctr) for c in chunks})     # classes in several chunks
    parts = 3
    shares = [Share(part, parts, cost) for part in range(parts)]
    for chunk in chunks:
        runs = [list(share([chunk])) for share in shares]
        assert sum((_rows(r) for r in runs), []) == _rows([chunk])
        costs = [sum(int(cost(t).sum()) for t in r) for r in runs]
        assert max(abs(c - sum(costs) / parts) for c in costs) <= cost(chunk).max()
    whole = [r for share in shares for r in share(iter(chunks))]
    assert sorted(_rows(whole)) == sorted(_rows(chunks))
    assert Share(0, 1, cost)(chunks) is chunks


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


def test_the_parts_of_a_shared_j_engine_build_add_up(monkeypatch):
    """engine_j with a Share digests that part of each class only (as the GPU
    path's J engine builds on several ranks or GPUs): the parts add up to
    the whole J (the host J engine standing in for the GPU's)."""
    from pyscf_fusionrcg import jengine
    from pyscf_fusionrcg.jdigest import engine_j
    from pyscf_fusionrcg.jengine import HostJEngine
    from pyscf_fusionrcg.jk import cpu_engine
    # this test's J programs are its own: host.clear_cache() (test_host.py)
    # would leave them holding class programs the host no longer keeps
    monkeypatch.setattr(jengine, "_PROGRAMS", {})
    monkeypatch.setattr(jengine, "_COMPILED", {})
    mol = gto.M(atom=H2O, basis="6-31g", verbose=0)
    rng = np.random.default_rng(9)
    dm = rng.standard_normal((2, mol.nao, mol.nao))
    dm = dm + dm.transpose(0, 2, 1)
    engine = HostJEngine(cpu_engine(mol))
    whole = engine_j(mol, dm, engine)
    cost = ProgramCost(mol, class_overhead=0)
    parts = [engine_j(mol, dm, engine, share=Share(part, 3, cost)) for part in range(3)]
    np.testing.assert_allclose(sum(parts), whole, atol=1e-12, rtol=0)


def test_a_communicator_is_refused_where_nothing_can_share_it(monkeypatch):
    """comm= goes with the host path and the GPU path (test_distributed_gpu.py),
    not with PySCF's own J/K, which 'auto' falls back to without a GPU."""
    from pyscf_fusionrcg import scf as plugin
    mol = gto.M(atom=H2O, basis="sto-3g", verbose=0)
    with pytest.raises(TypeError, match="mpi4py communicator"):
        as_reducer(object())
    monkeypatch.setattr(plugin, "_resolve_backend", lambda mf, backend: "cpu" if backend == "cpu" else "native")
    with pytest.raises(ValueError, match="cannot share: use backend='cpu'"):
        fusionrcg(scf.RHF(mol), backend="auto", comm=Reducer())
    mf = fusionrcg(scf.RHF(mol), backend="cpu", comm=Reducer())
    assert mf._fusionrcg_comm is not None
    assert "_fusionrcg_comm" not in mf.undo_fusionrcg().__dict__


@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_give_one_process_jk_and_energy(mpirun, ranks, tmp_path):
    out = tmp_path / "out.npz"
    mpirun(ranks, HERE / "mpi_jk_job.py", out)
    got = np.load(out)
    assert got["same_on_every_rank"] and got["converged"]
    # the reducer's minimum over the ranks, and each rank's place on this one host
    assert got["least"] == 5 and got["local_ranks"].tolist() == list(range(ranks))
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
