"""Reference SchNet in plain PyTorch, as used for coarse-grained MD (CGSchNet,
mlcg ``StandardSchNet``). It is the CPU path, the ground truth the fused CUDA
kernels are tested against, and the container of weights and configuration.

Per-atom energy, with ``act`` the configured activation::

    x = embedding[type]                                              (N, H)
    e = rbf(d) = exp(-gamma (d - centers)^2),  C(d) = 0.5 (cos(pi d / rc) + 1) if d < rc else 0
    for block in interactions:
        W   = block.filter2(act(block.filter1(e))) * C(d)            (E, F)
        m   = block.lin1(x)[src] * W                                 (E, F)
        agg = sum of m over the edges of each dst atom               (N, F)
        x   = x + block.lin(act(block.lin2(agg)))
    energy_atom = energy_scale * output2(out_act(output1(x))) + energy_shift + atomref[type]
                  + prior energies (see ``priors.py``)

``d = |edge_vec|`` with ``edge_vec = pos[src] - pos[dst] + shifts`` (see
``neighbors.py``). Attribute names are a stable interface read by the fused
kernels: ``embedding``; ``rbf`` with buffers ``centers``, ``gamma``, ``cutoff``;
``interactions[i].lin1`` (no bias), ``.filter1``, ``.filter2``, ``.lin2``,
``.lin``; ``output1``, ``output2``; buffer ``atomref``; ``priors``; and
``config`` (``activation``, ``output_activation`` (``out_act`` above, the same
unless set), ``energy_scale``, ``energy_shift``, ...).
Everything runs in the dtype of the parameters, which must match the
positions (``model.double()`` for float64).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from ase.data import atomic_numbers, chemical_symbols
from torch import Tensor, nn

from .priors import prior_from_config

__all__ = ["SchNet", "GaussianRBF", "Interaction", "UnknownElementError", "load_model", "read_tagged_file",
           "shifted_softplus", "FORMAT", "VERSION"]

FORMAT = "flashschnet"
VERSION = 1


class UnknownElementError(KeyError):
    """An atomic number (or bead type) that the model's type map does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def shifted_softplus(x: Tensor) -> Tensor:
    """softplus(x) - log 2, zero at x = 0 (SchNet's original activation)."""
    return F.softplus(x) - math.log(2.0)


ACTIVATIONS = {"tanh": torch.tanh, "ssp": shifted_softplus, "silu": F.silu}


class GaussianRBF(nn.Module):
    """Gaussian radial basis on ``num_rbf`` centres ``linspace(0, cutoff)`` and the
    cosine cutoff envelope.

    Default width: ``gamma = 0.5 / spacing^2`` (each Gaussian has standard
    deviation equal to the centre spacing, the SchNet/PyG convention); pass
    ``gamma`` to override it.
    """

    def __init__(self, cutoff: float, num_rbf: int, gamma: float | None = None):
        super().__init__()
        if gamma is None:
            if num_rbf < 2:
                raise ValueError("num_rbf must be >= 2 unless rbf_gamma is given")
            gamma = 0.5 / (cutoff / (num_rbf - 1)) ** 2
        self.register_buffer("centers", torch.linspace(0.0, cutoff, num_rbf))
        self.register_buffer("gamma", torch.tensor(float(gamma)))
        self.register_buffer("cutoff", torch.tensor(float(cutoff)))

    def forward(self, d: Tensor) -> Tensor:
        return torch.exp(-self.gamma * (d[:, None] - self.centers) ** 2)

    def envelope(self, d: Tensor) -> Tensor:
        """C(d) = 0.5 (cos(pi d / rc) + 1) inside the cutoff, exactly 0 (value and
        gradient) beyond it, so edges of a Verlet skin contribute nothing."""
        return torch.where(d < self.cutoff, 0.5 * (torch.cos(math.pi * d / self.cutoff) + 1.0), 0.0)


