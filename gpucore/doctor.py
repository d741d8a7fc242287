"""``fusion-doctor``: what this machine can run, for bug reports.

Prints versions, the GPU, CUDA and NVRTC found, compiles ``csrc/common/selftest.cu``
and runs it through CuPy and PyTorch, then lists which paths of both packages are
available. It never raises: a missing piece is reported as such.
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


def report() -> list[str]:
    lines = [
        f"python      {sys.version.split()[0]} on {platform.platform()}",
        *(f"{m:<11} {_version(m)}" for m in ("numpy", "scipy", "torch", "cupy", "pyscf", "ase", "gpu4pyscf")),
        f"kernel cache {loader.cache_dir()}",
        f"csrc         {loader.csrc_root()}",
    ]
    gpu = loader.gpu_available()
    if not gpu:
        lines.append(f"GPU         unavailable: {loader.unavailable_reason()}")
    else:
        cupy = loader.require_gpu()
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        lines += [
            f"GPU         {name} (sm_{props['major']}{props['minor']}, "
            f"{props['totalGlobalMem'] / 2**30:.1f} GiB, {props['multiProcessorCount']} SMs)",
            f"CUDA        runtime {cupy.cuda.runtime.runtimeGetVersion()}, driver {cupy.cuda.runtime.driverGetVersion()}",
        ]
        try:
            lines.append(f"NVRTC       {loader.nvrtc_version()}")
        except Exception as exc:
            lines.append(f"NVRTC       unavailable ({exc})")
        for framework in ("cupy", "torch"):
            t0 = time.perf_counter()
            try:
                verdict = selftest(framework)
            except Exception as exc:
                verdict = f"FAILED: {exc.__class__.__name__}: {exc}"
            lines.append(f"self-test   {framework:<5} {verdict} [{time.perf_counter() - t0:.2f} s]")
    torch_cuda = False
    try:
        import torch

        torch_cuda = torch.cuda.is_available()
    except Exception:
        pass
    lines += [
        "paths:",
        f"  FusionRCG GPU J/K            {'available' if gpu else 'unavailable'}",
        "  FusionRCG CPU host path      available",
        f"  FlashSchNet fused GPU kernels {'available' if gpu and torch_cuda else 'unavailable'}",
        "  FlashSchNet reference (CPU)  available",
    ]
    return lines


def main(argv=None) -> int:
    for line in report():
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
