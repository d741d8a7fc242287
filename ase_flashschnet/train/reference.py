"""All-atom reference data for force matching: OpenMM simulations of a peptide, mapped to C-alpha beads.

    from ase_flashschnet.train.reference import generate_reference
    result = generate_reference("cln025", n_trajectories=12, n_frames=300, platform="cuda")
    # result.dataset_file: a flashschnet-cg-v1 file for flashschnet-train

The peptide (CLN025, ``YYDPETGTWY``, by default) is built from its sequence
(PeptideBuilder: heavy atoms of an extended chain; OpenMM's Modeller: the
hydrogens, charged termini at pH 7) and simulated with amber14 and the GBn2
implicit solvent, X-H bonds constrained, by Langevin dynamics
(``LangevinMiddleIntegrator``). Half of the trajectories start from the
extended chain, the other half from a compact hairpin: the extended chain
pulled together by a temporary restraint between the C-alphas of residues
(1, n), (2, n - 1), (3, n - 2), the register of the CLN025 hairpin, which is
released before the equilibration. Each trajectory has its own seed.

Output folder:

* ``reference.json``: the settings (a rerun must match them), the residues
  and the constrained atom pairs (what the force map needs);
* ``structure.pdb``: the all-atom peptide as built;
* ``chunks/traj{t}-{c}.npz``: the all-atom positions (nm) and forces
  (kJ/mol/nm) of ``frames_per_chunk`` frames, with the OpenMM state after them;
* ``dataset.npz``: the mapped frames (:mod:`.mapping`), assembled from the chunks.

A rerun into the same folder skips finished trajectories and continues a
partial one from the state of its last chunk; ``max_trajectories`` and
``time_limit_s`` end a run early on purpose. Needs the optional OpenMM and
PeptideBuilder (``pip install 'fusion-chem-gpu[reference]'``), imported only
when a simulation runs.
"""
from __future__ import annotations

import io
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .dataset import CGDataset, save_dataset
from .mapping import FORCE_MAPS, Residue, calpha_map, force_map_problems

__all__ = ["CLN025", "AMINO_ACIDS", "PLATFORMS", "CONSTRAINTS", "ReferenceSettings", "ReferenceResult",
           "generate_reference", "assemble_dataset", "build_peptide", "DATASET_NAME", "SETTINGS_NAME"]

log = logging.getLogger(__name__)

CLN025 = "YYDPETGTWY"
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
PLATFORMS = ("auto", "cuda", "cpu")
CONSTRAINTS = ("hbonds", "none")
DATASET_NAME = "dataset.npz"
SETTINGS_NAME = "reference.json"
STRUCTURE_NAME = "structure.pdb"
CHUNK_DIR = "chunks"
_FORMAT = "flashschnet-reference-v1"
_RESTRAINT_GROUP = 31  # the hairpin pull; forces are read from the other groups
_INSTALL = "pip install 'fusion-chem-gpu[reference]'"


def _check_sequence(sequence: str) -> None:
    """``ValueError`` unless ``sequence`` is upper-case one-letter codes of standard amino acids
    (PeptideBuilder would quietly build a glycine for any other letter)."""
    unknown = sorted(set(str(sequence)) - set(AMINO_ACIDS))
    if not sequence or unknown:
        raise ValueError(f"sequence must be one-letter codes of the standard amino acids ({AMINO_ACIDS}), "
                         f"got {sequence!r}" + (f" (unknown: {''.join(unknown)})" if unknown else ""))


def _openmm():
    """OpenMM's ``openmm``, ``openmm.app`` and ``openmm.unit``, or an ``ImportError`` saying how to get them."""
    try:
        import openmm
        from openmm import app, unit
    except ImportError as exc:
        raise ImportError(f"the all-atom reference needs OpenMM ({exc}); install it with {_INSTALL}") from exc
    return openmm, app, unit


def _peptide_builder():
    try:
        import PeptideBuilder
        from Bio.PDB import PDBIO
    except ImportError as exc:
        raise ImportError(f"building a peptide from its sequence needs PeptideBuilder ({exc}); "
                          f"install it with {_INSTALL}") from exc
    return PeptideBuilder, PDBIO


