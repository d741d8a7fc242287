"""Convert trained SchNet models of other libraries into :class:`~ase_flashschnet.model.SchNet`.

Both importers copy weights and buffers exactly (Gaussian centres and width
included) and return a model in the source model's dtype, whose energies equal
the source's for the same neighbour pairs. They refuse, with a message saying
why, anything this SchNet cannot express. No unit conversion is done: the
energy keeps the source model's unit.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .model import SchNet

__all__ = ["from_pyg", "from_schnetpack"]


def _dtype_of(module: nn.Module) -> torch.dtype:
    return next(p.dtype for p in module.parameters() if p.is_floating_point())


def _linear(prefix: str, layer: nn.Linear) -> dict:
    out = {f"{prefix}.weight": layer.weight.detach()}
    if layer.bias is not None:
        out[f"{prefix}.bias"] = layer.bias.detach()
    return out


def _build(config: dict, state: dict, dtype: torch.dtype) -> SchNet:
    model = SchNet(**config).to(dtype)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()})
    return model.eval()


def from_pyg(pyg_model) -> SchNet:
    """Convert a ``torch_geometric.nn.models.SchNet`` (energy-like target).

    Supported: 'add'/'sum' readout, ``mean``/``std`` standardisation, ``atomref``
    and ``scale`` (folded into ``energy_scale``/``energy_shift``/``atomref``).
    Refused: dipole models, 'mean' readout, custom interaction graphs and
    replaced activations. PyG's radius graph keeps at most ``max_num_neighbors``
    (default 32) neighbours per atom; this model keeps all pairs within the
    cutoff, so energies agree when no atom has more neighbours than that.
    """
    from torch_geometric.nn.models.schnet import RadiusInteractionGraph, ShiftedSoftplus

    name = type(pyg_model).__name__
    if pyg_model.dipole:
        raise ValueError(f"cannot import a dipole-moment {name}: only energy models are supported")
    readout = type(pyg_model.readout).__name__
    if readout != "SumAggregation":
        raise ValueError(f"cannot import a {name} with {readout} readout: only a sum over atoms is an energy")
    graph = pyg_model.interaction_graph
    if not isinstance(graph, RadiusInteractionGraph) or graph.cutoff != pyg_model.cutoff:
        raise ValueError(f"cannot import a {name} with a custom interaction graph: only a radius graph "
                         f"with the model's cutoff ({pyg_model.cutoff}) can be reproduced")
    for block in pyg_model.interactions:
        if (not isinstance(block.act, ShiftedSoftplus) or not isinstance(block.mlp[1], ShiftedSoftplus)
                or block.conv.cutoff != pyg_model.cutoff):
            raise ValueError(f"cannot import a {name} whose interaction blocks were modified")
    if not isinstance(pyg_model.act, ShiftedSoftplus):
        raise ValueError(f"cannot import a {name} whose output activation was replaced")

    scale = 1.0 if pyg_model.scale is None else float(pyg_model.scale)
    standardize = pyg_model.mean is not None and pyg_model.std is not None
    num_types = pyg_model.embedding.num_embeddings
    dtype = _dtype_of(pyg_model)
    config = dict(hidden_channels=pyg_model.hidden_channels, num_filters=pyg_model.num_filters,
                  num_interactions=pyg_model.num_interactions, num_rbf=pyg_model.num_gaussians,
                  cutoff=float(pyg_model.cutoff), activation="ssp", output_hidden=pyg_model.lin1.out_features,
                  num_types=num_types, rbf_gamma=-float(pyg_model.distance_expansion.coeff),
                  energy_scale=scale * (float(pyg_model.std) if standardize else 1.0),
                  energy_shift=scale * (float(pyg_model.mean) if standardize else 0.0))
    atomref = torch.zeros(num_types, dtype=dtype)
    if pyg_model.atomref is not None:
        atomref = scale * pyg_model.atomref.weight.detach().reshape(-1).to(dtype)
    state = {"embedding.weight": pyg_model.embedding.weight.detach(),
             "rbf.centers": pyg_model.distance_expansion.offset,
             "rbf.gamma": torch.tensor(config["rbf_gamma"], dtype=dtype),
             "rbf.cutoff": torch.tensor(config["cutoff"], dtype=dtype),
             "atomref": atomref,
             **_linear("output1", pyg_model.lin1), **_linear("output2", pyg_model.lin2)}
    for i, block in enumerate(pyg_model.interactions):
        p = f"interactions.{i}"
        state.update({**_linear(f"{p}.lin1", block.conv.lin1), **_linear(f"{p}.filter1", block.mlp[0]),
                      **_linear(f"{p}.filter2", block.mlp[2]), **_linear(f"{p}.lin2", block.conv.lin2),
                      **_linear(f"{p}.lin", block.lin)})
    return _build(config, state, dtype)


def _spk_activation(fn, what: str) -> str:
    """Name of a schnetpack activation this model implements, else refuse."""
    import torch.nn.functional as F
    from schnetpack.nn.activations import shifted_softplus

    known = {shifted_softplus: "ssp", F.silu: "silu", torch.tanh: "tanh"}
    if fn in known:
        return known[fn]
    if isinstance(fn, nn.SiLU):
        return "silu"
    if isinstance(fn, nn.Tanh):
        return "tanh"
    raise ValueError(f"cannot import schnetpack model: {what} activation {fn!r} is not one of "
                     "shifted_softplus, silu, tanh")


def from_schnetpack(spk_model, energy_key: str = "energy") -> SchNet:
    """Convert a schnetpack 2.x ``NeuralNetworkPotential`` built from a
    ``schnetpack.representation.SchNet`` and an ``Atomwise`` energy head.

    Supported: ``GaussianRBF`` with equal widths, ``CosineCutoff``, a plain
    ``nn.Embedding``, a two-layer ``Atomwise`` with 'sum' aggregation, ``Forces``
    / ``Strain`` / ``PairwiseDistances`` modules (forces and stress come from
    this model's autograd), and ``CastTo64``, ``ScaleProperty`` and extensive
    ``AddOffsets`` postprocessors on the energy (folded into
    ``energy_scale``/``energy_shift``/``atomref``; a ``ScaleProperty`` on the
    energy needs the same one on the forces). Anything else is refused.
    """
    from schnetpack.atomistic import Atomwise, Forces, PairwiseDistances, Strain
    from schnetpack.nn import CosineCutoff, GaussianRBF
    from schnetpack.representation import SchNet as SpkSchNet
    from schnetpack.transform import AddOffsets, CastTo64, ScaleProperty

    def refuse(why):
        raise ValueError(f"cannot import schnetpack model: {why}")

    rep = getattr(spk_model, "representation", None)
    if not isinstance(rep, SpkSchNet):
        refuse(f"its representation is {type(rep).__name__}, not schnetpack.representation.SchNet")
    if len(rep.electronic_embeddings):
        refuse("electronic (charge/spin) embeddings are not supported")
    if type(rep.embedding) is not nn.Embedding:
        refuse(f"embedding {type(rep.embedding).__name__} is not a plain nn.Embedding")
    if not isinstance(rep.cutoff_fn, CosineCutoff):
        refuse(f"cutoff function {type(rep.cutoff_fn).__name__} is not CosineCutoff")
    radial = rep.radial_basis
    if not isinstance(radial, GaussianRBF) or not torch.all(radial.widths == radial.widths[0]):
        refuse("only GaussianRBF radial bases with one common width are supported")
    for m in spk_model.input_modules:
        if not isinstance(m, (PairwiseDistances, Strain)):
            refuse(f"input module {type(m).__name__} is not supported")
    heads = [m for m in spk_model.output_modules if not isinstance(m, Forces)]
    if len(heads) != 1 or not isinstance(heads[0], Atomwise) or heads[0].output_key != energy_key:
        refuse(f"need exactly one Atomwise head writing {energy_key!r} (besides Forces)")
    head = heads[0]
    if head.aggregation_mode != "sum" or len(head.outnet) != 2 or head.n_out != 1:
        refuse("the Atomwise head must have two layers, one output and 'sum' aggregation")

    force_keys = [m.force_key for m in spk_model.output_modules if isinstance(m, Forces) and m.calc_forces]
    dtype = _dtype_of(rep)
    num_types = rep.embedding.num_embeddings
    scale, shift, force_scale = 1.0, 0.0, 1.0
    atomref = torch.zeros(num_types, dtype=torch.float64)
    for post in spk_model.postprocessors if spk_model.do_postprocessing else []:
        if isinstance(post, CastTo64):
            continue
        if isinstance(post, ScaleProperty) and post.input_key == energy_key == post.output_key:
            s = float(post.scale.reshape(-1)[0])
            scale, shift, atomref = scale * s, shift * s, atomref * s
        elif isinstance(post, ScaleProperty) and post.input_key in force_keys and post.input_key == post.output_key:
            force_scale *= float(post.scale.reshape(-1)[0])
        elif isinstance(post, AddOffsets) and post._property == energy_key and post.is_extensive:
            if post.add_mean:
                shift += float(post.mean.reshape(-1)[0])
            if post.add_atomrefs:
                ref = post.atomref.detach().double().reshape(-1)
                if ref[num_types:].any():
                    refuse(f"atomrefs are set for atomic numbers beyond the embedding's {num_types}")
                atomref[: min(num_types, ref.numel())] += ref[:num_types]
        else:
            refuse(f"postprocessor {type(post).__name__} is not supported on {energy_key!r}")
    if force_keys and force_scale != scale:
        refuse(f"its postprocessors scale the energy by {scale} but the forces by {force_scale}, so its forces "
               "are not the gradient of its energy")

    block0 = rep.interactions[0]
    width = float(radial.widths[0])
    config = dict(hidden_channels=rep.n_atom_basis, num_filters=rep.n_filters,
                  num_interactions=len(rep.interactions), num_rbf=radial.n_rbf,
                  cutoff=float(rep.cutoff_fn.cutoff.reshape(-1)[0]),
                  activation=_spk_activation(block0.filter_network[0].activation, "interaction"),
                  output_hidden=head.outnet[0].out_features,
                  output_activation=_spk_activation(head.outnet[0].activation, "output"),
                  num_types=num_types, rbf_gamma=0.5 / width**2, energy_scale=scale, energy_shift=shift)
    for block in rep.interactions:
        acts = {_spk_activation(block.filter_network[0].activation, "filter"),
                _spk_activation(block.f2out[0].activation, "interaction")}
        if acts != {config["activation"]}:
            refuse("interaction blocks use different activations")
    if not math.isfinite(config["rbf_gamma"]):
        refuse("the Gaussian width is zero")
    state = {"embedding.weight": rep.embedding.weight.detach(), "rbf.centers": radial.offsets.detach(),
             "rbf.gamma": torch.tensor(config["rbf_gamma"], dtype=torch.float64),
             "rbf.cutoff": torch.tensor(config["cutoff"], dtype=torch.float64),
             "atomref": atomref, **_linear("output1", head.outnet[0]), **_linear("output2", head.outnet[1])}
    for i, block in enumerate(rep.interactions):
        p = f"interactions.{i}"
        state.update({**_linear(f"{p}.lin1", block.in2f), **_linear(f"{p}.filter1", block.filter_network[0]),
                      **_linear(f"{p}.filter2", block.filter_network[1]), **_linear(f"{p}.lin2", block.f2out[0]),
                      **_linear(f"{p}.lin", block.f2out[1])})
    return _build(config, state, dtype)
