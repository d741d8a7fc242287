"""Neighbour lists for SchNet message passing, returned as CSR graphs.

Conventions (shared with ``model.py`` and the fused CUDA kernels):

* Edge ``e`` carries a message from ``edge_src[e]`` to ``edge_dst[e]``, and
  ``edge_vec = pos[edge_src] - pos[edge_dst] + shifts`` with
  ``shifts = cell_shifts @ cell`` of the edge's system. ASE's ``(i, j, S)``
  triples map to ``dst = i, src = j, cell_shifts = S``.
* Full lists: both directions of every pair; no self pairs except periodic
  images of an atom.
* Edges are sorted by ``(dst, src, cell_shifts)``, so the order (and every
  floating-point sum taken in that order) is reproducible run to run.
  ``dst_ptr`` is the CSR row pointer over that order; ``src_order`` permutes
  it to ``(src, dst, cell_shifts)`` order, with row pointer ``src_ptr``.
* Systems of a batch are given by ``batch`` (system index of each atom), with
  one cell ``(n_systems, 3, 3)`` (rows are lattice vectors) and one ``pbc``
  ``(n_systems, 3)`` per system. Only pairs inside one system are listed.

Builders: :func:`build_cpu` (vesin when installed, else ASE) and
:func:`build_torch` (plain torch on any device, general periodic images).
:class:`NeighborList` picks one; :class:`VerletNeighborList` adds a skin and
rebuilds only when needed. The fixed-capacity graphs of batched MD are in
:mod:`.static_neighbors`.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


__all__ = ["Graph", "NeighborList", "VerletNeighborList", "build_cpu", "build_torch"]


@dataclass
class Graph:
    """A neighbour graph in CSR form by destination (see the module docstring).

    ``cutoff`` is the radius the list was built with (cutoff + skin for Verlet
    lists): edges may be longer than the model cutoff, and consumers must give
    them zero weight (SchNet's cosine cutoff does).
    """

    edge_src: Tensor  # (E,) int64
    edge_dst: Tensor  # (E,) int64
    shifts: Tensor  # (E, 3) cartesian, dtype of the positions
    cell_shifts: Tensor  # (E, 3) int64 lattice translations
    dst_ptr: Tensor  # (N + 1,) int64
    src_order: Tensor  # (E,) int64
    src_ptr: Tensor  # (N + 1,) int64
    batch: Tensor  # (N,) int64
    n_systems: int
    cutoff: float

    @property
    def num_edges(self) -> int:
        return int(self.edge_src.numel())

    def edge_vec(self, pos: Tensor) -> Tensor:
        """``pos[src] - pos[dst] + shifts`` for these edges."""
        return pos[self.edge_src] - pos[self.edge_dst] + self.shifts


def _prepare(pos, batch, cell, pbc, n_systems):
    """Validate and broadcast the inputs shared by all builders."""
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3), got {tuple(pos.shape)}")
    if not pos.is_floating_point():
        raise ValueError(f"positions must be floating point, got {pos.dtype}")
    bad = (~torch.isfinite(pos).all(dim=1)).nonzero().flatten()
    if bad.numel():
        shown = bad[:20].tolist()
        more = f" (and {bad.numel() - 20} more)" if bad.numel() > 20 else ""
        raise ValueError(f"non-finite (NaN/inf) positions for atoms {shown}{more}")
    n_atoms, device = pos.shape[0], pos.device
    if batch is None:
        batch = torch.zeros(n_atoms, dtype=torch.long, device=device)
    else:
        batch = torch.as_tensor(batch, device=device).long()
        if batch.shape != (n_atoms,):
            raise ValueError(f"batch must have shape ({n_atoms},), got {tuple(batch.shape)}")
    if n_systems is None:
        n_systems = int(batch.max()) + 1 if n_atoms else 1
    if n_atoms and (int(batch.min()) < 0 or int(batch.max()) >= n_systems):
        raise ValueError(f"batch values must lie in [0, {n_systems})")
    if cell is None:
        cell = torch.zeros(n_systems, 3, 3, dtype=pos.dtype, device=device)
        default_pbc = False
    else:
        cell = torch.as_tensor(cell, dtype=pos.dtype, device=device)
        cell = cell.expand(n_systems, 3, 3) if cell.shape == (3, 3) else cell
        if cell.shape != (n_systems, 3, 3):
            raise ValueError(f"cell must have shape (3, 3) or ({n_systems}, 3, 3), got {tuple(cell.shape)}")
        default_pbc = True
    if pbc is None:
        pbc = torch.full((n_systems, 3), default_pbc, dtype=torch.bool, device=device)
    else:
        pbc = torch.as_tensor(pbc, device=device).bool()
        pbc = pbc.expand(n_systems, 3) if pbc.numel() in (1, 3) else pbc
        if pbc.shape != (n_systems, 3):
            raise ValueError(f"pbc must have shape (3,) or ({n_systems}, 3), got {tuple(pbc.shape)}")
    return batch, cell, pbc, n_systems


def _complete_cell(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Replace non-periodic rows of ``cell`` by unit vectors orthogonal to the
    periodic ones, so the matrix is invertible and the plane spacing along each
    periodic direction is the physical one. Needs at least one periodic axis;
    raises if the periodic rows are degenerate."""
    periodic = [cell[k] for k in range(3) if pbc[k]]
    with np.errstate(invalid="ignore", divide="ignore"):  # degenerate input is caught below
        if len(periodic) == 1:
            a = periodic[0]
            u = np.cross(a, np.eye(3)[int(np.argmin(np.abs(a)))])
            v = np.cross(a, u)
            fill = [u / np.linalg.norm(u), v / np.linalg.norm(v)]
        elif len(periodic) == 2:
            n = np.cross(periodic[0], periodic[1])
            fill = [n / np.linalg.norm(n)]
        else:
            fill = []
    out = np.array(cell, dtype=np.float64)
    rows = iter(fill)
    for k in range(3):
        if not pbc[k]:
            out[k] = next(rows)
    scale = np.prod(np.linalg.norm(out, axis=1))
    if not np.isfinite(scale) or scale == 0 or abs(np.linalg.det(out)) < 1e-10 * scale:
        raise ValueError(f"periodic cell vectors are degenerate (cell={cell.tolist()}, pbc={pbc.tolist()})")
    return out


def _finalize(src, dst, cell_shifts, batch, cell, n_systems, cutoff) -> Graph:
    """Sort edges by (dst, src, cell_shifts), add cartesian shifts and CSR pointers."""
    n_atoms = batch.numel()
    if src.numel():
        m = int(cell_shifts.abs().max()) + 1
        skey = ((cell_shifts[:, 0] + m) * (2 * m + 1) + cell_shifts[:, 1] + m) * (2 * m + 1) + cell_shifts[:, 2] + m
        order = torch.sort(skey, stable=True).indices
        order = order[torch.sort(dst[order] * n_atoms + src[order], stable=True).indices]
        src, dst, cell_shifts = src[order], dst[order], cell_shifts[order]
    shifts = torch.einsum("ei,eij->ej", cell_shifts.to(cell.dtype), cell[batch[dst]])
    zero = torch.zeros(1, dtype=torch.long, device=batch.device)
    dst_ptr = torch.cat([zero, torch.bincount(dst, minlength=n_atoms).cumsum(0)])
    src_order = torch.sort(src, stable=True).indices
    src_ptr = torch.cat([zero, torch.bincount(src, minlength=n_atoms).cumsum(0)])
    return Graph(src, dst, shifts, cell_shifts, dst_ptr, src_order, src_ptr, batch, n_systems, float(cutoff))


def _vesin_available() -> bool:
    return importlib.util.find_spec("vesin") is not None


# vesin's CPU cell list (0.3 to 0.6.2 at least) gives each axis trunc(width /
# cutoff) cells and, past this many cells in all, shrinks the grid keeping the
# axes' ratios; in a long, thin box the shrunk grid has no cell along some axis
# and the process dies of an integer division by zero (SIGFPE), e.g. two atoms
# 1e6 A apart. See docs/known-issues.md.
_VESIN_MAX_CELLS = 1e5


def _vesin_grid_is_empty(pos: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float) -> bool:
    """Whether vesin's cell grid for one system (positions ``(n, 3)``) would have
    no cell along some axis, repeating its arithmetic: a periodic axis is the
    lattice-plane spacing wide, a non-periodic one the atoms' extent plus 1% (at
    least 1 A). A grid of one cell along an axis counts as empty too, a margin
    for rounding differences."""
    extent = pos.max(axis=0) - pos.min(axis=0)
    width = np.maximum(np.where(extent < 1e-6, 1.0, extent) * 1.01, 1.0)
    if pbc.any():
        spacing = 1.0 / np.linalg.norm(np.linalg.inv(_complete_cell(cell, pbc)), axis=0)
        width = np.where(pbc, spacing, width)
    n = np.maximum(np.trunc(width / cutoff), 1.0)
    if n.prod() <= _VESIN_MAX_CELLS:
        return False
    xy, yz = n[0] / n[1], n[1] / n[2]
    nz = np.trunc(np.cbrt(_VESIN_MAX_CELLS / (xy * yz * yz)))
    ny = np.trunc(yz * nz)
    nx = np.trunc(xy * ny)
    return min(nx, ny, nz) < 2


def _torch_pairs(pos: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float):
    """ASE's ``(i, j, S)`` for one system, from :func:`build_torch` on the CPU."""
    graph = build_torch(torch.from_numpy(pos), cutoff, cell=torch.from_numpy(cell), pbc=torch.from_numpy(pbc))
    return graph.edge_dst.numpy(), graph.edge_src.numpy(), graph.cell_shifts.numpy()


def build_cpu(pos: Tensor, cutoff: float, batch=None, cell=None, pbc=None, n_systems=None,
              library: str = "auto") -> Graph:
    """Full neighbour list computed on the CPU, one system at a time.

    ``library``: ``'vesin'``, ``'ase'`` (``ase.neighborlist.primitive_neighbor_list``)
    or ``'auto'`` (vesin when installed). The graph lands on ``pos.device``.
    With vesin, a system whose box is so long and thin that vesin's cell list
    would crash the process (see :func:`_vesin_grid_is_empty`) is listed by
    :func:`build_torch` instead.
    """
    batch, cell, pbc, n_systems = _prepare(pos, batch, cell, pbc, n_systems)
    if library == "auto":
        library = "vesin" if _vesin_available() else "ase"
    if library == "vesin":
        import vesin

        calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=True)

        def pairs(p, c, periodic):
            if _vesin_grid_is_empty(p, c, periodic, cutoff):
                return _torch_pairs(p, c, periodic, float(cutoff))
            return calculator.compute(p, c, periodic.tolist(), "ijS")
    elif library == "ase":
        from ase.neighborlist import primitive_neighbor_list

        def pairs(p, c, periodic):
            return primitive_neighbor_list("ijS", periodic, c, p, float(cutoff), self_interaction=False)
    else:
        raise ValueError(f"unknown neighbour-list library {library!r}; use 'auto', 'vesin' or 'ase'")

    pos_np = pos.detach().cpu().double().numpy()
    batch_np = batch.cpu().numpy()
    cell_np = cell.detach().cpu().double().numpy()
    pbc_np = pbc.cpu().numpy()
    srcs, dsts, shifts = [], [], []
    for s in range(n_systems):
        idx = np.flatnonzero(batch_np == s)
        if idx.size == 0:
            continue
        if pbc_np[s].any():
            _complete_cell(cell_np[s], pbc_np[s])  # validates the periodic cell
        i, j, sh = pairs(pos_np[idx], cell_np[s], pbc_np[s])
        dsts.append(idx[np.asarray(i, dtype=np.int64)])
        srcs.append(idx[np.asarray(j, dtype=np.int64)])
        shifts.append(np.asarray(sh, dtype=np.int64).reshape(-1, 3))
    device = pos.device

    def cat(parts, shape):
        arr = np.concatenate(parts) if parts else np.zeros(shape, dtype=np.int64)
        return torch.from_numpy(arr).to(device)

    return _finalize(cat(srcs, (0,)), cat(dsts, (0,)), cat(shifts, (0, 3)), batch, cell, n_systems, cutoff)


