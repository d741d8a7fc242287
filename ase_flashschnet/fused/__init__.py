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

The modules: :mod:`.kernels` (the compiled kernels and their launches),
:mod:`.layouts` (the neighbour graph, weights and priors in the layouts the
kernels read) and :mod:`.schnet` (:class:`FusedSchNet`). The cost model of the
CFConv (FLOPs and bytes per force call) is in ``docs/flashschnet_kernels.md``.
"""
from .kernels import PRECISIONS, cfconv_flops, kernel_defines, precompile, quantize_per_channel
from .schnet import FusedSchNet

__all__ = ["FusedSchNet", "PRECISIONS", "quantize_per_channel", "kernel_defines", "cfconv_flops", "precompile"]
