"""FlashSchNet: SchNet energies and exact forces with fused, IO-aware CUDA kernels.

:class:`FusedSchNet` wraps a reference :class:`~ase_flashschnet.model.SchNet` for
inference and MD on one CUDA GPU. What is fused (``csrc/flashschnet/``):

* Flash radial basis: ``edge_lengths`` computes each distance once per force call;
  the Gaussians, their derivatives and the cosine envelope C(d), C'(d) are made
  inside the CFConv kernels, tile by tile in shared memory. No [E x n_rbf] tensor.
* Flash message passing: ``cfconv_forward`` is one kernel per interaction; for a
  tile of edges (destination order) it runs filter1 -> act -> filter2 on the tile,
  scales by C(d), multiplies by the gathered ``lin1(x)[src]`` rows and sums the
  messages of each atom. ``cfconv_backward`` recomputes the filter network (nothing
  is saved) in source order, with a forward-mode tangent d/dd through it, and
  returns dE/d(lin1(x)) and dE/dd per edge, including C'(d) and the Gaussians'
  derivatives. No [E x F] tensor is ever written to global memory. The edge
  arrays of the next tile are copied (cp.async) while a tile computes.
* Flash aggregation: every sum over edges is a CSR segment sum taken in a fixed
  order (by destination forward, by source backward, both for the forces), never
  an atomic: forces are bitwise identical from run to run.
* 16-bit filters: ``precision='fp16'|'bf16'`` stores filter1/filter2 as
  ``w_q = round(w / s_c)`` with one fp32 scale per output channel,
  ``s_c = max_k |w_ck|`` (so ``|w_q| <= 1``: no overflow, and fp16 keeps its
  full 11-bit significand down to ``2^-14 s_c``); the products run on tensor
  cores (mma.sync m16n8k16) with fp32 accumulation and the scale is applied to
  the fp32 accumulator. Activations inside the filter network are rounded to the
  same 16-bit type. lin1/lin2/lin and the output MLP stay fp32 (torch, cheap).
  ``precision='fp32'`` uses FFMA with register tiling and keeps fp32 accuracy.

The per-atom dense parts (embedding, lin1, lin2, lin, output MLP) run in torch.
For forces (``energy_and_forces``, ``energy_forces_virial``) the backward
of the dense part is written out (``FusedSchNet._energy_grad_d``: no autograd
graph, one cuBLAS call per product, lin biases folded so each residual update is
one addmm) and gives ``dE/dd`` per edge; one CSR kernel then multiplies by the
unit vectors and sums per atom. The priors of ``priors.py`` have analytic
derivatives in ``priors.cu`` (``FusedSchNet._force_terms``): ``Repulsion`` adds
its ``dE/dd`` to SchNet's before that kernel (one warp per atom over its edges, so
its forces and virial come with SchNet's), the bonded terms (one thread per
replica and term, on the local topology of one molecule) add forces and virials
after it; priors of other kinds go through torch autograd. The whole evaluation
has no host synchronisation once the neighbour graph's CSR is cached, so it can
be captured in a CUDA graph (``benchmarks/schnet_throughput.py --cuda-graph``).
``energy`` and ``per_atom_energies`` go through autograd instead (the CFConv is a
``torch.autograd.Function``, the priors are the torch ones), so they stay
differentiable. Only first derivatives with
respect to positions (and strain) are provided: no weight gradients and no
double backward, so this module cannot train; train the reference model and
build a new :class:`FusedSchNet` (or call :meth:`FusedSchNet.refresh`).

Cost of the CFConv for the benchmark case (E = 1.0 M edges, F = 128 filters,
n_rbf = 50, 3 interactions; 64 replicas of 269 beads, N = 17 216):

* FLOPs per edge: filter1 50 x 128 + filter2 128 x 128 = 22 784 multiply-adds
  = 45.6 kFLOP forward; the backward recomputes them and carries the tangent
  through the same weights (2 x 45.6 kFLOP). Per force call:
  3 x (45.6 + 91.1) GFLOP = 410 GFLOP (+ ~15 GFLOP of per-atom GEMMs in cuBLAS).
  Floor on an H100 at ~60 TFLOP/s FP32 FFMA: 6.8 ms (fp32). With 16-bit tensor
  cores (n_rbf padded to 64: 442 GFLOP) at ~600 TFLOP/s reachable with mma.sync:
  0.75 ms.
* Compulsory DRAM bytes per force call: edge arrays (ids, distances, shifts,
  dE/dd) ~ 0.2 GB and per-atom rows (N x F x 4 B = 8.8 MB each, a few per
  interaction) ~ 0.1 GB: ~0.3 GB, ~0.1 ms at 3 TB/s. The gathered rows
  (512 B per edge per gather, 3 gathers per interaction) are ~4.6 GB of L2/L1
  traffic, served from L2 since every N x F matrix fits in it.
  The plain PyTorch reference instead writes and reads about ten [E x F] fp32
  tensors per interaction (0.5 GB each): ~15 GB of DRAM traffic per force call
  (>= 5 ms at 3 TB/s) and ~9 GB of peak memory.
So the fused fp32 path is FFMA-bound and the 16-bit path is bound by tensor-core
issue and L2 gathers; neither is bound by DRAM.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import gpucore
from gpucore import GPUUnavailableError

from .model import ACTIVATIONS
from .priors import HarmonicAngles, HarmonicBonds, Repulsion

__all__ = ["FusedSchNet", "PRECISIONS", "quantize_per_channel", "kernel_defines", "cfconv_flops", "precompile"]

PRECISIONS = ("fp32", "fp16", "bf16")
_PREC_CODE = {"fp32": 0, "fp16": 1, "bf16": 2}
_ACT_CODE = {"tanh": 0, "ssp": 1, "silu": 2}
_QDTYPE = {"fp16": torch.float16, "bf16": torch.bfloat16}
_DEFAULT = dict(num_filters=128, num_rbf=50, activation="tanh")
_LOG2 = 0.6931471805599453


# Activations of the hand-written force path (FusedSchNet._energy_grad_d): forward
# (value, what the backward needs) and backward (dE/dz from dE/dy), one kernel each
# (two for ssp's forward), with the formulas of torch autograd.
def _tanh_fwd(z):
    y = torch.tanh(z)
    return y, y


def _ssp_fwd(z):
    return F.softplus(z).sub_(_LOG2), z


def _silu_fwd(z):
    return F.silu(z), z


_ACT_FWD = {"tanh": _tanh_fwd, "ssp": _ssp_fwd, "silu": _silu_fwd}
_ACT_BWD = {"tanh": lambda g, y: torch.ops.aten.tanh_backward(g, y),
            "ssp": lambda g, z: torch.ops.aten.softplus_backward(g, z, 1.0, 20.0),
            "silu": lambda g, z: torch.ops.aten.silu_backward(g, z)}


def quantize_per_channel(weight: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Split an ``nn.Linear`` weight (out, in) into 16-bit ``w_q`` and fp32 scales ``s``
    with ``weight ~= s[:, None] * w_q``.

    ``s_c = max_k |w_ck|`` (1 for an all-zero row), so ``|w_q| <= 1``. The round
    trip error is at most half an ulp of the 16-bit type relative to each weight
    (2^-11 for fp16, 2^-8 for bf16), plus ``2^-25 s_c`` for fp16 weights below its
    normal range (``|w| < 2^-14 s_c``).
    """
    w = weight.detach().float()
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax, torch.ones_like(amax))
    return (w / scale[:, None]).to(dtype), scale


