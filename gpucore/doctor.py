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
