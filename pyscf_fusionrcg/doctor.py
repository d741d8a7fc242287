"""``python -m pyscf_fusionrcg.doctor``: the shared core's diagnosis (see gpucore.doctor)."""
from gpucore.doctor import main

if __name__ == "__main__":
    raise SystemExit(main())