def kernel_defines(num_filters: int, num_rbf: int, activation: str, precision: str) -> dict:
    """The -D defines of ``csrc/flashschnet/cfconv.cu`` for one model configuration."""
    if precision not in _PREC_CODE:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if activation not in _ACT_CODE:
        raise ValueError(f"the fused kernels support activations {sorted(_ACT_CODE)}, got {activation!r}")
    # Both filter matrices live in shared memory for the whole kernel.
    if num_filters not in (64, 128):
        raise ValueError(f"the fused kernels support num_filters 64 or 128, got {num_filters}")
    if not 1 <= num_rbf <= 128:
        raise ValueError(f"the fused kernels support 1 to 128 Gaussians, got num_rbf={num_rbf}")
    return {"F": int(num_filters), "NRBF": int(num_rbf), "ACT": _ACT_CODE[activation], "PREC": _PREC_CODE[precision]}


def cfconv_flops(n_edges: int, num_filters: int, num_rbf: int, precision: str) -> tuple[int, int]:
    """FLOPs (2 per multiply-add) the CFConv kernels execute per interaction:
    (forward, backward). Forward: filter1 (K x F) and filter2 (F x F) per edge, with
    K = num_rbf (fp32) or num_rbf padded to 16 (tensor cores); the backward
    recomputes both products and carries the tangent through them (twice that)."""
    k = num_rbf if precision == "fp32" else -(-num_rbf // 16) * 16
    fwd = 2 * n_edges * (k * num_filters + num_filters * num_filters)
    return fwd, 2 * fwd


def _check_device(device) -> torch.device:
    device = torch.device("cuda" if device is None else device)
    if device.type != "cuda":
        raise GPUUnavailableError(
            f"FusedSchNet runs its kernels on a CUDA GPU, not on {device}; use the reference "
            "ase_flashschnet.model.SchNet for the CPU")
    gpucore.require_gpu("FusedSchNet")
    if not torch.cuda.is_available():
        raise GPUUnavailableError("FusedSchNet needs PyTorch built with CUDA and a visible GPU "
                                  "(torch.cuda.is_available() is False)")
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class _Kernels:
    """Compiled kernels of one configuration on one GPU, with their launch geometry."""

    def __init__(self, defines: dict, device: torch.device):
        self.defines = defines
        self.device = device
        self.cf_module = gpucore.compile_file("flashschnet/cfconv.cu", defines=defines)
        self.geo_module = gpucore.compile_file("flashschnet/geometry.cu")
        config = torch.zeros(4, dtype=torch.int32, device=device)
        self.cf_module.get_kernel("cfconv_config")((1,), (1,), (config,))
        fwd_smem, fwd_threads, bwd_smem, bwd_threads = config.tolist()
        self.fwd = self.cf_module.get_kernel("cfconv_forward")
        self.bwd = self.cf_module.get_kernel("cfconv_backward")
        self.fwd_launch = self._geometry(self.fwd, fwd_threads, fwd_smem)
        self.bwd_launch = self._geometry(self.bwd, bwd_threads, bwd_smem)
        self.lengths = self.geo_module.get_kernel("edge_lengths")
        self.forces = self.geo_module.get_kernel("edge_forces")
        self.segsum = self.geo_module.get_kernel("segment_sum")
        self.prior_module = gpucore.compile_file("flashschnet/priors.cu")
        self.repulsion = self.prior_module.get_kernel("repulsion_edges")
        self.bonded = {2: self.prior_module.get_kernel("harmonic_bonds"),
                       3: self.prior_module.get_kernel("harmonic_angles")}

    def _geometry(self, kernel, threads: int, smem: int) -> tuple[int, int, int]:
        """(resident grid size, threads, dynamic shared bytes): a persistent grid of
        as many blocks as fit on the GPU at once, each balanced by edge count."""
        idx = self.device.index
        kernel.set_max_dynamic_shared(smem, idx)
        props = torch.cuda.get_device_properties(self.device)
        smem_sm = getattr(props, "shared_memory_per_multiprocessor", 228 * 1024)
        regs = max(kernel.attributes(idx)["num_regs"], 1)
        per_sm = min(2048 // threads, smem_sm // (smem + 1024), 65536 // (threads * ((regs + 7) // 8 * 8)))
        return props.multi_processor_count * max(per_sm, 1), threads, smem

    @staticmethod
    def _grid(resident: int, n_edges: int) -> int:
        # Small graphs get about one block per 64 edges instead of a full GPU's worth.
        return max(1, min(resident, -(-n_edges // 64)))

    def cfconv_forward(self, h: Tensor, d: Tensor, csr: "_Csr", blk: "_Block", grid: int | None = None) -> Tensor:
        """``grid``: number of blocks (default: as many as are resident); the result
        does not depend on it, bit for bit."""
        out = torch.empty_like(h)
        resident, threads, smem = self.fwd_launch
        self.fwd((grid or self._grid(resident, csr.n_edges),), (threads,),
                 (h, d, csr.dst_ptr, csr.dst, csr.src, blk.w1, blk.w2, blk.params, np.float32(blk.cutoff),
                  np.int32(csr.n_atoms), out), shared_mem=smem)
        return out

    def cfconv_backward(self, h: Tensor, gm: Tensor, d: Tensor, csr: "_Csr", blk: "_Block",
                        grid: int | None = None) -> tuple[Tensor, Tensor]:
        grad_h = torch.empty_like(h)
        grad_d = torch.empty_like(d)
        resident, threads, smem = self.bwd_launch
        self.bwd((grid or self._grid(resident, csr.n_edges),), (threads,),
                 (h, gm, d, csr.src_ptr, csr.src_order, csr.src, csr.dst, blk.w1, blk.w2, blk.params,
                  np.float32(blk.cutoff), np.int32(csr.n_atoms), grad_h, grad_d), shared_mem=smem)
        return grad_h, grad_d

    def edge_lengths(self, pos: Tensor, csr: "_Csr") -> Tensor:
        d = torch.empty(csr.n_edges, dtype=torch.float32, device=pos.device)
        self.lengths((-(-csr.n_edges // 256),), (256,), (pos, csr.shifts, csr.src, csr.dst, np.int32(csr.n_edges), d))
        return d

    def edge_forces(self, g: Tensor, pos: Tensor, csr: "_Csr", virial: bool) -> tuple[Tensor, Tensor | None]:
        forces = torch.empty(csr.n_atoms, 3, dtype=torch.float32, device=pos.device)
        virials = torch.empty(csr.n_atoms if virial else 1, 9, dtype=torch.float32, device=pos.device)
        self.forces((-(-csr.n_atoms * 32 // 256),), (256,),
                    (g, pos, csr.shifts, csr.src, csr.dst, csr.dst_ptr, csr.src_order, csr.src_ptr,
                     np.int32(csr.n_atoms), np.int32(virial), forces, virials))
        return forces, (virials if virial else None)

    def repulsion_edges(self, prior: "_RepulsionTerms", types: Tensor, d: Tensor, csr: "_Csr", grad_d: Tensor,
                        per_atom: Tensor) -> None:
        """Adds the repulsion's dE/dd to ``grad_d`` and its energies to ``per_atom``, in place."""
        keys = prior.excluded_keys
        if keys.numel():
            _check_whole_replicas(csr.n_atoms, prior.n_atoms, "repulsion exclusions")
        self.repulsion((-(-csr.n_atoms * 32 // 256),), (256,),
                       (d, csr.src, csr.dst_ptr, types.contiguous(), prior.sigma, np.int32(prior.sigma.shape[1]),
                        np.int32(prior.exponent), np.float32(prior.cutoff), keys, np.int32(keys.numel()),
                        np.int32(prior.n_atoms), np.int32(csr.n_atoms), grad_d, per_atom))

    def bonded_terms(self, prior: "_BondedTerms", pos: Tensor, forces: Tensor, per_atom: Tensor,
                     virials: Tensor | None) -> None:
        """Adds the bonds' or angles' forces, energies and (if ``virials``) virials, in place."""
        n_replicas = _check_whole_replicas(pos.shape[0], prior.n_atoms, "bonded prior topologies")
        n_terms = prior.index.shape[0]
        self.bonded[prior.index.shape[1]](
            (-(-n_terms * n_replicas // 256),), (256,),
            (pos, prior.index, prior.k, prior.rest, np.int32(n_terms), np.int32(prior.n_atoms), np.int32(n_replicas),
             forces, per_atom, np.uint64(0) if virials is None else virials))

    def segment_sum(self, values: Tensor, order: Tensor, ptr: Tensor, n_segments: int) -> Tensor:
        values = values.contiguous()
        cols = int(np.prod(values.shape[1:]))
        out = torch.empty(n_segments, cols, dtype=torch.float32, device=values.device)
        self.segsum((-(-n_segments * 32 // 256),), (256,),
                    (values, order, ptr, np.int32(n_segments), np.int32(cols), out))
        return out


@functools.lru_cache(maxsize=None)
def _kernels(defines_items: tuple, device: torch.device) -> _Kernels:
    return _Kernels(dict(defines_items), device)


def _i32(t: Tensor) -> Tensor:
    return t.to(torch.int32).contiguous()


def _check_whole_replicas(n_total: int, n_atoms: int, what: str) -> int:
    """Number of replicas of a molecule of ``n_atoms`` in ``n_total`` atoms; a
    remainder raises as the torch priors do."""
    if n_total % n_atoms:
        raise ValueError(f"{what} are for molecules of {n_atoms} atoms, but the input has {n_total} atoms "
                         "(not a whole number of replicas)")
    return n_total // n_atoms


@dataclass
class _BondedTerms:
    """A ``HarmonicBonds`` (width 2) or ``HarmonicAngles`` (width 3) prior in the layout
    of ``priors.cu``: the local topology of one molecule, fp32 parameters per term."""

    index: Tensor  # (terms, width) int32 local atom indices
    k: Tensor
    rest: Tensor  # r0 or theta0
    n_atoms: int


@dataclass
class _RepulsionTerms:
    """A ``Repulsion`` prior in the layout of ``priors.cu``."""

    sigma: Tensor  # fp32 table indexed by (type of src, type of dst); a scalar comes expanded
    exponent: int
    cutoff: float
    excluded_keys: Tensor  # sorted int64 local keys i * n_atoms + j, both directions
    n_atoms: int  # molecule size of the keys (1 without exclusions)


def _kernel_priors(priors, num_types: int) -> tuple[list, list, list]:
    """(bonded, repulsions, others): the priors ``priors.cu`` evaluates, in its
    layouts (on the priors' device), and the rest (other kinds, subclasses
    included), left to torch autograd."""
    bonded, repulsions, others = [], [], []
    f32 = torch.float32
    for prior in priors:
        kind = type(prior)
        if kind in (HarmonicBonds, HarmonicAngles):
            rest = prior.r0 if kind is HarmonicBonds else prior.theta0
            bonded.append(_BondedTerms(_i32(prior.index), prior.k.to(f32).contiguous(), rest.to(f32).contiguous(),
                                       prior.n_atoms))
        elif kind is Repulsion:
            sigma = prior.sigma.to(f32)
            sigma = sigma.expand(num_types, num_types) if sigma.ndim == 0 else sigma
            repulsions.append(_RepulsionTerms(sigma.contiguous(), prior.exponent, prior.cutoff,
                                              prior._excluded_keys.long().contiguous(), prior.n_atoms or 1))
        else:
            others.append(prior)
    return bonded, repulsions, others


def _csr_ptr(index: Tensor, n: int) -> Tensor:
    zero = torch.zeros(1, dtype=torch.long, device=index.device)
    return _i32(torch.cat([zero, torch.bincount(index, minlength=n).cumsum(0)]))


@dataclass
class _Csr:
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
        return _i32(torch.sort(batch, stable=True).indices), _csr_ptr(batch, n_systems), batch, int(n_systems)

    @classmethod
    def from_graph(cls, graph, n_atoms: int, device) -> "_Csr":
        if graph.num_edges >= 2**31:
            raise ValueError(f"{graph.num_edges} edges: the fused kernels index edges with int32")
        systems = cls._systems(graph.batch, n_atoms, graph.n_systems, device)
        dev = lambda t: t.to(device)  # noqa: E731
        return cls(n_atoms, graph.num_edges, _i32(dev(graph.edge_src)), _i32(dev(graph.edge_dst)),
                   _i32(dev(graph.dst_ptr)), _i32(dev(graph.src_order)), _i32(dev(graph.src_ptr)),
                   dev(graph.shifts).float().contiguous(), *systems)

    @classmethod
    def from_edges(cls, edge_src: Tensor, edge_dst: Tensor, n_atoms: int, batch, n_systems, device) -> "_Csr":
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
        return cls(n_atoms, src.numel(), _i32(src), _i32(dst), _csr_ptr(dst, n_atoms), _i32(src_order),
                   _csr_ptr(src, n_atoms), None, *systems, perm)


@dataclass
class _Block:
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


class _CFConv(torch.autograd.Function):
    """m = CFConv(h, d); the backward gives dE/dh and dE/dd (exact, envelope included)."""

    @staticmethod
    def forward(ctx, h, d, kernels, blk, csr):
        ctx.save_for_backward(h, d)
        ctx.kernels, ctx.blk, ctx.csr = kernels, blk, csr
        return kernels.cfconv_forward(h, d, csr, blk)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gm):
        h, d = ctx.saved_tensors
        grad_h, grad_d = ctx.kernels.cfconv_backward(h, gm.contiguous(), d, ctx.csr, ctx.blk)
        return (grad_h if ctx.needs_input_grad[0] else None, grad_d if ctx.needs_input_grad[1] else None,
                None, None, None)


class _SystemSum(torch.autograd.Function):
    """Per-system sums of per-atom values by a deterministic segment sum."""

    @staticmethod
    def forward(ctx, values, kernels, csr):
        ctx.csr = csr
        return kernels.segment_sum(values, csr.sys_order, csr.sys_ptr, csr.n_systems).reshape(csr.n_systems)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        return grad[ctx.csr.system], None, None


class FusedSchNet(nn.Module):
    """A reference :class:`~ase_flashschnet.model.SchNet` evaluated with the fused
    CUDA kernels (see the module docstring), for inference and MD only.

    ``precision``: ``'fp32'`` (default; fp32 accuracy), ``'fp16'`` or ``'bf16'``
    (filter network on tensor cores with per-channel-scaled 16-bit weights).
    ``device``: a CUDA device (default: the current one); anything else raises
    :class:`gpucore.GPUUnavailableError`.

    The weights are copied (and quantised) at construction: after changing the
    model's weights call :meth:`refresh`. The module holds no parameters and no
    weight gradients exist; it refuses ``train()`` and ``create_graph=True``.
    Energies and forces are computed in float32 and returned in the dtype of
    ``pos``. Forces are bitwise reproducible for the SchNet part and the repulsion
    priors; bonded priors (bonds, angles) add their forces and energies with
    atomics, so those differ from run to run in the last bits, as do priors of
    other kinds (torch autograd).
    """

    def __init__(self, model, precision: str = "fp32", device=None):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        config = model.config
        self._defines = kernel_defines(config["num_filters"], config["num_rbf"], config["activation"], precision)
        self.device = _check_device(device)
        self.precision = precision
        self._act_name = config["activation"]
        self._out_act_name = config.get("output_activation") or config["activation"]
        self.act = ACTIVATIONS[self._act_name]
        self.out_act = ACTIVATIONS[self._out_act_name]
        super().train(False)
        self.refresh(model)

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError("FusedSchNet is inference-only (forces for MD, no weight gradients); "
                               "train the reference SchNet and wrap it again")
        return super().train(False)

    @torch.no_grad()
    def refresh(self, model) -> None:
        """Copy (and for 16-bit, quantise) the weights of ``model`` again."""
        self._load_weights(model)
        self._kernels = _kernels(tuple(sorted(self._defines.items())), self.device)
        self._graph_cache = None

    @torch.no_grad()
    def _load_weights(self, model) -> None:
        dev, f32 = self.device, torch.float32

        def t(x):
            return x.detach().to(device=dev, dtype=f32).contiguous()

        config = model.config
        n_rbf, cutoff = config["num_rbf"], float(model.rbf.cutoff)
        mu = t(model.rbf.centers)
        gamma = t(model.rbf.gamma).expand(n_rbf).contiguous()
        blocks = []
        for it in model.interactions:
            w1, w2 = it.filter1.weight, it.filter2.weight
            if self.precision == "fp32":
                q1, q2 = t(w1.t()), t(w2.t())
                s1 = torch.ones(w1.shape[0], device=dev)
                s2 = torch.ones(w2.shape[0], device=dev)
            else:
                dtype = _QDTYPE[self.precision]
                q1, s1 = quantize_per_channel(t(w1), dtype)
                q2, s2 = quantize_per_channel(t(w2), dtype)
                q1 = F.pad(q1, (0, -n_rbf % 16)).contiguous()
            params = torch.cat([t(it.filter1.bias), s1, t(it.filter2.bias), s2, mu, gamma]).contiguous()
            blocks.append(_Block(q1, q2.contiguous(), params, cutoff, t(it.lin1.weight), t(it.lin2.weight),
                                 t(it.lin2.bias), t(it.lin.weight), t(it.lin.bias)))
        self._blocks = blocks
        self._embedding = t(model.embedding.weight)
        self._out = (t(model.output1.weight), t(model.output1.bias), t(model.output2.weight), t(model.output2.bias))
        self._atomref = t(model.atomref)
        self._scale, self._shift = float(model.energy_scale), float(model.energy_shift)
        self._priors = copy.deepcopy(model.priors).to(device=dev, dtype=f32)
        self._bonded, self._repulsions, self._torch_priors = _kernel_priors(self._priors, self._embedding.shape[0])
        # The force path keeps x' = x - c_k, where c_k is the sum of the lin biases of
        # the blocks before block k: the residual update is then one addmm, and c_k
        # enters as a bias of lin1 (W1 c_k) and of output1 (W_o1 c + b_o1). The
        # energy scale and shift are folded into output2. Same function; fp32
        # rounding differs from the unfolded order by ~1 ulp.
        c = torch.zeros_like(self._embedding[0])
        for i, blk in enumerate(blocks):
            blk.lin1_b = None if i == 0 else (blk.lin1 @ c).contiguous()
            c = c + blk.lin_b
        o1w, o1b, o2w, o2b = self._out
        self._out_folded = (o1w, (o1w @ c + o1b).contiguous(), (self._scale * o2w).contiguous(),
                            (self._scale * o2b + self._shift).contiguous())
        self._atomref_zero = not bool(self._atomref.any())

    def _csr_of(self, graph, n_atoms: int) -> _Csr:
        cached = self._graph_cache
        if cached is None or cached[0] is not graph or cached[1].n_atoms != n_atoms:
            cached = self._graph_cache = (graph, _Csr.from_graph(graph, n_atoms, self.device))
        return cached[1]

    def _schnet_atoms(self, types: Tensor, d: Tensor, csr: _Csr) -> Tensor:
        """Per-atom SchNet energies (no priors) from the edge lengths in CSR order."""
        x = F.embedding(types, self._embedding)
        for blk in self._blocks:
            h = F.linear(x, blk.lin1)
            m = _CFConv.apply(h, d, self._kernels, blk, csr)
            x = x + F.linear(self.act(F.linear(m, blk.lin2_w, blk.lin2_b)), blk.lin_w, blk.lin_b)
        o1w, o1b, o2w, o2b = self._out
        out = F.linear(self.out_act(F.linear(x, o1w, o1b)), o2w, o2b).squeeze(-1)
        return self._scale * out + self._shift + self._atomref[types]

    def _energy_grad_d(self, types: Tensor, d: Tensor, csr: _Csr) -> tuple[Tensor, Tensor]:
        """Per-atom SchNet energies (no priors) and dE/dd per edge (dE = sum of the
        per-atom energies), with the backward written out instead of taken by autograd:
        no graph is recorded, every product is one cuBLAS call (residual updates and
        lin1's gradient accumulate with addmm), each activation derivative one kernel
        from the saved activation, and the dE/dd of the blocks accumulate in place.
        Same formulas as ``_schnet_atoms`` + ``torch.autograd.grad``."""
        kernels, act_fwd, act_bwd = self._kernels, _ACT_FWD[self._act_name], _ACT_BWD[self._act_name]
        x = F.embedding(types, self._embedding)
        saved = []
        for blk in self._blocks:
            h = F.linear(x, blk.lin1, blk.lin1_b)
            m = kernels.cfconv_forward(h, d, csr, blk)
            a, keep = act_fwd(F.linear(m, blk.lin2_w, blk.lin2_b))
            x = torch.addmm(x, a, blk.lin_w.t())
            saved.append((h, keep))
        o1w, o1b, o2w, o2b = self._out_folded
        y, keep_y = _ACT_FWD[self._out_act_name](F.linear(x, o1w, o1b))
        energy = F.linear(y, o2w, o2b).squeeze(-1)
        if not self._atomref_zero:
            energy = energy + self._atomref[types]
        # dE/dy is the same row (scale * output2.weight) for every atom.
        gx = _ACT_BWD[self._out_act_name](o2w.expand_as(y), keep_y) @ o1w
        grad_d = None
        for i in range(len(self._blocks) - 1, -1, -1):
            blk, (h, keep) = self._blocks[i], saved[i]
            gm = act_bwd(gx @ blk.lin_w, keep) @ blk.lin2_w
            gh, gd = kernels.cfconv_backward(h, gm, d, csr, blk)
            grad_d = gd if grad_d is None else grad_d.add_(gd)
            if i:
                gx = torch.addmm(gx, gh, blk.lin1)
        return energy, (torch.zeros_like(d) if grad_d is None else grad_d)

    def _types(self, types) -> Tensor:
        return torch.as_tensor(types, device=self.device).long().reshape(-1)

    def per_atom_energies(self, types: Tensor, pos: Tensor, edge_src: Tensor, edge_dst: Tensor,
                          edge_vec: Tensor | None = None) -> Tensor:
        """Energy of each atom (N,), as the reference's; differentiable with respect to
        ``edge_vec`` (or ``pos`` when ``edge_vec`` is None)."""
        return self._per_atom(types, pos, edge_src, edge_dst, edge_vec, None, None)[0]

    def _per_atom(self, types, pos, edge_src, edge_dst, edge_vec, batch, n_systems):
        types = self._types(types)
        pos = pos.to(self.device)
        edge_src, edge_dst = edge_src.to(self.device), edge_dst.to(self.device)
        csr = _Csr.from_edges(edge_src, edge_dst, pos.shape[0], batch, n_systems, self.device)
        if edge_vec is None:
            edge_vec = pos[edge_src] - pos[edge_dst]
        vec = edge_vec.to(self.device, torch.float32)
        if csr.perm is not None:
            vec = vec[csr.perm]
        d = torch.linalg.vector_norm(vec, dim=1)
        energy = self._schnet_atoms(types, d, csr)
        if len(self._priors):
            pos32, ev32 = pos.float(), edge_vec.to(self.device, torch.float32)
            energy = energy + sum(p(types, pos32, edge_src, edge_dst, ev32) for p in self._priors)
        return energy.to(pos.dtype), csr

    def energy(self, types: Tensor, pos: Tensor, edge_src: Tensor, edge_dst: Tensor,
               edge_vec: Tensor | None = None, batch: Tensor | None = None, n_systems: int | None = None) -> Tensor:
        """Total energy of each system (n_systems,), summed in a fixed order."""
        per_atom, csr = self._per_atom(types, pos, edge_src, edge_dst, edge_vec, batch, n_systems)
        return _SystemSum.apply(per_atom.float(), self._kernels, csr).to(per_atom.dtype)

    def energy_and_forces(self, types: Tensor, pos: Tensor, graph, create_graph: bool = False):
        """(energy (n_systems,), forces (N, 3)), forces = -dE/dpos exactly.
        ``graph`` is a ``neighbors.Graph``."""
        energy, forces, _ = self._derivatives(types, pos, graph, create_graph, virial=False)
        return energy, forces

    def energy_forces_virial(self, types: Tensor, pos: Tensor, graph, create_graph: bool = False):
        """(energy, forces, virial (n_systems, 3, 3)) with virial = -dE/d(strain), as the
        reference's ``energy_forces_virial`` (ASE stress is ``-virial / volume``)."""
        return self._derivatives(types, pos, graph, create_graph, virial=True)

    def _derivatives(self, types, pos, graph, create_graph, virial):
        if create_graph:
            raise NotImplementedError("FusedSchNet gives first derivatives only (MD forces); "
                                      "use the reference SchNet for create_graph=True")
        types = self._types(types)
        pos32 = pos.detach().to(self.device, torch.float32).contiguous()
        csr = self._csr_of(graph, pos32.shape[0])
        kernels = self._kernels
        per_atom, forces, atom_virial = self._force_terms(types, pos32, csr, virial)
        system_virial = None
        if virial:
            system_virial = kernels.segment_sum(atom_virial, csr.sys_order, csr.sys_ptr, csr.n_systems)
            system_virial = system_virial.reshape(csr.n_systems, 3, 3)
        if self._torch_priors:
            e_prior, f_prior, v_prior = self._prior_terms(types, pos32, graph, virial)
            per_atom, forces = per_atom + e_prior, forces + f_prior
            if virial:
                system_virial = system_virial + v_prior
        energy = kernels.segment_sum(per_atom, csr.sys_order, csr.sys_ptr, csr.n_systems).reshape(csr.n_systems)
        out = (energy.to(pos.dtype), forces.to(pos.dtype))
        return (*out, None if system_virial is None else system_virial.to(pos.dtype))

    def _force_terms(self, types: Tensor, pos32: Tensor, csr: _Csr, virial: bool):
        """(per-atom energies, forces, per-atom virials or None) of SchNet and of the
        priors that ``priors.cu`` evaluates: the repulsions join dE/dd before the edge
        kernel turns it into forces and virials, the bonded terms add theirs after."""
        kernels = self._kernels
        d = kernels.edge_lengths(pos32, csr)
        with torch.no_grad():
            per_atom, grad_d = self._energy_grad_d(types, d, csr)
        for prior in self._repulsions:
            kernels.repulsion_edges(prior, types, d, csr, grad_d, per_atom)
        forces, atom_virial = kernels.edge_forces(grad_d, pos32, csr, virial)
        for prior in self._bonded:
            kernels.bonded_terms(prior, pos32, forces, per_atom, atom_virial)
        return per_atom, forces, atom_virial

    def _prior_terms(self, types, pos32, graph, virial):
        """Energies per atom, forces and virial of the priors without kernels (other
        kinds than those of ``priors.cu``) by torch autograd, as the reference."""
        src, dst = graph.edge_src.to(self.device), graph.edge_dst.to(self.device)
        shifts = graph.shifts.to(self.device, torch.float32)
        batch = graph.batch.to(self.device)
        with torch.enable_grad():
            leaf = pos32.clone().requires_grad_(True)
            inputs, moved = [leaf], leaf
            if virial:
                strain = torch.zeros(graph.n_systems, 3, 3, device=self.device, requires_grad=True)
                inputs.append(strain)
                moved = leaf + torch.einsum("ni,nij->nj", leaf, strain[batch])
                shifts = shifts + torch.einsum("ei,eij->ej", shifts, strain[batch[dst]])
            edge_vec = moved[src] - moved[dst] + shifts
            energy = sum(p(types, moved, src, dst, edge_vec) for p in self._torch_priors)
            grads = torch.autograd.grad(energy.sum(), inputs)
        return energy.detach(), -grads[0], (-grads[1] if virial else None)


def precompile(num_filters: int = _DEFAULT["num_filters"], num_rbf: int = _DEFAULT["num_rbf"],
               activation: str = _DEFAULT["activation"], precisions=PRECISIONS) -> list[str]:
    """Compile the kernels of one configuration (default: 128 filters, 50 Gaussians,
    tanh; every precision) into the disk cache; one line per module."""
    lines = []
    for source in ("flashschnet/geometry.cu", "flashschnet/priors.cu"):
        module = gpucore.compile_file(source)
        lines.append(f"{source}: {'from cache' if module.from_cache else 'compiled'}")
    for precision in precisions:
        defines = kernel_defines(num_filters, num_rbf, activation, precision)
        module = gpucore.compile_file("flashschnet/cfconv.cu", defines=defines)
        what = " ".join(f"{k}={v}" for k, v in sorted(defines.items()))
        lines.append(f"flashschnet/cfconv.cu [{precision}, {activation}, {what}]: "
                     f"{'from cache' if module.from_cache else 'compiled'}")
    return lines
