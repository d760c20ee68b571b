#!/usr/bin/env bash
# Serpent on a CUDA machine, one short run (a few minutes): CUDA vs CPU correctness of the scan
# and of the presets, then forward / training-step time and peak memory vs SwinIR at 256/512/1024.
# Writes bench/gpu/results/gpu.json. Extra arguments go to gpu_check.py (e.g. --sizes 256 512,
# --amp, --dry-run). Untested on a GPU when written; `--dry-run` checks it on a CPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PY:-.venv/bin/python}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$PY" -c "import importlib.util as u; print('mamba-ssm CUDA extension built:', u.find_spec('selective_scan_cuda') is not None)"
exec "$PY" bench/gpu/gpu_check.py "$@"
