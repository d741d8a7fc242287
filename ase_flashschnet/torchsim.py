"""A FlashSchNet model as a TorchSim model: its integrators, optimizers and
autobatching drive the same force engine as the ASE calculator.

    import torch_sim as ts
    from ase_flashschnet.torchsim import FlashSchNetModel

    model = FlashSchNetModel("cg-demo", device="auto", precision="fp32")
    final = ts.integrate(atoms_list, model, integrator=ts.nvt_langevin, n_steps=1000,
                         temperature=300.0, timestep=0.002)

TorchSim (``pip install torch-sim-atomistic``, or this package's ``torchsim``
extra) is optional: importing this module needs it, importing
``ase_flashschnet`` does not.

Units are TorchSim's metal units, which are ASE's: eV, Angstrom, eV/A and
eV/A^3. The stress is ASE's, as a full 3 x 3 tensor per system:
stress = (1/V) dE/d(strain) = -virial / V, so a compressed system has a
negative stress (TorchSim's own models and its pressure, -trace(stress)/3 plus
the kinetic part, use the same sign). The energy is invariant under rotations,
so the tensor is symmetric and the row (ASE) or column (TorchSim) convention
for the cell does not change it.
"""
from __future__ import annotations

from typing import get_args

import torch

from .calculator import ForceEngine, check_periodic_cell
from .neighbors import VerletNeighborList
from .priors import Dihedrals, HarmonicAngles, HarmonicBonds

try:
    from torch_sim.models.interface import ModelInterface
    from torch_sim.state import SimState
    from torch_sim.typing import MemoryScaling
except ImportError as exc:
    raise ImportError("ase_flashschnet.torchsim needs TorchSim: pip install torch-sim-atomistic "
                      "(or install this package with its 'torchsim' extra)") from exc

__all__ = ["FlashSchNetModel"]

MEMORY_SCALINGS = get_args(MemoryScaling)


def _same(a: torch.Tensor, b: torch.Tensor | None) -> bool:
    return b is not None and a.shape == b.shape and torch.equal(a, b)


