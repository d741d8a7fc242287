"""Shared helpers for benchmark result files.

Every benchmark writes ``benchmarks/results/<name>.json`` (machine-readable, with the
environment it ran in) and ``<name>.md`` (a table to read or paste), through
:func:`write_results`. Timings only mean something next to the GPU, driver and
library versions and the date they were taken on, so :func:`environment_meta`
records those.
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import subprocess
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: The geometries shipped with the benchmarks (``benchmarks/molecules``).
MOLECULES_DIR = Path(__file__).resolve().parent / "molecules"
#: An environment variable naming another folder of geometries (same layout) instead.
MOLECULES_ENV = "FUSION_MOLECULES"


def molecules_dir() -> Path:
    """Where the benchmarks read their geometries: ``$FUSION_MOLECULES``, else :data:`MOLECULES_DIR`."""
    return Path(os.environ.get(MOLECULES_ENV) or MOLECULES_DIR)


def print_record(record: dict) -> None:
    """One line of ``key=value`` pairs, floats to 4 digits, as a run goes."""
    print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
          flush=True)

_PACKAGES = ("numpy", "scipy", "torch", "cupy-cuda12x", "cupy-cuda13x", "pyscf", "gpu4pyscf-cuda12x",
             "gpu4pyscf-cuda13x", "ase", "fusion-chem-gpu")


def gpu4pyscf_driver_works(mol) -> bool:
    """GPU4PySCF's SCF driver cannot build the core Hamiltonian beyond g
    functions (its 3-centre J engine stops at l = 4): for such a molecule the
    benchmarks run PySCF's driver with FusionRCG's J/K instead."""
    return int(mol._bas[:, 1].max()) <= 4


def _git_commit() -> str | None:
    # A copy of the tree on a GPU host names its commit through the environment
    # (its .git, if any, may be stale), and that name wins.
    if os.environ.get("FUSION_GIT_COMMIT"):
        return os.environ["FUSION_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _gpu_meta() -> dict:
    meta: dict = {}
    try:
        import torch
    except ImportError:
        return meta
    meta["torch_cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        meta.update(gpu=props.name, gpu_count=torch.cuda.device_count(),
                    gpu_capability=f"sm_{props.major}{props.minor}",
                    gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpu_multiprocessors=props.multi_processor_count)
    try:
        import cupy

        meta["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        meta["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
    except Exception:
        pass
    return meta


def environment_meta() -> dict:
    """Date (UTC), host, Python, package versions, GPU name and CUDA versions, git commit."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "git_commit": _git_commit(),
        **_gpu_meta(),
    }


def _cell(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value == 0 or 1e-3 <= abs(value) < 1e6:
            return f"{value:.4g}" if abs(value) < 100 else f"{value:,.1f}"
        return f"{value:.3e}"
    return "-" if value is None else str(value)


def markdown_table(records: list[dict], columns: list[str] | None = None) -> str:
    """A markdown table of ``records`` (columns: given, or every key in order of appearance)."""
    if columns is None:
        columns = list(dict.fromkeys(k for r in records for k in r))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in records]
    return "\n".join(lines)


def write_results(name: str, records: list[dict], meta: dict | None = None, *, title: str | None = None,
                  columns: list[str] | None = None, notes: str | None = None,
                  directory: Path | None = None) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` under ``benchmarks/results/`` (or ``directory``).

    ``records``: one dict per row (numbers, strings, None). ``meta``: defaults to
    :func:`environment_meta`. Returns the two paths.
    """
    meta = environment_meta() if meta is None else meta
    directory = RESULTS_DIR if directory is None else Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / f"{name}.json", directory / f"{name}.md"
    json_path.write_text(json.dumps({"name": name, "meta": meta, "records": records, "notes": notes},
                                    indent=2, default=str) + "\n")
    gpu = meta.get("gpu", "no GPU")
    versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    body = [f"# {title or name}", "",
            f"GPU: {gpu} ({meta.get('gpu_capability', '-')}); torch CUDA {meta.get('torch_cuda', '-')}; "
            f"date {meta.get('date', '-')}; commit {meta.get('git_commit') or '-'}",
            f"Versions: {versions or '-'}", "", markdown_table(records, columns), ""]
    if notes:
        body += [notes.strip(), ""]
    md_path.write_text("\n".join(body))
    if directory == RESULTS_DIR:
        update_index()
    return json_path, md_path


INDEX_HEADER = """# Benchmarks

Each script here measures its own baseline side by side in one run, on one GPU, and
writes `results/<name>.json` and `results/<name>.md`; this page is rebuilt from those
files every time a script writes them. Run all of them on a GPU host with
`tools/gpu_check.sh LOGDIR`.

| script | what it compares |
|---|---|
| `schnet_throughput.py` | one FlashSchNet force evaluation, fused (fp32, bf16, fp16) vs the plain PyTorch SchNet |
| `schnet_kernel_breakdown.py` | time per fused kernel and per torch part of one force evaluation |
| `md_throughput.py` | batched replica MD and ASE steps/s, fused vs reference driven the same way |
| `rcg_report_gpu.py` | FusionRCG per-class live intermediates, tier, registers and spills from the compiler |
| `scf_vs_gpu4pyscf.py` | J/K builds and whole SCF, FusionRCG vs GPU4PySCF on the same GPU and density |
| `rcg_jk_breakdown.py` | one FusionRCG J+K build split into screening, ERI and digestion time per class, next to GPU4PySCF's |
| `rcg_levels_tuning.py` | the warp tier's interpreter under other level widths and register budgets (at 070a97e also prefetch depths), on the same quartets |
| `rcg_boys_counts.py` | what the Boys series asks of a molecule's primitive quartets: the share below the switch point, its terms, the warps that wait for it (counted on the CPU) |
| `rcg_digest_runs.py` | what the digestion's warp sums cost on a plan's quartet order, segmented scan against reduce-and-scatter (counted on the CPU) |
| `rcg_plan_sizes.py` | whether a molecule's screened quartets fit on the GPU as a plan kept across builds, and the share its guess density keeps (counted on the CPU) |
| `rcg_pairmap_kernels.py` | the levels tiers' contracted stage in the interpreter vs as pair-matrix products, per class, on the same quartets (no PySCF needed) |

Current results (newest run of each script):
"""


def update_index() -> Path:
    """Rebuild ``benchmarks/README.md`` from every results/*.md, so it shows the current tables."""
    parts = [INDEX_HEADER]
    for md in sorted(RESULTS_DIR.glob("*.md")):
        text = md.read_text().strip()
        # Demote each result's title by one level under this page's own.
        parts.append("\n".join(("#" + line) if line.startswith("#") else line for line in text.splitlines()))
    index = RESULTS_DIR.parent / "README.md"
    index.write_text("\n\n".join(parts) + "\n")
    return index
