"""ASE calculator for FlashSchNet models, and the force engine shared with batched MD (``ase_flashschnet.md``).

Units: the model's energies are taken as eV and lengths as Angstrom, so the
calculator reports eV, eV/A and (Voigt xx, yy, zz, yz, xz, xy) eV/A^3, with
stress = (1/V) dE/d(strain) as ASE defines it.

Why a separate :class:`ForceEngine`: the choice between the fused CUDA kernels
and the plain PyTorch reference (by device and precision), and the checks that
turn bad input into clear errors, must be the same for one structure in ASE
and for a batch of MD replicas.
"""
from __future__ import annotations

import copy
import logging
import os

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.cell import Cell
from ase.stress import full_3x3_to_voigt_6_stress

import gpucore

from . import shipped
from .neighbors import VerletNeighborList

__all__ = ["FlashSchNetCalculator", "ForceEngine", "resolve_model", "resolve_device",
           "check_finite_positions", "check_periodic_cell", "PRECISIONS"]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16", "fp64")
_HALF = ("fp16", "bf16")


def resolve_model(model):
    """A model object is returned as is; a string is a saved model file or the name
    of a shipped model (``ase_flashschnet.shipped``)."""
    if not isinstance(model, (str, os.PathLike)):
        return model
    return shipped.load_model(model)


def _parse_device(device) -> torch.device:
    """``device`` (a string or a torch.device) as a torch.device of type cpu or cuda.

    Anything else (``'gpu'``, ``'mps'``, a number) is a ValueError that lists what
    is accepted, rather than PyTorch's error about device strings.
    """
    dev = device if isinstance(device, torch.device) else None
    if isinstance(device, str):
        try:
            dev = torch.device(device)
        except RuntimeError:
            pass
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device of type cpu or cuda, "
                         f"got {device!r}")
    return dev


