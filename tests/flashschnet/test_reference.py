"""All-atom reference data: CLN025 built from its sequence, tiny OpenMM runs on the CPU
mapped to C-alpha beads, the force maps and their consistency, resumption, the command.
The OpenMM tests skip cleanly without OpenMM or PeptideBuilder."""
import json
import os
import shutil

import numpy as np
import pytest

from ase_flashschnet.train.dataset import load_dataset
from ase_flashschnet.train.mapping import RESIDUE_TYPES, Residue, calpha_map, force_map_problems

THREE_LETTER = {"Y": "TYR", "D": "ASP", "P": "PRO", "E": "GLU", "T": "THR", "G": "GLY", "W": "TRP"}
CLN025_NAMES = [THREE_LETTER[c] for c in "YYDPETGTWY"]
KJ_PER_MOL_PER_EV = 96.485332  # CODATA, independent of ase.units
#: A run small enough for a test: 2 trajectories x 3 frames, 10 steps apart.
TINY = dict(n_trajectories=2, n_frames=3, save_every_steps=10, platform="cpu", pull_steps=20,
            equilibration_steps=10, progress=False)


@pytest.fixture(scope="module")
def reference():
    """The reference module, once OpenMM and PeptideBuilder are importable."""
    pytest.importorskip("openmm")
    pytest.importorskip("PeptideBuilder")
    from ase_flashschnet.train import reference
    return reference


@pytest.fixture(scope="module")
def tiny_run(reference, tmp_path_factory):
    """(folder, result) of a finished tiny CLN025 run."""
    out = tmp_path_factory.mktemp("cln025")
    return out, reference.generate_reference(out, **TINY)


def _chunk_mtimes(out, trajectory):
    return {p.name: p.stat().st_mtime_ns for p in sorted((out / "chunks").glob(f"traj{trajectory:04d}-*.npz"))}


# ---- the maps, without OpenMM ----

def _toy_residues():
    """Two residues of four atoms: N, CA, HA (constrained to CA), C."""
    return [Residue("GLY", (("N", 0), ("CA", 1), ("HA", 2), ("C", 3))),
            Residue("ALA", (("N", 4), ("CA", 5), ("HA", 6), ("C", 7)))]


def test_aggregate_sums_the_residue_and_slice_takes_the_calpha():
    forces = np.random.default_rng(0).normal(size=(5, 8, 3))
    aggregate = calpha_map(_toy_residues(), 8, "aggregate")
    sliced = calpha_map(_toy_residues(), 8, "slice")
    unit = 1.0 / KJ_PER_MOL_PER_EV / 10.0
    np.testing.assert_allclose(aggregate.forces(forces), np.stack([forces[:, :4].sum(1), forces[:, 4:].sum(1)], 1)
                               * unit, rtol=1e-6)
    np.testing.assert_allclose(sliced.forces(forces), forces[:, [1, 5]] * unit, rtol=1e-6)
    np.testing.assert_array_equal(aggregate.types, [RESIDUE_TYPES["GLY"], RESIDUE_TYPES["ALA"]])
    np.testing.assert_allclose(aggregate.positions(forces), forces[:, [1, 5]] * 10.0)


def test_only_aggregation_is_consistent_with_calpha_constraints():
    constrained = [(1, 2), (5, 6)]
    assert force_map_problems(calpha_map(_toy_residues(), 8, "aggregate"), constrained) == []
    assert force_map_problems(calpha_map(_toy_residues(), 8, "slice"), []) == []
    problems = force_map_problems(calpha_map(_toy_residues(), 8, "slice"), constrained)
    assert len(problems) == 1 and "2 constrained atom pair(s)" in problems[0]
    across = force_map_problems(calpha_map(_toy_residues(), 8, "aggregate"), [(3, 4)])
    assert len(across) == 1 and "3-4" in across[0]


def test_a_residue_without_a_type_or_calpha_is_refused():
    with pytest.raises(ValueError, match="no bead type"):
        calpha_map([Residue("HOH", (("O", 0),))], 1)
    with pytest.raises(ValueError, match="0 atoms named CA"):
        calpha_map([Residue("GLY", (("N", 0),))], 1)
    with pytest.raises(ValueError, match="force_map"):
        calpha_map(_toy_residues(), 8, "centre")


# ---- OpenMM ----

def test_cln025_is_built_from_its_sequence(reference):
    topology, positions = reference.build_peptide(reference.CLN025)
    residues = list(topology.residues())
    assert [r.name for r in residues] == CLN025_NAMES
    assert sum(a.name == "CA" for a in topology.atoms()) == 10
    assert positions.shape == (topology.getNumAtoms(), 3)
    names = {r.index: {a.name for a in r.atoms()} for r in residues}
    assert {"H", "H2", "H3"} <= names[0] and "OXT" in names[9]  # charged termini


def test_a_bad_sequence_is_refused(reference):
    with pytest.raises(ValueError, match="unknown: BX"):
        reference.build_peptide("YXB")


def test_a_tiny_run_writes_a_valid_dataset(tiny_run):
    out, result = tiny_run
    assert result.complete and result.finished_trajectories == 2 and result.platform == "CPU"
    data = load_dataset(result.dataset_file)
    assert data.positions.shape == data.forces.shape == (6, 10, 3)
    np.testing.assert_array_equal(data.types, [RESIDUE_TYPES[n] for n in CLN025_NAMES])
    np.testing.assert_array_equal(data.trajectory, [0, 0, 0, 1, 1, 1])
    assert list(data.bead_names) == [f"{n}{i + 1}" for i, n in enumerate(CLN025_NAMES)]
    assert data.temperature_K == 350.0
    bonds = np.linalg.norm(np.diff(data.positions, axis=1), axis=2)
    assert np.all((bonds > 3.4) & (bonds < 4.2))  # consecutive C-alphas, trans peptide bonds, in Angstrom