class Interaction(nn.Module):
    """One SchNet interaction block (CFConv, activation, linear); returns the
    residual update of the atom features."""

    def __init__(self, hidden_channels: int, num_filters: int, num_rbf: int, activation: str):
        super().__init__()
        self.lin1 = nn.Linear(hidden_channels, num_filters, bias=False)
        self.filter1 = nn.Linear(num_rbf, num_filters)
        self.filter2 = nn.Linear(num_filters, num_filters)
        self.lin2 = nn.Linear(num_filters, hidden_channels)
        self.lin = nn.Linear(hidden_channels, hidden_channels)
        self.act = ACTIVATIONS[activation]

    def forward(self, x: Tensor, expansion: Tensor, envelope: Tensor, edge_src: Tensor, edge_dst: Tensor) -> Tensor:
        w = self.filter2(self.act(self.filter1(expansion))) * envelope[:, None]
        messages = self.lin1(x)[edge_src] * w
        agg = messages.new_zeros(x.shape[0], messages.shape[1]).index_add_(0, edge_dst, messages)
        return self.lin(self.act(self.lin2(agg)))


def _normalize_type_map(type_map) -> dict[int, int]:
    out = {}
    for key, value in type_map.items():
        if isinstance(key, str):
            if key not in atomic_numbers:
                raise ValueError(f"type_map key {key!r} is not an element symbol")
            key = atomic_numbers[key]
        if int(key) < 0:
            raise ValueError(f"type_map key {key} is negative")
        out[int(key)] = int(value)
    return out


def _element_name(z: int) -> str:
    return chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}"


