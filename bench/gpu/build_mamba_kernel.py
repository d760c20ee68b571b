"""Build mamba-ssm's selective-scan CUDA extension (`selective_scan_cuda`) for this machine's GPU only.

mamba-ssm's own setup.py compiles its kernels for about ten GPU architectures (an hour or more on a
workstation) and cannot fetch its prebuilt wheels without a network. A user with one kind of GPU needs
one architecture: this builds only the `selective_scan_cuda` module (the one the `cuda` scan backend
uses; causal-conv1d and mamba's Triton kernels are not needed) for the visible GPU, in a few minutes.

    python bench/gpu/build_mamba_kernel.py mamba_ssm-2.3.2.post1.tar.gz --out build/mamba_kernel
    export PYTHONPATH=build/mamba_kernel:$PYTHONPATH    # or copy the .so into site-packages

SRC is a mamba-ssm source tree or its sdist (.tar.gz, e.g. from `pip download --no-binary :all:
--no-deps mamba-ssm==2.3.2.post1`). The mamba_ssm Python package itself must be installed as usual
(`MAMBA_SKIP_CUDA_BUILD=TRUE pip install --no-build-isolation --no-deps mamba-ssm==...`).
Compiler flags follow mamba-ssm's setup.py; the architecture comes from TORCH_CUDA_ARCH_LIST or,
when unset, from the visible GPU. Parallel jobs: MAX_JOBS (default: all cores).
"""
from __future__ import annotations

import argparse
import os
import sys
import tarfile
import time
from pathlib import Path

# mamba-ssm's setup.py, less its list of architectures and its -std (torch picks the standard
# its own headers need).
NVCC_FLAGS = ['-O3', '-U__CUDA_NO_HALF_OPERATORS__', '-U__CUDA_NO_HALF_CONVERSIONS__',
              '-U__CUDA_NO_BFLOAT16_OPERATORS__', '-U__CUDA_NO_BFLOAT16_CONVERSIONS__',
              '-U__CUDA_NO_BFLOAT162_OPERATORS__', '-U__CUDA_NO_BFLOAT162_CONVERSIONS__',
              '--expt-relaxed-constexpr', '--expt-extended-lambda', '--use_fast_math', '-lineinfo']
SOURCES = ['selective_scan.cpp'] + [f'selective_scan_fwd_{t}.cu' for t in ('fp32', 'fp16', 'bf16')] + \
          [f'selective_scan_bwd_{t}_{w}.cu' for t in ('fp32', 'fp16', 'bf16') for w in ('real', 'complex')]


def find_csrc(src: Path, work: Path) -> Path:
    """csrc/selective_scan of a source tree, or of an sdist unpacked under `work`."""
    if src.is_file():
        with tarfile.open(src) as tar:
            members = [m for m in tar.getmembers() if '/csrc/selective_scan/' in m.name and m.isfile()]
            if not members:
                raise SystemExit(f'build_mamba_kernel: {src} holds no csrc/selective_scan (not a mamba-ssm sdist?)')
            tar.extractall(work, members=members, filter='data')
        src = work
    hits = sorted(src.glob('**/csrc/selective_scan/selective_scan.cpp'))
    if not hits:
        raise SystemExit(f'build_mamba_kernel: no csrc/selective_scan/selective_scan.cpp under {src}')
    return hits[0].parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('src', type=Path, help='mamba-ssm source tree or sdist (.tar.gz)')
    ap.add_argument('--out', type=Path, default=Path('build/mamba_kernel'),
                    help='folder that receives selective_scan_cuda*.so (default: build/mamba_kernel)')
    args = ap.parse_args()
    if not args.src.exists():
        raise SystemExit(f'build_mamba_kernel: mamba-ssm source {args.src} does not exist')

    import torch
    from torch.utils import cpp_extension
    if not torch.cuda.is_available() or cpp_extension.CUDA_HOME is None:
        raise SystemExit('build_mamba_kernel: needs a visible CUDA GPU and nvcc (CUDA_HOME)')
    if 'TORCH_CUDA_ARCH_LIST' not in os.environ:
        major, minor = torch.cuda.get_device_capability()
        os.environ['TORCH_CUDA_ARCH_LIST'] = f'{major}.{minor}'
    os.environ.setdefault('MAX_JOBS', str(os.cpu_count() or 4))
    args.out.mkdir(parents=True, exist_ok=True)
    csrc = find_csrc(args.src.resolve(), args.out / 'src')
    print(f'building selective_scan_cuda for sm_{os.environ["TORCH_CUDA_ARCH_LIST"]} from {csrc} '
          f'({os.environ["MAX_JOBS"]} jobs, torch {torch.__version__}, CUDA {torch.version.cuda})', flush=True)
    t0 = time.time()
    ext = cpp_extension.load(name='selective_scan_cuda', sources=[str(csrc / s) for s in SOURCES],
                             extra_cflags=['-O3'], extra_cuda_cflags=NVCC_FLAGS, extra_include_paths=[str(csrc)],
                             build_directory=str(args.out), verbose=False)
    print(f'built {ext.__file__} in {time.time() - t0:.0f} s', flush=True)

    # A tiny forward call: the kernel image must exist for this GPU.
    u = torch.randn(1, 4, 16, device='cuda')
    out = ext.fwd(u, torch.rand_like(u), -torch.rand(4, 2, device='cuda'), torch.randn(1, 1, 2, 16, device='cuda'),
                  torch.randn(1, 1, 2, 16, device='cuda'), None, None, None, True)
    torch.cuda.synchronize()
    print(f'selective_scan_cuda.fwd ran: output {tuple(out[0].shape)}, finite={bool(out[0].isfinite().all())}')
    print(f'use it with: export PYTHONPATH={args.out.resolve()}:$PYTHONPATH')


if __name__ == '__main__':
    sys.exit(main())
