"""The GPU path's builds shared by GPUs and ranks: the choices and refusals of
``fusionrcg(..., comm=, devices=)`` and of ``JKContext`` (on any machine,
with the GPU path named but not run), then, on a GPU (the ``gpu`` marker),
``devices=[0, 0]`` and two MPI ranks sharing one GPU giving one build's J/K
and one process's energies.

    pytest tests/fusionrcg/test_distributed_gpu.py       # the gpu tests skip without a GPU
"""
import pathlib

import numpy as np
import pytest
from pyscf import gto, scf

from pyscf_fusionrcg import distributed, fusionrcg
from pyscf_fusionrcg import scf as plugin
from pyscf_fusionrcg.distributed import Reducer, part_devices, rank_device, resolve_devices
from pyscf_fusionrcg.jk import JKContext
from pyscf_fusionrcg.options import Options, from_env

HERE = pathlib.Path(__file__).resolve().parent
H2O = "O 0 0 0.117; H 0 0.757 -0.469; H 0 -0.757 -0.469"


class _Rank(Reducer):
    """Rank ``rank`` of ``size`` on its own (nothing to meet), its host's rank ``rank``."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size


@pytest.fixture
def gpus(monkeypatch):
    """``gpus(count, current=0)``: this process seeing ``count`` GPUs, GPU
    ``current`` current, for the device choices (no GPU needed)."""
    def see(count, current=0):
        monkeypatch.setattr(distributed, "device_count", lambda: count)
        monkeypatch.setattr(distributed, "current_device", lambda: current)
    return see


@pytest.fixture
def gpu_path(monkeypatch):
    """fusionrcg resolving every backend but 'cpu' to the GPU path, GPU or not."""
    monkeypatch.setattr(plugin, "_resolve_backend", lambda mf, backend: "cpu" if backend == "cpu" else "gpu")


def water(basis="sto-3g"):
    return gto.M(atom=H2O, basis=basis, verbose=0)


def test_device_ids_are_checked_against_the_machine():
    assert resolve_devices((0, 0), 1) == (0, 0)
    assert resolve_devices("all", 3) == (0, 1, 2)
    with pytest.raises(ValueError, match=r"there is no GPU 2; this process sees 2 \(ids 0 .. 1\)"):
        resolve_devices((0, 2), 2)
    with pytest.raises(ValueError, match="sees no GPU"):
        resolve_devices("all", 0)


def test_each_rank_takes_a_gpu_of_its_host():
    """Round robin over the host's GPUs by the rank's place on its host,
    unless the program made another GPU than 0 current."""
    assert [rank_device(local, 0, 4) for local in range(6)] == [0, 1, 2, 3, 0, 1]
    assert rank_device(5, 2, 4) == 2
    assert rank_device(0, 0, 1) == 0


def test_the_parts_of_a_context_follow_its_devices_and_ranks(gpus):
    """One process alone: one part on the current GPU, taking every class
    whole (as before GPUs were shared); devices=[1, 1]: two parts on GPU 1,
    halves of every class; rank 1 of 3: one part on its GPU, a third."""
    gpus(2)
    mol = water()
    alone = JKContext(mol, backend="gpu").gpu_parts()
    assert [(p.device, p.share.part, p.share.parts) for p in alone] == [(None, 0, 1)]
    chunks = [object()]
    assert alone[0].share(chunks) is chunks
    two = JKContext(mol, backend="gpu", options=Options(devices=[1, 1])).gpu_parts()
    assert [(p.device, p.share.part, p.share.parts) for p in two] == [(1, 0, 2), (1, 1, 2)]
    assert [p.options.progress for p in two] == [Options().progress, False]
    assert all(p.options.devices == (1, 1) for p in two)
    rank = JKContext(mol, backend="gpu", comm=_Rank(1, 3)).gpu_parts()
    assert [(p.device, p.share.part, p.share.parts, p.options.progress) for p in rank] == [(1, 1, 3, False)]
    gpus(2, current=1)
    assert part_devices(None, _Rank(2, 3)) == [1]     # the GPU the program chose
    assert part_devices(None, _Rank(0, 1)) == [None]


def test_a_communicator_configures_the_gpu_path(gpu_path):
    """fusionrcg(comm=) with the GPU path no longer refuses: the contexts of
    the builds hold the ranks, and to_gpu keeps them."""
    ranks = _Rank(0, 2)
    mf = fusionrcg(scf.RHF(water()), backend="gpu", comm=ranks)
    assert mf._fusionrcg_path == "gpu" and mf._fusionrcg_comm is ranks
    context = mf._fusionrcg_context(mf.mol, 0.0)
    assert context.backend == "gpu" and context.reducer is ranks
    mf.dump_flags()


def test_devices_reach_the_context(gpu_path, gpus):
    gpus(1)
    mf = fusionrcg(scf.UHF(water()), backend="gpu", devices=[0, 0])
    assert mf.fusionrcg_options.devices == (0, 0)
    context = mf._fusionrcg_context(mf.mol, 0.0)
    assert context.options.devices == (0, 0) and [p.device for p in context.gpu_parts()] == [0, 0]
    assert fusionrcg(scf.RHF(water()), options=Options(devices="all")).fusionrcg_options.devices == "all"


def test_what_cannot_be_shared_is_refused(gpu_path, gpus):
    gpus(1)
    mol = water()
    with pytest.raises(ValueError, match="there is no GPU 1"):
        fusionrcg(scf.RHF(mol), backend="gpu", devices=[0, 1])
    with pytest.raises(ValueError, match="give one or the other"):
        fusionrcg(scf.RHF(mol), backend="gpu", devices=[0], comm=_Rank(0, 2))
    with pytest.raises(ValueError, match="give one or the other"):
        JKContext(mol, backend="gpu", options=Options(devices=[0]), comm=_Rank(0, 2))
    with pytest.raises(ValueError, match="backend='cpu' is the host path"):
        fusionrcg(scf.RHF(mol), backend="cpu", devices=[0])
    with pytest.raises(ValueError, match="backend='cpu' is the host path"):
        JKContext(mol, backend="cpu", options=Options(devices=[0]))
    with pytest.raises(ValueError, match="devices must be 'all' or a non-empty list"):
        fusionrcg(scf.RHF(mol), backend="gpu", devices=[])


# ------------------------------------------------------------------ on a GPU

def _densities(mol):
    """A minao density, an unrestricted pair near it, and a general pair."""
    dm = scf.RHF(mol).get_init_guess(key="minao")
    rng = np.random.default_rng(11)
    noise = rng.normal(scale=1e-2, size=dm.shape)
    return dm, np.stack([0.5 * dm, 0.5 * dm + noise + noise.T]), np.stack([dm + noise, dm - noise.T])


def _spy_parts(monkeypatch):
    """Each get_jk_gpu call's share and result, recorded."""
    from pyscf_fusionrcg import gpu_jk
    calls = []
    plain = gpu_jk.get_jk_gpu

    def spy(*args, share=None, **kwargs):
        out = plain(*args, share=share, **kwargs)
        calls.append((share, out))
        return out
    monkeypatch.setattr(gpu_jk, "get_jk_gpu", spy)
    return calls