class SchNet(nn.Module):
    """SchNet energy model; see the module docstring for the exact function.

    ``num_types``: embedding rows. ``type_map``: atomic number or element
    symbol -> type index (coarse-grained models put bead-type codes in the
    atomic numbers). Without a type map, atomic numbers index the embedding
    directly (``num_types`` defaults to 100, as PyG). ``output_hidden``
    defaults to ``hidden_channels // 2``; ``output_activation`` to
    ``activation``. ``priors``: prior modules or their config dicts
    (``priors.py``). ``seed`` makes the initial weights reproducible without
    touching the global RNG.
    """

    def __init__(self, hidden_channels: int = 128, num_filters: int = 128, num_interactions: int = 3,
                 num_rbf: int = 50, cutoff: float = 5.0, activation: str = "tanh", output_hidden: int | None = None,
                 output_activation: str | None = None, num_types: int | None = None, type_map: dict | None = None,
                 rbf_gamma: float | None = None, energy_scale: float = 1.0, energy_shift: float = 0.0,
                 priors=(), seed: int | None = None):
        super().__init__()
        output_activation = activation if output_activation is None else output_activation
        for name in (activation, output_activation):
            if name not in ACTIVATIONS:
                raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
        if cutoff <= 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        type_map = None if type_map is None else _normalize_type_map(type_map)
        if num_types is None:
            num_types = 100 if type_map is None else max(type_map.values(), default=-1) + 1
        if type_map is not None and any(not 0 <= t < num_types for t in type_map.values()):
            raise ValueError(f"type_map values must lie in [0, {num_types})")
        output_hidden = hidden_channels // 2 if output_hidden is None else output_hidden
        self._config = dict(hidden_channels=hidden_channels, num_filters=num_filters,
                            num_interactions=num_interactions, num_rbf=num_rbf, cutoff=float(cutoff),
                            activation=activation, output_hidden=output_hidden,
                            output_activation=output_activation, num_types=num_types,
                            type_map=type_map, rbf_gamma=None if rbf_gamma is None else float(rbf_gamma),
                            energy_scale=float(energy_scale), energy_shift=float(energy_shift))
        self.output_act = ACTIVATIONS[output_activation]
        self.energy_scale = float(energy_scale)
        self.energy_shift = float(energy_shift)

        rng = contextlib.nullcontext() if seed is None else torch.random.fork_rng(devices=[])
        with rng:
            if seed is not None:
                torch.manual_seed(seed)
            self.embedding = nn.Embedding(num_types, hidden_channels)
            self.rbf = GaussianRBF(cutoff, num_rbf, rbf_gamma)
            self.interactions = nn.ModuleList(
                Interaction(hidden_channels, num_filters, num_rbf, activation) for _ in range(num_interactions))
            self.output1 = nn.Linear(hidden_channels, output_hidden)
            self.output2 = nn.Linear(output_hidden, 1)
        self.register_buffer("atomref", torch.zeros(num_types))

        self.priors = nn.ModuleList(p if isinstance(p, nn.Module) else prior_from_config(p) for p in priors)
        for prior in self.priors:
            if getattr(prior, "cutoff", 0.0) > cutoff:
                raise ValueError(f"{type(prior).__name__} cutoff {prior.cutoff} exceeds the model cutoff {cutoff}: "
                                 "its pairs would be missing from the neighbour graph")

        if type_map is None:
            table = torch.arange(num_types)
        else:
            table = torch.full((max(type_map, default=0) + 1,), -1, dtype=torch.long)
            for z, t in type_map.items():
                table[z] = t
        self.register_buffer("_type_table", table, persistent=False)

    @property
    def config(self) -> dict:
        """Everything needed to rebuild the model with ``SchNet(**config)``."""
        return dict(self._config, priors=[p.config() for p in self.priors])

    @property
    def cutoff(self) -> float:
        return self._config["cutoff"]

    def types_from_numbers(self, numbers) -> Tensor:
        """Map atomic numbers (or bead codes) to embedding type indices."""
        numbers = torch.as_tensor(numbers, dtype=torch.long, device=self._type_table.device).reshape(-1)
        table = self._type_table
        inside = (numbers >= 0) & (numbers < table.numel())
        types = torch.where(inside, table[numbers.clamp(0, table.numel() - 1)], -1)
        if (types < 0).any():
            unknown = sorted(set(numbers[types < 0].tolist()))
            if self._config["type_map"] is None:
                known = f"atomic numbers 0..{table.numel() - 1}"
            else:
                known = ", ".join(_element_name(z) for z in sorted(self._config["type_map"]))
            raise UnknownElementError(
                f"element(s) {', '.join(_element_name(z) for z in unknown)} not known to this model; "
                f"it knows: {known}")
        return types

    def per_atom_energies(self, types: Tensor, pos: Tensor, edge_src: Tensor, edge_dst: Tensor,
                          edge_vec: Tensor | None = None) -> Tensor:
        """Energy of each atom (N,); ``edge_vec`` defaults to ``pos[src] - pos[dst]``
        (no periodic shifts)."""
        if pos.dtype != self.embedding.weight.dtype:
            raise TypeError(f"positions are {pos.dtype} but the model is {self.embedding.weight.dtype}; "
                            "convert one of them (e.g. model.double())")
        if edge_vec is None:
            edge_vec = pos[edge_src] - pos[edge_dst]
        d = torch.linalg.vector_norm(edge_vec, dim=1)
        expansion, envelope = self.rbf(d), self.rbf.envelope(d)
        x = self.embedding(types)
        for block in self.interactions:
            x = x + block(x, expansion, envelope, edge_src, edge_dst)
        out = self.output2(self.output_act(self.output1(x))).squeeze(-1)
        energy = self.energy_scale * out + self.energy_shift + self.atomref[types]
        for prior in self.priors:
            energy = energy + prior(types, pos, edge_src, edge_dst, edge_vec)
        return energy

    def energy(self, types: Tensor, pos: Tensor, edge_src: Tensor, edge_dst: Tensor,
               edge_vec: Tensor | None = None, batch: Tensor | None = None, n_systems: int | None = None) -> Tensor:
        """Total energy of each system, shape (n_systems,)."""
        per_atom = self.per_atom_energies(types, pos, edge_src, edge_dst, edge_vec)
        if batch is None:
            return per_atom.sum().reshape(1)
        if n_systems is None:
            n_systems = int(batch.max()) + 1 if batch.numel() else 1
        return per_atom.new_zeros(n_systems).index_add_(0, batch, per_atom)

    def _derivatives(self, types, pos, graph, create_graph, virial):
        with torch.enable_grad():
            leaf = pos if pos.requires_grad else pos.detach().requires_grad_(True)
            inputs = [leaf]
            moved, shifts = leaf, graph.shifts
            if virial:
                strain = torch.zeros(graph.n_systems, 3, 3, dtype=pos.dtype, device=pos.device, requires_grad=True)
                inputs.append(strain)
                moved = leaf + torch.einsum("ni,nij->nj", leaf, strain[graph.batch])
                shifts = shifts + torch.einsum("ei,eij->ej", shifts, strain[graph.batch[graph.edge_dst]])
            edge_vec = moved[graph.edge_src] - moved[graph.edge_dst] + shifts
            energy = self.energy(types, moved, graph.edge_src, graph.edge_dst, edge_vec, graph.batch, graph.n_systems)
            grads = torch.autograd.grad(energy.sum(), inputs, create_graph=create_graph)
        energy = energy if create_graph else energy.detach()
        return (energy, *(-g for g in grads))

    def energy_and_forces(self, types: Tensor, pos: Tensor, graph, create_graph: bool = False):
        """(energy (n_systems,), forces (N, 3)) with forces = -dE/dpos by autograd.
        ``graph`` is a ``neighbors.Graph``."""
        return self._derivatives(types, pos, graph, create_graph, virial=False)

    def energy_forces_virial(self, types: Tensor, pos: Tensor, graph, create_graph: bool = False):
        """(energy, forces, virial (n_systems, 3, 3)) with virial = -dE/d(strain),
        strain applied as r -> r (I + eps) to positions and cell shifts.
        ASE stress is ``-virial / volume``. Priors see strained raw positions,
        which is right only for molecules not wrapped across the cell."""
        return self._derivatives(types, pos, graph, create_graph, virial=True)

    def save(self, path) -> None:
        """Write configuration and weights (``load_model`` reads them back)."""
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        torch.save({"format": FORMAT, "version": VERSION, "config": self.config, "state_dict": state}, path)


