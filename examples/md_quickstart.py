"""Quickstart: FlashSchNet as an ASE calculator, then a batched multi-replica run.

    python examples/md_quickstart.py [--model cg-small|cg-demo|FILE] [--structure FILE] [--out DIR]

The default model, the shipped ``cg-small``, is a small untrained
coarse-grained model (with bond, angle and repulsion priors, so the chain
holds together) on a 30-bead chain: runs on a CPU in seconds. ``--model
cg-demo`` is the CGSchNet-sized shipped model on its 269-bead chain (meant for
a GPU). ``device='auto'`` takes the fused CUDA kernels when a GPU is usable and
the PyTorch reference on the CPU otherwise. The plot is written to a file.
"""
import argparse
import time
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from ase import units
from ase.io import read
from ase.md.langevin import Langevin

from ase_flashschnet import FlashSchNetCalculator, MDConfig, run_replicas, shipped


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cg-small", help="model file or shipped name (default: cg-small)")
    p.add_argument("--structure", help="structure file (default: the shipped model's chain)")
    p.add_argument("--out", default="flashschnet_quickstart", help="output folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=200, help="steps of the replica run")
    args = p.parse_args()

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
    matplotlib.use("Agg")  # the script writes its plot to a file; importing it leaves the backend alone
    main()
