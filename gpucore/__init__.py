"""The CUDA core shared by ``pyscf_fusionrcg`` and ``ase_flashschnet``.

One loader compiles CUDA C++ (from ``csrc/`` or generated at run time) with NVRTC
for the GPU present, caches the binaries on disk and launches kernels on CuPy
arrays or PyTorch tensors on their own current stream.  Importing it never needs
a GPU: :func:`gpu_available` and :func:`require_gpu` say whether the GPU paths
can run and, if not, why.
"""
from gpucore.loader import (
    GPUUnavailableError,
    CompiledModule,
    Kernel,
    cache_dir,
    compile_file,
    compile_source,
    csrc_root,
    gpu_available,
    locked,
    read_source,
    require_gpu,
    unavailable_reason,
    write_atomic,
)

__all__ = [
    "GPUUnavailableError",
    "CompiledModule",
    "Kernel",
    "cache_dir",
    "compile_file",
    "compile_source",
    "csrc_root",
    "gpu_available",
    "locked",
    "read_source",
    "require_gpu",
    "unavailable_reason",
    "write_atomic",
]