class FlashSchNetModel(ModelInterface):
    """TorchSim model running a FlashSchNet model on a batch of systems.

    ``model``, ``device``, ``precision`` and ``backend`` are those of
    :class:`~ase_flashschnet.calculator.ForceEngine` (the fused CUDA kernels on
    a GPU, the PyTorch reference on the CPU and in fp64); ``skin`` (A) is the
    Verlet skin of the neighbour list, as in the ASE calculator. All systems of
    a state form one graph and are evaluated in one engine call.

    ``dtype`` is float64 for ``precision='fp64'``, else float32: TorchSim makes
    its states in the model's dtype. Forces come with every energy.
    ``compute_stress`` needs periodic states. ``memory_scales_with`` tells
    TorchSim's autobatchers how the cost grows; 'n_atoms' by default, since
    the shipped models are molecules in vacuum, whose zero cell makes
    TorchSim's 'n_atoms_x_density' (atoms / cell volume) meaningless; choose
    'n_atoms_x_density' for periodic systems of different densities.

    Priors with a molecule topology (bonds, angles, repulsion exclusions) tile
    it over consecutive blocks of atoms, so each system must hold whole
    molecules of that size. Bonds and angles read unwrapped positions, and
    TorchSim's integrators wrap periodic positions into the cell, so models
    with them take non-periodic states only.
    """

    def __init__(self, model, device="auto", precision="fp32", backend="auto", skin=1.0,
                 compute_stress=False, memory_scales_with="n_atoms"):
        super().__init__()
        if memory_scales_with not in MEMORY_SCALINGS:
            raise ValueError(f"memory_scales_with must be one of {MEMORY_SCALINGS}, got {memory_scales_with!r}")
        self.engine = ForceEngine(model, device=device, precision=precision, backend=backend)
        self.neighbors = VerletNeighborList(self.engine.cutoff, skin)
        self._device = self.engine.device
        self._dtype = self.engine.dtype
        self._compute_forces = True
        self._compute_stress = bool(compute_stress)
        self._memory_scales_with = memory_scales_with
        self._checked = (None, None, None, None)  # numbers, system_idx, cell, pbc last accepted
        self._types = None
        self._last_pos = None

    def _check_state(self, numbers, system_idx, cell, pbc) -> torch.Tensor:
        """Embedding types of the atoms, after checking (again, whenever the
        species, the systems, a cell or the periodicity change) that the model
        can take this state; raises otherwise."""
        new = (numbers, system_idx, cell, pbc)
        if all(_same(a, b) for a, b in zip(new, self._checked)):
            return self._types
        types = self.engine.types(numbers.cpu())
        priors = self.engine.reference.priors
        if bool(pbc.any()):
            if any(isinstance(p, (HarmonicBonds, HarmonicAngles, Dihedrals)) for p in priors):
                raise ValueError("this model's bonded priors need unwrapped molecules, but TorchSim wraps "
                                 "periodic positions into the cell; use a non-periodic state (pbc=False)")
            pbc_np = pbc.cpu().numpy()
            for system, system_cell in enumerate(cell.detach().cpu().double().numpy()):
                try:
                    check_periodic_cell(system_cell, pbc_np, self.engine.cutoff)
                except ValueError as exc:
                    raise ValueError(f"system {system}: {exc}") from None
        counts = torch.bincount(system_idx, minlength=cell.shape[0]).tolist()
        for prior in priors:
            size = getattr(prior, "n_atoms", None)
            bad = [s for s, n in enumerate(counts) if n % size] if size else []
            if bad:
                raise ValueError(f"the model's {type(prior).__name__} prior is for molecules of {size} atoms, "
                                 f"but system(s) {bad[:10]} hold {[counts[s] for s in bad[:10]]} atoms")
        self._checked = tuple(t.clone() for t in new)
        self._types = types
        return types

    def _follow_images(self, pos, cell, system_idx, pbc) -> torch.Tensor:
        """``pos`` moved by whole cell vectors to the images nearest the positions of
        the last call. TorchSim wraps periodic positions into the cell every step: an
        atom crossing a face would jump by a cell vector, and each jump would force a
        neighbour-list rebuild. Energies, forces and stress are the same for every
        image, so any image will do; the nearest keeps the Verlet list valid."""
        last = self._last_pos
        if bool(pbc.any()) and last is not None and last.shape == pos.shape:
            inverse = torch.linalg.inv(cell)[system_idx]
            jump = torch.round(torch.einsum("ni,nij->nj", last - pos, inverse)) * pbc
            pos = pos + torch.einsum("ni,nij->nj", jump, cell[system_idx])
        self._last_pos = pos
        return pos

    def forward(self, state: SimState) -> dict[str, torch.Tensor]:
        """Energies (n_systems,), forces (n_atoms, 3) and, with ``compute_stress``,
        stresses (n_systems, 3, 3) of the systems of a ``SimState`` (what TorchSim's
        integrators, optimizers and runners pass), in the model's dtype."""
        device, dtype = self.engine.device, self.engine.dtype
        pbc = torch.as_tensor(state.pbc, device=device).bool().reshape(-1).expand(3)
        if self.compute_stress and not bool(pbc.all()):
            raise ValueError(f"stress needs a fully periodic state; this one has pbc={state.pbc}")
        pos = state.positions.to(device=device, dtype=dtype)
        cell = state.row_vector_cell.to(device=device, dtype=dtype)
        system_idx = state.system_idx.to(device)
        types = self._check_state(state.atomic_numbers.to(device), system_idx, cell, pbc)
        pos = self._follow_images(pos, cell, system_idx, pbc)
        graph = self.neighbors(pos, batch=system_idx, cell=cell, pbc=pbc, n_systems=cell.shape[0])
        if not self.compute_stress:
            energy, forces = self.engine.energy_and_forces(types, pos, graph)
            return {"energy": energy, "forces": forces}
        energy, forces, virial = self.engine.energy_forces_virial(types, pos, graph)
        volume = torch.linalg.det(cell).abs()
        return {"energy": energy, "forces": forces, "stress": -virial / volume[:, None, None]}
