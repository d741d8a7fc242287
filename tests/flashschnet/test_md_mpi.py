"""Replica MD shared by MPI ranks: the split of the replicas (without MPI), and
2 ranks giving one process's trajectories, continued from their checkpoint on
3 ranks, and ``flashschnet-md --mpi`` (under mpiexec)."""
import pathlib

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.io import read

from ase_flashschnet.md import MDConfig, run_replicas
from ase_flashschnet.md.distributed import ReplicaShare, replica_bounds

HERE = pathlib.Path(__file__).resolve().parent


class _Rank:
    """Rank ``rank`` of ``size``, as far as ReplicaShare asks without the others."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def bcast(self, value):
        return value


@pytest.mark.parametrize("replicas,size", [(3, 2), (7, 3), (4, 4), (10, 1)])
def test_the_ranks_share_the_replicas_in_order(replicas, size):
    bounds = [replica_bounds(replicas, rank, size) for rank in range(size)]
    assert [r for start, stop in bounds for r in range(start, stop)] == list(range(replicas))
    counts = [stop - start for start, stop in bounds]
    assert max(counts) - min(counts) <= 1 and min(counts) >= 1


def test_a_share_cuts_per_replica_settings_and_checkpoints():
    config = ReplicaShare.of(3, _Rank(0, 2)).config(MDConfig(temperature_K=[200, 300, 400], friction_per_fs=0.01))
    assert config.temperature_K == [200.0, 300.0] and config.friction_per_fs == 0.01
    assert config.seed is not None      # rank 0's fresh seed, for every rank
    share = ReplicaShare.of(3, _Rank(1, 2))
    assert (share.start, share.stop, share.atom_rows(9)) == (2, 3, slice(18, 27))
    ckpt = {"replicas": 3, "positions": torch.arange(27.0)[:, None], "velocities": torch.zeros(27, 3),
            "forces": torch.zeros(27, 3), "masses": torch.ones(27), "energies": torch.arange(3.0),
            "numbers": torch.ones(3, 9), "cells": torch.zeros(3, 3, 3), "pbc": torch.zeros(3, 3),
            "temperature_K": [200.0, 300.0, 400.0], "step": 10}
    part = share.checkpoint(ckpt)
    assert part["replicas"] == 1 and part["step"] == 10 and part["temperature_K"] == [400.0]
    assert part["positions"][:, 0].tolist() == list(range(18, 27)) and part["energies"].tolist() == [2.0]
    with pytest.raises(ValueError, match="3 MPI ranks for 2 replica"):
        ReplicaShare.of(2, _Rank(0, 3))


@pytest.fixture
def model_file(small_model, tmp_path):
    path = tmp_path / "model.pt"
    small_model(cutoff=3.0).save(path)
    return path


def test_ranks_run_one_process_trajectories_and_restart_on_other_ranks(mpirun, model_file, tmp_path):
    from mpi_md_job import COMMON, SEED
    one = run_replicas(str(model_file), molecule("CH3CH2OH"), steps=40, out_dir=tmp_path / "one", seed=SEED,
                       **COMMON)
    out = tmp_path / "ranks"
    mpirun(2, HERE / "mpi_md_job.py", model_file, out, 20)
    two = np.load(out / "result.npz")
    assert two["same_on_every_rank"] and list(two["steps"]) == [0, 5, 10, 15, 20]
    np.testing.assert_allclose(two["positions"], one.positions[:5], atol=1e-10, rtol=0)
    np.testing.assert_allclose(two["energies"], one.energies[:5], atol=1e-10, rtol=0)

    mpirun(3, HERE / "mpi_md_job.py", model_file, out, 40, "restart")
    three = np.load(out / "result.npz")
    assert three["same_on_every_rank"] and int(three["seed"]) == SEED
    assert list(three["steps"]) == [25, 30, 35, 40]
    np.testing.assert_allclose(three["positions"], one.positions[-4:], atol=1e-10, rtol=0)
    np.testing.assert_allclose(three["final_velocities"], one.final_velocities, atol=1e-10, rtol=0)
    for r in range(3):
        frames = read(out / f"replica_{r:03d}.traj", ":")
        assert [a.info["step"] for a in frames] == list(range(0, 41, 5))
        np.testing.assert_allclose(frames[-1].positions, one.final_positions[r], atol=1e-10)


def test_the_command_line_runs_on_ranks(mpirun, model_file, tmp_path):
    structure = tmp_path / "ethanol.xyz"
    molecule("CH3CH2OH").write(structure)
    res = mpirun(2, "-m", "ase_flashschnet.cli", "--model", model_file, "--structure", structure,
                 "--replicas", 3, "--steps", 10, "--traj-interval", 5, "--device", "cpu", "--seed", 1,
                 "--out", tmp_path / "run", "--no-progress", "--mpi")
    assert res.stdout.count("system       : 3 replica(s)") == 1      # rank 0 prints
    assert [a.info["step"] for a in read(tmp_path / "run" / "replica_002.traj", ":")] == [0, 5, 10]