def resolve_device(device="auto", precision="fp32") -> torch.device:
    """'auto' (or None) is CUDA when both the CUDA core and PyTorch see a GPU, else
    the CPU; otherwise ``device`` is 'cpu', 'cuda', 'cuda:N' or a torch.device of
    those types. A CUDA device that PyTorch does not see is a GPUUnavailableError.

    fp16/bf16 run only in the fused GPU kernels, so asking for them without a
    GPU is an error rather than a silent fall back to fp32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if device is None or str(device) == "auto":
        use_cuda = gpucore.gpu_available() and torch.cuda.is_available()
        dev = torch.device("cuda" if use_cuda else "cpu")
        if not use_cuda:
            log.info("FlashSchNet: no usable GPU (%s); running the reference model on the CPU",
                     gpucore.unavailable_reason() or "PyTorch sees no CUDA device")
    else:
        dev = _parse_device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise gpucore.GPUUnavailableError(f"device={str(device)!r} but PyTorch sees no CUDA GPU "
                                              f"(PyTorch {torch.__version__}, built for CUDA {torch.version.cuda})")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise gpucore.GPUUnavailableError(f"device={str(device)!r} but PyTorch sees "
                                              f"{torch.cuda.device_count()} CUDA GPU(s), cuda:0 and up")
    if precision in _HALF and dev.type != "cuda":
        why = gpucore.unavailable_reason() or "no CUDA device was selected"
        raise gpucore.GPUUnavailableError(
            f"precision={precision!r} runs only in the fused CUDA kernels and needs a GPU ({why}); "
            "on the CPU use precision='fp32' or 'fp64'")
    return dev


def check_finite_positions(positions: np.ndarray) -> None:
    """Raise ValueError naming the atoms whose positions are NaN or infinite."""
    bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
    if bad.size:
        more = f" (and {bad.size - 20} more)" if bad.size > 20 else ""
        raise ValueError(f"non-finite (NaN/inf) positions for atom(s) {bad[:20].tolist()}{more}")


def check_periodic_cell(cell, pbc, cutoff: float) -> None:
    """Raise ValueError if a periodic direction is narrower than twice the cutoff.

    Below that an atom sees its own periodic images and the same neighbour
    through several images, which the models were not trained for. The width
    is the spacing of lattice planes, 1/|reciprocal vector|.
    """
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    if not pbc.any():
        return
    full = Cell(np.asarray(cell, dtype=float)).complete()
    if abs(np.linalg.det(full)) < 1e-12:
        raise ValueError(f"degenerate periodic cell {np.asarray(cell).tolist()}")
    widths = 1.0 / np.linalg.norm(np.linalg.inv(full).T, axis=1)
    for axis in np.flatnonzero(pbc):
        if widths[axis] < 2.0 * cutoff:
            raise ValueError(
                f"periodic cell too small along axis {'abc'[axis]} (cell vector {axis}): it is "
                f"{widths[axis]:.4g} A wide (spacing of lattice planes) but must be at least "
                f"2 x cutoff = {2.0 * cutoff:.4g} A; enlarge the cell (e.g. atoms.repeat) or "
                "switch off periodicity along that axis")


class ForceEngine:
    """A SchNet model placed on one device at one precision.

    The fused kernels (``fused.FusedSchNet``) run fp32/fp16/bf16 on a GPU; the
    plain PyTorch reference runs fp32 where they cannot (the CPU, a GPU without
    the CUDA core, a model shape the kernels do not support) and everything in
    fp64. ``backend``: 'auto', 'fused' or 'reference' (the latter to compare the
    two on one GPU). The engine owns a private copy of the model, so the
    caller's model keeps its device and dtype.
    """

    def __init__(self, model, device="auto", precision="fp32", backend="auto"):
        if backend not in ("auto", "fused", "reference"):
            raise ValueError(f"backend must be 'auto', 'fused' or 'reference', got {backend!r}")
        model = resolve_model(model)
        self.device = resolve_device(device, precision)
        self.precision = precision
        self.dtype = torch.float64 if precision == "fp64" else torch.float32
        if backend == "reference" and precision in _HALF:
            raise ValueError(f"the reference backend runs in fp32 or fp64, not {precision!r}")
        why_not = None if backend == "reference" else self._why_not_fused(model.config)
        if why_not is not None and (backend == "fused" or precision in _HALF):
            error, reason = why_not
            raise error(f"backend={backend!r}, precision={precision!r} needs the fused CUDA kernels: {reason}")
        self.fused = backend != "reference" and why_not is None
        if why_not is not None and self.device.type == "cuda" and precision == "fp32":
            log.warning("FlashSchNet: using the PyTorch reference on %s (%s)", self.device, why_not[1])
        self.reference = copy.deepcopy(model).to(device=self.device, dtype=self.dtype).eval()
        self.reference.requires_grad_(False)
        if self.fused:
            from .fused import FusedSchNet

            self.module = FusedSchNet(self.reference, precision=precision, device=self.device)
        else:
            self.module = self.reference
        self.cutoff = float(self.reference.config["cutoff"])

    def _why_not_fused(self, config):
        """(exception type, reason) when the fused kernels cannot run this, else None."""
        if self.precision == "fp64":
            return ValueError, "fp64 is the reference path"
        if self.device.type != "cuda":
            return gpucore.GPUUnavailableError, f"device is {self.device}"
        if not gpucore.gpu_available():
            return gpucore.GPUUnavailableError, gpucore.unavailable_reason()
        from .fused import kernel_defines

        try:
            kernel_defines(config["num_filters"], config["num_rbf"], config["activation"], self.precision)
        except ValueError as exc:
            return ValueError, str(exc)
        return None

    @property
    def name(self) -> str:
        return f"{'fused' if self.fused else 'reference'} {self.precision} on {self.device}"

    @property
    def graph_index_dtype(self) -> torch.dtype:
        """Index dtype of the neighbour graphs this engine reads without converting
        them: int32 for the fused kernels, int64 for the plain torch reference."""
        return torch.int32 if self.fused else torch.long

    def reads_graph_in_place(self, graph, n_atoms: int) -> bool:
        """Whether every force call reads ``graph``'s own tensors, so that rewriting
        them in place (a static MD neighbour list rebuilt inside a CUDA graph) is
        seen by the next call. The reference always indexes with them directly. The
        fused module caches int32 CSR views per graph object; they alias the graph's
        tensors when those already are contiguous int32 / float32 tensors on its
        device. This checks that they do (and fills the cache, outside any capture);
        False means: hand over a new graph object after each rebuild."""
        if not self.fused:
            return True
        csr_of = getattr(self.module, "_csr_of", None)
        if csr_of is None:
            return False
        try:
            csr = csr_of(graph, n_atoms)
        except Exception:  # noqa: BLE001 - an unexpected layout just means: no aliasing
            return False
        pairs = (("src", graph.edge_src), ("dst", graph.edge_dst), ("dst_ptr", graph.dst_ptr),
                 ("src_order", graph.src_order), ("src_ptr", graph.src_ptr), ("shifts", graph.shifts))
        for name, tensor in pairs:
            view = getattr(csr, name, None)
            if not isinstance(view, torch.Tensor) or view.data_ptr() != tensor.data_ptr():
                return False
        return True

    def types(self, numbers) -> torch.Tensor:
        """Embedding types on the device (UnknownElementError names unknown elements)."""
        return self.reference.types_from_numbers(np.asarray(numbers)).to(self.device)

    def energy_and_forces(self, types, pos, graph):
        return self.module.energy_and_forces(types, pos, graph)

    def energy_forces_virial(self, types, pos, graph):
        """Also the virial -dE/d(strain), per system (ASE stress is -virial / volume)."""
        return self.module.energy_forces_virial(types, pos, graph)

    def per_atom_energies(self, types, pos, graph):
        return self.module.per_atom_energies(types, pos, graph.edge_src, graph.edge_dst, graph.edge_vec(pos))


class FlashSchNetCalculator(Calculator):
    """ASE calculator running a FlashSchNet model.

    ``model``: a ``SchNet`` object, a saved model file, or a shipped model name.
    ``device``: 'auto', 'cpu', 'cuda', 'cuda:1', ... or a torch.device (anything
    else is a ValueError saying what is accepted). ``precision``: 'fp32',
    'fp16', 'bf16' (fused GPU kernels; fp32 falls back to the reference on the
    CPU) or 'fp64' (reference in float64, for checks). ``skin`` (A): the
    neighbour list holds pairs within cutoff + skin and is rebuilt only when
    some atom has moved more than skin/2. ``backend``: see :class:`ForceEngine`.

    Stress is available for fully periodic cells only. Positions stay in a
    device buffer between calls and only the coordinates are copied in.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]
    # SchNet sees species and geometry only: charge or moment edits need no recomputation.
    ignored_changes = {"initial_charges", "initial_magmoms"}

    def __init__(self, model, device="auto", precision="fp32", skin=1.0, backend="auto", **kwargs):
        super().__init__(**kwargs)
        self.engine = ForceEngine(model, device=device, precision=precision, backend=backend)
        self.neighbors = VerletNeighborList(self.engine.cutoff, skin)
        self._numbers = None
        self._types = None
        self._pos = None

    def _device_state(self, atoms):
        """Types (recomputed only when the species change) and the position buffer."""
        numbers = atoms.numbers
        if self._numbers is None or not np.array_equal(numbers, self._numbers):
            self._types = self.engine.types(numbers)
            self._numbers = numbers.copy()
        positions = torch.from_numpy(np.ascontiguousarray(atoms.positions))
        if self._pos is None or self._pos.shape != positions.shape:
            self._pos = torch.empty(positions.shape, dtype=self.engine.dtype, device=self.engine.device)
        self._pos.copy_(positions)
        return self._types, self._pos

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        check_finite_positions(atoms.positions)
        pbc = atoms.pbc.copy()
        want_stress = "stress" in properties
        if want_stress and not pbc.all():
            raise PropertyNotImplementedError(f"stress needs a fully periodic cell; this one has pbc={pbc.tolist()}")
        cell = None
        if pbc.any():
            check_periodic_cell(atoms.cell, pbc, self.engine.cutoff)
            cell = torch.as_tensor(atoms.cell.array, dtype=self.engine.dtype, device=self.engine.device)
        types, pos = self._device_state(atoms)
        graph = self.neighbors(pos, cell=cell, pbc=torch.as_tensor(pbc, device=self.engine.device))
        if want_stress:
            energy, forces, virial = self.engine.energy_forces_virial(types, pos, graph)
            stress = -virial[0].double().cpu().numpy() / atoms.cell.volume
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)
        else:
            energy, forces = self.engine.energy_and_forces(types, pos, graph)
        energy = float(energy.sum())
        self.results.update(energy=energy, free_energy=energy,
                            forces=forces.detach().double().cpu().numpy())
        if "energies" in properties:
            with torch.no_grad():
                energies = self.engine.per_atom_energies(types, pos, graph)
            self.results["energies"] = energies.detach().double().cpu().numpy()
