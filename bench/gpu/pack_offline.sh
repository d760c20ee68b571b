#!/usr/bin/env bash
# Packs, on a machine with a network and this repo's .venv, what bench/gpu/run_gpu.sh needs on an
# OFFLINE GPU machine whose Python already has torch, torchvision, numpy, scipy, scikit-image,
# opencv, pyyaml, einops and tensorboard (a typical CUDA image; cluster nodes often have no network):
#
#   bash bench/gpu/pack_offline.sh DIR [PYTHON_VERSION]      # PYTHON_VERSION of the GPU machine, default 3.12
#
# DIR/site   the pure-Python packages copied from .venv: basicsr, addict, yapf, mamba_ssm (its Python
#            side only; its CUDA kernel is built there from the sdist)
# DIR/whl    lmdb's binary wheel for that Python
# DIR/mamba_ssm-<version>.tar.gz   mamba-ssm's source, for bench/gpu/build_mamba_kernel.py
#
# Copy DIR next to the repo on the GPU machine, then:  OFFLINE_PACK=DIR bash bench/gpu/run_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR="${1:?usage: pack_offline.sh DIR [PYTHON_VERSION]}"
PYV="${2:-3.12}"
VPY=.venv/bin/python
[ -x "$VPY" ] || { echo "pack_offline: run 'make venv' first (the packages are copied from .venv)" >&2; exit 1; }
SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mkdir -p "$DIR/site" "$DIR/whl"
for pkg in basicsr addict yapf yapf_third_party mamba_ssm; do
    [ -d "$SITE/$pkg" ] || { echo "pack_offline: $pkg is not installed in .venv" >&2; exit 1; }
    rm -rf "${DIR:?}/site/$pkg"
    cp -r "$SITE/$pkg" "$DIR/site/"
done
find "$DIR/site" -name __pycache__ -prune -exec rm -rf {} +
LMDB="$("$VPY" -c 'import importlib.metadata as m; print(m.version("lmdb"))')"
MAMBA="$("$VPY" -c 'import importlib.metadata as m; print(m.version("mamba_ssm"))')"
"$VPY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DIR/whl" "lmdb==$LMDB"
"$VPY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation -d "$DIR" "mamba-ssm==$MAMBA"
echo "packed into $DIR ($(du -sh "$DIR" | cut -f1)): site/ ($(ls "$DIR/site" | tr '\n' ' ')), $(ls "$DIR"/whl/*.whl "$DIR"/*.tar.gz | xargs -n1 basename | tr '\n' ' ')"
