#!/bin/sh
# `make simulate` on a lent machine (docs/simulate.md, "On a bigger machine"): the default
# run, or what the arguments ask, with every core. The service's jobs train on the CPU (no
# model is moved to a GPU), so what a lent GPU machine brings here is its cores; its GPU
# and core count are written beside the results so that timings are read against them.
#
#   research/simulate_gpu.sh                          # the default run into simulate-results/
#   OUT=/tmp/out research/simulate_gpu.sh --seeds 1,2,3,4,5
set -eu
cd "$(dirname "$0")/.."
out="${OUT:-simulate-results}"
mkdir -p "$out"
{
    echo "cores: $(nproc)"
    nvidia-smi -L 2>/dev/null || echo "no GPU found by nvidia-smi"
} > "$out/machine.txt"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
exec .venv/bin/python -m research.simulate --out "$out" "$@"
