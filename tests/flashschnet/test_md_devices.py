"""Replica MD on several devices of one process: the threads meeting as MPI
ranks do, 2 and 3 CPU "devices" running one device's trajectories, a
checkpoint continued on other numbers of devices, a device that fails
stopping the others, and clear errors (CPU); the fused model on one GPU
listed twice, and on every GPU (GPU).

Splitting the batch changes the order of some sums in the reference model
(the forces of a replica differ in the last bit between batch sizes), so the
trajectories agree to rounding, not bit for bit; the noise is the same."""
import threading

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.io import read

from gpucore import GPUUnavailableError
from ase_flashschnet.calculator import ForceEngine
from ase_flashschnet.md import SimulationError, run_replicas
from ase_flashschnet.md.devices import ThreadGroup

ETHANOL = molecule("CH3CH2OH")


def settings(replicas):
    """One run's settings: a temperature and a friction per replica, so that each
    replica's place in the split matters."""
    return dict(replicas=replicas, temperature_K=np.linspace(200.0, 400.0, replicas).tolist(),
                friction_per_fs=np.linspace(0.01, 0.05, replicas).tolist(), dt_fs=0.5, precision="fp64",
                traj_interval=5, progress=False)


@pytest.fixture
def model(small_model):
    return small_model(cutoff=3.0)


def assert_same_run(result, expected, atol=1e-10):
    assert list(result.steps) == list(expected.steps) and result.seed == expected.seed
    for name in ("positions", "energies", "temperatures", "final_positions", "final_velocities"):
        np.testing.assert_allclose(getattr(result, name), getattr(expected, name), rtol=0, atol=atol, err_msg=name)


def test_threads_meet_as_ranks_do():
    group = ThreadGroup(3)
    seen = {}

    def rank(r):
        comm = group.member(r)
        mine = [r]
        everyone = comm.allgather(mine)
        mine.append("changed after sending")
        seen[r] = everyone, comm.gather(10 * r), comm.bcast("rank 0's" if r == 0 else None), comm.Get_size()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen[0] == ([[0], [1], [2]], [0, 10, 20], "rank 0's", 3)
    assert seen[2] == ([[0], [1], [2]], None, "rank 0's", 3)
    group.abort()
    with pytest.raises(threading.BrokenBarrierError):
        group.member(0).allgather(None)


@pytest.mark.parametrize("devices,replicas,neighbor_backend", [
    (["cpu", "cpu"], 4, "auto"),
    ("cpu,cpu,cpu", 5, "auto"),         # 2, 2 and 1 replicas
    (["cpu", "cpu"], 3, "emulate"),     # neighbour lists rebuilt inside blocks of steps
])
def test_devices_run_the_trajectories_of_one_device(model, tmp_path, devices, replicas, neighbor_backend):
    # no seed given: the devices take the first one's fresh seed
    several = run_replicas(model, ETHANOL, steps=30, devices=devices, out_dir=tmp_path / "several",
                           neighbor_backend=neighbor_backend, **settings(replicas))
    one = run_replicas(model, ETHANOL, steps=30, device="cpu", out_dir=tmp_path / "one", seed=several.seed,
                       neighbor_backend=neighbor_backend, **settings(replicas))
    assert_same_run(several, one)
    assert several.engine == one.engine == "reference fp64 on cpu"
    assert several.neighbor_mode == one.neighbor_mode
    for r in range(replicas):
        mine, theirs = read(tmp_path / "several" / f"replica_{r:03d}.traj", ":"), read(one.traj_files[r], ":")
        assert [a.info["step"] for a in mine] == [a.info["step"] for a in theirs] == list(range(0, 31, 5))
        np.testing.assert_allclose(mine[-1].positions, theirs[-1].positions, rtol=0, atol=1e-10)
        assert mine[-1].get_potential_energy() == pytest.approx(theirs[-1].get_potential_energy(), abs=1e-10)


def test_a_checkpoint_of_devices_continues_on_other_numbers_of_devices(model, tmp_path):
    """Two devices checkpoint what one device does; three devices continue it,
    one device continues that: the run of one device straight through."""
    common = dict(settings(5), seed=7, checkpoint_interval=10)
    straight = run_replicas(model, ETHANOL, steps=40, device="cpu", out_dir=tmp_path / "straight", **common)
    single = run_replicas(model, ETHANOL, steps=20, device="cpu", out_dir=tmp_path / "single", **common)
    out = tmp_path / "devices"
    run_replicas(model, ETHANOL, steps=20, devices=["cpu", "cpu"], out_dir=out, **common)
    theirs, ours = (torch.load(path, weights_only=True) for path in (single.checkpoint_file, out / "checkpoint.pt"))
    assert ours.keys() == theirs.keys() and ours["replicas"] == 5 and ours["step"] == 20
    for key, value in theirs.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            torch.testing.assert_close(ours[key], value, rtol=0, atol=1e-10, msg=key)
        else:
            assert np.array_equal(ours[key], value) if isinstance(value, torch.Tensor) else ours[key] == value, key

    run_replicas(model, None, steps=30, devices=["cpu"] * 3, out_dir=out, restart=out, **common)
    last = run_replicas(model, None, steps=40, device="cpu", out_dir=out, restart=out, **common)
    assert list(last.steps) == [35, 40] and last.seed == 7
    np.testing.assert_allclose(last.positions, straight.positions[-2:], rtol=0, atol=1e-10)
    np.testing.assert_allclose(last.final_velocities, straight.final_velocities, rtol=0, atol=1e-10)
    for r in range(5):
        frames = read(out / f"replica_{r:03d}.traj", ":")
        assert [a.info["step"] for a in frames] == list(range(0, 41, 5))
        np.testing.assert_allclose(frames[-1].positions, straight.final_positions[r], rtol=0, atol=1e-10)