def _images(cell: np.ndarray, pbc: np.ndarray, cutoff: float):
    """Integer lattice translations (K, 3) that can bring two atoms wrapped into
    the cell within ``cutoff``, and the inverse of the completed cell.

    A displacement y with fractional coordinate f_k along periodic axis k has
    |y| >= |f_k| / |b_k| (b_k: reciprocal vector), so images with
    |n_k| > ceil(cutoff |b_k|) are never needed for wrapped atoms.
    """
    if not pbc.any():
        return np.zeros((1, 3), dtype=np.int64), np.eye(3)
    inv = np.linalg.inv(_complete_cell(cell, pbc))
    reach = [math.ceil(cutoff * np.linalg.norm(inv[:, k])) if pbc[k] else 0 for k in range(3)]
    images = np.array(list(itertools.product(*[range(-r, r + 1) for r in reach])), dtype=np.int64)
    return images, inv


def build_torch(pos: Tensor, cutoff: float, batch=None, cell=None, pbc=None, n_systems=None,
                max_block: int = 1 << 21) -> Graph:
    """Full neighbour list with plain torch ops on ``pos.device``.

    Brute force over all periodic images that can lie within the cutoff (no
    minimum-image restriction: small cells work). Systems with the same atom
    count and image set (e.g. MD replicas) are processed together, in chunks
    of at most ``max_block`` candidate pairs. Cost is O(n^2 * images) per
    system; with a Verlet skin it runs only every few dozen MD steps.
    """
    batch, cell, pbc, n_systems = _prepare(pos, batch, cell, pbc, n_systems)
    device, dtype = pos.device, pos.dtype
    pos = pos.detach()
    cell_np, pbc_np = cell.detach().cpu().double().numpy(), pbc.cpu().numpy()
    order = torch.sort(batch, stable=True).indices
    counts = torch.bincount(batch, minlength=n_systems).tolist()
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    invs = np.zeros((n_systems, 3, 3))
    groups: dict = {}
    for s in range(n_systems):
        if counts[s]:
            images, invs[s] = _images(cell_np[s], pbc_np[s], cutoff)
            groups.setdefault((counts[s], images.tobytes()), (images, []))[1].append(s)
    inv_t = torch.as_tensor(invs, dtype=dtype, device=device)
    cut2 = float(cutoff) ** 2
    srcs, dsts, shifts = [], [], []
    for (n, _), (images, systems) in groups.items():
        images_t = torch.as_tensor(images, device=device)
        n_images = len(images)
        zero_image = int(np.flatnonzero((images == 0).all(axis=1))[0])
        per_chunk = max(1, max_block // (n_images * n * n))
        rows = min(n, max(1, max_block // (n_images * n)))
        for c0 in range(0, len(systems), per_chunk):
            chunk = systems[c0:c0 + per_chunk]
            sys_t = torch.as_tensor(chunk, device=device)
            idx = order[torch.as_tensor(starts[chunk], device=device)[:, None] + torch.arange(n, device=device)]
            p = pos[idx]  # (S, n, 3)
            frac = torch.einsum("sni,sij->snj", p, inv_t[sys_t])
            wrap = torch.where(pbc[sys_t][:, None, :], torch.floor(frac), torch.zeros_like(frac)).long()
            p = p - torch.einsum("sni,sij->snj", wrap.to(dtype), cell[sys_t])
            trans = torch.einsum("ki,sij->skj", images_t.to(dtype), cell[sys_t])  # (S, K, 3)
            for b0 in range(0, n, rows):
                d_local = torch.arange(b0, min(b0 + rows, n), device=device)
                diff = p[:, None, None, :, :] + trans[:, :, None, None, :] - p[:, None, d_local, None, :]
                close = (diff * diff).sum(-1) < cut2  # (S, K, B, n)
                close[:, zero_image, torch.arange(d_local.numel(), device=device), d_local] = False
                s_, k, b, j = close.nonzero(as_tuple=True)
                i = d_local[b]
                srcs.append(idx[s_, j])
                dsts.append(idx[s_, i])
                shifts.append(images_t[k] - wrap[s_, j] + wrap[s_, i])
    if srcs:
        src, dst, cell_shifts = torch.cat(srcs), torch.cat(dsts), torch.cat(shifts)
    else:
        src = dst = torch.zeros(0, dtype=torch.long, device=device)
        cell_shifts = torch.zeros(0, 3, dtype=torch.long, device=device)
    return _finalize(src, dst, cell_shifts, batch, cell, n_systems, cutoff)


class NeighborList:
    """Builds a :class:`Graph` of all pairs closer than ``cutoff + skin``.

    ``backend``: ``'torch'`` (:func:`build_torch`), ``'vesin'`` or ``'ase'``
    (:func:`build_cpu`), or ``'auto'``: torch for CUDA positions, otherwise the
    CPU builder.
    """

    def __init__(self, cutoff: float, skin: float = 0.0, backend: str = "auto"):
        if cutoff <= 0 or skin < 0:
            raise ValueError(f"need cutoff > 0 and skin >= 0, got cutoff={cutoff}, skin={skin}")
        if backend not in ("auto", "torch", "vesin", "ase"):
            raise ValueError(f"unknown backend {backend!r}; use 'auto', 'torch', 'vesin' or 'ase'")
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.backend = backend

    def build(self, pos: Tensor, batch=None, cell=None, pbc=None, n_systems=None) -> Graph:
        radius = self.cutoff + self.skin
        backend = self.backend
        if backend == "auto":
            backend = "torch" if pos.device.type != "cpu" else "cpu"
        if backend == "torch":
            return build_torch(pos, radius, batch, cell, pbc, n_systems)
        library = "auto" if backend == "cpu" else backend
        return build_cpu(pos, radius, batch, cell, pbc, n_systems, library=library)

    def __call__(self, pos: Tensor, batch=None, cell=None, pbc=None, n_systems=None) -> Graph:
        return self.build(pos, batch, cell, pbc, n_systems)


class VerletNeighborList(NeighborList):
    """A neighbour list with a skin, rebuilt only when it may have gone stale.

    The graph holds all pairs within ``cutoff + skin`` at the last build. It
    stays complete for the true ``cutoff`` until some atom has moved more than
    ``skin / 2`` (two atoms approaching each other by ``skin`` in total), so it
    is rebuilt then, or when the atoms, batch, cell or pbc change. Between
    builds the edges are NOT filtered by the true cutoff: the edge set and CSR
    stay fixed, and edges longer than ``cutoff`` get exactly zero weight from
    SchNet's cosine cutoff (and from the priors' own cutoffs).
    ``n_builds`` counts the builds.
    """

    def __init__(self, cutoff: float, skin: float, backend: str = "auto"):
        super().__init__(cutoff, skin, backend)
        self.n_builds = 0
        self._graph: Graph | None = None
        self._ref = None

    def needs_rebuild(self, pos: Tensor, batch=None, cell=None, pbc=None, n_systems=None) -> bool:
        if self._graph is None:
            return True
        batch, cell, pbc, n_systems = _prepare(pos, batch, cell, pbc, n_systems)
        ref_pos, ref_batch, ref_cell, ref_pbc = self._ref
        if (pos.shape != ref_pos.shape or pos.device != ref_pos.device or n_systems != self._graph.n_systems
                or not torch.equal(batch, ref_batch) or not torch.equal(pbc, ref_pbc)
                or not torch.equal(cell.to(ref_cell.dtype), ref_cell)):
            return True
        if pos.numel() == 0:
            return False
        return bool((pos.detach().to(ref_pos.dtype) - ref_pos).norm(dim=1).max() > 0.5 * self.skin)

    def __call__(self, pos: Tensor, batch=None, cell=None, pbc=None, n_systems=None) -> Graph:
        if self.needs_rebuild(pos, batch, cell, pbc, n_systems):
            batch, cell, pbc, n_systems = _prepare(pos, batch, cell, pbc, n_systems)
            self._graph = self.build(pos, batch, cell, pbc, n_systems)
            self._ref = (pos.detach().clone(), batch, cell.detach().clone(), pbc)
            self.n_builds += 1
        return self._graph
