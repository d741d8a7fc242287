"""Physical prior energies added to a coarse-grained SchNet (CGSchNet style).

Every prior is a module called as ``prior(types, pos, edge_src, edge_dst,
edge_vec)`` that returns per-atom energies ``(N,)``; the model sums them with
its own. A pair or angle energy is split evenly between its atoms, so that
ASE's ``energies`` add up to the total.

Bonded priors hold the topology of ONE molecule of ``n_atoms`` atoms (0-based
local indices) and apply it to every replica of a batch laid out as
consecutive blocks of ``n_atoms`` atoms (the multi-replica MD layout). They
use the positions directly (no periodic images), so molecules must not be
wrapped across periodic boundaries. Prior parameters are kept in float64 (so a
float64 model uses them exactly) and cast to the positions' dtype when used.

Each prior's :meth:`config` is a plain dict (lists and numbers) from which
:func:`prior_from_config` rebuilds it; this is how priors are saved with a model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["HarmonicBonds", "HarmonicAngles", "Dihedrals", "Repulsion", "dihedral_angles", "prior_from_config"]


def _per_item(value, n: int, name: str) -> Tensor:
    """A per-bond/angle parameter from a scalar or a sequence of length n."""
    t = torch.as_tensor(value, dtype=torch.float64).flatten()
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"{name} needs 1 or {n} values, got {t.numel()}")
    return t.clone()


def _replicate(index: Tensor, n_atoms: int, n_total: int) -> Tensor:
    """Tile a local topology over the replicas of a batch of ``n_total`` atoms."""
    if n_total % n_atoms:
        raise ValueError(f"prior topology is for molecules of {n_atoms} atoms, but the input has "
                         f"{n_total} atoms (not a whole number of replicas)")
    offsets = torch.arange(0, n_total, n_atoms, device=index.device)
    return (index[None] + offsets[:, None, None]).reshape(-1, index.shape[1])


def _scatter_atoms(energy: Tensor, index: Tensor, n_total: int) -> Tensor:
    """Split each term's energy evenly over the atoms in its row of ``index``."""
    share = (energy / index.shape[1]).repeat_interleave(index.shape[1])
    return energy.new_zeros(n_total).index_add_(0, index.reshape(-1), share)


class _Bonded(nn.Module):
    def __init__(self, index, n_atoms: int, width: int, **params):
        super().__init__()
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1, width)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n_atoms):
            raise ValueError(f"topology indices must lie in [0, {n_atoms})")
        self.n_atoms = int(n_atoms)
        self.register_buffer("index", index, persistent=False)
        for name, value in params.items():
            self.register_buffer(name, _per_item(value, index.shape[0], name), persistent=False)

    def _terms(self, pos: Tensor, *names: str):
        """Replicated topology and parameters (in the positions' dtype; a
        parameter's first dimension is its term's)."""
        idx = _replicate(self.index, self.n_atoms, pos.shape[0])
        reps = idx.shape[0] // max(self.index.shape[0], 1)
        params = (getattr(self, n).to(pos.dtype) for n in names)
        return (idx, *(p.repeat(reps, *[1] * (p.ndim - 1)) for p in params))


class HarmonicBonds(_Bonded):
    """E = 0.5 * k * (r - r0)^2 for each bond ``(i, j)``; k in energy/length^2."""

    def __init__(self, bonds, k, r0, n_atoms: int):
        super().__init__(bonds, n_atoms, 2, k=k, r0=r0)

    def forward(self, types: Tensor, pos: Tensor, edge_src: Tensor, edge_dst: Tensor, edge_vec: Tensor) -> Tensor:
        idx, k, r0 = self._terms(pos, "k", "r0")
        r = (pos[idx[:, 1]] - pos[idx[:, 0]]).norm(dim=1)
        energy = 0.5 * k * (r - r0) ** 2
        return _scatter_atoms(energy, idx, pos.shape[0])

    def config(self) -> dict:
        return {"kind": "HarmonicBonds", "bonds": self.index.tolist(), "k": self.k.tolist(),
                "r0": self.r0.tolist(), "n_atoms": self.n_atoms}


