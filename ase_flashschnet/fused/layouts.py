"""The neighbour graph, an interaction's weights and the priors in the
layouts the fused kernels read (int32 CSR views, fp32 parameter tables)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..priors import HarmonicAngles, HarmonicBonds, Repulsion


def i32(t: Tensor) -> Tensor:
    return t.to(torch.int32).contiguous()


def check_whole_replicas(n_total: int, n_atoms: int, what: str) -> int:
    """Number of replicas of a molecule of ``n_atoms`` in ``n_total`` atoms; a
    remainder raises as the torch priors do."""
    if n_total % n_atoms:
        raise ValueError(f"{what} are for molecules of {n_atoms} atoms, but the input has {n_total} atoms "
                         "(not a whole number of replicas)")
    return n_total // n_atoms


@dataclass
class BondedTerms:
    """A ``HarmonicBonds`` (width 2) or ``HarmonicAngles`` (width 3) prior in the layout
    of ``priors.cu``: the local topology of one molecule, fp32 parameters per term."""

    index: Tensor  # (terms, width) int32 local atom indices
    k: Tensor
    rest: Tensor  # r0 or theta0
    n_atoms: int


@dataclass
class RepulsionTerms:
    """A ``Repulsion`` prior in the layout of ``priors.cu``."""

    sigma: Tensor  # fp32 table indexed by (type of src, type of dst); a scalar comes expanded
    exponent: int
    cutoff: float
    excluded_keys: Tensor  # sorted int64 local keys i * n_atoms + j, both directions
    n_atoms: int  # molecule size of the keys (1 without exclusions)


def kernel_priors(priors, num_types: int) -> tuple[list, list, list]:
    """(bonded, repulsions, others): the priors ``priors.cu`` evaluates, in its
    layouts (on the priors' device), and the rest (other kinds, subclasses
    included), left to torch autograd."""
    bonded, repulsions, others = [], [], []
    f32 = torch.float32
    for prior in priors:
        kind = type(prior)
        if kind in (HarmonicBonds, HarmonicAngles):
            rest = prior.r0 if kind is HarmonicBonds else prior.theta0
            bonded.append(BondedTerms(i32(prior.index), prior.k.to(f32).contiguous(), rest.to(f32).contiguous(),
                                      prior.n_atoms))
        elif kind is Repulsion:
            sigma = prior.sigma.to(f32)
            sigma = sigma.expand(num_types, num_types) if sigma.ndim == 0 else sigma
            repulsions.append(RepulsionTerms(sigma.contiguous(), prior.exponent, prior.cutoff,
                                             prior._excluded_keys.long().contiguous(), prior.n_atoms or 1))
        else:
            others.append(prior)
    return bonded, repulsions, others


def csr_ptr(index: Tensor, n: int) -> Tensor:
    zero = torch.zeros(1, dtype=torch.long, device=index.device)
    return i32(torch.cat([zero, torch.bincount(index, minlength=n).cumsum(0)]))


@dataclass
class Csr:
    """int32 CSR views of a neighbour graph (edges in destination order) and of the
    atoms of each system (``system`` is the system of each atom); ``perm`` maps
    sorted edges to the caller's edge order."""

    n_atoms: int
    n_edges: int
    src: Tensor
    dst: Tensor
    dst_ptr: Tensor
    src_order: Tensor
    src_ptr: Tensor
    shifts: Tensor | None
    sys_order: Tensor
    sys_ptr: Tensor
    system: Tensor
    n_systems: int
    perm: Tensor | None = None

    @staticmethod
    def _systems(batch, n_atoms, n_systems, device):
        if batch is None:
            batch = torch.zeros(n_atoms, dtype=torch.long, device=device)
            n_systems = 1
        batch = batch.to(device=device, dtype=torch.long)
        if n_systems is None:
            n_systems = int(batch.max()) + 1 if batch.numel() else 1
        return i32(torch.sort(batch, stable=True).indices), csr_ptr(batch, n_systems), batch, int(n_systems)

    @classmethod
    def from_graph(cls, graph, n_atoms: int, device) -> Csr:
        if graph.num_edges >= 2**31:
            raise ValueError(f"{graph.num_edges} edges: the fused kernels index edges with int32")
        systems = cls._systems(graph.batch, n_atoms, graph.n_systems, device)
        dev = lambda t: t.to(device)  # noqa: E731
        return cls(n_atoms, graph.num_edges, i32(dev(graph.edge_src)), i32(dev(graph.edge_dst)),
                   i32(dev(graph.dst_ptr)), i32(dev(graph.src_order)), i32(dev(graph.src_ptr)),
                   dev(graph.shifts).float().contiguous(), *systems)

    @classmethod
    def from_edges(cls, edge_src: Tensor, edge_dst: Tensor, n_atoms: int, batch, n_systems, device) -> Csr:
        src = edge_src.to(device=device, dtype=torch.long)
        dst = edge_dst.to(device=device, dtype=torch.long)
        if src.numel() >= 2**31:
            raise ValueError(f"{src.numel()} edges: the fused kernels index edges with int32")
        perm = None
        if dst.numel() > 1 and not bool((dst[1:] >= dst[:-1]).all()):
            perm = torch.sort(dst, stable=True).indices
            src, dst = src[perm], dst[perm]
        src_order = torch.sort(src, stable=True).indices
        systems = cls._systems(batch, n_atoms, n_systems, device)
        return cls(n_atoms, src.numel(), i32(src), i32(dst), csr_ptr(dst, n_atoms), i32(src_order),
                   csr_ptr(src, n_atoms), None, *systems, perm)


@dataclass
class Block:
    """One interaction's weights in the layouts the kernels read."""

    w1: Tensor  # fp32: filter1.weight^T (n_rbf, F); 16-bit: w_q (F, n_rbf padded to 16)
    w2: Tensor  # fp32: filter2.weight^T (F, F);      16-bit: w_q (F, F)
    params: Tensor  # b1, s1, b2, s2 (F each), Gaussian centres and widths (n_rbf each)
    cutoff: float
    lin1: Tensor
    lin2_w: Tensor
    lin2_b: Tensor
    lin_w: Tensor
    lin_b: Tensor
    lin1_b: Tensor | None = None  # force path: lin1.weight @ (sum of the earlier blocks' lin biases)
