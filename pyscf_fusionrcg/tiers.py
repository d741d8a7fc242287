"""Route each ERI class to a storage tier (register / shared / warp / global memory).

Static choice (:func:`choose_tier`) from the size of the program:

* ``register`` when it has at most ``REG_STATEMENTS_MAX`` statements: one
  thread per quartet, straight-line code on plain locals (ptxas spills the
  excess to cached local memory, which still beats the interpreter);
* ``warp`` when the slots of one work item, shared by the 32 lanes of a warp
  (the levels form), fit a block's shared memory;
* ``global`` otherwise: the levels form again, its slots in global scratch.

The ``shared`` tier (one thread per quartet, its slots in shared memory) lost
to the warp tier wherever both were measured, so only an explicit
``tier='shared'`` selects it.

Measured routing (:func:`route`): the register variant is compiled and kept
only if the compiler reports at most ``SPILL_BYTES_MAX`` spilled bytes per
thread; otherwise the class moves to the warp tier, and to the global tier
when one warp's slots do not fit.  Decisions are cached in memory and on
disk (next to gpucore's kernel cache) per (class, Cartesian, operator,
contraction shape, request, architecture, generator version).  Measuring
needs the GPU (NVRTC for its architecture and the driver's attributes);
:func:`nvcc_stats` gives ptxas's report for sm_90 without one.

Form (:func:`variant_for`): the shared tier runs straight-line code up to
``STRAIGHT_OPS_MAX`` statements and the op-stream interpreter beyond; the warp
and global tiers run the levels form, and for classes of one contraction
tuple where :func:`pairmap_pays`, only the primitive stage in the
interpreter, the contracted stage in the side passes (:func:`ctr_mode`).
The register and shared tiers always run the contracted stage's ops, whatever
``ctr`` asks for.

The measurements behind every bound here are in ``docs/routing.md``.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from . import codegen, ir, kernels, pairmaps, prepared

#: Largest program (statements) the register tier is tried for.
REG_STATEMENTS_MAX = 8000
#: Most spilled bytes per thread a register-tier kernel may have and be kept.
SPILL_BYTES_MAX = 10240
#: Largest program (statements) the shared tier runs as straight-line code.
STRAIGHT_OPS_MAX = 1500
#: The pairmap contracted stage is taken from PAIRMAP_ACC_MIN accumulators
#: on, unless a quartet's pair matrices exceed PAIRMAP_MATRIX_RATIO times its
#: accumulators: the edges of what was measured to win.
PAIRMAP_ACC_MIN = 690
PAIRMAP_MATRIX_RATIO = 13.6

_lock = threading.Lock()
_decisions: dict = {}


def choose_tier(program: ir.Program) -> str:
    """Static tier from the program's size (thresholds above)."""
    if n_statements(program) <= REG_STATEMENTS_MAX:
        return 'register'
    if _fits(program, variant_for(program, 'warp')):
        return 'warp'
    return 'global'


def n_statements(program: ir.Program) -> int:
    return len(program.prim) + len(program.ctr)


def variant_for(program: ir.Program, tier: str, omega=0.0, nctr=(1, 1, 1, 1), ctr=None) -> codegen.Variant:
    """The variant of a tier, with the form chosen by program size and the
    contracted stage by :func:`ctr_mode`."""
    if tier in ('warp', 'global'):
        form = 'levels'
    elif tier == 'register' or n_statements(program) <= STRAIGHT_OPS_MAX:
        form = 'straight'
    else:
        form = 'table'
    return codegen.make_variant(program, tier, omega, nctr, form, ctr_mode(program, form, nctr, ctr))


class KernelTooLarge(ValueError):
    """A program no kernel form can encode (``codegen.EncodingOverflow``)."""


def derivative_variant(program: ir.DerivProgram, tier=None, omega=0.0, nctr=(1, 1, 1, 1)) -> codegen.Variant:
    """The variant of a derivative program in ``tier`` (default: the static
    :func:`choose_tier`; nothing measures derivative kernels yet): the
    straight form in the register and shared tiers, the levels form in the
    warp and global tiers, its contracted stage always the program's ops (a
    derivative has no pair matrices). :class:`KernelTooLarge` when the levels
    form's op stream cannot encode the program (the derivatives of (gg|gg)
    and larger classes)."""
    try:
        tier = tier or choose_tier(program)
        form = 'levels' if tier in ('warp', 'global') else 'straight'
        variant = codegen.make_variant(program, tier, omega, nctr, form)
        kernels.variant_table(program, variant)
    except codegen.EncodingOverflow as exc:
        raise KernelTooLarge(f'{program.name}: no derivative kernel can encode it ({exc})') from exc
    if not _fits(program, variant):
        raise ValueError(f'{program.name}: tier {tier!r} cannot fit one warp')
    return variant


