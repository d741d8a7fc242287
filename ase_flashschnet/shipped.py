"""Models that come with the package: two built by code from a seed (no weight
files) for speed and stability tests, and trained ones found as files.

A trained model ``NAME`` is ``data/NAME.pt`` (the model) with
``data/NAME.npz`` (the structure it is for, and the reference frames it was
trained on); :func:`~ase_flashschnet.train.cln025.export_model` writes them
from a validated run of ``flashschnet-cln025``, and :func:`load_model`,
:func:`get` and :func:`default_structure` then take the name.

``"cg-demo"``: an UNTRAINED model of CGSchNet size (128 channels, 128
filters, 3 interactions, 50 Gaussians, 10 A cutoff, tanh) for the 269-bead
compact chain of :func:`compact_chain` (the bead count of the 1ENH
benchmark), with harmonic bond and angle priors at the chain's own geometry
and a short-range repulsion. SchNet's random energy is scaled down by
``energy_scale`` so that the priors hold the chain together: it is for speed,
memory and stability tests of the MD machinery, not for science. Its beads
carry codes 1..5 (N, CA, CB, C, O in turn) in ``Atoms.numbers`` and real
masses in ``Atoms.get_masses()``.

``"cg-small"``: the same recipe at a size that runs on a CPU in seconds (32
channels, 64 filters, 2 interactions, 16 Gaussians, 6 A cutoff) for a 30-bead
chain; the examples and notebooks use it.
"""

from __future__ import annotations

import os
from importlib import resources

import numpy as np
from ase import Atoms

from . import model as model_files
from .model import SchNet
from .priors import HarmonicAngles, HarmonicBonds, Repulsion

__all__ = ["names", "get", "default_structure", "reference_frames", "compact_chain", "load_model"]

#: The folder of the trained models: NAME.pt (the model) and NAME.npz (the structure it is for).
_DATA = resources.files(__package__) / "data"

BEADS = ("N", "CA", "CB", "C", "O")
BEAD_MASSES = (14.007, 12.011, 12.011, 12.011, 15.999)


def compact_chain(n_beads: int = 269, seed: int = 0, bond: float = 1.45, angle_deg: float = 115.0,
                  min_distance: float = 3.0, density: float = 0.022) -> Atoms:
    """A self-avoiding bead chain packed in a sphere at ``density`` beads/A^3.

    Consecutive beads are ``bond`` apart with bond angles near ``angle_deg``;
    beads three or more apart along the chain are at least ``min_distance``
    apart. With the defaults, 269 beads and seed 0 have 57.7 neighbours per
    bead within 10 A, like the anchor benchmark's compact chain.
    """
    rng = np.random.default_rng(seed)
    radius = (3.0 * n_beads / (4.0 * np.pi * density)) ** (1.0 / 3.0)
    pos = np.zeros((n_beads, 3))
    pos[1] = [bond, 0.0, 0.0]
    theta = np.deg2rad(180.0 - angle_deg)
    i, attempts = 2, 0
    while i < n_beads:
        attempts += 1
        if attempts > 200 * n_beads:
            raise RuntimeError("could not grow the chain; lower the density or min_distance")
        u = pos[i - 1] - pos[i - 2]
        u /= np.linalg.norm(u)
        helper = np.eye(3)[np.argmin(np.abs(u))]
        v = np.cross(u, helper)
        v /= np.linalg.norm(v)
        w = np.cross(u, v)
        phi = rng.uniform(0.0, 2.0 * np.pi, 64)
        tilt = theta + rng.normal(0.0, 0.05, 64)
        side = np.cos(phi)[:, None] * v + np.sin(phi)[:, None] * w
        dirs = np.cos(tilt)[:, None] * u + np.sin(tilt)[:, None] * side
        cand = pos[i - 1] + bond * dirs
        ok = np.linalg.norm(cand, axis=1) < radius
        if i > 2:
            dist = np.linalg.norm(cand[:, None, :] - pos[None, : i - 2], axis=2).min(axis=1)
            ok &= dist >= min_distance
        if ok.any():
            pos[i] = cand[rng.choice(np.flatnonzero(ok))]
            i += 1
        else:
            i = max(2, i - 4)  # dead end: back up a few beads and regrow
    codes = np.arange(n_beads) % len(BEADS)
    atoms = Atoms(numbers=codes + 1, positions=pos - pos.mean(axis=0))
    atoms.set_masses(np.array(BEAD_MASSES)[codes])
    return atoms


