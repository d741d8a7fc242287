"""Fixed-capacity neighbour graphs for batched MD under CUDA graphs.

:class:`StaticNeighborList` keeps a graph (see :class:`~.neighbors.Graph` for
the conventions) in buffers of fixed capacity whose tensors never move. On a
GPU it is rebuilt by the kernels of ``csrc/flashschnet/geometry.cu`` without
any host synchronisation, gated by a device flag, so a rebuild can live inside
a captured MD step; elsewhere the host builders of :mod:`.neighbors` fill it.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from .neighbors import Graph, NeighborList, _images, _prepare
from .step_status import STAT_BUILDS, STAT_ERROR, STAT_MAX_TOTAL, STAT_OVERFLOW, STAT_STEP, STAT_TOTAL, new_stat

__all__ = ["StaticNeighborList", "capacity_for"]


def capacity_for(n_edges: int, margin: float) -> int:
    """Edge slots for ``n_edges`` edges plus a relative ``margin``, in multiples of 256."""
    return max(256, int(math.ceil(n_edges * (1.0 + margin) / 256.0)) * 256)


@functools.lru_cache(maxsize=None)
def _geometry_module():
    import gpucore

    return gpucore.compile_file("flashschnet/geometry.cu")


_KERNEL_CACHE: dict = {}


def _kernel(name: str):
    kernel = _KERNEL_CACHE.get(name)
    if kernel is None:
        kernel = _KERNEL_CACHE[name] = _geometry_module().get_kernel(name)
    return kernel


def _gpu_kernels_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        import gpucore

        return gpucore.gpu_available()
    except Exception:  # noqa: BLE001 - any import problem just means: no kernels
        return False


class StaticNeighborList:
    """A full neighbour graph of all pairs within ``cutoff + skin``, in buffers of
    fixed capacity that keep their addresses across rebuilds.

    Made for batched MD: the systems are contiguous blocks of atoms (``batch``
    non-decreasing) with fixed cells. ``graph`` is a :class:`Graph` whose tensors
    have ``capacity`` edge slots:

    * slots ``[0, E)`` hold the ``E`` edges exactly as :func:`build_torch` orders
      them (by destination, source, cell shift); ``dst_ptr`` / ``src_ptr`` are the
      CSR pointers over them (``dst_ptr[-1] == E``) and ``src_order[:E]`` the
      stable argsort of ``edge_src[:E]``;
    * slots ``[E, capacity)`` are padding: self pairs of atom ``(e - E) % n`` with
      cartesian shift ``(pad, 0, 0)``, ``pad`` = 2 (cutoff + skin) + 1, i.e. beyond
      the cutoff: SchNet's envelope and the priors give them exactly zero weight,
      and consumers that follow the CSR pointers (the fused kernels) never visit
      them; ``src_order[e] = e`` there.

    Index tensors have ``index_dtype`` (int32 for the fused kernels, which then
    read these very tensors without copies; int64 for plain torch).

    :meth:`rebuild` builds now (host-driven, synchronising; grows the buffers if
    needed). On a GPU with the CUDA core, :meth:`build_gated` enqueues the rebuild
    kernels, which do nothing unless a device flag is set and leave the old graph
    untouched when the new one would not fit (recorded in a status vector, laid
    out by :mod:`.step_status`): no host synchronisation, so it can be captured in
    a CUDA graph.
    Elsewhere the graph comes from :class:`NeighborList` and is copied in
    (:meth:`pack`).
    """

    def __init__(self, cutoff: float, skin: float, batch, n_systems=None, cell=None, pbc=None, *,
                 dtype=torch.float32, device="cpu", index_dtype=torch.long, margin: float = 0.05,
                 backend: str = "auto"):
        if cutoff <= 0 or skin < 0:
            raise ValueError(f"need cutoff > 0 and skin >= 0, got cutoff={cutoff}, skin={skin}")
        if backend not in ("auto", "kernels", "torch", "vesin", "ase", "emulate"):
            raise ValueError(f"unknown backend {backend!r}; use 'auto', 'kernels', 'torch', 'vesin' or 'ase'")
        if index_dtype not in (torch.int32, torch.long):
            raise ValueError(f"index_dtype must be torch.int32 or torch.int64, got {index_dtype}")
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:  # tensors report 'cuda:0', never 'cuda'
            device = torch.device("cuda", torch.cuda.current_device())
        self.cutoff, self.skin = float(cutoff), float(skin)
        self.radius = self.cutoff + self.skin
        self.pad = 2.0 * self.radius + 1.0
        self.dtype, self.device, self.index_dtype, self.margin = dtype, device, index_dtype, float(margin)
        batch = torch.as_tensor(batch).to(device=device, dtype=torch.long)
        n = batch.numel()
        if n == 0:
            raise ValueError("a static neighbour list needs at least one atom")
        batch, cell, pbc, n_systems = _prepare(torch.zeros(n, 3, dtype=dtype, device=device), batch, cell, pbc,
                                               n_systems)
        batch_cpu = batch.cpu()
        if n > 1 and not bool((batch_cpu[1:] >= batch_cpu[:-1]).all()):
            raise ValueError("StaticNeighborList needs each system's atoms to be one contiguous block")
        counts = torch.bincount(batch_cpu, minlength=n_systems)
        cell_np, pbc_np = cell.detach().cpu().double().numpy(), pbc.cpu().numpy()
        images, invs = [], np.zeros((n_systems, 3, 3))
        for s in range(n_systems):
            im, invs[s] = _images(cell_np[s], pbc_np[s], self.radius)
            images.append(im)
        img_ptr = np.concatenate([[0], np.cumsum([len(im) for im in images])])

        def i32(a):
            return torch.as_tensor(np.asarray(a), dtype=torch.int32, device=device).contiguous()

        self.n_atoms, self.n_systems = n, int(n_systems)
        self.batch = batch
        self._cell, self._pbc = cell.contiguous(), pbc
        self._inv = torch.as_tensor(invs, dtype=dtype, device=device).contiguous()
        self._pbc_i = pbc.to(torch.int32).contiguous()
        self._sys_ptr = i32(np.concatenate([[0], np.cumsum(counts.numpy())]))
        self._atom_sys = batch.to(torch.int32).contiguous()
        self._img_ptr = i32(img_ptr)
        self._img = i32(np.concatenate(images).reshape(-1, 3))
        self.n_images = int(img_ptr[-1])
        want_kernels = backend in ("auto", "kernels")
        self.use_kernels = want_kernels and dtype in (torch.float32, torch.float64) and _gpu_kernels_available(device)
        if backend == "kernels" and not self.use_kernels:
            raise RuntimeError(f"backend='kernels' needs a CUDA device with the CUDA core (device {device})")
        # 'emulate': gated builds done by the host builder with the kernels' semantics
        # (for testing the MD control flow without a GPU)
        self.emulate = backend == "emulate"
        self.gated = self.use_kernels or self.emulate
        self._host = NeighborList(self.cutoff, self.skin,
                                  backend="auto" if want_kernels or self.emulate else backend)
        self.ones = torch.ones(1, dtype=torch.int32, device=device)
        if self.use_kernels:
            self._pw = torch.empty(n, 3, dtype=dtype, device=device)
            self._wrap = torch.empty(n, 3, dtype=torch.int32, device=device)
            self._deg = torch.zeros(n, dtype=torch.int32, device=device)
            self._ptr = torch.zeros(n + 1, dtype=torch.int32, device=device)
            self._commit = torch.zeros(1, dtype=torch.int32, device=device)
        self.stat = new_stat(device)  # for the host-driven builds
        self.capacity = 0
        self.num_edges = 0  # edges of the last host-driven build (the kernels' builds report in their stat)
        self.graph: Graph | None = None

    # -- buffers --
    def allocate(self, capacity: int) -> Graph:
        """New buffers of ``capacity`` edge slots (all padding); returns the new graph."""
        capacity = int(capacity)
        if not 0 < capacity < 2**31:
            raise ValueError(f"edge capacity must be in [1, 2**31), got {capacity}")
        dev, it, n = self.device, self.index_dtype, self.n_atoms
        pad_atoms = (torch.arange(capacity, device=dev) % n).to(it)
        shifts = torch.zeros(capacity, 3, dtype=self.dtype, device=dev)
        shifts[:, 0] = self.pad
        self.graph = Graph(edge_src=pad_atoms, edge_dst=pad_atoms.clone(), shifts=shifts,
                           cell_shifts=torch.zeros(capacity, 3, dtype=it, device=dev),
                           dst_ptr=torch.zeros(n + 1, dtype=it, device=dev),
                           src_order=torch.arange(capacity, dtype=it, device=dev),
                           src_ptr=torch.zeros(n + 1, dtype=it, device=dev), batch=self.batch,
                           n_systems=self.n_systems, cutoff=self.radius)
        self.capacity = capacity
        self.num_edges = 0
        return self.graph

    # -- building --
    def count(self, pos: Tensor) -> int:
        """Number of edges a build at ``pos`` gives (synchronises)."""
        pos = self._positions(pos)
        if self.use_kernels:
            self._launch_front(pos, self.ones)
            return int(self._deg.sum())
        return self._host.build(pos, self.batch, self._cell, self._pbc, self.n_systems).num_edges

    def rebuild(self, pos: Tensor, x_ref: Tensor | None = None) -> bool:
        """Build the graph for ``pos`` now (synchronises), growing the buffers when
        the edges do not fit; ``x_ref`` (if given) receives a copy of ``pos``.
        Returns True when the buffers were reallocated: anything holding the old
        tensors (a captured CUDA graph, a cache) must be renewed."""
        pos = self._positions(pos)
        grown = False
        if self.use_kernels:
            if self.graph is None:
                self.allocate(capacity_for(self.count(pos), self.margin))
                grown = True
            while True:
                self.stat.copy_(new_stat(self.device))
                self.build_gated(pos, x_ref, self.ones, self.stat)
                st = self.stat.tolist()
                if st[STAT_ERROR]:
                    raise RuntimeError("neighbour-list kernels produced an asymmetric list (internal error)")
                if st[STAT_OVERFLOW] < 0:
                    self.num_edges = int(st[STAT_TOTAL])
                    return grown
                self.allocate(capacity_for(int(st[STAT_TOTAL]), self.margin))
                grown = True
        graph = self._host.build(pos, self.batch, self._cell, self._pbc, self.n_systems)
        if self.graph is None or graph.num_edges > self.capacity:
            self.allocate(capacity_for(graph.num_edges, self.margin))
            grown = True
        self.pack(graph)
        if x_ref is not None and x_ref.data_ptr() != pos.data_ptr():
            x_ref.copy_(pos)
        return grown

    def pack(self, graph: Graph) -> None:
        """Copy a standard (unpadded, sorted) graph into the buffers, in place."""
        g, n_edges, cap = self.graph, graph.num_edges, self.capacity
        if n_edges > cap:
            raise ValueError(f"{n_edges} edges do not fit in {cap} slots")
        dev = self.device
        g.edge_src[:n_edges].copy_(graph.edge_src)
        g.edge_dst[:n_edges].copy_(graph.edge_dst)
        g.cell_shifts[:n_edges].copy_(graph.cell_shifts)
        g.shifts[:n_edges].copy_(graph.shifts)
        g.src_order[:n_edges].copy_(graph.src_order)
        g.dst_ptr.copy_(graph.dst_ptr)
        g.src_ptr.copy_(graph.src_ptr)
        if n_edges < cap:
            pad_atoms = torch.arange(cap - n_edges, device=dev) % self.n_atoms
            g.edge_src[n_edges:].copy_(pad_atoms)
            g.edge_dst[n_edges:].copy_(pad_atoms)
            g.cell_shifts[n_edges:].zero_()
            g.shifts[n_edges:].zero_()
            g.shifts[n_edges:, 0] = self.pad
            g.src_order[n_edges:].copy_(torch.arange(n_edges, cap, device=dev))
        self.num_edges = n_edges

    def build_gated(self, pos: Tensor, x_ref: Tensor | None, gate: Tensor, stat: Tensor) -> None:
        """Enqueue a rebuild for ``pos`` that runs only if ``gate[0] != 0`` (int32 on
        the device) and commits only if it fits; then ``x_ref`` (if given) gets a
        copy of ``pos``. ``stat`` (int64, laid out by :mod:`.step_status`) collects
        the build count, edge totals and the first overflowing step. No host
        synchronisation."""
        if self.graph is None:
            raise RuntimeError("allocate() or rebuild() first")
        if self.emulate:
            self._emulate_gated(pos, x_ref, gate, stat)
            return
        if not self.use_kernels:
            raise RuntimeError("gated rebuilds need the GPU kernels (a CUDA device with the CUDA core)")
        g, n, cap = self.graph, self.n_atoms, self.capacity
        tsuf = "f32" if self.dtype == torch.float32 else "f64"
        isuf = "i32" if self.index_dtype == torch.int32 else "i64"
        real = np.float32 if self.dtype == torch.float32 else np.float64
        x_ref = pos if x_ref is None else x_ref
        self._launch_front(pos, gate)
        _kernel("nbr_scan")((1,), (1024,), (self._deg, np.int32(n), np.int64(cap), gate, self._ptr, self._commit,
                                            stat))
        _kernel(f"nbr_fill_{tsuf}_{isuf}")(
            (-(-n * 32 // 256),), (256,),
            (self._pw, self._wrap, self._atom_sys, self._sys_ptr, self._cell, self._img_ptr, self._img, np.int32(n),
             real(self.radius ** 2), self._commit, self._ptr, pos, x_ref, g.edge_src, g.edge_dst, g.shifts,
             g.cell_shifts, g.dst_ptr, g.src_ptr))
        _kernel(f"nbr_finish_{tsuf}_{isuf}")(
            (-(-cap // 256),), (256,),
            (self._commit, self._ptr, np.int32(n), np.int64(cap), real(self.pad), g.edge_src, g.edge_dst, g.shifts,
             g.cell_shifts, g.src_order, stat))

    def _emulate_gated(self, pos: Tensor, x_ref: Tensor | None, gate: Tensor, stat: Tensor) -> None:
        """build_gated's semantics with the host builder (synchronising)."""
        if not int(gate[0]):
            return
        graph = self._host.build(pos.detach(), self.batch, self._cell, self._pbc, self.n_systems)
        total = graph.num_edges
        stat[STAT_TOTAL] = total
        stat[STAT_MAX_TOTAL] = max(int(stat[STAT_MAX_TOTAL]), total)
        if total <= self.capacity:
            self.pack(graph)
            stat[STAT_BUILDS] += 1
            if x_ref is not None and x_ref.data_ptr() != pos.data_ptr():
                x_ref.copy_(pos)
        elif int(stat[STAT_OVERFLOW]) < 0:
            stat[STAT_OVERFLOW] = stat[STAT_STEP]

    def _launch_front(self, pos: Tensor, gate: Tensor) -> None:
        """Wrap into the cells and count neighbours per atom (into ``_deg``)."""
        n = self.n_atoms
        tsuf = "f32" if self.dtype == torch.float32 else "f64"
        real = np.float32 if self.dtype == torch.float32 else np.float64
        _kernel(f"nbr_wrap_{tsuf}")((-(-n // 256),), (256,), (pos, self._atom_sys, self._cell, self._inv, self._pbc_i,
                                                              np.int32(n), gate, self._pw, self._wrap))
        _kernel(f"nbr_count_{tsuf}")((-(-n * 32 // 256),), (256,),
                                     (self._pw, self._atom_sys, self._sys_ptr, self._cell, self._img_ptr, self._img,
                                      np.int32(n), real(self.radius ** 2), gate, self._deg))

    def _positions(self, pos: Tensor) -> Tensor:
        if pos.shape != (self.n_atoms, 3):
            raise ValueError(f"positions must have shape ({self.n_atoms}, 3), got {tuple(pos.shape)}")
        pos = pos.detach()
        if pos.dtype != self.dtype or pos.device != self.device or not pos.is_contiguous():
            raise ValueError(f"positions must be a contiguous {self.dtype} tensor on {self.device}")
        return pos

    def compact(self) -> Graph:
        """The real edges as a standard :class:`Graph` (int64 indices; synchronises)."""
        g = self.graph
        n_edges = int(g.dst_ptr[-1])
        return Graph(g.edge_src[:n_edges].long(), g.edge_dst[:n_edges].long(), g.shifts[:n_edges].clone(),
                     g.cell_shifts[:n_edges].long(), g.dst_ptr.long(), g.src_order[:n_edges].long(),
                     g.src_ptr.long(), g.batch, g.n_systems, g.cutoff)