def requested_ctr(ctr=None) -> str:
    """The contracted-stage mode asked for (``Options.ctr``; None: 'auto');
    'pairmap' and 'ops' force one where the form allows a choice (the levels
    form, :func:`ctr_mode`): elsewhere 'pairmap' gives 'ops'."""
    ctr = ctr or 'auto'
    if ctr not in codegen.CTR_MODES + ('auto',):
        raise ValueError(f"contracted stage must be one of {codegen.CTR_MODES + ('auto',)}, not {ctr!r}")
    return ctr


def ctr_mode(program: ir.Program, form: str, nctr=(1, 1, 1, 1), ctr=None) -> str:
    """'pairmap' or 'ops' for a variant: pairmap needs one contraction tuple
    and the levels form, where 'auto' (see :func:`requested_ctr`) takes it
    where :func:`pairmap_pays`; every other form runs the ops."""
    ctr = requested_ctr(ctr)
    if form != 'levels' or any(int(n) != 1 for n in nctr) or ctr == 'ops':
        return 'ops'
    return 'pairmap' if ctr == 'pairmap' or pairmap_pays(program) else 'ops'


def pairmap_pays(program: ir.Program) -> bool:
    """The measured rule above (``PAIRMAP_ACC_MIN``, ``PAIRMAP_MATRIX_RATIO``)."""
    matrices = pairmaps.matrix_doubles(program)
    return program.n_acc >= PAIRMAP_ACC_MIN and 0 < matrices <= PAIRMAP_MATRIX_RATIO * program.n_acc


def _fits(program, variant) -> bool:
    if variant.tier == 'shared':
        return codegen.shared_block(program, variant, kernels.variant_table(program, variant)) >= 32
    if variant.tier == 'warp':
        return codegen.warp_block(program, variant, kernels.variant_table(program, variant)) >= 32
    return True


# ----------------------------------------------------------------- measuring

def nvcc_stats(program: ir.Program, tier=None, omega=0.0, nctr=(1, 1, 1, 1), ctr=None) -> dict:
    """Registers / spill bytes / shared bytes of a variant from ``nvcc -arch=sm_90
    -Xptxas -v``: the compiler's report without a GPU (CI, offline checks).
    ``tier`` defaults to :func:`choose_tier` (no measured re-routing), ``ctr``
    as :func:`ctr_mode` takes it."""
    variant = variant_for(program, tier or choose_tier(program), omega, nctr, ctr)
    stats = _nvcc_stats(*kernels.kernel_source(program, variant))
    stats['shared_bytes'] += codegen.shared_bytes(program, variant, kernels.variant_table(program, variant))
    return dict(stats, tier=variant.tier, form=variant.form, ctr=variant.ctr,
                kernel=codegen.kernel_name(program, variant))


def _nvcc_stats(source: str, name: str) -> dict:
    nvcc = shutil.which('nvcc') or '/usr/local/cuda/bin/nvcc'
    from gpucore import csrc_root
    csrc = csrc_root()
    with tempfile.TemporaryDirectory() as tmp:
        cu = Path(tmp) / f'{name}.cu'
        cu.write_text(source)
        res = subprocess.run([nvcc, '-arch=sm_90', '-cubin', '-Xptxas', '-v', f'-I{csrc}',
                              str(cu), '-o', str(Path(tmp) / 'k.cubin')],
                             capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f'nvcc could not compile {name}:\n{res.stderr}')
    log = res.stderr
    regs = re.search(r'Used (\d+) registers', log)
    spill = re.search(r'(\d+) bytes spill stores', log)
    smem = re.search(r'(\d+) bytes smem', log)
    return {'registers': int(regs.group(1)) if regs else 0,
            'spill_bytes': int(spill.group(1)) if spill else 0,
            'shared_bytes': int(smem.group(1)) if smem else 0,
            'compiler': 'nvcc sm_90'}