@pytest.mark.gpu
def test_two_parts_on_one_gpu_give_one_builds_jk(monkeypatch):
    """devices=[0, 0]: two parts on one GPU, each computing a real share
    (its J/K far from the whole), give one GPU's J and K to 1e-12, for a
    closed-shell density, an unrestricted pair and a general pair, from the
    kept plans (screened, then restricted to a density change) and
    streamed (a one-off build)."""
    import cupy as cp
    from pyscf_fusionrcg.jk import get_jk
    mol = water("cc-pvtz")
    one = JKContext(mol, backend="gpu")
    two = JKContext(mol, backend="gpu", options=from_env(devices=[0, 0]))     # else the same options
    calls = _spy_parts(monkeypatch)
    dm, uhf, general = _densities(mol)
    builds = [(dm, 1), (uhf, 1), (general, 0), (1e-4 * dm, 1), (cp.asarray(uhf), 1)]
    for density, hermi in builds:
        want = one.get_jk(density, hermi)
        del calls[:]
        got = two.get_jk(density, hermi)
        assert len(calls) == 2      # one build a part; a part's kept plan holds its share already
        assert all(share is None or share.parts == 2 for share, _ in calls)
        for n in (0, 1):
            assert type(got[n]) is type(want[n]) and got[n].shape == want[n].shape
            whole = cp.asarray(want[n]).reshape(-1, mol.nao, mol.nao)
            assert float(abs(cp.asarray(got[n]) - cp.asarray(want[n])).max()) < 1e-12
            for _, part in calls:
                assert float(abs(part[n] - whole).max()) > 1e-3 * float(abs(whole).max())
    assert one.plan is not None and all(p.plan is not None for p in two.gpu_parts())
    halves = [p.plan for p in two.gpu_parts()]
    assert all(0 < h.quartets < one.plan.quartets and h.screened == one.plan.quartets for h in halves)
    assert sum(h.quartets for h in halves) == one.plan.quartets     # the parts' plans partition one plan
    options = from_env(devices=[0, 0])
    for density, hermi in builds[:3]:
        want = get_jk(mol, density, hermi, backend="gpu")
        got = get_jk(mol, density, hermi, backend="gpu", options=options)
        for a, b in zip(got, want):
            assert np.abs(a - b).max() < 1e-12


@pytest.mark.gpu
def test_two_parts_on_one_gpu_give_one_gpus_uhf_energy():
    mol = gto.M(atom=H2O, basis="cc-pvtz", charge=1, spin=1, verbose=0)
    want = fusionrcg(scf.UHF(mol), backend="gpu", progress=False).run(conv_tol=1e-10)
    got = fusionrcg(scf.UHF(mol), backend="gpu", devices=[0, 0], progress=False).run(conv_tol=1e-10)
    assert want.converged and got.converged
    assert abs(got.e_tot - want.e_tot) < 1e-10


@pytest.mark.gpu
def test_two_ranks_sharing_one_gpu_give_one_process_jk_and_energy(mpirun, tmp_path):
    """mpiexec -n 2 with one GPU (or two ranks on the first two GPUs): every
    rank gets one process's J and K (1e-12) and RHF energy (1e-10 Eh), the
    same on both."""
    from mpi_jk_job import densities, water as job_water
    mol = job_water("gpu")
    sym, pair = densities(mol)
    context = JKContext(mol, backend="gpu")
    want = {"": context.get_jk(sym, hermi=1), "2": context.get_jk(pair, hermi=0)}
    energy = fusionrcg(scf.RHF(mol), backend="gpu", progress=False).kernel()    # kernels compiled once, here
    out = tmp_path / "out.npz"
    mpirun(2, HERE / "mpi_jk_job.py", out, "gpu", timeout=600)
    got = np.load(out)
    assert got["same_on_every_rank"] and got["converged"]
    for key, (vj, vk) in want.items():
        np.testing.assert_allclose(got["vj" + key], vj, atol=1e-12, rtol=0)
        np.testing.assert_allclose(got["vk" + key], vk, atol=1e-12, rtol=0)
    assert abs(float(got["energy"]) - energy) < 1e-10
