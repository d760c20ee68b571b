"""Backend choice for the selective scan.

Automatic order: 'cuda' (mamba-ssm's kernel; CUDA tensors, only when its compiled extension
`selective_scan_cuda` exists: importing any mamba_ssm module without it raises, so we probe with
find_spec and import mamba_ssm only then), 'cpu' (our compiled kernel; CPU tensors), 'torch' (pure
PyTorch, any device). 'ref' (the loop) is used only when asked for. The `backend=` argument
overrides the environment variable SERPENT_SCAN_BACKEND, which overrides the automatic choice.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch

from . import cpu_scan
from .reference import selective_scan_ref
from .torch_scan import selective_scan_torch

BACKENDS = ('cuda', 'cpu', 'torch', 'ref')
ENV_VAR = 'SERPENT_SCAN_BACKEND'


@functools.lru_cache(maxsize=None)
def _cuda_problem() -> Optional[str]:
    """Why the cuda backend cannot run here, or None."""
    if importlib.util.find_spec('selective_scan_cuda') is None:
        return ("mamba-ssm's compiled CUDA extension 'selective_scan_cuda' is not installed "
                '(install mamba-ssm with its CUDA build on a GPU machine)')
    if not torch.cuda.is_available():
        return 'no CUDA device is available'
    try:  # mamba_ssm's package __init__ imports its whole model zoo (triton, transformers, ...)
        _cuda_fn()
    except Exception as exc:  # noqa: BLE001 - any broken optional dependency of mamba_ssm
        return f"mamba-ssm's selective_scan_interface does not import ({type(exc).__name__}: {exc})"
    return None


def _problem(name: str) -> Optional[str]:
    if name == 'cuda':
        return _cuda_problem()
    if name == 'cpu':
        return cpu_scan.load_error()
    return None


def available_backends() -> List[str]:
    """Backends that can run on this machine, in automatic-choice order."""
    return [b for b in BACKENDS if _problem(b) is None]


def _requested(backend: Optional[str]) -> Tuple[str, str]:
    """(name, where it came from) with name in BACKENDS or 'auto'."""
    if backend is not None:
        src, name = 'the backend argument', backend
    else:
        src, name = f'the environment variable {ENV_VAR}', os.environ.get(ENV_VAR, '')
    name = (name or 'auto').strip().lower()
    if name != 'auto' and name not in BACKENDS:
        raise ValueError(f"selective_scan: unknown backend '{name}' from {src}; "
                         f"choose one of {', '.join(BACKENDS)} or 'auto'")
    return name, src


def resolve_backend(device: Union[torch.device, str] = 'cpu', backend: Optional[str] = None) -> str:
    """The backend a call on tensors of `device` would use; raises if a forced one cannot run."""
    device = torch.device(device)
    name, src = _requested(backend)
    if name == 'auto':
        if device.type == 'cuda' and _cuda_problem() is None:
            return 'cuda'
        if device.type == 'cpu' and cpu_scan.load_error() is None:
            return 'cpu'
        return 'torch'
    problem = _problem(name)
    if problem is None and name == 'cuda' and device.type != 'cuda':
        problem = f'it needs CUDA tensors, got tensors on {device}'
    if problem is None and name == 'cpu' and device.type != 'cpu':
        problem = f'it needs CPU tensors, got tensors on {device}'
    if problem is not None:
        raise RuntimeError(f"selective_scan backend '{name}' (requested by {src}) is unavailable: {problem}")
    return name


def _cuda_fn() -> Callable:
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # only after the probe
    return selective_scan_fn


def _backend_fn(name: str) -> Callable:
    table: Dict[str, Callable] = {'cpu': cpu_scan.selective_scan_cpu, 'torch': selective_scan_torch,
                                  'ref': selective_scan_ref}
    return _cuda_fn() if name == 'cuda' else table[name]


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                   delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                   return_last_state: bool = False, backend: Optional[str] = None
                   ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Selective scan (S6) with mamba-ssm's semantics, on the best backend for u's device.

    u, delta, z: (batch, dim, L); A: (dim, N); B, C: (batch, groups, N, L) or (batch, N, L);
    D, delta_bias: (dim,). Returns y (batch, dim, L) in u's dtype and, with return_last_state,
    the last state (batch, dim, N) in the compute dtype (float32, or float64 for float64 input).
    backend: 'cuda', 'cpu', 'torch', 'ref' or 'auto'/None (then SERPENT_SCAN_BACKEND, then automatic).
    """
    name = resolve_backend(u.device, backend)
    return _backend_fn(name)(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def backend_summary(device: Union[torch.device, str] = 'cpu') -> str:
    """One line for `basicsr --version`, e.g.
    'cpu (compiled C++ kernel, avx2+fma, 2 threads (OpenMP)); available: cpu, torch, ref'."""
    try:
        name = resolve_backend(device)
        forced = _requested(None)[0] != 'auto'
    except (RuntimeError, ValueError) as exc:
        return f'error: {exc}; available: {", ".join(available_backends())}'
    detail = {'cuda': "mamba-ssm's CUDA kernel",
              'torch': 'pure-PyTorch chunked scan',
              'ref': 'reference Python loop'}.get(name)
    if name == 'cpu':
        ext = cpu_scan.load()
        pool = 'its own thread pool' if ext.threads() == 'pool' else 'OpenMP'
        detail = f'compiled C++ kernel, {ext.isa()}, {ext.num_threads()} threads ({pool})'
    note = f', set by {ENV_VAR}' if forced else ''
    return f'{name} ({detail}{note}); available: {", ".join(available_backends())}'
