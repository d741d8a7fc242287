#!/usr/bin/env bash
# GPU check for contributors: on a GPU host (no network needed), install the
# project from this checkout, run the `gpu` tests and the benchmarks, and write
# every log into the folder given as the first argument.
#
#   tools/gpu_check.sh LOGDIR [--quick] [--no-bench]
#
# PySCF, ASE (and GPU4PySCF for the SCF benchmark) must already be importable,
# e.g. through PYTHONPATH; CuPy and PyTorch with CUDA likewise.
set -uo pipefail
logdir=${1:?usage: tools/gpu_check.sh LOGDIR [--quick] [--no-bench]}
shift
quick=""; bench=1
for a in "$@"; do
  case $a in --quick) quick="--quick" ;; --no-bench) bench=0 ;; *) echo "unknown option $a"; exit 2 ;; esac
done
mkdir -p "$logdir"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 MPLBACKEND=Agg
status=0
step() {  # step NAME TIMEOUT_S COMMAND...: run under timeout, log, remember failures
  local name=$1 limit=$2; shift 2
  echo "=== $name ($(date -u +%T))"
  timeout -k 10 "$limit" "$@" > "$logdir/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$logdir/$name.log"
  echo "=== $name rc=$rc"
  [ $rc -eq 0 ] || status=1
}
step install 600 python3 -m pip install --no-deps --no-build-isolation -e .
step doctor 300 python3 -m pyscf_fusionrcg.doctor
step pytest-gpu ${GPU_TEST_TIMEOUT:-1500} python3 -m pytest -m gpu -v -rs --durations=15 tests
if [ $bench -eq 1 ]; then
  step bench-schnet 900 python3 benchmarks/schnet_throughput.py $quick
  step bench-md 900 python3 benchmarks/md_throughput.py $quick
  step bench-rcg-report 900 python3 benchmarks/rcg_report_gpu.py $quick
  step bench-scf 1500 python3 benchmarks/scf_vs_gpu4pyscf.py $quick
  step bench-grad 1500 python3 benchmarks/grad_vs_gpu4pyscf.py $quick
  step bench-jk-breakdown 300 python3 benchmarks/rcg_jk_breakdown.py
  step bench-scaling-projection 120 python3 benchmarks/scaling.py --project
  if [ "$(python3 -c 'import cupy; print(cupy.cuda.runtime.getDeviceCount())' 2>/dev/null || echo 0)" -ge 2 ]; then
    step bench-scaling 1800 python3 benchmarks/scaling.py $quick
  else
    echo "=== bench-scaling: skipped (needs 2 GPUs or more)"
  fi
fi
exit $status