def read_tagged_file(path, tag: str, version: int | tuple[int, ...], what: str) -> dict:
    """The dictionary that ``torch.save`` wrote at ``path``, checked to carry
    ``format`` ``tag`` and ``version`` (one, or a tuple of those this code reads),
    as model files, training and MD checkpoints do.

    Raises ``FileNotFoundError`` if there is no file, and ``ValueError`` naming
    the file and ``what`` it should be (e.g. 'FlashSchNet model file') for
    anything else.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise ValueError(f"{path}: not a readable {what} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(blob, dict) or blob.get("format") != tag:
        found = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise ValueError(f"{path}: not a {what} (format {found!r}, expected {tag!r})")
    versions = (version,) if isinstance(version, int) else tuple(version)
    if blob.get("version") not in versions:
        raise ValueError(f"{path}: unsupported {what} version {blob.get('version')!r} "
                         f"(this code reads version {' or '.join(map(str, versions))})")
    return blob


def load_model(path, device="cpu") -> SchNet:
    """Read a model written by :meth:`SchNet.save`, in the dtype it was saved in.

    Raises ``ValueError`` naming the file for anything that is not a valid
    FlashSchNet model (``FileNotFoundError`` if it does not exist).
    """
    blob = read_tagged_file(path, FORMAT, VERSION, "FlashSchNet model file")
    config, state = blob.get("config"), blob.get("state_dict")
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise ValueError(f"{path}: the file lacks a 'config' or 'state_dict' dictionary")
    try:
        model = SchNet(**config)
        dtypes = {v.dtype for v in state.values() if torch.is_tensor(v) and v.is_floating_point()}
        if len(dtypes) == 1:
            model.to(dtypes.pop())
        model.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        detail = " ".join(str(exc).split())
        raise ValueError(f"{path}: configuration and weights do not make a valid model ({detail})") from exc
    return model.to(device)
