"""Quickstart: FlashSchNet as an ASE calculator, then a batched multi-replica run.

    python examples/md_quickstart.py [--model cg-demo|FILE] [--structure FILE] [--out DIR]

Without ``--model`` it builds a small untrained coarse-grained model (with
bond and angle priors, so the chain holds together) on a 30-bead chain: runs
on a CPU in seconds. ``--model cg-demo`` is the CGSchNet-sized shipped model on
its 269-bead chain (meant for a GPU). ``device='auto'`` takes the fused CUDA
kernels when a GPU is usable and the PyTorch reference on the CPU otherwise.
"""
import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt
import numpy as np
from ase import units
from ase.io import read
from ase.md.langevin import Langevin

from ase_flashschnet import FlashSchNetCalculator, MDConfig, SchNet, run_replicas, shipped
from ase_flashschnet.priors import HarmonicAngles, HarmonicBonds


def small_demo(n_beads=30, seed=1):
    """A small untrained bead model and its chain: SchNet (64 filters, a width
    the fused kernels support) plus harmonic priors at the chain's own bond
    lengths and angles (energies in eV, lengths in A)."""
    chain = shipped.compact_chain(n_beads, seed=seed)
    pos, n = chain.positions, len(chain)
    bonds = np.stack([np.arange(n - 1), np.arange(1, n)], axis=1)
    angles = np.stack([np.arange(n - 2), np.arange(1, n - 1), np.arange(2, n)], axis=1)
    u, v = pos[angles[:, 0]] - pos[angles[:, 1]], pos[angles[:, 2]] - pos[angles[:, 1]]
    priors = [
        HarmonicBonds(bonds, k=10.0, r0=np.linalg.norm(pos[bonds[:, 1]] - pos[bonds[:, 0]], axis=1), n_atoms=n),
        HarmonicAngles(angles, k=3.0, theta0=np.arctan2(np.linalg.norm(np.cross(u, v), axis=1), (u * v).sum(1)),
                       n_atoms=n),
    ]
    model = SchNet(hidden_channels=32, num_filters=64, num_interactions=2, num_rbf=16, cutoff=6.0,
                   type_map={z: z - 1 for z in range(1, 6)}, energy_scale=0.01, priors=priors, seed=seed)
    return model, chain


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model file or shipped name (default: a small demo model)")
    p.add_argument("--structure", help="structure file (default: the model's own chain)")
    p.add_argument("--out", default="flashschnet_quickstart", help="output folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=200, help="steps of the replica run")
    args = p.parse_args()

    if args.model is None:
        model, atoms = small_demo()
    else:
        model = args.model
        atoms = read(args.structure) if args.structure else shipped.default_structure(args.model)
    out = Path(args.out)

    # 1. One structure through ASE: energy, forces, and ASE's own Langevin integrator.
    atoms.calc = FlashSchNetCalculator(model, device=args.device)
    print(f"calculator: {atoms.calc.engine.name}")
    print(f"E = {atoms.get_potential_energy():.4f} eV, max |F| = {np.abs(atoms.get_forces()).max():.4f} eV/A")
    dyn = Langevin(atoms, timestep=4.0 * units.fs, temperature_K=300, friction=0.01 / units.fs,
                   fixcm=False, rng=np.random.default_rng(0))
    t0 = time.perf_counter()
    dyn.run(50)
    print(f"ASE Langevin: 50 steps at {50 / (time.perf_counter() - t0):.1f} steps/s, "
          f"T = {atoms.get_temperature():.0f} K, {atoms.calc.neighbors.n_builds} neighbour-list builds")

    # 2. Eight replicas at eight temperatures as one batch on one device.
    temperatures = np.linspace(250.0, 450.0, 8)
    config = MDConfig(dt_fs=4.0, temperature_K=temperatures, friction_per_fs=0.01, device=args.device,
                      traj_interval=10, out_dir=out, seed=0, progress=False)
    result = run_replicas(model, atoms, replicas=8, steps=args.steps, config=config)
    print(f"replicas: {result.engine}, {result.steps_per_second:.1f} steps/s, "
          f"{result.ns_per_day:.2f} ns/day aggregate at {result.dt_fs:g} fs; trajectories in {out}/")

    # 3. Plots: each replica's temperature and potential energy along the run.
    fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(10, 4))
    half = len(result.steps) // 2
    for r, target in enumerate(temperatures):
        line, = ax_t.plot(result.times_ps, result.temperatures[:, r], lw=1)
        ax_t.axhline(target, color=line.get_color(), ls=":", lw=1)
        ax_e.plot(result.times_ps, result.energies[:, r], lw=1, color=line.get_color(), label=f"{target:.0f} K")
        print(f"  replica {r}: target {target:.0f} K, mean T over the second half "
              f"{result.temperatures[half:, r].mean():.0f} K")
    ax_t.set(xlabel="time (ps)", ylabel="temperature (K)", title="Langevin replicas")
    ax_e.set(xlabel="time (ps)", ylabel="potential energy (eV)")
    ax_e.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "replicas.png", dpi=100)
    print(f"plot: {out / 'replicas.png'}")


if __name__ == "__main__":
    main()
