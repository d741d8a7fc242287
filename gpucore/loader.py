"""NVRTC compilation with an on-disk cache, and kernel launch on CuPy or PyTorch data.

Why our own cache: compiled code must be keyed by everything that changes it (the
source and every header it can include, the GPU architecture, the options and the
NVRTC version), survive across processes, and be inspectable (``cache_dir()``),
so that ``fusion-warmup`` can fill it ahead of a run.

Launch uses CuPy's driver bindings: arguments that are CuPy arrays or PyTorch
tensors are passed as raw device pointers (no copy), and the kernel runs on the
current stream of the framework that owns the arrays, so it orders correctly with
the surrounding CuPy or PyTorch work (and can be captured in a CUDA graph).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pathlib
import threading
import warnings
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

CACHE_ENV = "FUSION_KERNEL_CACHE"
#: The package's extras that bring CuPy (and GPU4PySCF), by CUDA major version.
CUDA_EXTRAS = {12: "cuda12", 13: "cuda13"}


class GPUUnavailableError(RuntimeError):
    """Raised when a GPU path is asked for on a machine that cannot run it."""


def driver_cuda_version() -> tuple[int, int] | None:
    """(major, minor) of the newest CUDA the NVIDIA driver supports, asked of
    the driver library itself, so that it is known before CuPy is installed;
    None where no driver library loads."""
    import ctypes

    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        version = ctypes.c_int()
        if lib.cuDriverGetVersion(ctypes.byref(version)) == 0:
            return version.value // 1000, version.value % 1000 // 10
    return None


def install_hint() -> str:
    """What to install for the GPU paths: the extra of the package (not of a
    checkout) that matches the driver's CUDA, or both where it is not known."""
    version = driver_cuda_version()
    if version is None:
        options = " or ".join(f'`pip install "fusion-chem-gpu[{extra}]"` (CUDA {major})'
                              for major, extra in CUDA_EXTRAS.items())
        return f"install CuPy for your CUDA version: {options}"
    major = version[0]
    if major < min(CUDA_EXTRAS):
        return (f"the NVIDIA driver supports CUDA {major}.{version[1]}; the GPU paths need a driver "
                f"for CUDA {' or '.join(map(str, CUDA_EXTRAS))}")
    extra = CUDA_EXTRAS.get(major, CUDA_EXTRAS[max(CUDA_EXTRAS)])
    return (f"install CuPy for the driver's CUDA {major}.{version[1]}: "
            f'`pip install "fusion-chem-gpu[{extra}]"`')


@functools.lru_cache(maxsize=None)
def _probe() -> tuple[object | None, str]:
    """Return (cupy module, '') when a CUDA GPU is usable, else (None, reason)."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a CuPy built for another CUDA
        return None, f"CuPy cannot be imported ({exc.__class__.__name__}: {exc}); {install_hint()}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return None, f"no CUDA driver or GPU found ({exc.__class__.__name__}: {exc})"
    if count < 1:
        return None, "CUDA reports no GPU on this machine"
    return cupy, ""


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA GPU."""
    return _probe()[0] is not None


def unavailable_reason() -> str:
    """Why the GPU paths cannot run here ('' when they can)."""
    return _probe()[1]


def require_gpu(what: str = "this GPU path"):
    """Return the CuPy module, or raise :class:`GPUUnavailableError` naming the cause."""
    cupy, reason = _probe()
    if cupy is None:
        raise GPUUnavailableError(f"{what} needs a CUDA GPU: {reason}")
    return cupy


@functools.lru_cache(maxsize=1)
def csrc_root() -> pathlib.Path:
    """The folder of the CUDA sources: the installed ``gpucore.csrc``, or ``csrc/`` of a checkout.

    A wheel ships ``csrc/`` as the package ``gpucore.csrc``; when ``gpucore`` is
    imported from a source tree instead, that package does not exist there and
    the checkout's own ``csrc/`` is used.
    """
    try:
        return pathlib.Path(str(resources.files("gpucore.csrc")))
    except ModuleNotFoundError:
        return pathlib.Path(__file__).resolve().parents[1] / "csrc"


def read_source(relpath: str) -> str:
    """Text of one CUDA source under ``csrc/`` (for example ``common/selftest.cu``)."""
    path = csrc_root() / relpath
    if not path.is_file():
        raise FileNotFoundError(f"CUDA source {relpath!r} is not in {csrc_root()}")
    return path.read_text()