class HarmonicAngles(_Bonded):
    """E = 0.5 * k * (theta - theta0)^2 for each angle ``(i, j, k)`` at vertex j;
    theta in radians, from atan2 (accurate near 0 and pi, unlike acos)."""

    def __init__(self, angles, k, theta0, n_atoms: int):
        super().__init__(angles, n_atoms, 3, k=k, theta0=theta0)

    def forward(self, types: Tensor, pos: Tensor, edge_src: Tensor, edge_dst: Tensor, edge_vec: Tensor) -> Tensor:
        idx, k, theta0 = self._terms(pos, "k", "theta0")
        u = pos[idx[:, 0]] - pos[idx[:, 1]]
        v = pos[idx[:, 2]] - pos[idx[:, 1]]
        theta = torch.atan2(torch.linalg.cross(u, v).norm(dim=1), (u * v).sum(dim=1))
        energy = 0.5 * k * (theta - theta0) ** 2
        return _scatter_atoms(energy, idx, pos.shape[0])

    def config(self) -> dict:
        return {"kind": "HarmonicAngles", "angles": self.index.tolist(), "k": self.k.tolist(),
                "theta0": self.theta0.tolist(), "n_atoms": self.n_atoms}


def dihedral_angles(pos: Tensor, index: Tensor) -> Tensor:
    """Dihedral angles (rad, in (-pi, pi]) of the quadruples ``index`` (T, 4) of
    ``pos``: the angle between the planes (i, j, k) and (j, k, l), by atan2 of
    its sine and cosine (IUPAC sign convention, as ASE's ``get_dihedral``; a
    trans chain gives pi)."""
    b1 = pos[index[:, 1]] - pos[index[:, 0]]
    b2 = pos[index[:, 2]] - pos[index[:, 1]]
    b3 = pos[index[:, 3]] - pos[index[:, 2]]
    n1, n2 = torch.linalg.cross(b1, b2), torch.linalg.cross(b2, b3)
    return torch.atan2(b2.norm(dim=1) * (b1 * n2).sum(dim=1), (n1 * n2).sum(dim=1))


class Dihedrals(_Bonded):
    """E = sum_n a_n cos(n phi) + b_n sin(n phi), n = 1..H, for each dihedral
    ``(i, j, k, l)``: a periodic energy of H harmonics per term (``cos_terms``
    and ``sin_terms`` of shape (terms, H), or one row for all), such as a
    Boltzmann inversion of a dihedral's distribution gives. Needs bond angles
    away from 0 and pi (where the dihedral is undefined), which the angle
    prior provides."""

    def __init__(self, dihedrals, cos_terms, sin_terms, n_atoms: int):
        super().__init__(dihedrals, n_atoms, 4)
        n = self.index.shape[0]
        cos_terms = torch.as_tensor(cos_terms, dtype=torch.float64)
        sin_terms = torch.as_tensor(sin_terms, dtype=torch.float64)
        if cos_terms.ndim != 2 or cos_terms.shape != sin_terms.shape or cos_terms.shape[0] not in (1, n):
            raise ValueError(f"cos_terms and sin_terms must both have shape (1 or {n}, harmonics), got "
                             f"{tuple(cos_terms.shape)} and {tuple(sin_terms.shape)}")
        self.register_buffer("cos_terms", cos_terms.expand(n, -1).clone(), persistent=False)
        self.register_buffer("sin_terms", sin_terms.expand(n, -1).clone(), persistent=False)

    def forward(self, types: Tensor, pos: Tensor, edge_src: Tensor, edge_dst: Tensor, edge_vec: Tensor) -> Tensor:
        idx, cos_terms, sin_terms = self._terms(pos, "cos_terms", "sin_terms")
        harmonics = torch.arange(1, cos_terms.shape[1] + 1, dtype=pos.dtype, device=pos.device)
        angle = dihedral_angles(pos, idx)[:, None] * harmonics
        energy = (cos_terms * torch.cos(angle) + sin_terms * torch.sin(angle)).sum(dim=1)
        return _scatter_atoms(energy, idx, pos.shape[0])

    def config(self) -> dict:
        return {"kind": "Dihedrals", "dihedrals": self.index.tolist(), "cos_terms": self.cos_terms.tolist(),
                "sin_terms": self.sin_terms.tolist(), "n_atoms": self.n_atoms}


