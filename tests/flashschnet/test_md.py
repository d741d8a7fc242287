"""Batched multi-replica MD: integrators, one force call per step, checkpoints,
the instability guard and clear errors (CPU); fused kernels, CUDA graphs and
a long 64-replica run (GPU)."""
import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import molecule
from ase.io import read

from ase_flashschnet.calculator import ForceEngine
from ase_flashschnet.md import MDConfig, SimulationError, run_replicas
from ase_flashschnet.model import SchNet, UnknownElementError

# Energy conservation bound for test_nve_conserves_energy: 1000 velocity-Verlet
# steps of 0.25 fs in fp64 on ethanol at ~300 K must keep the total energy of
# each replica within 1e-4 eV of its start (observed: ~1e-6 eV).
NVE_DRIFT_BOUND_EV = 1e-4


@pytest.fixture
def model(small_model):
    return small_model(cutoff=3.0)


@pytest.fixture
def ethanol():
    return molecule("CH3CH2OH")


def count_force_calls(monkeypatch, fail_from=None, replica=None, n_atoms=None):
    """Wrap ForceEngine.energy_and_forces: count calls and, from call ``fail_from``
    on, return NaN forces for one replica (a stand-in for a blown-up model)."""
    calls = []
    original = ForceEngine.energy_and_forces

    def wrapped(self, types, pos, graph):
        energy, forces = original(self, types, pos, graph)
        if fail_from is not None and len(calls) >= fail_from:
            forces = forces.clone()
            forces[replica * n_atoms:(replica + 1) * n_atoms] = float("nan")
        calls.append(1)
        return energy, forces

    monkeypatch.setattr(ForceEngine, "energy_and_forces", wrapped)
    return calls


@pytest.mark.parametrize("integrator", ["baoab", "nve"])
def test_short_batched_run(model, ethanol, integrator, tmp_path, monkeypatch):
    calls = count_force_calls(monkeypatch)
    result = run_replicas(model, ethanol, replicas=3, steps=40, dt_fs=0.5, temperature_K=[200, 300, 400],
                          integrator=integrator, traj_interval=10, out_dir=tmp_path, progress=False, seed=1)
    assert len(calls) == 41  # one at the start, then exactly one per step
    assert result.positions.shape == (5, 3, 9, 3)
    assert result.energies.shape == result.temperatures.shape == (5, 3)
    assert list(result.steps) == [0, 10, 20, 30, 40]
    assert np.all(np.isfinite(result.positions)) and np.all(result.temperatures > 0)
    assert result.steps_run == 40 and result.ns_per_day > 0 and not result.cuda_graph
    frames = read(result.traj_files[2], ":")
    assert [a.info["step"] for a in frames] == [0, 10, 20, 30, 40]
    np.testing.assert_allclose(frames[-1].positions, result.final_positions[2], atol=1e-6)
    assert frames[-1].get_potential_energy() == pytest.approx(result.energies[-1, 2], abs=1e-6)


