"""``fusion-warmup``: compile every kernel ahead of time so runs start warm.

Each package exposes ``precompile(**options)`` in its launch module; this
command calls them in turn and prints what was compiled and what came from the
disk cache.
"""
from __future__ import annotations

import argparse
import importlib

from gpucore import loader

PRECOMPILERS = ("pyscf_fusionrcg.launch", "ase_flashschnet.fused")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lmax", type=int, default=4, help="highest angular momentum to build ERI kernels for")
    args = parser.parse_args(argv)
    if not loader.gpu_available():
        print(f"nothing to compile: {loader.unavailable_reason()}")
        return 1
    loader.compile_file("common/selftest.cu")
    for name in PRECOMPILERS:
        module = importlib.import_module(name)
        kwargs = {"lmax": args.lmax} if name.startswith("pyscf") else {}
        for line in module.precompile(**kwargs):
            print(f"{name}: {line}")
    print(f"cache: {loader.cache_dir()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
