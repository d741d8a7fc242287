#!/usr/bin/env bash
# Before/after check of a change that must not move any number: the J+K builds
# of Vitamin C def2-TZVP and def2-QZVP (converged density, against GPU4PySCF)
# and the SchNet throughput, run from two source trees on one GPU, one after
# the other, then merged by compare_trees.py into
# benchmarks/results/compare_trees.{json,md} of the AFTER tree.
#
#   benchmarks/compare_trees.sh BEFORE_TREE [AFTER_TREE] [OUT_DIR]
#
# BEFORE_TREE: a checkout of the earlier commit (e.g. `git worktree add`);
# AFTER_TREE defaults to this checkout.  PySCF, GPU4PySCF and ASE must be
# importable (through PYTHONPATH, which gets each tree put in front);
# $FUSION_MOLECULES may point at the molecules when the before tree has none.
# SCF_S and SCHNET_S bound each benchmark's seconds.
set -uo pipefail
before=$(cd "${1:?usage: compare_trees.sh BEFORE_TREE [AFTER_TREE] [OUT_DIR]}" && pwd)
after=$(cd "${2:-$(dirname "$0")/..}" && pwd)
out=$(mkdir -p "${3:-$after/benchmarks/results/compare_trees_logs}" && cd "${3:-$after/benchmarks/results/compare_trees_logs}" && pwd)
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 MPLBACKEND=Agg FUSIONRCG_PROGRESS=0
base_path=${PYTHONPATH:-}
for label in before after; do
  tree=$before; [ $label = after ] && tree=$after
  (
    cd "$tree" || exit 1
    export PYTHONPATH=$tree${base_path:+:$base_path} FUSION_KERNEL_CACHE=${TMPDIR:-/tmp}/compare_trees_kernels_$label
    echo "=== $label: J+K builds ($(date -u +%T))"
    timeout -k 10 "${SCF_S:-300}" python3 benchmarks/scf_vs_gpu4pyscf.py --cases vitc-def2-tzvp,vitc-def2-qzvp \
      --no-scf --builds J+K --repeat 3 --name "compare_scf_$label" > "$out/scf_$label.log" 2>&1
    echo "rc=$?"; tail -n 8 "$out/scf_$label.log"
    echo "=== $label: SchNet throughput ($(date -u +%T))"
    timeout -k 10 "${SCHNET_S:-90}" python3 benchmarks/schnet_throughput.py --replicas 64 --precisions fp32 bf16 \
      --name "compare_schnet_$label" > "$out/schnet_$label.log" 2>&1
    echo "rc=$?"; tail -n 6 "$out/schnet_$label.log"
    cp benchmarks/results/compare_scf_$label.json benchmarks/results/compare_schnet_$label.json "$out/" 2>/dev/null
  )
done
python3 "$after/benchmarks/compare_trees.py" "$out" --results "$after/benchmarks/results"
