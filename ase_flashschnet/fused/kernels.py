"""The fused kernels of one model configuration on one GPU: their defines,
compilation (gpucore, cached on disk), launch geometry and launches."""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

import gpucore
from gpucore import GPUUnavailableError

from .layouts import Block, BondedTerms, Csr, RepulsionTerms, check_whole_replicas

PRECISIONS = ("fp32", "fp16", "bf16")
_PREC_CODE = {"fp32": 0, "fp16": 1, "bf16": 2}
_ACT_CODE = {"tanh": 0, "ssp": 1, "silu": 2}
#: The torch dtype of each 16-bit precision's filter weights.
QUANTIZED_DTYPE = {"fp16": torch.float16, "bf16": torch.bfloat16}
_DEFAULT = dict(num_filters=128, num_rbf=50, activation="tanh")


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


def check_device(device) -> torch.device:
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


class Kernels:
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

    def cfconv_forward(self, h: Tensor, d: Tensor, csr: Csr, blk: Block, grid: int | None = None) -> Tensor:
        """``grid``: number of blocks (default: as many as are resident); the result
        does not depend on it, bit for bit."""
        out = torch.empty_like(h)
        resident, threads, smem = self.fwd_launch
        self.fwd((grid or self._grid(resident, csr.n_edges),), (threads,),
                 (h, d, csr.dst_ptr, csr.dst, csr.src, blk.w1, blk.w2, blk.params, np.float32(blk.cutoff),
                  np.int32(csr.n_atoms), out), shared_mem=smem)
        return out

    def cfconv_backward(self, h: Tensor, gm: Tensor, d: Tensor, csr: Csr, blk: Block,
                        grid: int | None = None) -> tuple[Tensor, Tensor]:
        grad_h = torch.empty_like(h)
        grad_d = torch.empty_like(d)
        resident, threads, smem = self.bwd_launch
        self.bwd((grid or self._grid(resident, csr.n_edges),), (threads,),
                 (h, gm, d, csr.src_ptr, csr.src_order, csr.src, csr.dst, blk.w1, blk.w2, blk.params,
                  np.float32(blk.cutoff), np.int32(csr.n_atoms), grad_h, grad_d), shared_mem=smem)
        return grad_h, grad_d

    def edge_lengths(self, pos: Tensor, csr: Csr) -> Tensor:
        d = torch.empty(csr.n_edges, dtype=torch.float32, device=pos.device)
        self.lengths((-(-csr.n_edges // 256),), (256,), (pos, csr.shifts, csr.src, csr.dst, np.int32(csr.n_edges), d))
        return d

    def edge_forces(self, g: Tensor, pos: Tensor, csr: Csr, virial: bool) -> tuple[Tensor, Tensor | None]:
        forces = torch.empty(csr.n_atoms, 3, dtype=torch.float32, device=pos.device)
        virials = torch.empty(csr.n_atoms if virial else 1, 9, dtype=torch.float32, device=pos.device)
        self.forces((-(-csr.n_atoms * 32 // 256),), (256,),
                    (g, pos, csr.shifts, csr.src, csr.dst, csr.dst_ptr, csr.src_order, csr.src_ptr,
                     np.int32(csr.n_atoms), np.int32(virial), forces, virials))
        return forces, (virials if virial else None)

    def repulsion_edges(self, prior: RepulsionTerms, types: Tensor, d: Tensor, csr: Csr, grad_d: Tensor,
                        per_atom: Tensor) -> None:
        """Adds the repulsion's dE/dd to ``grad_d`` and its energies to ``per_atom``, in place."""
        keys = prior.excluded_keys
        if keys.numel():
            check_whole_replicas(csr.n_atoms, prior.n_atoms, "repulsion exclusions")
        self.repulsion((-(-csr.n_atoms * 32 // 256),), (256,),
                       (d, csr.src, csr.dst_ptr, types.contiguous(), prior.sigma, np.int32(prior.sigma.shape[1]),
                        np.int32(prior.exponent), np.float32(prior.cutoff), keys, np.int32(keys.numel()),
                        np.int32(prior.n_atoms), np.int32(csr.n_atoms), grad_d, per_atom))

    def bonded_terms(self, prior: BondedTerms, pos: Tensor, forces: Tensor, per_atom: Tensor,
                     virials: Tensor | None) -> None:
        """Adds the bonds' or angles' forces, energies and (if ``virials``) virials, in place."""
        n_replicas = check_whole_replicas(pos.shape[0], prior.n_atoms, "bonded prior topologies")
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
def kernels_for(defines_items: tuple, device: torch.device) -> Kernels:
    return Kernels(dict(defines_items), device)


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