def test_mapped_forces_are_residue_sums_in_ev_per_angstrom(tiny_run):
    out, result = tiny_run
    record = json.loads((out / "reference.json").read_text())
    with np.load(out / "chunks" / "traj0000-00000.npz") as chunk:
        atom_forces, atom_positions = chunk["forces"], chunk["positions"]
    data = load_dataset(result.dataset_file)
    for bead, (name, atoms) in enumerate(record["residues"]):
        members = [index for _, index in atoms]
        calpha = [index for atom, index in atoms if atom == "CA"][0]
        expected = atom_forces[:, members].astype(np.float64).sum(axis=1) / KJ_PER_MOL_PER_EV / 10.0
        np.testing.assert_allclose(data.forces[:3, bead], expected, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(data.positions[:3, bead], atom_positions[:, calpha] * 10.0, rtol=1e-6)


def test_one_force_against_openmm_in_kj_per_mol_per_nm(reference):
    import openmm
    from openmm import unit

    settings = reference.ReferenceSettings()
    topology, positions = reference.build_peptide(reference.CLN025)
    system = reference._system(topology, settings)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CPU"))
    context.setPositions(positions * unit.nanometer)
    forces = context.getState(getForces=True).getForces(asNumpy=True)
    residues = [Residue(r.name, tuple((a.name, a.index) for a in r.atoms())) for r in topology.residues()]
    mapped = calpha_map(residues, topology.getNumAtoms()).forces(forces.value_in_unit(unit.kilojoule_per_mole
                                                                                       / unit.nanometer))
    first = [a.index for a in next(topology.residues()).atoms()]
    kj_mol_nm = forces[first].sum(axis=0).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    np.testing.assert_allclose(mapped[0], kj_mol_nm / KJ_PER_MOL_PER_EV / 10.0, rtol=1e-6)


def test_an_interrupted_run_resumes_without_redoing_work(reference, tmp_path):
    first = reference.generate_reference(tmp_path, max_trajectories=1, frames_per_chunk=2, **TINY)
    assert (first.finished_trajectories, first.complete, first.n_frames) == (1, False, 3)
    assert load_dataset(first.dataset_file).trajectory.tolist() == [0, 0, 0]
    done = _chunk_mtimes(tmp_path, 0)
    assert len(done) == 2 and _chunk_mtimes(tmp_path, 1) == {}

    second = reference.generate_reference(tmp_path, frames_per_chunk=2, **TINY)
    assert second.complete and _chunk_mtimes(tmp_path, 0) == done
    assert load_dataset(second.dataset_file).trajectory.tolist() == [0, 0, 0, 1, 1, 1]

    # a trajectory cut after its first chunk continues from that chunk's state: one frame, no preparation
    os.remove(tmp_path / "chunks" / "traj0001-00001.npz")
    third = reference.generate_reference(tmp_path, frames_per_chunk=2, **TINY)
    assert third.complete and _chunk_mtimes(tmp_path, 0) == done
    assert third.simulated_ns == pytest.approx(10 * 2.0e-6)


def test_a_folder_of_another_run_is_refused(reference, tiny_run):
    out, _ = tiny_run
    with pytest.raises(ValueError, match="temperature_K: 350.0 there, 340.0 now"):
        reference.generate_reference(out, **{**TINY, "temperature_K": 340.0})


def test_the_command_remaps_a_finished_run(reference, tiny_run, tmp_path, capsys, caplog):
    from ase_flashschnet.train.reference_cli import main

    out = tmp_path / "copy"
    shutil.copytree(tiny_run[0], out)
    args = [str(out), "--platform", "cpu", "--trajectories", "2", "--ns-per-trajectory", "0.00006",
            "--save-every-ps", "0.02", "--pull-ps", "0.04", "--equilibration-ps", "0.02", "--no-progress"]
    assert main(args + ["--force-map", "slice"]) == 0
    assert "2 of 2 finished (all done)" in capsys.readouterr().out
    assert "not consistent" in caplog.text  # slicing while the C-alpha's H is constrained
    with np.load(out / "chunks" / "traj0000-00000.npz") as chunk:
        calpha = [a.index for a in next(reference.build_peptide(reference.CLN025)[0].residues()).atoms()
                  if a.name == "CA"][0]
        expected = chunk["forces"][:, calpha] / KJ_PER_MOL_PER_EV / 10.0
    np.testing.assert_allclose(load_dataset(out / "dataset.npz").forces[:3, 0], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("bad, message", [(["--save-every-ps", "0.003"], "whole number of 2.0 fs steps"),
                                          (["--ns-per-trajectory", "0"], "must be positive"),
                                          (["--trajectories", "0"], "n_trajectories")])
def test_the_command_refuses_bad_input(tmp_path, capsys, bad, message):
    from ase_flashschnet.train.reference_cli import main

    assert main([str(tmp_path / "out"), "--platform", "cpu", *bad]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_command_is_installed(setup_cfg, console_scripts):
    assert console_scripts["flashschnet-cln025-reference"] == "ase_flashschnet.train.reference_cli:main"
    assert set(setup_cfg["options.extras_require"]["reference"].split()) == {"openmm>=8.1", "PeptideBuilder>=1.1"}