def corrupt_forces(monkeypatch, from_call, n_atoms, rows=None, error=None):
    """From the ``from_call``-th force call of a batch of ``n_atoms`` atoms on,
    raise ``error``, or make the forces of ``rows`` NaN (a model blowing up)."""
    calls = []
    original = ForceEngine.energy_and_forces

    def wrapped(self, types, pos, graph):
        energy, forces = original(self, types, pos, graph)
        if pos.shape[0] == n_atoms:
            calls.append(1)
            if len(calls) >= from_call and error is not None:
                raise error
            if len(calls) >= from_call:
                forces = forces.clone()
                forces[rows] = float("nan")
        return energy, forces

    monkeypatch.setattr(ForceEngine, "energy_and_forces", wrapped)


def test_an_unstable_replica_stops_every_device_with_one_error(model, monkeypatch):
    """Replica 2 of 3 is the second device's only one; both runs stop alike."""
    n = len(ETHANOL)
    errors = []
    for run, n_atoms, rows in ((dict(device="cpu"), 3 * n, slice(2 * n, 3 * n)),
                               (dict(devices=["cpu", "cpu"]), n, slice(0, n))):
        with monkeypatch.context() as patch:
            corrupt_forces(patch, 6, n_atoms, rows)
            with pytest.raises(SimulationError, match=r"replica 2: non-finite") as info:
                run_replicas(model, ETHANOL, steps=30, seed=1, **run, **settings(3))
        errors.append((info.value.step, info.value.replicas, str(info.value)))
    assert errors[0] == errors[1] and errors[0][1] == [2]


def test_a_device_that_fails_stops_the_others(model, monkeypatch):
    before = threading.active_count()
    corrupt_forces(monkeypatch, 4, len(ETHANOL), error=RuntimeError("the second device broke"))
    with pytest.raises(RuntimeError, match="the second device broke"):
        run_replicas(model, ETHANOL, steps=30, seed=1, devices=["cpu", "cpu"], **settings(3))
    assert threading.active_count() == before


def test_clear_errors(model, monkeypatch):
    def run(**options):
        run_replicas(model, ETHANOL, steps=2, **dict(settings(2), **options))

    with pytest.raises(ValueError, match=r"3 devices for 2 replica\(s\): each needs one replica at least"):
        run(devices="cpu,cpu,cpu")
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda', 'cuda:N'"):
        run(devices=["cpu", "tpu"])
    with pytest.raises(ValueError, match=r"several devices in one process \(devices\) do not combine with MPI"):
        run(devices=["cpu", "cpu"], comm=object())
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GPUUnavailableError, match="devices='all' runs on every CUDA GPU, but PyTorch sees none"):
        run(devices="all")
    with pytest.raises(GPUUnavailableError, match="device='cuda:1' but PyTorch sees no CUDA GPU"):
        run(devices=[1, 0])


# ---------------------------------------------------------------- GPU only

GPU_RUN = dict(replicas=4, steps=200, dt_fs=4.0, temperature_K=300, friction_per_fs=0.001, traj_interval=50,
               progress=False, seed=5)


@pytest.mark.gpu
def test_gpu_one_gpu_listed_twice_runs_the_trajectories_of_one(cg_demo):
    """Two threads capture and replay their blocks on one GPU; the fused priors
    sum with atomics, so last-bit differences grow over the 200 steps."""
    model, chain = cg_demo
    one = run_replicas(model, chain, device="cuda:0", **GPU_RUN)
    twice = run_replicas(model, chain, devices=[0, 0], **GPU_RUN)
    assert twice.engine == one.engine and one.engine.startswith("fused")
    assert twice.cuda_graph, "CUDA graph capture fell back to eager steps (see the logged warning)"
    assert twice.neighbor_mode == "in-graph"
    np.testing.assert_allclose(twice.positions, one.positions, atol=1e-3)


@pytest.mark.gpu
def test_gpu_every_gpu_runs_the_trajectories_of_one(cg_demo):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs at least")
    model, chain = cg_demo
    run = dict(GPU_RUN, replicas=2 * torch.cuda.device_count())
    one = run_replicas(model, chain, device="cuda:0", **run)
    every = run_replicas(model, chain, devices="all", **run)
    assert "cuda:1" in every.engine and every.cuda_graph
    np.testing.assert_allclose(every.positions, one.positions, atol=1e-3)
