"""The shared CUDA core: CPU-side behaviour everywhere, compile/launch/cache on a GPU."""
import subprocess
import sys

import numpy as np
import pytest

import gpucore
from gpucore import loader


def test_csrc_ships_with_the_package():
    assert (gpucore.csrc_root() / "common" / "selftest.cu").is_file()
    assert "axpy_f64" in gpucore.read_source("common/selftest.cu")


def test_missing_source_is_named():
    with pytest.raises(FileNotFoundError, match="nope.cu"):
        gpucore.read_source("nope.cu")


def test_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(loader.CACHE_ENV, str(tmp_path / "k"))
    assert gpucore.cache_dir() == tmp_path / "k"
    assert (tmp_path / "k").is_dir()


def test_without_gpu_the_error_says_why():
    if gpucore.gpu_available():
        pytest.skip("this machine has a GPU")
    assert gpucore.unavailable_reason()
    with pytest.raises(gpucore.GPUUnavailableError, match="needs a CUDA GPU"):
        gpucore.compile_file("common/selftest.cu")


@pytest.fixture(scope="module")
def doctor():
    return subprocess.run(
        [sys.executable, "-m", "pyscf_fusionrcg.doctor"], capture_output=True, text=True, timeout=300
    )


def test_doctor_runs_without_traceback(doctor):
    assert doctor.returncode == 0, doctor.stderr
    assert "FusionRCG CPU host path" in doctor.stdout
    assert "Traceback" not in doctor.stdout + doctor.stderr


DOCTOR_LABELS = ("python", "numpy", "scipy", "torch", "cupy", "pyscf", "ase", "gpu4pyscf", "kernel cache",
                 "csrc", "GPU", "CUDA", "NVRTC", "self-test", "CPU check")
DOCTOR_PATHS = ("FusionRCG GPU J/K", "FusionRCG CPU host path", "FlashSchNet fused GPU kernels",
                "FlashSchNet reference (CPU)")


def test_doctor_values_start_in_one_column(doctor):
    """Each block of the doctor's table (the facts, the paths) starts its
    values in one column."""
    head, _, paths = doctor.stdout.partition("paths:\n")

    def columns(lines, labels):
        found = set()
        for line in lines:
            label = max((l for l in labels if line.startswith(l + " ")), key=len)
            found.add(len(line) - len(line[len(label):].lstrip()))
        return found

    assert len(columns(head.splitlines(), DOCTOR_LABELS)) == 1, head
    assert len(columns([l[2:] for l in paths.splitlines()], DOCTOR_PATHS)) == 1, paths


def test_doctor_checks_the_cpu_paths(doctor):
    """Without a GPU too, the doctor runs FusionRCG's host J/K and the
    reference SchNet on a small case, each OK here."""
    checks = [l for l in doctor.stdout.splitlines() if l.startswith("CPU check")]
    names = ("FusionRCG host J/K", "SchNet reference")
    assert len(checks) == 2 and all(name in c for name, c in zip(names, checks)), checks
    assert all(" OK (" in c for c in checks), checks


def test_doctor_reports_a_failed_check_with_its_error(monkeypatch):
    """A check that raises, or misses its tolerance, is a FAIL row that says why."""
    from gpucore import doctor

    def broken():
        raise RuntimeError("no integrals today")
    monkeypatch.setattr(doctor, "host_jk_check", broken)
    monkeypatch.setattr(doctor, "schnet_check", lambda: doctor._within(0.5, 1e-6, "forces"))
    checks = [l for l in doctor.report() if l.startswith("CPU check")]
    assert "FusionRCG host J/K FAIL: RuntimeError: no integrals today" in checks[0], checks
    assert "SchNet reference   FAIL (forces: max error 5.0e-01, tolerance 1e-06)" in checks[1], checks


@pytest.mark.parametrize("driver,extras", [((12, 4), ["cuda12"]), ((13, 0), ["cuda13"]),
                                           (None, ["cuda12", "cuda13"]), ((11, 8), [])])
def test_install_hint_names_the_package_extra_for_the_driver(monkeypatch, driver, extras):
    """The hint works outside a checkout (the package's extra, not '.[cuda12]')
    and picks the extra of the driver's CUDA where the driver says it."""
    monkeypatch.setattr(loader, "driver_cuda_version", lambda: driver)
    hint = loader.install_hint()
    assert [e for e in ("cuda12", "cuda13") if f'pip install "fusion-chem-gpu[{e}]"' in hint] == extras, hint
    assert ".[cuda" not in hint
    if driver == (11, 8):
        assert "supports CUDA 11.8" in hint, hint


@pytest.mark.gpu
def test_compile_launch_cupy_and_torch_then_cache(tmp_path, monkeypatch):
    import cupy
    import torch

    monkeypatch.setenv(loader.CACHE_ENV, str(tmp_path))
    loader.clear_memory_cache()
    first = gpucore.compile_file("common/selftest.cu")
    assert not first.from_cache
    assert len(list(tmp_path.glob("selftest-*.cubin"))) == 1
    kernel = first.get_kernel("axpy_f64")
    n = 1000
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal(n), rng.standard_normal(n)

    cx, cy = cupy.asarray(x), cupy.asarray(y)
    kernel(((n + 127) // 128,), (128,), (cx, cy, np.float64(3.0), np.int32(n)))
    np.testing.assert_allclose(cupy.asnumpy(cy), 3.0 * x + y, rtol=0, atol=1e-14)

    tx, ty = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):  # launches follow torch's current stream
        kernel(((n + 127) // 128,), (128,), (tx, ty, np.float64(-2.0), np.int32(n)))
    side.synchronize()
    np.testing.assert_allclose(ty.cpu().numpy(), -2.0 * x + y, rtol=0, atol=1e-14)

    loader.clear_memory_cache()  # a new process would find only the disk cache
    second = gpucore.compile_file("common/selftest.cu")
    assert second.from_cache and second.cubin == first.cubin
    print(f"compiled once, second load from cache {sorted(p.name for p in tmp_path.iterdir())}")
    attrs = second.get_kernel("axpy_f64").attributes()
    assert attrs["num_regs"] > 0 and attrs["local_size_bytes"] == 0


@pytest.mark.gpu
def test_launch_rejects_untyped_scalars():
    import cupy

    kernel = gpucore.compile_file("common/selftest.cu").get_kernel("axpy_f64")
    x = cupy.zeros(4)
    with pytest.raises(TypeError, match="NumPy scalars"):
        kernel((1,), (32,), (x, x, 1.0, 4))


def test_installed_distribution_carries_the_cuda_sources():
    """A (non-editable) install puts the CUDA sources beside gpucore in site-packages."""
    import pathlib
    import sysconfig

    site = pathlib.Path(sysconfig.get_paths()["purelib"])
    if not (site / "gpucore" / "loader.py").is_file():
        pytest.skip("not installed into site-packages (editable install or source tree)")
    assert (site / "gpucore" / "csrc" / "common" / "selftest.cu").is_file()


def test_write_atomic_replaces_whole_files_and_cleans_up(tmp_path):
    """gpucore.write_atomic, which the cubin cache, the tier decisions and the
    prepared-object cache write through: the file holds every chunk, a
    rewrite replaces it, and a failed write raises and leaves no temporary
    file behind."""
    from gpucore import write_atomic
    path = tmp_path / "a.bin"
    write_atomic(path, [b"abc", memoryview(b"def")])
    assert path.read_bytes() == b"abcdef"
    write_atomic(path, [b"xy"])
    assert path.read_bytes() == b"xy"

    def failing():
        yield b"partial"
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, failing())
    assert path.read_bytes() == b"xy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