class Repulsion(nn.Module):
    """Non-bonded repulsion E = (sigma/r)^n - (sigma/rc)^n for pairs closer than rc.

    Shifted to zero at ``cutoff`` so the energy is continuous when pairs cross
    it (the force still jumps by n sigma^n / rc^(n+1)). Acts on the edges of
    the model's neighbour graph, so ``cutoff`` must not exceed the model's.
    ``sigma`` is a number or a (num_types, num_types) table indexed by the two
    atom types. ``exclusions`` lists local atom pairs (e.g. bonded ones, of a
    molecule of ``n_atoms`` atoms) that get no repulsion, in every periodic
    image and every replica.
    """

    def __init__(self, sigma, exponent: int = 6, cutoff: float = 5.0, exclusions=None, n_atoms: int | None = None):
        super().__init__()
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        if sigma.ndim not in (0, 2):
            raise ValueError(f"sigma must be a number or a (num_types, num_types) table, "
                             f"got shape {tuple(sigma.shape)}")
        exclusions = torch.as_tensor([] if exclusions is None else exclusions, dtype=torch.long).reshape(-1, 2)
        if exclusions.numel() and n_atoms is None:
            raise ValueError("exclusions need n_atoms, the size of the molecule they index")
        self.exponent = int(exponent)
        self.cutoff = float(cutoff)
        self.n_atoms = None if n_atoms is None else int(n_atoms)
        self.register_buffer("sigma", sigma, persistent=False)
        self.register_buffer("exclusions", exclusions, persistent=False)
        # Excluded (i, j) pairs as sorted keys i*n + j, both directions: a lookup by
        # searchsorted never synchronises with the host, so MD steps can be graph-captured.
        n = self.n_atoms or 1
        keys = torch.cat([exclusions[:, 0] * n + exclusions[:, 1], exclusions[:, 1] * n + exclusions[:, 0]])
        self.register_buffer("_excluded_keys", torch.sort(keys).values, persistent=False)

    def forward(self, types: Tensor, pos: Tensor, edge_src: Tensor, edge_dst: Tensor, edge_vec: Tensor) -> Tensor:
        r = edge_vec.norm(dim=1)
        sigma = self.sigma.to(r.dtype)
        sigma = sigma if sigma.ndim == 0 else sigma[types[edge_src], types[edge_dst]]
        inside = r < self.cutoff
        if self.exclusions.numel():
            n = self.n_atoms
            if pos.shape[0] % n:
                raise ValueError(f"repulsion exclusions are for molecules of {n} atoms, but the input has "
                                 f"{pos.shape[0]} atoms (not a whole number of replicas)")
            query = (edge_src % n) * n + edge_dst % n
            keys = self._excluded_keys
            slot = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
            inside = inside & (keys[slot] != query)
        safe_r = torch.where(inside, r, torch.full_like(r, self.cutoff))
        pair = torch.where(inside, (sigma / safe_r) ** self.exponent - (sigma / self.cutoff) ** self.exponent, 0.0)
        # Each pair appears once per direction in a full list: half to its dst atom each time.
        return pair.new_zeros(pos.shape[0]).index_add_(0, edge_dst, 0.5 * pair)

    def config(self) -> dict:
        return {"kind": "Repulsion", "sigma": self.sigma.tolist(), "exponent": self.exponent, "cutoff": self.cutoff,
                "exclusions": self.exclusions.tolist(), "n_atoms": self.n_atoms}


_KINDS = {cls.__name__: cls for cls in (HarmonicBonds, HarmonicAngles, Dihedrals, Repulsion)}


def prior_from_config(config: dict) -> nn.Module:
    """Rebuild a prior from its :meth:`config` dict."""
    config = dict(config)
    kind = config.pop("kind", None)
    if kind not in _KINDS:
        raise ValueError(f"unknown prior kind {kind!r}; known: {sorted(_KINDS)}")
    return _KINDS[kind](**config)