@dataclass(frozen=True)
class ReferenceSettings:
    """What the simulated frames depend on; a rerun into a folder must bring the same.

    ``n_trajectories`` of ``n_frames`` frames each, one frame every
    ``save_every_steps`` steps of ``timestep_fs``, at ``temperature_K`` with a
    Langevin friction of ``friction_per_ps``; ``constraints`` 'hbonds' (X-H
    bonds rigid) or 'none'. Before its first frame each trajectory is
    minimised, pulled into a hairpin for ``pull_steps`` (odd trajectory
    numbers only) and equilibrated for ``equilibration_steps``. ``seed``
    seeds every trajectory's velocities and noise; frames are written
    ``frames_per_chunk`` at a time (the unit of resumption).
    """

    sequence: str = CLN025
    n_trajectories: int = 12
    n_frames: int = 300
    save_every_steps: int = 500
    timestep_fs: float = 2.0
    temperature_K: float = 350.0
    friction_per_ps: float = 1.0
    constraints: str = "hbonds"
    pull_steps: int = 5_000
    equilibration_steps: int = 10_000
    frames_per_chunk: int = 50
    seed: int = 0

    def __post_init__(self):
        _check_sequence(self.sequence)
        for name in ("n_trajectories", "n_frames", "save_every_steps", "frames_per_chunk"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive whole number, got {getattr(self, name)!r}")
        for name in ("pull_steps", "equilibration_steps"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("timestep_fs", "temperature_K", "friction_per_ps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.constraints not in CONSTRAINTS:
            raise ValueError(f"constraints must be one of {CONSTRAINTS}, got {self.constraints!r}")


@dataclass
class ReferenceResult:
    """How a run went: ``dataset_file`` (None while no frame exists), the frames in
    it, the trajectories finished out of ``n_trajectories``, and this call's
    simulated time (``simulated_ns``, production and preparation), wall time
    and speed, on ``platform``."""

    dataset_file: Path | None
    n_frames: int
    finished_trajectories: int
    n_trajectories: int
    simulated_ns: float
    wall_s: float
    platform: str

    @property
    def complete(self) -> bool:
        return self.finished_trajectories == self.n_trajectories

    @property
    def ns_per_day(self) -> float:
        return self.simulated_ns / self.wall_s * 86400.0 if self.wall_s > 0 else 0.0


def build_peptide(sequence: str):
    """The all-atom peptide of ``sequence`` as an extended chain: (OpenMM topology,
    positions (n_atoms, 3) in nm), hydrogens and charged termini as at pH 7."""
    _check_sequence(sequence)
    _, app, unit = _openmm()
    peptide_builder, pdbio = _peptide_builder()
    structure = peptide_builder.make_extended_structure(sequence)  # (phi, psi) = (-120, 140) degrees
    peptide_builder.add_terminal_OXT(structure)
    text = io.StringIO()
    writer = pdbio()
    writer.set_structure(structure)
    writer.save(text)
    pdb = app.PDBFile(io.StringIO(text.getvalue()))
    modeller = app.Modeller(pdb.topology, pdb.positions)
    modeller.addHydrogens(_forcefield(), pH=7.0)
    positions = np.array(modeller.getPositions().value_in_unit(unit.nanometer))
    return modeller.topology, positions


def _forcefield():
    _, app, _ = _openmm()
    return app.ForceField("amber14-all.xml", "implicit/gbn2.xml")


def _residues(topology) -> list[Residue]:
    return [Residue(r.name, tuple((a.name, a.index) for a in r.atoms())) for r in topology.residues()]


def _system(topology, settings: ReferenceSettings):
    """amber14 + GBn2, no cutoff, and the hairpin pull (off until its strength is set) in its own force group."""
    openmm, app, _ = _openmm()
    constraints = app.HBonds if settings.constraints == "hbonds" else None
    system = _forcefield().createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=constraints)
    calpha = [a.index for a in topology.atoms() if a.name == "CA"]
    pull = openmm.CustomBondForce("0.5*k_pull*max(0, r - 0.55)^2")  # pull to 5.5 A, a cross-strand C-alpha pair
    pull.addGlobalParameter("k_pull", 0.0)
    for i in range(min(3, len(calpha) // 2 - 1)):
        pull.addBond(calpha[i], calpha[-1 - i])
    pull.setForceGroup(_RESTRAINT_GROUP)
    system.addForce(pull)
    return system


def _cuda_problem(openmm) -> str | None:
    """Why OpenMM's CUDA platform cannot run here (no plugin, no device, a driver too old), or None."""
    available = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    if "CUDA" not in available:
        failures = [f for f in openmm.Platform.getPluginLoadFailures() if "cuda" in f.lower()]
        reason = "; ".join(failures) if failures else "its CUDA plugin is not installed"
        return f"OpenMM has no CUDA platform (it has {', '.join(available)}; {reason})"
    system = openmm.System()
    system.addParticle(1.0)
    try:
        openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CUDA"))
    except Exception as exc:  # OpenMMException: no device, or a driver the plugin cannot use
        return f"OpenMM's CUDA platform does not start ({exc})"
    return None


def _platform(name: str):
    """The OpenMM platform and its properties; ``ValueError`` for an unknown name or a CUDA that cannot run."""
    openmm, _, _ = _openmm()
    if name not in PLATFORMS:
        raise ValueError(f"platform must be one of {PLATFORMS}, got {name!r}")
    problem = None if name == "cpu" else _cuda_problem(openmm)
    if name == "cuda" and problem:
        raise ValueError(f"platform 'cuda' asked for, but {problem}. Install OpenMM's CUDA plugin matching the "
                         f"driver (pip install 'openmm[cuda12]' or 'openmm[cuda13]'), or use platform 'cpu'")
    if name != "cpu" and problem is None:
        return openmm.Platform.getPlatformByName("CUDA"), {"Precision": "mixed"}
    if name == "auto":
        log.info("platform 'auto' runs on the CPU: %s", problem)
    return openmm.Platform.getPlatformByName("CPU"), {}


def _seed(settings: ReferenceSettings, *keys: int) -> int:
    """A seed in [1, 2**31 - 2] for OpenMM (0 would mean 'from the clock'), one per ``keys``."""
    return int(np.random.SeedSequence([settings.seed, *keys]).generate_state(1)[0] % (2**31 - 2)) + 1


def _chunk_path(out: Path, trajectory: int, chunk: int) -> Path:
    return out / CHUNK_DIR / f"traj{trajectory:04d}-{chunk:05d}.npz"


def _chunks(out: Path, trajectory: int) -> list[Path]:
    """The trajectory's chunk files in order, up to the first missing one."""
    found = []
    while (path := _chunk_path(out, trajectory, len(found))).is_file():
        found.append(path)
    return found


def _chunk_frames(settings: ReferenceSettings, chunk: int) -> int:
    return min(settings.frames_per_chunk, settings.n_frames - chunk * settings.frames_per_chunk)


def _n_chunks(settings: ReferenceSettings) -> int:
    return -(-settings.n_frames // settings.frames_per_chunk)


def _write_atomic(path: Path, **arrays) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


class _Trajectory:
    """One simulation: prepared from the start structure, or continued from a chunk's state."""

    def __init__(self, index: int, settings: ReferenceSettings, system, platform, properties):
        openmm, _, unit = _openmm()
        self.index, self.settings, self._unit = index, settings, unit
        integrator = openmm.LangevinMiddleIntegrator(settings.temperature_K * unit.kelvin,
                                                     settings.friction_per_ps / unit.picosecond,
                                                     settings.timestep_fs * unit.femtosecond)
        self.context = openmm.Context(system, integrator, platform, properties)
        self.integrator = integrator
        self._openmm = openmm

    def prepare(self, minimized_nm: np.ndarray) -> int:
        """From the minimised start: pull (odd trajectories), equilibrate; returns the steps run."""
        s, unit = self.settings, self._unit
        self.context.setPositions(minimized_nm * unit.nanometer)
        self.context.setVelocitiesToTemperature(s.temperature_K * unit.kelvin, _seed(s, self.index, 0))
        self.integrator.setRandomNumberSeed(_seed(s, self.index, 1))
        steps = s.equilibration_steps
        if self.index % 2 == 1 and s.pull_steps:
            self.context.setParameter("k_pull", 500.0)  # kJ/mol/nm^2: 5 kJ/mol/A^2 closes the chain in a few ps
            self.integrator.step(s.pull_steps)
            self.context.setParameter("k_pull", 0.0)
            steps += s.pull_steps
        if s.equilibration_steps:
            self.integrator.step(s.equilibration_steps)
        return steps

    def resume(self, state_xml: str, chunk: int) -> None:
        """Continue from a chunk's saved state, with fresh noise for the chunks to come."""
        self.context.setState(self._openmm.XmlSerializer.deserialize(state_xml))
        self.integrator.setRandomNumberSeed(_seed(self.settings, self.index, 2, chunk))

    def frame(self):
        """Run to the next frame: (positions nm, forces kJ/mol/nm) as float32 arrays."""
        self.integrator.step(self.settings.save_every_steps)
        state = self.context.getState(getPositions=True, getForces=True,
                                      groups=set(range(32)) - {_RESTRAINT_GROUP})
        unit = self._unit
        return (state.getPositions(asNumpy=True).value_in_unit(unit.nanometer).astype(np.float32),
                state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
                .astype(np.float32))

    def state_xml(self) -> str:
        state = self.context.getState(getPositions=True, getVelocities=True, getParameters=True)
        return self._openmm.XmlSerializer.serialize(state)


def _minimized(system, positions_nm: np.ndarray, platform, properties) -> np.ndarray:
    """The start structure at a local energy minimum (nm): once for all trajectories of a call."""
    openmm, _, unit = _openmm()
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), platform, properties)
    context.setPositions(positions_nm * unit.nanometer)
    openmm.LocalEnergyMinimizer.minimize(context)
    return context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)


def _check_folder(out: Path, settings: ReferenceSettings) -> None:
    """Refuse a folder whose earlier run used other settings."""
    path = out / SETTINGS_NAME
    if not path.is_file():
        return
    stored = json.loads(path.read_text())
    if stored.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a reference run's settings file (format {stored.get('format')!r})")
    differ = {f.name: (stored["settings"].get(f.name), getattr(settings, f.name)) for f in fields(settings)
              if stored["settings"].get(f.name) != getattr(settings, f.name)}
    if differ:
        shown = ", ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in differ.items())
        raise ValueError(f"{out} holds a reference run with other settings ({shown}): rerun with its settings "
                         f"to continue it, or write into another folder")


def _start(out: Path, settings: ReferenceSettings):
    """Build the peptide, write ``structure.pdb`` and ``reference.json``: (topology, positions nm, system)."""
    _, app, unit = _openmm()
    topology, positions = build_peptide(settings.sequence)
    system = _system(topology, settings)
    constraints = [system.getConstraintParameters(k)[:2] for k in range(system.getNumConstraints())]
    (out / CHUNK_DIR).mkdir(parents=True, exist_ok=True)
    with open(out / STRUCTURE_NAME, "w") as f:
        app.PDBFile.writeFile(topology, positions * unit.nanometer, f)
    record = {"format": _FORMAT, "settings": asdict(settings), "n_atoms": topology.getNumAtoms(),
              "residues": [[r.name, [list(a) for a in r.atoms]] for r in _residues(topology)],
              "constraints": [[int(i), int(j)] for i, j in constraints]}
    (out / SETTINGS_NAME).write_text(json.dumps(record, indent=1) + "\n")
    return topology, positions, system


def generate_reference(out_dir, n_trajectories: int = 12, n_frames: int = 300, save_every_steps: int = 500,
                       temperature_K: float = 350.0, platform: str = "auto", seed: int = 0, *,
                       sequence: str = CLN025, force_map: str = "aggregate", max_trajectories: int | None = None,
                       time_limit_s: float | None = None, progress: bool = True, **settings) -> ReferenceResult:
    """Simulate, or continue simulating, the reference trajectories into ``out_dir``
    and assemble ``out_dir/dataset.npz`` from all frames there.

    ``settings`` takes the other fields of :class:`ReferenceSettings`
    (``timestep_fs``, ``friction_per_ps``, ``constraints``, ``pull_steps``,
    ``equilibration_steps``, ``frames_per_chunk``). ``platform``: 'cuda',
    'cpu' or 'auto' (CUDA when OpenMM has it). ``force_map``: 'aggregate' or
    'slice' (:mod:`.mapping`). This call stops, at a chunk's end, once it has
    worked on ``max_trajectories`` trajectories or run ``time_limit_s``
    seconds; the dataset then holds the frames so far, and a rerun goes on.

    ``ValueError`` for bad settings, a folder of another run, or a missing
    platform; ``ImportError`` without OpenMM or PeptideBuilder.
    """
    settings = ReferenceSettings(sequence=sequence, n_trajectories=n_trajectories, n_frames=n_frames,
                                 save_every_steps=save_every_steps, temperature_K=temperature_K, seed=seed,
                                 **settings)
    if force_map not in FORCE_MAPS:
        raise ValueError(f"force_map must be one of {FORCE_MAPS}, got {force_map!r}")
    if max_trajectories is not None and max_trajectories < 1:
        raise ValueError(f"max_trajectories must be a positive whole number, got {max_trajectories!r}")
    out = Path(out_dir)
    _check_folder(out, settings)
    openmm_platform, properties = _platform(platform)
    started = time.perf_counter()
    _, positions, system = _start(out, settings)
    frames_done = {t: sum(_chunk_frames(settings, c) for c in range(len(_chunks(out, t))))
                   for t in range(settings.n_trajectories)}
    todo = [t for t in range(settings.n_trajectories) if frames_done[t] < settings.n_frames]
    if max_trajectories is not None:
        todo = todo[:max_trajectories]
    if any(frames_done[t] == 0 for t in todo):
        positions = _minimized(system, positions, openmm_platform, properties)
    bar = tqdm(total=settings.n_trajectories * settings.n_frames, initial=sum(frames_done.values()),
               disable=not progress, unit="frame", desc="reference MD", dynamic_ncols=True)
    steps = 0
    with bar:
        for t in todo:
            if time_limit_s is not None and time.perf_counter() - started > time_limit_s:
                break
            bar.set_postfix(trajectory=t)
            steps += _run_trajectory(out, t, settings, system, positions, openmm_platform, properties, bar,
                                     deadline=None if time_limit_s is None else started + time_limit_s)
    wall = time.perf_counter() - started
    dataset = assemble_dataset(out, force_map)
    finished = sum(len(_chunks(out, t)) == _n_chunks(settings) for t in range(settings.n_trajectories))
    return ReferenceResult(dataset_file=None if dataset is None else out / DATASET_NAME,
                           n_frames=0 if dataset is None else dataset.n_frames, finished_trajectories=finished,
                           n_trajectories=settings.n_trajectories,
                           simulated_ns=steps * settings.timestep_fs * 1e-6, wall_s=wall,
                           platform=openmm_platform.getName())


def _run_trajectory(out: Path, t: int, settings: ReferenceSettings, system, start_nm, platform, properties,
                    bar, deadline: float | None) -> int:
    """Run trajectory ``t`` from its last chunk (or its start) to its end, or to the
    first chunk's end after ``deadline``; returns the steps run."""
    run = _Trajectory(t, settings, system, platform, properties)
    done = _chunks(out, t)
    if done:
        with np.load(done[-1]) as last:
            run.resume(str(last["state"]), len(done))
        steps = 0
    else:
        steps = run.prepare(start_nm)
    for chunk in range(len(done), _n_chunks(settings)):
        positions, forces = [], []
        for _ in range(_chunk_frames(settings, chunk)):
            frame_positions, frame_forces = run.frame()
            positions.append(frame_positions)
            forces.append(frame_forces)
            bar.update(1)
        steps += len(positions) * settings.save_every_steps
        _write_atomic(_chunk_path(out, t, chunk), positions=np.stack(positions), forces=np.stack(forces),
                      state=np.array(run.state_xml()))
        if deadline is not None and time.perf_counter() > deadline:
            break
    return steps


def assemble_dataset(out_dir, force_map: str = "aggregate") -> CGDataset | None:
    """Map every frame of the chunks in ``out_dir`` and write ``dataset.npz``;
    returns the dataset, or None while there are no frames.

    Logs a warning when the force map is inconsistent with the run's
    constraints (``'slice'`` with X-H bonds rigid, see :mod:`.mapping`).
    """
    out = Path(out_dir)
    record = json.loads((out / SETTINGS_NAME).read_text())
    residues = [Residue(name, tuple((a, int(i)) for a, i in atoms)) for name, atoms in record["residues"]]
    mapping = calpha_map(residues, record["n_atoms"], force_map)
    for problem in force_map_problems(mapping, record["constraints"]):
        log.warning("force map %r is not consistent with the run in %s: %s", force_map, out, problem)
    positions, forces, trajectory = [], [], []
    for t in range(record["settings"]["n_trajectories"]):
        for path in _chunks(out, t):
            with np.load(path) as chunk:
                positions.append(mapping.positions(chunk["positions"]))
                forces.append(mapping.forces(chunk["forces"]))
            trajectory.append(np.full(len(positions[-1]), t))
    if not positions:
        return None
    return save_dataset(out / DATASET_NAME, np.concatenate(positions), np.concatenate(forces), mapping.types,
                        np.concatenate(trajectory), record["settings"]["temperature_K"], mapping.bead_names)