def test_langevin_holds_each_replica_at_its_temperature(model, ethanol):
    targets = np.array([100.0, 400.0, 1600.0])
    result = run_replicas(model, ethanol, replicas=3, steps=600, dt_fs=0.5, temperature_K=targets,
                          friction_per_fs=[0.05, 0.1, 0.05], traj_interval=10, progress=False, seed=2)
    mean_t = result.temperatures[len(result.steps) // 2:].mean(axis=0)
    np.testing.assert_allclose(mean_t, targets, rtol=0.35)


def test_nve_conserves_energy(model, ethanol):
    """Total energy drift over 1000 steps of 0.25 fs stays below NVE_DRIFT_BOUND_EV."""
    result = run_replicas(model, ethanol, replicas=2, steps=1000, dt_fs=0.25, temperature_K=300,
                          integrator="nve", precision="fp64", traj_interval=20, progress=False, seed=0, skin=0.5)
    total = result.energies + result.kinetic_energies
    assert result.neighbor_builds > 1  # the Verlet list was rebuilt along the way
    assert np.abs(total - total[0]).max() < NVE_DRIFT_BOUND_EV


def test_checkpoint_restart_continues_the_same_trajectory(model, ethanol, tmp_path):
    common = dict(replicas=2, dt_fs=0.5, temperature_K=300, precision="fp64", traj_interval=5, progress=False,
                  seed=11, checkpoint_interval=10)
    straight = run_replicas(model, ethanol, steps=40, out_dir=tmp_path / "straight", **common)
    run_replicas(model, ethanol, steps=20, out_dir=tmp_path / "split", **common)
    (tmp_path / "split" / "replica_000.traj").unlink()  # a restart needs only the checkpoint
    resumed = run_replicas(model, None, steps=40, out_dir=tmp_path / "split", restart=tmp_path / "split", **common)
    assert list(resumed.steps) == [25, 30, 35, 40]
    np.testing.assert_allclose(resumed.positions, straight.positions[-4:], atol=1e-10)
    np.testing.assert_allclose(resumed.final_velocities, straight.final_velocities, atol=1e-10)
    frames = read(tmp_path / "split" / "replica_001.traj", ":")
    assert [a.info["step"] for a in frames] == list(range(0, 41, 5))
    np.testing.assert_allclose(frames[-1].positions, straight.final_positions[1], atol=1e-10)


def test_nan_guard_names_step_and_replica_and_keeps_frames(model, ethanol, tmp_path, monkeypatch):
    # NaN forces for replica 1 from force call 5 (the end of step 5): its
    # velocities go NaN there and its coordinates in step 6.
    count_force_calls(monkeypatch, fail_from=5, replica=1, n_atoms=len(ethanol))
    with pytest.raises(SimulationError, match=r"step 6 \(replica 1: non-finite") as info:
        run_replicas(model, ethanol, replicas=3, steps=50, dt_fs=0.5, traj_interval=2, out_dir=tmp_path,
                     progress=False, seed=0)
    assert info.value.step == 6 and info.value.replicas == [1]
    for path in info.value.traj_files:
        frames = read(path, ":")
        assert [a.info["step"] for a in frames] == [0, 2, 4]
        assert np.all(np.isfinite(frames[-1].positions))


def test_exploding_replica_is_stopped(model, ethanol):
    fast = ethanol.copy()
    fast.set_velocities(np.full((len(fast), 3), 2.0 / units.fs))  # 3.5 A per fs
    calm = ethanol.copy()
    calm.set_velocities(np.full((len(calm), 3), 1e-4))
    with pytest.raises(SimulationError, match=r"step 1 \(replica 2: an atom moving more than 1.0 A"):
        run_replicas(model, [calm, calm, fast], steps=10, dt_fs=1.0, progress=False)


def test_periodic_replicas(model):
    cell = np.diag([6.5, 6.5, 6.5])
    atoms = Atoms("C8", scaled_positions=[[i, j, k] for i in (0, .5) for j in (0, .5) for k in (0, .5)],
                  cell=cell, pbc=True)
    atoms.rattle(0.2, seed=0)
    result = run_replicas(model, atoms, replicas=2, steps=30, dt_fs=1.0, temperature_K=[300, 600], skin=0.3,
                          traj_interval=10, progress=False, seed=0)
    assert np.all(np.isfinite(result.energies))


def test_clear_errors(model, ethanol):
    typed = SchNet(hidden_channels=8, num_filters=8, num_interactions=1, num_rbf=8, cutoff=3.0,
                   type_map={"C": 0, "O": 1}, seed=0)
    with pytest.raises(UnknownElementError, match="element.* H "):
        run_replicas(typed, ethanol, steps=1, progress=False)
    small = Atoms("C", cell=[5.0, 8.0, 8.0], pbc=True)
    with pytest.raises(ValueError, match="replica 0: periodic cell too small along axis a"):
        run_replicas(model, small, steps=1, progress=False)
    broken = ethanol.copy()
    broken.positions[4, 0] = np.nan
    with pytest.raises(ValueError, match=r"replica 1: non-finite .* atom\(s\) \[4\]"):
        run_replicas(model, [ethanol, broken], steps=1, progress=False)
    with pytest.raises(ValueError, match="checkpoint_interval needs out_dir"):
        run_replicas(model, ethanol, steps=1, checkpoint_interval=1, progress=False)
    with pytest.raises(ValueError, match="temperature_K must be one .* per replica \\(2\\)"):
        run_replicas(model, ethanol, replicas=2, temperature_K=[300, 300, 300], steps=1, progress=False)


def test_in_graph_control_flow_matches_host_steps(model, ethanol):
    """The GPU control flow (gated rebuilds on the device, one status read per block
    of steps), emulated on the CPU, follows the per-step host decisions bit for bit."""
    kwargs = dict(replicas=3, steps=60, dt_fs=0.5, temperature_K=[200, 300, 400], precision="fp64",
                  traj_interval=20, progress=False, seed=1, skin=0.3)
    host = run_replicas(model, ethanol, **kwargs)
    blocks = run_replicas(model, ethanol, neighbor_backend="emulate", check_interval=7, **kwargs)
    assert host.neighbor_mode == "host" and blocks.neighbor_mode == "in-graph"
    assert host.host_syncs == 60 and blocks.host_syncs == 11  # blocks end at 7 14 20 21 28 35 40 42 49 56 60
    assert blocks.neighbor_builds == host.neighbor_builds > 3
    np.testing.assert_array_equal(blocks.positions, host.positions)
    np.testing.assert_array_equal(blocks.final_velocities, host.final_velocities)


def test_overflowing_rebuild_is_rolled_back(model, ethanol, monkeypatch):
    """Buffers with no spare slot: rebuilds that find more edges overflow, the block
    is rolled back and run again with larger buffers; the trajectory is unchanged."""
    import ase_flashschnet.md.neighbor_capacity as capacity
    import ase_flashschnet.static_neighbors as nb

    kwargs = dict(replicas=2, steps=80, dt_fs=0.5, temperature_K=600, precision="fp64", traj_interval=40,
                  progress=False, seed=4, skin=0.2)
    normal = run_replicas(model, ethanol, **kwargs)
    exact = lambda n, margin: max(1, int(n))  # noqa: E731
    monkeypatch.setattr(capacity, "capacity_for", exact)
    monkeypatch.setattr(nb, "capacity_for", exact)
    tight = run_replicas(model, ethanol, neighbor_backend="emulate", check_interval=10, **kwargs)
    assert tight.neighbor_overflows >= 1
    np.testing.assert_array_equal(tight.positions, normal.positions)
    np.testing.assert_array_equal(tight.final_velocities, normal.final_velocities)


def test_nan_guard_inside_a_block_names_the_first_bad_step(model, ethanol, tmp_path, monkeypatch):
    """Checked every 25 steps, a replica gone bad at step 6 is still reported as
    step 6, and no frame after it is written."""
    count_force_calls(monkeypatch, fail_from=5, replica=2, n_atoms=len(ethanol))
    with pytest.raises(SimulationError, match=r"step 6 \(replica 2: non-finite") as info:
        run_replicas(model, ethanol, replicas=3, steps=50, dt_fs=0.5, traj_interval=10, out_dir=tmp_path,
                     progress=False, seed=0, neighbor_backend="emulate", check_interval=25)
    assert info.value.step == 6 and info.value.replicas == [2]
    frames = read(info.value.traj_files[0], ":")
    assert [a.info["step"] for a in frames] == [0]


def test_checkpoint_restart_with_in_graph_control_flow(model, ethanol, tmp_path):
    common = dict(replicas=2, dt_fs=0.5, temperature_K=300, precision="fp64", traj_interval=5, progress=False,
                  seed=11, checkpoint_interval=10, neighbor_backend="emulate", check_interval=8, skin=0.3)
    straight = run_replicas(model, ethanol, steps=40, out_dir=tmp_path / "straight", **common)
    run_replicas(model, ethanol, steps=20, out_dir=tmp_path / "split", **common)
    resumed = run_replicas(model, None, steps=40, out_dir=tmp_path / "split", restart=tmp_path / "split", **common)
    np.testing.assert_allclose(resumed.positions, straight.positions[-4:], atol=1e-10)
    np.testing.assert_allclose(resumed.final_velocities, straight.final_velocities, atol=1e-10)


def test_check_interval_must_be_positive(model, ethanol):
    with pytest.raises(ValueError, match="check_interval"):
        run_replicas(model, ethanol, steps=1, check_interval=0, progress=False)


# ---------------------------------------------------------------- GPU only


@pytest.mark.gpu
@pytest.mark.parametrize("precision,tol", [("fp32", 2e-4), ("bf16", 3e-2), ("fp16", 1e-2)])
def test_gpu_batched_forces_equal_the_reference(cg_demo, precision, tol):
    """Fused forces for 8 perturbed replicas in one batch against the fp64 reference,
    relative to the largest force. A CGSchNet-sized model without priors and at
    full energy scale, so that the forces compared are SchNet's own."""
    from ase_flashschnet.neighbors import NeighborList

    chain = cg_demo[1]
    model = SchNet(hidden_channels=128, num_filters=128, num_interactions=3, num_rbf=50, cutoff=10.0, seed=0)
    replicas = 8
    rng = np.random.default_rng(0)
    pos = np.concatenate([chain.positions + rng.normal(0, 0.1, chain.positions.shape) for _ in range(replicas)])
    results = []
    for engine in (ForceEngine(model, device="cuda", precision=precision, backend="fused"),
                   ForceEngine(model, device="cuda", precision="fp64")):
        x = torch.as_tensor(pos, dtype=engine.dtype, device="cuda")
        batch = torch.arange(replicas, device="cuda").repeat_interleave(len(chain))
        graph = NeighborList(engine.cutoff, 1.0).build(x, batch=batch, n_systems=replicas)
        energy, forces = engine.energy_and_forces(engine.types(np.tile(chain.numbers, replicas)), x, graph)
        results.append((energy.double().cpu().numpy(), forces.double().cpu().numpy()))
    (e_fused, f_fused), (e_ref, f_ref) = results
    np.testing.assert_allclose(f_fused, f_ref, atol=tol * np.abs(f_ref).max())
    np.testing.assert_allclose(e_fused, e_ref, atol=tol * np.abs(e_ref).max())


@pytest.mark.gpu
def test_gpu_cuda_graph_run_equals_eager_run(cg_demo):
    """Same seed, same noise: the captured steps follow the eager ones (priors sum
    with atomics, so allow for last-bit differences growing over 200 steps)."""
    model, chain = cg_demo
    kwargs = dict(replicas=4, steps=200, dt_fs=4.0, temperature_K=300, friction_per_fs=0.001, device="cuda",
                  traj_interval=50, progress=False, seed=5)
    graphed = run_replicas(model, chain, cuda_graph=True, **kwargs)
    eager = run_replicas(model, chain, cuda_graph=False, **kwargs)
    assert graphed.cuda_graph, "CUDA graph capture fell back to eager steps (see the logged warning)"
    assert not eager.cuda_graph
    assert graphed.neighbor_mode == eager.neighbor_mode == "in-graph"
    np.testing.assert_allclose(graphed.positions, eager.positions, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_64_replicas_10000_steps_lose_no_replica(cg_demo, tmp_path):
    model, chain = cg_demo
    result = run_replicas(model, chain, replicas=64, steps=10_000, dt_fs=4.0, temperature_K=300,
                          friction_per_fs=0.001, device="cuda", traj_interval=1000, out_dir=tmp_path,
                          checkpoint_interval=5000, progress=False, seed=0)
    assert result.steps_run == 10_000 and result.final_positions.shape[0] == 64
    assert np.all(np.isfinite(result.final_positions)) and np.all(np.isfinite(result.energies))
    assert np.all(np.abs(result.temperatures[-1] - 300) < 100)
    print(f"64 x {len(chain)} beads, 10k steps: {result.ns_per_day:.0f} ns/day aggregate at 4 fs, "
          f"CUDA graphs {result.cuda_graph}, {result.neighbor_builds} neighbour-list builds")


@pytest.mark.gpu
@pytest.mark.parametrize("backend,precision", [("fused", "bf16"), ("fused", "fp32"), ("reference", "fp32")])
def test_gpu_in_graph_rebuilds_keep_the_forces_exact(cg_demo, backend, precision):
    """After in-graph rebuilds (kernels writing the graph in place, read by the
    captured force call), the forces of the last step equal those of a fresh
    engine on a freshly built list at the same positions."""
    from ase_flashschnet.md.simulation import Simulation
    from ase_flashschnet.neighbors import NeighborList

    model, chain = cg_demo
    engine = ForceEngine(model, device="cuda", precision=precision, backend=backend)
    config = MDConfig(dt_fs=4.0, temperature_K=600, friction_per_fs=0.01, skin=0.5, seed=3, check_interval=10)
    sim = Simulation(engine, [chain.copy() for _ in range(4)], config)
    assert sim.neighbor_mode == "in-graph"
    with torch.cuda.device(engine.device):
        for _ in range(6):
            assert sim.advance(10) is None
    assert sim.neighbors.builds_in_graph >= 2 and sim.control.captured
    fresh_engine = ForceEngine(model, device="cuda", precision=precision, backend=backend)
    graph = NeighborList(engine.cutoff, 0.5).build(sim.x.clone(), batch=sim.batch, n_systems=sim.R)
    _, forces = fresh_engine.energy_and_forces(sim.types, sim.x.clone(), graph)
    _, again = engine.energy_and_forces(sim.types, sim.x, sim.graph)
    scale = forces.abs().max()
    torch.testing.assert_close(again, forces, rtol=0, atol=1e-4 * scale)
    # the stored forces are those of the current positions
    torch.testing.assert_close(sim.f, again, rtol=0, atol=1e-4 * scale)


@pytest.mark.gpu
def test_gpu_overflow_rollback_changes_nothing(small_model, ethanol, monkeypatch):
    """Buffers without spare slots on the GPU: rebuilds inside the captured steps
    overflow whenever the edge count grows; each time the block is rolled back
    and redone with larger buffers. The trajectory matches a normal run."""
    import ase_flashschnet.md.neighbor_capacity as capacity
    import ase_flashschnet.static_neighbors as nb

    model = small_model(cutoff=3.0, num_filters=64).float()
    kwargs = dict(replicas=4, steps=80, dt_fs=0.5, temperature_K=600, device="cuda", precision="fp32",
                  backend="fused", traj_interval=40, progress=False, seed=4, skin=0.2, check_interval=10)
    normal = run_replicas(model, ethanol, **kwargs)
    exact = lambda n, margin: max(1, int(n))  # noqa: E731
    monkeypatch.setattr(capacity, "capacity_for", exact)
    monkeypatch.setattr(nb, "capacity_for", exact)
    tight = run_replicas(model, ethanol, **kwargs)
    assert normal.neighbor_mode == tight.neighbor_mode == "in-graph" and tight.cuda_graph
    assert tight.neighbor_overflows >= 1, "no overflow happened: the roll-back was not exercised"
    np.testing.assert_allclose(tight.positions, normal.positions, atol=1e-3)


@pytest.mark.gpu
def test_gpu_nan_guard_in_blocks(cg_demo, monkeypatch):
    """NaN forces for replica 1 from the captured step 2 on (the capture records the
    injection): found at the end of a 30-step block, reported as step 3."""
    model, chain = cg_demo
    count_force_calls(monkeypatch, fail_from=2, replica=1, n_atoms=len(chain))
    with pytest.raises(SimulationError, match=r"step 3 \(replica 1: non-finite") as info:
        run_replicas(model, chain, replicas=3, steps=60, dt_fs=4.0, device="cuda", precision="bf16",
                     traj_interval=60, progress=False, seed=0, check_interval=30)
    assert info.value.step == 3 and info.value.replicas == [1]


@pytest.mark.gpu
@pytest.mark.parametrize("periodic", [False, True])
def test_gpu_in_graph_steps_follow_host_steps(model, ethanol, periodic):
    """fp64 reference on the GPU: captured steps with in-graph rebuilds (kernels)
    against host-driven steps (build_torch), periodic and not."""
    if periodic:
        atoms = Atoms("C8", scaled_positions=[[i, j, k] for i in (0, .5) for j in (0, .5) for k in (0, .5)],
                      cell=np.diag([6.5, 6.5, 6.5]), pbc=True)
        atoms.rattle(0.2, seed=0)
    else:
        atoms = ethanol
    kwargs = dict(replicas=3, steps=60, dt_fs=0.5, temperature_K=[300, 600, 900], device="cuda", precision="fp64",
                  traj_interval=20, progress=False, seed=3, skin=0.2, check_interval=15)
    graphed = run_replicas(model, atoms, **kwargs)
    host = run_replicas(model, atoms, neighbor_backend="torch", **kwargs)
    assert graphed.neighbor_mode == "in-graph" and host.neighbor_mode == "host"
    assert graphed.cuda_graph and graphed.neighbor_builds > 3
    assert graphed.host_syncs == 6 and host.host_syncs == 60
    np.testing.assert_allclose(graphed.positions, host.positions, atol=1e-8)


def test_load_checkpoint_names_what_is_wrong(tmp_path):
    """A missing file, another kind of file, and a version this code does not
    read each get an error naming the file; versions 1 and 2 load."""
    from ase_flashschnet.md.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
    with pytest.raises(FileNotFoundError, match="no FlashSchNet MD checkpoint at"):
        load_checkpoint(tmp_path)
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "flashschnet-model", "version": 2}, path)
    with pytest.raises(ValueError, match="not a FlashSchNet MD checkpoint .format 'flashschnet-model'"):
        load_checkpoint(path)
    torch.save({"format": CHECKPOINT_FORMAT, "version": 3}, path)
    with pytest.raises(ValueError, match="unsupported FlashSchNet MD checkpoint version 3 .this code reads version 1 or 2"):
        load_checkpoint(tmp_path)
    for version in (1, 2):
        torch.save({"format": CHECKPOINT_FORMAT, "version": version, "step": 7}, path)
        data = load_checkpoint(tmp_path)
        assert data["step"] == 7 and data["path"] == str(path)
