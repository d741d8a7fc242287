"""``fusion-doctor``: what this machine can run, for bug reports.

Prints versions, the GPU, CUDA and NVRTC found, compiles ``csrc/common/selftest.cu``
and runs it through CuPy and PyTorch, runs the CPU paths of both packages on a
small case (FusionRCG's host J/K against PySCF's, the reference SchNet's forces
against its energy's finite differences), then lists which paths of both
packages are available. It never raises: a missing piece is reported as such.
"""
from __future__ import annotations

import importlib
import platform
import sys
import time

import numpy as np

from gpucore import loader


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as exc:
        return f"not available ({exc.__class__.__name__})"


def selftest(framework: str, n: int = 1 << 16) -> str:
    """Run the axpy self-test through 'cupy' or 'torch'; return a one-line verdict."""
    cupy = loader.require_gpu("the self-test")
    module = loader.compile_file("common/selftest.cu")
    kernel = module.get_kernel("axpy_f64")
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal(n), rng.standard_normal(n)
    expected = 2.5 * x + y
    if framework == "cupy":
        dx, dy = cupy.asarray(x), cupy.asarray(y)
        kernel(((n + 255) // 256,), (256,), (dx, dy, np.float64(2.5), np.int32(n)))
        got = cupy.asnumpy(dy)
    else:
        import torch

        tx = torch.from_numpy(x).cuda()
        ty = torch.from_numpy(y).cuda()
        kernel(((n + 255) // 256,), (256,), (tx, ty, np.float64(2.5), np.int32(n)))
        got = ty.cpu().numpy()
    err = float(np.max(np.abs(got - expected)))
    status = "ok" if err < 1e-12 else "WRONG"
    source = "disk cache" if module.from_cache else "compiled now"
    return f"{status} (max error {err:.1e}; module {source})"


def _within(error: float, tol: float, what: str) -> str:
    """OK or FAIL for a largest ``error`` against ``tol``."""
    return f"{'OK' if error <= tol else 'FAIL'} ({what}: max error {error:.1e}, tolerance {tol:.0e})"


def host_jk_check() -> str:
    """FusionRCG's host-path J and K of water/STO-3G against PySCF's own."""
    from pyscf import gto, scf

    from pyscf_fusionrcg.jk import get_jk

    mol = gto.M(atom="O 0 0 0.117; H 0 0.757 -0.469; H 0 -0.757 -0.469", basis="sto-3g", verbose=0)
    dm = scf.hf.init_guess_by_minao(mol)
    vj, vk = get_jk(mol, dm, backend="cpu")
    rj, rk = scf.hf.get_jk(mol, dm)
    error = max(np.abs(vj - rj).max(), np.abs(vk - rk).max())
    return _within(error, 1e-9, "water/STO-3G J and K against PySCF's")


def schnet_check() -> str:
    """The reference SchNet (fp64, CPU) on ethanol: the forces of the first
    atom against central differences of the energy."""
    from ase.build import molecule
    from ase.calculators.fd import calculate_numerical_forces

    from ase_flashschnet import FlashSchNetCalculator, SchNet

    model = SchNet(hidden_channels=32, num_filters=32, num_interactions=2, cutoff=4.0, seed=0)
    atoms = molecule("CH3CH2OH")
    atoms.calc = FlashSchNetCalculator(model, device="cpu", precision="fp64")
    forces = atoms.get_forces()
    numeric = calculate_numerical_forces(atoms, eps=1e-4, iatoms=[0])
    return _within(float(np.abs(forces[0] - numeric[0]).max()), 1e-6, "ethanol forces against -dE/dx")


def _timed(check) -> str:
    """``check()``'s verdict and its seconds; an exception is the verdict FAIL."""
    t0 = time.perf_counter()
    try:
        verdict = check()
    except Exception as exc:
        verdict = f"FAIL: {exc.__class__.__name__}: {exc}"
    return f"{verdict} [{time.perf_counter() - t0:.2f} s]"


def _rows(pairs, indent: str = "") -> list[str]:
    """``(label, value)`` pairs as lines whose values start in one column."""
    width = max(len(label) for label, _ in pairs) + 1
    return [f"{indent}{label:<{width}}{value}" for label, value in pairs]


def report() -> list[str]:
    rows = [
        ("python", f"{sys.version.split()[0]} on {platform.platform()}"),
        *((m, _version(m)) for m in ("numpy", "scipy", "torch", "cupy", "pyscf", "ase", "gpu4pyscf")),
        ("kernel cache", loader.cache_dir()),
        ("csrc", loader.csrc_root()),
    ]
    gpu = loader.gpu_available()
    if not gpu:
        rows.append(("GPU", f"unavailable: {loader.unavailable_reason()}"))
    else:
        cupy = loader.require_gpu()
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        rows += [
            ("GPU", f"{name} (sm_{props['major']}{props['minor']}, "
                    f"{props['totalGlobalMem'] / 2**30:.1f} GiB, {props['multiProcessorCount']} SMs)"),
            ("CUDA", f"runtime {cupy.cuda.runtime.runtimeGetVersion()}, driver {cupy.cuda.runtime.driverGetVersion()}"),
        ]
        try:
            rows.append(("NVRTC", loader.nvrtc_version()))
        except Exception as exc:
            rows.append(("NVRTC", f"unavailable ({exc})"))
        rows += [("self-test", f"{framework:<5} {_timed(lambda: selftest(framework))}")
                 for framework in ("cupy", "torch")]
    checks = (("FusionRCG host J/K", host_jk_check), ("SchNet reference", schnet_check))
    rows += [("CPU check", f"{name:<18} {_timed(check)}") for name, check in checks]
    torch_cuda = False
    try:
        import torch

        torch_cuda = torch.cuda.is_available()
    except Exception:
        pass
    paths = [
        ("FusionRCG GPU J/K", "available" if gpu else "unavailable"),
        ("FusionRCG CPU host path", "available"),
        ("FlashSchNet fused GPU kernels", "available" if gpu and torch_cuda else "unavailable"),
        ("FlashSchNet reference (CPU)", "available"),
    ]
    return _rows(rows) + ["paths:"] + _rows(paths, indent="  ")


def main(argv=None) -> int:
    for line in report():
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