def cache_dir() -> pathlib.Path:
    """Where compiled kernels are kept: $FUSION_KERNEL_CACHE, else the XDG cache."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "fusion-chem-gpu", "kernels")
    path = pathlib.Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.lru_cache(maxsize=1)
def _headers_digest() -> str:
    """Digest of every header under csrc/, since any of them may be included."""
    digest = hashlib.sha256()
    root = csrc_root()
    for path in sorted(root.rglob("*.cuh")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _cuda_include_dirs() -> list[str]:
    """Toolkit include folders NVRTC may need (cuda_fp16.h and friends)."""
    candidates = [os.environ.get("CUDA_PATH", ""), os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"]
    dirs = [os.path.join(c, "include") for c in candidates if c]
    try:
        import nvidia.cuda_runtime  # pip's CUDA runtime headers, when present

        dirs.extend(os.path.join(p, "include") for p in nvidia.cuda_runtime.__path__)
    except Exception:
        pass
    return [d for d in dict.fromkeys(dirs) if os.path.isfile(os.path.join(d, "cuda_fp16.h"))]


# CUfunction_attribute values of the driver API (stable since CUDA 2.x).
_ATTRIBUTES = {
    "max_threads_per_block": 0,
    "shared_size_bytes": 1,
    "const_size_bytes": 2,
    "local_size_bytes": 3,
    "num_regs": 4,
}
_MAX_DYNAMIC_SHARED = 8


@dataclass
class CompiledModule:
    """A compiled CUDA module; kernels are looked up by name and loaded per device."""

    name: str
    key: str
    cubin: bytes
    log: str
    from_cache: bool
    _loaded: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _module(self, device_id: int):
        cupy = require_gpu("loading a CUDA module")
        with self._lock:
            module = self._loaded.get(device_id)
            if module is None:
                with cupy.cuda.Device(device_id):
                    module = cupy.cuda.function.Module()
                    module.load(self.cubin)
                self._loaded[device_id] = module
            return module

    def get_kernel(self, name: str) -> "Kernel":
        return Kernel(self, name)


class Kernel:
    """One ``extern "C"`` kernel of a :class:`CompiledModule`.

    Call it as ``kernel(grid, block, args, shared_mem=0)``. Array arguments may be
    CuPy arrays or CUDA PyTorch tensors (passed as pointers, never copied); other
    arguments must be NumPy scalars (``np.int32``, ``np.float64``...) so that their
    C type is explicit.
    """

    def __init__(self, module: CompiledModule, name: str):
        self.module = module
        self.name = name
        self._functions: dict[int, object] = {}

    def _function(self, device_id: int):
        fn = self._functions.get(device_id)
        if fn is None:
            fn = self.module._module(device_id).get_function(self.name)
            self._functions[device_id] = fn
        return fn

    def attributes(self, device_id: int | None = None) -> dict:
        """Registers, local (spill) bytes, static shared memory, as the driver reports them."""
        cupy = require_gpu("kernel attributes")
        device_id = cupy.cuda.Device().id if device_id is None else device_id
        fn = self._function(device_id)
        with cupy.cuda.Device(device_id):
            return {k: cupy.cuda.driver.funcGetAttribute(v, fn.ptr) for k, v in _ATTRIBUTES.items()}

    def set_max_dynamic_shared(self, nbytes: int, device_id: int | None = None) -> None:
        """Allow at least ``nbytes`` (more than 48 KiB) of dynamic shared memory for
        this kernel.  Only ever raises the limit: one compiled function may serve
        callers with different needs (FusionRCG's op-stream kernels are shared
        between classes), and lowering it would break the larger launches."""
        cupy = require_gpu("kernel attributes")
        device_id = cupy.cuda.Device().id if device_id is None else device_id
        with cupy.cuda.Device(device_id):
            ptr = self._function(device_id).ptr
            if int(nbytes) > cupy.cuda.driver.funcGetAttribute(_MAX_DYNAMIC_SHARED, ptr):
                cupy.cuda.driver.funcSetAttribute(ptr, _MAX_DYNAMIC_SHARED, int(nbytes))

    def __call__(self, grid, block, args, shared_mem: int = 0):
        cupy = require_gpu(f"kernel {self.name}")
        ptr_args, device_id, stream_ptr = _marshal(cupy, args)
        if device_id is None:
            device_id = cupy.cuda.Device().id
        grid = tuple(int(g) for g in (tuple(grid) + (1, 1))[:3])
        block = tuple(int(b) for b in (tuple(block) + (1, 1))[:3])
        if min(grid) < 1:
            return  # nothing to do: an empty launch is an error in CUDA
        with cupy.cuda.Device(device_id):
            stream = _external_stream(cupy, stream_ptr if stream_ptr is not None else cupy.cuda.get_current_stream().ptr)
            self._function(device_id)(grid, block, ptr_args, shared_mem=int(shared_mem), stream=stream)


_streams: dict[int, object] = {}


def _external_stream(cupy, ptr: int):
    """A CuPy handle on a stream owned by someone else (PyTorch, or CuPy itself)."""
    stream = _streams.get(ptr)
    if stream is None:
        with warnings.catch_warnings():
            # CuPy 14 prefers Stream.from_external; ExternalStream works from CuPy 9 on.
            warnings.simplefilter("ignore", DeprecationWarning)
            stream = _streams[ptr] = cupy.cuda.ExternalStream(ptr)
    return stream


def _marshal(cupy, args):
    """Turn arrays into pointers; find the device and the stream the launch belongs to."""
    out, device_id, stream_ptr = [], None, None
    for i, arg in enumerate(args):
        if isinstance(arg, cupy.ndarray):
            dev, ptr = arg.device.id, arg.data.ptr
        elif type(arg).__module__.startswith("torch") and hasattr(arg, "data_ptr"):
            if not arg.is_cuda:
                raise TypeError(f"argument {i} is a PyTorch tensor on {arg.device}, not on a CUDA GPU")
            import torch

            dev, ptr = arg.device.index, arg.data_ptr()
            if stream_ptr is None:
                stream_ptr = torch.cuda.current_stream(arg.device).cuda_stream
        elif isinstance(arg, np.generic):
            out.append(arg)
            continue
        else:
            raise TypeError(
                f"argument {i} of type {type(arg).__name__}: pass CuPy arrays, CUDA tensors "
                "or NumPy scalars (np.int32, np.float64, ...) so the C type is explicit"
            )
        if device_id is not None and dev != device_id:
            raise ValueError(f"kernel arguments live on GPUs {device_id} and {dev}; use one GPU")
        device_id = dev
        out.append(np.uint64(ptr))
    return tuple(out), device_id, stream_ptr


_compile_lock = threading.Lock()
_memory_cache: dict[str, CompiledModule] = {}


def _nvrtc():
    require_gpu("NVRTC compilation")
    from cupy_backends.cuda.libs import nvrtc

    return nvrtc


def nvrtc_version() -> str:
    major, minor = _nvrtc().getVersion()
    return f"{major}.{minor}"


def _arch(cupy) -> str:
    return f"sm_{cupy.cuda.Device().compute_capability}"


@contextlib.contextmanager
def locked(path: pathlib.Path):
    """Hold an exclusive lock on ``path`` (a ``.lock`` file next to it) for a
    read-modify-write that other processes must not interleave with.  Where
    the OS has no ``fcntl`` (Windows) only the write itself stays atomic."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path.with_name(f"{path.name}.lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_atomic(path: pathlib.Path, chunks) -> None:
    """Write the bytes-like ``chunks`` to ``path`` through a temporary file of
    this process and thread, then ``os.replace``: readers in other threads and
    processes see the old file, the new one or none, never part of one.  On
    an OSError the temporary file is removed and the error raised."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}.{threading.get_ident()}")
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def compile_source(source: str, *, name: str = "module", options=()) -> CompiledModule:
    """Compile CUDA C++ for the current GPU, or take it from the cache.

    ``csrc/`` is on the include path, so generated code can ``#include`` the
    shipped headers. The cache key covers the source, all shipped headers, the
    options, the GPU architecture and the NVRTC version.
    """
    cupy = require_gpu("NVRTC compilation")
    arch = _arch(cupy)
    options = tuple(options)
    full_options = (
        f"--gpu-architecture={arch}",
        "-std=c++17",
        f"-I{csrc_root()}",
        *(f"-I{d}" for d in _cuda_include_dirs()),
        *options,
    )
    key_material = "\0".join([source, _headers_digest(), arch, nvrtc_version(), *options])
    key = hashlib.sha256(key_material.encode()).hexdigest()[:32]
    with _compile_lock:
        if key in _memory_cache:
            return _memory_cache[key]
    path = cache_dir() / f"{name}-{arch}-{key}.cubin"
    if path.is_file():
        module = CompiledModule(name, key, path.read_bytes(), "", from_cache=True)
    else:
        # Outside the lock: NVRTC releases the GIL, so threads compile side by side
        # (a key compiled twice at once only costs the time; the rename is atomic).
        cubin, log = _nvrtc_compile(source, name, full_options)
        write_atomic(path, [cubin])
        module = CompiledModule(name, key, cubin, log, from_cache=False)
    with _compile_lock:
        return _memory_cache.setdefault(key, module)


def _nvrtc_compile(source: str, name: str, options: tuple) -> tuple[bytes, str]:
    nvrtc = _nvrtc()
    prog = nvrtc.createProgram(source, f"{name}.cu", [], [])
    try:
        try:
            nvrtc.compileProgram(prog, list(options))
        except nvrtc.NVRTCError as exc:
            log = nvrtc.getProgramLog(prog)
            raise RuntimeError(f"NVRTC could not compile {name}: {exc}\n{log}") from None
        return nvrtc.getCUBIN(prog), nvrtc.getProgramLog(prog)
    finally:
        nvrtc.destroyProgram(prog)


def compile_file(relpath: str, *, options=(), defines: dict | None = None) -> CompiledModule:
    """Compile a shipped source from ``csrc/``; ``defines`` become ``-D`` options."""
    defines = defines or {}
    opts = tuple(options) + tuple(f"-D{k}={v}" for k, v in sorted(defines.items()))
    name = pathlib.PurePosixPath(relpath).stem
    return compile_source(read_source(relpath), name=name, options=opts)


def clear_memory_cache() -> None:
    """Forget modules compiled in this process (the disk cache stays); for tests."""
    with _compile_lock:
        _memory_cache.clear()
