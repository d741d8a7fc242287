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
import sys
import time
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


def select_cases(parser, text: str, quick: bool, cases: dict, quick_names) -> list:
    """The cases named in ``text`` (comma-separated, or 'all': every case, or
    ``quick_names`` with ``quick``); an unknown name is ``parser.error``."""
    if text == "all":
        names = list(quick_names) if quick else list(cases)
    else:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in cases]
        if unknown:
            parser.error(f"unknown case(s) {unknown}; known: {', '.join(cases)}")
    return [cases[n] for n in names]


def gpu_or_none(script: str, *modules: str):
    """CuPy with a usable GPU and ``modules`` importable (checked before any
    case runs); else None, having said why on stderr."""
    import importlib

    from gpucore import GPUUnavailableError, require_gpu
    try:
        cupy = require_gpu(script)
        for name in modules:
            importlib.import_module(name)
    except (GPUUnavailableError, ImportError) as exc:
        print(f"error: {exc} (--dry-run lists the cases without a GPU)", file=sys.stderr)
        return None
    return cupy


def sync_gpu() -> None:
    import cupy
    cupy.cuda.Device().synchronize()


def timed_once(fn):
    """(seconds, result) of one call, the GPU drained before and after."""
    sync_gpu()
    t0 = time.perf_counter()
    out = fn()
    sync_gpu()
    return time.perf_counter() - t0, out


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


#: What the notes of a run stopped part way (``meta["complete"]`` False) end with.
INCOMPLETE = "Incomplete run: the cases stop part way."


def write_results(name: str, records: list[dict], meta: dict | None = None, *, title: str | None = None,
                  columns: list[str] | None = None, notes: str | None = None,
                  directory: Path | None = None) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` under ``benchmarks/results/`` (or ``directory``).

    ``records``: one dict per row (numbers, strings, None). ``meta``: defaults to
    :func:`environment_meta`; a run that rewrites its results after each case
    sets ``meta["complete"]`` False until its last, and the notes then say the
    run is incomplete. Returns the two paths.
    """
    meta = environment_meta() if meta is None else meta
    if meta.get("complete") is False:
        notes = f"{notes} {INCOMPLETE}" if notes else INCOMPLETE
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


#: The lasting benchmarks: script stem -> (what it measures, the command that runs it).
#: benchmarks/README.md lists them in this order, each with its result sets.
BENCHMARKS = {
    "scf_vs_gpu4pyscf": ("J/K builds and whole SCFs, FusionRCG against GPU4PySCF on the same GPU and "
                         "density", "python benchmarks/scf_vs_gpu4pyscf.py --cases vitc-def2-tzvp"),
    "grad_vs_gpu4pyscf": ("nuclear gradients, FusionRCG's derivative integrals on the GPU against GPU4PySCF's "
                          "on the same converged RHF", "python benchmarks/grad_vs_gpu4pyscf.py"),
    "rcg_jk_breakdown": ("one FusionRCG J+K build split into plan, ERI and digestion time per class, "
                         "next to GPU4PySCF's build", "python benchmarks/rcg_jk_breakdown.py"),
    "rcg_report_gpu": ("per integral class: live intermediates, tier, registers and spills from the "
                       "compiler, kernel time per quartet", "python benchmarks/rcg_report_gpu.py"),
    "schnet_throughput": ("one FlashSchNet force evaluation, fused (fp32, bf16, fp16) against the plain "
                          "PyTorch SchNet", "python benchmarks/schnet_throughput.py"),
    "schnet_kernel_breakdown": ("time per fused kernel and per torch part of one force evaluation",
                                "python benchmarks/schnet_kernel_breakdown.py"),
    "md_throughput": ("batched replica MD and ASE steps per second, fused against the reference driven "
                      "the same way", "python benchmarks/md_throughput.py"),
    "cln025_validation": ("the coarse-grained CLN025 model end to end: all-atom reference, force matching, and "
                          "64 replicas in the fused kernels (bf16, fp32) against the reference",
                          "python benchmarks/cln025_validation.py OUT_DIR   # again after each stop, 9 min a stage"),
    "scaling": ("J/K builds and SCF over several GPUs (strong scaling), replica MD over several GPUs (weak "
                "scaling), and the J+K build's efficiency projected to 64 GPUs from one GPU's breakdown",
                "python benchmarks/scaling.py --project   # measured: python benchmarks/scaling.py (2+ GPUs)"),
    "compare_trees": ("one change before and after: the J+K builds of Vitamin C def2-TZVP/QZVP and the "
                      "SchNet throughput from two source trees on one GPU (compare_trees.sh)",
                      "benchmarks/compare_trees.sh BEFORE_TREE"),
}

#: Result tables longer than this show their first rows here and link to the rest.
INDEX_ROWS = 8

INDEX_HEADER = """# Benchmarks

Each script here runs its own baseline side by side in one process on one GPU and
writes `results/<name>.json` and `results/<name>.md` (GPU, versions, date and commit
with every table). This page is rebuilt from those files whenever a script writes
one (`_common.update_index`); do not edit it by hand. All of them run on a GPU host
with `tools/gpu_check.sh LOGDIR`. Geometries come from `molecules/`. Earlier figures
and the one-off investigations are summarised in `docs/history.md` and
`docs/investigations.md`.
"""


def script_of(result: str) -> str | None:
    """The lasting benchmark that writes result set ``result`` (the longest stem it starts with)."""
    stems = [s for s in BENCHMARKS if result == s or result.startswith(s + "_")]
    return max(stems, key=len) if stems else None


def _summary(md: Path) -> list[str]:
    """A result file's title, GPU and versions lines, and its table cut to INDEX_ROWS rows."""
    lines = md.read_text().strip().splitlines()
    title = lines[0].lstrip("# ").strip() if lines else md.stem
    meta = [line for line in lines[1:] if line.startswith(("GPU:", "Versions:"))]
    table = [line for line in lines if line.startswith("|")]
    out = [f"### [{md.stem}](results/{md.name}): {title}", "", *(line + "  " for line in meta), ""]
    if table:
        rows = table[2:]
        out += table[:2] + rows[:INDEX_ROWS]
        if len(rows) > INDEX_ROWS:
            out += ["", f"{len(rows) - INDEX_ROWS} more rows in [results/{md.name}](results/{md.name})."]
        out.append("")
    return out


def index_text() -> str:
    """``benchmarks/README.md`` as the result files make it: each lasting benchmark with its result sets."""
    by_script: dict[str | None, list[Path]] = {}
    for md in sorted(RESULTS_DIR.glob("*.md")):
        by_script.setdefault(script_of(md.stem), []).append(md)
    parts = [INDEX_HEADER, "| script | what it measures |", "|---|---|"]
    parts += [f"| [`{stem}.py`]({stem}.py) | {what} |" for stem, (what, _) in BENCHMARKS.items()]
    parts.append("")
    for stem, (what, command) in BENCHMARKS.items():
        parts += [f"## {stem}", "", what[0].upper() + what[1:] + ".", "", "```bash", command, "```", ""]
        sets = by_script.get(stem, [])
        if not sets:
            parts += ["No results yet.", ""]
        for md in sets:
            parts += _summary(md)
    if by_script.get(None):
        parts += ["## Results of no script here", ""]
        for md in by_script[None]:
            parts += _summary(md)
    return "\n".join(parts).rstrip() + "\n"


def update_index() -> Path:
    """Rebuild ``benchmarks/README.md`` from every results/*.md (:func:`index_text`)."""
    index = RESULTS_DIR.parent / "README.md"
    index.write_text(index_text())
    return index
