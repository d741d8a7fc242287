""":class:`FusedSchNet`: a reference SchNet evaluated with the fused kernels
(see the package docstring), with its force path written out by hand."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model import ACTIVATIONS
from .kernels import PRECISIONS, QUANTIZED_DTYPE, check_device, kernel_defines, kernels_for, quantize_per_channel
from .layouts import Block, Csr, kernel_priors

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
        self.device = check_device(device)
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
        self._kernels = kernels_for(tuple(sorted(self._defines.items())), self.device)
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
                dtype = QUANTIZED_DTYPE[self.precision]
                q1, s1 = quantize_per_channel(t(w1), dtype)
                q2, s2 = quantize_per_channel(t(w2), dtype)
                q1 = F.pad(q1, (0, -n_rbf % 16)).contiguous()
            params = torch.cat([t(it.filter1.bias), s1, t(it.filter2.bias), s2, mu, gamma]).contiguous()
            blocks.append(Block(q1, q2.contiguous(), params, cutoff, t(it.lin1.weight), t(it.lin2.weight),
                                t(it.lin2.bias), t(it.lin.weight), t(it.lin.bias)))
        self._blocks = blocks
        self._embedding = t(model.embedding.weight)
        self._out = (t(model.output1.weight), t(model.output1.bias), t(model.output2.weight), t(model.output2.bias))
        self._atomref = t(model.atomref)
        self._scale, self._shift = float(model.energy_scale), float(model.energy_shift)
        self._priors = copy.deepcopy(model.priors).to(device=dev, dtype=f32)
        self._bonded, self._repulsions, self._torch_priors = kernel_priors(self._priors, self._embedding.shape[0])
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

    def _csr_of(self, graph, n_atoms: int) -> Csr:
        cached = self._graph_cache
        if cached is None or cached[0] is not graph or cached[1].n_atoms != n_atoms:
            cached = self._graph_cache = (graph, Csr.from_graph(graph, n_atoms, self.device))
        return cached[1]

    def _schnet_atoms(self, types: Tensor, d: Tensor, csr: Csr) -> Tensor:
        """Per-atom SchNet energies (no priors) from the edge lengths in CSR order."""
        x = F.embedding(types, self._embedding)
        for blk in self._blocks:
            h = F.linear(x, blk.lin1)
            m = _CFConv.apply(h, d, self._kernels, blk, csr)
            x = x + F.linear(self.act(F.linear(m, blk.lin2_w, blk.lin2_b)), blk.lin_w, blk.lin_b)
        o1w, o1b, o2w, o2b = self._out
        out = F.linear(self.out_act(F.linear(x, o1w, o1b)), o2w, o2b).squeeze(-1)
        return self._scale * out + self._shift + self._atomref[types]

    def _energy_grad_d(self, types: Tensor, d: Tensor, csr: Csr) -> tuple[Tensor, Tensor]:
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
        csr = Csr.from_edges(edge_src, edge_dst, pos.shape[0], batch, n_systems, self.device)
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

    def _force_terms(self, types: Tensor, pos32: Tensor, csr: Csr, virial: bool):
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
