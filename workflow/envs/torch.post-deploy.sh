#!/usr/bin/env bash
# Snakemake runs this once after creating the torch environment (--use-conda).
set -euo pipefail
python -m pip install --no-deps animal-mnist==0.4