def measure(program: ir.Program, variant: codegen.Variant) -> dict:
    """Compiler-reported registers, spill (local) bytes and shared bytes of a variant.

    NVRTC for the GPU present and the driver's function attributes
    (``local_size_bytes`` is the spill/stack space); ``shared_bytes`` adds the
    dynamic shared memory of the shared tier.  Raises GPUUnavailableError
    without a GPU (see :func:`nvcc_stats` for an offline report).
    """
    kernel, _ = kernels.compile_variant(program, variant)
    return kernel_stats(kernel, program, variant)


def kernel_stats(kernel, program: ir.Program, variant: codegen.Variant) -> dict:
    """:func:`measure`'s figures of a kernel already compiled for ``variant``."""
    att = kernel.attributes()
    return {'registers': att['num_regs'], 'spill_bytes': att['local_size_bytes'],
            'shared_bytes': att['shared_size_bytes'] + codegen.shared_bytes(
                program, variant, kernels.variant_table(program, variant)),
            'compiler': 'nvrtc'}


# ------------------------------------------------------------------- routing

def _arch() -> str:
    from gpucore import gpu_available, require_gpu
    if gpu_available():
        return f'sm_{require_gpu().cuda.Device().compute_capability}'
    return 'none'


def _disk_path() -> Path | None:
    try:
        from gpucore import cache_dir
        return cache_dir() / f'fusionrcg-tiers-{prepared.generator_version()}.json'
    except Exception:       # an unwritable cache only costs re-measuring
        return None


def _load_disk() -> dict:
    path = _disk_path()
    if path is None or not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save_disk(key: str, value: dict) -> None:
    path = _disk_path()
    if path is None:
        return
    from gpucore import locked, write_atomic
    try:
        with locked(path):      # another process may be adding its own decisions
            data = _load_disk()
            data[key] = value
            write_atomic(path, [json.dumps(data, indent=1, sort_keys=True).encode()])
    except OSError:
        pass


def route(program: ir.Program, omega=0.0, nctr=(1, 1, 1, 1), tier=None, ctr=None):
    """(variant, stats) of the tier a class runs in, measured and cached.

    ``tier`` forces a tier, ``ctr`` the contracted
    stage's mode where the tier allows a choice (:func:`ctr_mode`); otherwise start from
    :func:`choose_tier` and move down while the compiler reports more than
    ``SPILL_BYTES_MAX`` spill bytes or the variant does not fit (the warp
    tier's interpreter does not spill the slots, so it ends the search when
    it fits).
    """
    tier = tier or None
    nctr = tuple(int(n) for n in nctr)
    ctr = requested_ctr(ctr)    # each tier's mode follows from it (ctr_mode)
    key = (f'{program.name}|{int(program.cart)}|{codegen.omega_kind(omega)}|'
           f'{"".join(map(str, nctr))}|{tier or "auto"}|{ctr}|{_arch()}')
    with _lock:
        hit = _decisions.get(key)
        if hit is None:
            hit = _load_disk().get(key)
            if hit is not None:
                _decisions[key] = hit
    if hit is not None:
        return variant_for(program, hit['tier'], omega, nctr, ctr), hit
    if tier:
        variant = variant_for(program, tier, omega, nctr, ctr)
        if not _fits(program, variant):
            raise ValueError(f'{program.name}: tier {tier!r} cannot fit one warp')
        stats = measure(program, variant)
    else:
        start = choose_tier(program)
        order = [t for t in codegen.TIERS[codegen.TIERS.index(start):] if t != 'shared' or t == start]
        for t in order:
            variant = variant_for(program, t, omega, nctr, ctr)
            if not _fits(program, variant):
                continue
            stats = measure(program, variant)
            if t in ('warp', 'global') or stats['spill_bytes'] <= SPILL_BYTES_MAX:
                break
    stats = dict(stats, tier=variant.tier, form=variant.form, ctr=variant.ctr,
                 kernel=codegen.kernel_name(program, variant))
    with _lock:     # routes may be measured by several threads (gpu_jk.JKPlan)
        _decisions[key] = stats
        _save_disk(key, stats)
    return variant, stats


def compile_stats(program: ir.Program, tier=None, omega=0.0, nctr=(1, 1, 1, 1)) -> dict:
    """``dict(registers=, spill_bytes=, shared_bytes=, tier=, form=, kernel=, compiler=)``
    of the kernel the class runs with on this GPU (see :func:`route`); raises
    GPUUnavailableError without one."""
    return dict(route(program, omega, nctr, tier)[1])
