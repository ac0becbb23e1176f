#!/usr/bin/env bash
# GPU benchmark, under 8 minutes on one GPU: prompt-learning step (fp32 exactness check, bf16 autocast,
# optional torch.compile), feature extraction, scores and Hessian at real scale, in TFLOP/s against the
# device's peak. Writes benchmarks/results/gpu-<host>-<date>.json and .md; commit them.
#   benchmarks/gpu.sh [--compile]     on a machine with a CUDA GPU
#   benchmarks/gpu.sh --dry           the same code on the CPU with a tiny model (a check of the script)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec timeout "${GPU_BENCH_TIMEOUT:-480}" "$PYTHON" benchmarks/gpu.py "$@"
