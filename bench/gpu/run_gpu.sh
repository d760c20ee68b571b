#!/usr/bin/env bash
# Serpent on a CUDA machine, one short run: CUDA vs CPU correctness of the scan and of the presets,
# then forward / training-step time and peak memory vs SwinIR at 256/512/1024.
#
#   bash bench/gpu/run_gpu.sh [gpu_check.py arguments, e.g. --sizes 256 512 --amp --out f.json]
#
# Environment:
#   PY         the Python to use (default: .venv/bin/python, else python3)
#   OFFLINE_PACK  a folder made by bench/gpu/pack_offline.sh (for an offline machine): its lmdb wheel
#              is installed into it, its site/ goes on PYTHONPATH, and MAMBA_SRC defaults to its sdist
#   MAMBA_SRC  a mamba-ssm source tree or sdist: when `selective_scan_cuda` does not import, its
#              kernel is built from it for this GPU alone (bench/gpu/build_mamba_kernel.py, a few
#              minutes) into $MAMBA_KERNEL_DIR (default build/mamba_kernel); without it the checks
#              run on the torch backend on CUDA
#   MAMBA_BUILD_TIMEOUT  seconds allowed for that build (default 480)
#   CPU_BUILD_GRACE      seconds to wait for our CPU kernel after that (default 60)
# Our CPU kernel (the reference for the CUDA checks) is built in place alongside, in parallel.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
KDIR="${MAMBA_KERNEL_DIR:-build/mamba_kernel}"
stamp() { echo "[run_gpu $(date +%T)] $*"; }
if [ -n "${OFFLINE_PACK:-}" ]; then
    PACK="$(cd "$OFFLINE_PACK" && pwd)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$PACK/site" "$PACK"/whl/*.whl \
        || stamp "installing the pack's wheels FAILED"
    export PYTHONPATH="$PACK/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    MAMBA_SRC="${MAMBA_SRC:-$(ls "$PACK"/mamba_ssm-*.tar.gz 2>/dev/null | head -1)}"
    stamp "offline pack $PACK: PYTHONPATH=$PYTHONPATH, MAMBA_SRC=$MAMBA_SRC"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
mkdir -p build

stamp "building our CPU scan kernel (log: build/cpu_kernel.log)"
# (under `timeout`, which runs it in its own process group and signals the whole group: stopping it
# stops the compilers too)
SERPENT_REQUIRE_CPU_KERNEL=1 timeout 3600 "$PY" setup.py -q build_ext --inplace >build/cpu_kernel.log 2>&1 &
cpu_build=$!

export PYTHONPATH="$PWD/$KDIR${PYTHONPATH:+:$PYTHONPATH}"
if "$PY" -c "import selective_scan_cuda" 2>/dev/null; then
    stamp "mamba-ssm's selective_scan_cuda imports"
elif [ -n "${MAMBA_SRC:-}" ]; then
    stamp "building mamba-ssm's selective_scan_cuda from $MAMBA_SRC"
    timeout "${MAMBA_BUILD_TIMEOUT:-480}" "$PY" bench/gpu/build_mamba_kernel.py "$MAMBA_SRC" --out "$KDIR" \
        || stamp "mamba kernel build FAILED or timed out: the checks run without it"
else
    stamp "no selective_scan_cuda and no MAMBA_SRC: the checks run on the torch backend on CUDA"
fi
# The CPU kernel is one large translation unit (minutes on one core): give it CPU_BUILD_GRACE more
# seconds (default 60), then go on without it (the CPU side of the checks uses the torch backend).
for _ in $(seq "${CPU_BUILD_GRACE:-60}"); do kill -0 "$cpu_build" 2>/dev/null || break; sleep 1; done
if kill -0 "$cpu_build" 2>/dev/null; then
    kill "$cpu_build"; wait "$cpu_build" 2>/dev/null
    stamp "CPU kernel build not finished in time: stopped; the CPU side uses the torch backend"
elif wait "$cpu_build"; then stamp "CPU kernel built"
else stamp "CPU kernel build FAILED:"; tail -20 build/cpu_kernel.log; fi
"$PY" -c "import importlib.util as u; print('mamba-ssm CUDA extension built:', u.find_spec('selective_scan_cuda') is not None)"
stamp "gpu_check"
exec "$PY" bench/gpu/gpu_check.py "$@"