def _chain_priors(atoms: Atoms) -> list:
    n = len(atoms)
    pos = atoms.positions
    bonds = np.stack([np.arange(n - 1), np.arange(1, n)], axis=1)
    angles = np.stack([np.arange(n - 2), np.arange(1, n - 1), np.arange(2, n)], axis=1)
    a, b = pos[angles[:, 0]] - pos[angles[:, 1]], pos[angles[:, 2]] - pos[angles[:, 1]]
    theta0 = np.arctan2(np.linalg.norm(np.cross(a, b), axis=1), (a * b).sum(1))
    r0 = np.linalg.norm(pos[bonds[:, 1]] - pos[bonds[:, 0]], axis=1)
    excluded = np.concatenate([bonds, angles[:, [0, 2]]])
    return [HarmonicBonds(bonds, k=10.0, r0=r0, n_atoms=n),  # eV/A^2: ~0.05 A fluctuations at 300 K
            HarmonicAngles(angles, k=3.0, theta0=theta0, n_atoms=n),  # eV/rad^2
            Repulsion(sigma=2.0, exponent=6, cutoff=4.0, exclusions=excluded, n_atoms=n)]


def _cg_demo():
    chain = compact_chain(269, seed=0)
    model = SchNet(hidden_channels=128, num_filters=128, num_interactions=3, num_rbf=50, cutoff=10.0,
                   activation="tanh", type_map={k + 1: k for k in range(len(BEADS))}, energy_scale=0.01,
                   priors=_chain_priors(chain), seed=0)
    return model, chain


def _cg_small():
    chain = compact_chain(30, seed=1)
    model = SchNet(hidden_channels=32, num_filters=64, num_interactions=2, num_rbf=16, cutoff=6.0,
                   type_map={k + 1: k for k in range(len(BEADS))}, energy_scale=0.01,
                   priors=_chain_priors(chain), seed=1)
    return model, chain


def _trained(name: str):
    """A trained model and its structure from the package's data files."""
    with resources.as_file(_DATA / f"{name}.pt") as path:
        model = model_files.load_model(path).float()
    with resources.as_file(_DATA / f"{name}.npz") as path, np.load(path) as arrays:
        structure = Atoms(numbers=arrays["types"], positions=arrays["positions"], masses=arrays["masses"])
    return model, structure


_BUILT = {"cg-demo": _cg_demo, "cg-small": _cg_small}


def _trained_names() -> list[str]:
    entries = _DATA.iterdir() if _DATA.is_dir() else ()
    return [entry.name[:-3] for entry in entries if entry.name.endswith(".pt")]


def names() -> list[str]:
    return sorted([*_BUILT, *_trained_names()])


def _lookup(name: str):
    if name in _BUILT:
        return _BUILT[name]()
    if name in _trained_names():
        return _trained(name)
    raise KeyError(f"no shipped model {name!r}; shipped models: {', '.join(names())}")


def get(name: str) -> SchNet:
    """A fresh float32 copy of a shipped model (``KeyError`` if unknown)."""
    return _lookup(name)[0]


def default_structure(name: str) -> Atoms:
    """The structure a shipped model is made for (``KeyError`` if unknown)."""
    return _lookup(name)[1]


def reference_frames(name: str) -> tuple[np.ndarray, np.ndarray, float]:
    """The data a trained shipped model was trained and validated on, as bead
    frames: ``(positions (F, N, 3) A, trajectory (F,) of each frame,
    temperature_K)``, for comparing a run of the model with them
    (:func:`ase_flashschnet.train.validation.compare`). ``KeyError`` for a
    name that is not a trained shipped model."""
    if name not in _trained_names():
        raise KeyError(f"no trained shipped model {name!r}; trained: {', '.join(_trained_names()) or 'none'}")
    with resources.as_file(_DATA / f"{name}.npz") as path, np.load(path) as arrays:
        return (arrays["reference_positions"].astype(np.float64), arrays["reference_trajectory"].copy(),
                float(arrays["temperature_K"]))


def load_model(model, device="cpu") -> SchNet:
    """A model from a file written by :meth:`SchNet.save` (in the dtype it was
    saved in) or by the name of a shipped model (float32), on ``device``.

    ``FileNotFoundError`` when ``model`` is neither an existing file nor a
    shipped name; ``ValueError`` for a file that is not a valid model.
    """
    if os.path.isfile(model):   # a folder of that name (a flashschnet-cln025 run) is no model file
        return model_files.load_model(model, device)
    if str(model) in names():
        return get(str(model)).to(device)
    raise FileNotFoundError(f"model {str(model)!r} is neither a model file nor a shipped model name "
                            f"(shipped: {', '.join(names())})")
