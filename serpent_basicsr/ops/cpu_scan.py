"""The 'cpu' backend: autograd.Function around the compiled C++ kernel (csrc/selective_scan_cpu.cpp).

The forward stores the scan state every `chunk_size()` steps; the backward recomputes the states
chunk by chunk from those checkpoints, so no (batch, dim, L, N) tensor is ever kept.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Optional, Tuple, Union

import torch
from torch.autograd.function import once_differentiable

from ._checks import cast_to, compute_dtype, prepare

_EXT: Optional[ModuleType] = None
_ERROR: Optional[str] = None
_TRIED = False

ISA_ENV = 'SERPENT_CPU_ISA'
ISAS = ('auto', 'avx512', 'avx2', 'generic')  # widest first; 'auto' = the widest this CPU has
POOL_ENV = 'SERPENT_SCAN_POOL_MB'  # unset: the extension's default (output_pool_cap_mb(), 256)
THREADS_ENV = 'SERPENT_SCAN_THREADS'
THREAD_MODES = ('auto', 'pool', 'openmp')
SPIN_ENV = 'SERPENT_SCAN_SPIN_US'  # unset: the extension's default (pool_spin_us(), 100)


def _apply_isa_env(ext: ModuleType) -> None:
    """SERPENT_CPU_ISA caps the kernel's instruction set (to compare paths, or to work around a
    machine where one misbehaves); a value that is not one of ISAS, or one this CPU lacks, raises."""
    isa = os.environ.get(ISA_ENV, '').strip().lower()
    if not isa:
        return
    if isa not in ISAS:
        raise ValueError(f'{ISA_ENV}={os.environ[ISA_ENV]!r}: expected one of {", ".join(ISAS)}')
    if isa != 'auto' and not ext.has_isa(isa):
        raise RuntimeError(f'{ISA_ENV}={isa}: this CPU cannot run the {isa} kernels '
                           f'(it has: {", ".join(i for i in ISAS[1:] if ext.has_isa(i))})')
    ext.set_isa(isa)


def _env_whole_number(name: str, lo: int, hi: Optional[int], expected: str) -> Optional[int]:
    """The whole number in environment variable `name` (None if unset or blank); outside [lo, hi]
    (hi None: no upper bound) or not a number, a ValueError naming the variable and `expected`."""
    raw = os.environ.get(name, '').strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < lo or (hi is not None and value > hi):
        raise ValueError(f'{name}={os.environ[name]!r}: expected {expected}')
    return value


def _apply_pool_env(ext: ModuleType) -> None:
    """SERPENT_SCAN_POOL_MB: how many MB of freed large outputs (y, du, ...: 2 MB and more) the kernel
    keeps for reuse instead of returning them to the OS (csrc/output_pool.h); 0 turns the pool off."""
    mb = _env_whole_number(POOL_ENV, 0, None, 'a whole number of MB >= 0 (0: no pool)')
    if mb is not None:
        ext.set_output_pool_mb(mb)


def openmp_threads_sleep() -> bool:
    """Whether OpenMP's idle threads sleep in this process: OMP_WAIT_POLICY=passive as OpenMP read it
    (when torch loaded it; serpent_basicsr's default counts only if imported first) and no
    GOMP_SPINCOUNT (which makes even passive threads spin)."""
    import serpent_basicsr
    policy = (serpent_basicsr.OMP_WAIT_POLICY_SEEN or '').strip().lower()
    return policy == 'passive' and not os.environ.get('GOMP_SPINCOUNT', '').strip()


def _apply_threads_env(ext: ModuleType) -> None:
    """SERPENT_SCAN_THREADS: where parallel calls run. 'pool': the kernel's own threads, which hand a
    call over in ~1 us instead of waking an OpenMP thread (~35-50 us here) and poll SERPENT_SCAN_SPIN_US
    for the next call before sleeping; 'openmp': at::parallel_for; 'auto' (default): the pool when
    OpenMP's threads sleep (openmp_threads_sleep()), else OpenMP (spinning OpenMP threads would hold
    the cores the pool's need)."""
    mode = os.environ.get(THREADS_ENV, '').strip().lower() or 'auto'
    if mode not in THREAD_MODES:
        raise ValueError(f'{THREADS_ENV}={os.environ[THREADS_ENV]!r}: expected one of {", ".join(THREAD_MODES)}')
    if mode == 'auto':
        mode = 'pool' if openmp_threads_sleep() else 'openmp'
    ext.set_threads(mode)
    us = _env_whole_number(SPIN_ENV, 0, 100000, 'a whole number of us in 0-100000')
    if us is not None:
        ext.set_pool_spin_us(us)


def load() -> Optional[ModuleType]:
    """The compiled extension, or None (the reason is in `load_error()`)."""
    global _EXT, _ERROR, _TRIED
    if not _TRIED:
        try:
            ext = importlib.import_module('serpent_basicsr.ops._scan_cpu')
        except ImportError as exc:  # not built, or built against another torch
            _ERROR = (f'the compiled kernel serpent_basicsr.ops._scan_cpu does not import ({exc}); '
                      'build it with `python setup.py build_ext --inplace` or reinstall the package')
        else:
            _apply_isa_env(ext)  # raises on a bad value, and again at the next call
            _apply_pool_env(ext)
            _apply_threads_env(ext)
            _EXT = ext
        _TRIED = True
    return _EXT


def load_error() -> Optional[str]:
    load()
    return _ERROR


class _ScanCpu(torch.autograd.Function):
    """Kernel layouts (csrc/selective_scan_cpu.cpp). Plain: u, delta (batch, dim, L), B and C
    (batch, groups, N, L) as mamba-ssm has them (read in place). Cross (Wdt given, C None): u
    (batch, L, dim / groups) shared by the groups, delta = Wdt (dim, R) times the rows' first R
    values, B = the rows (batch, groups, L, R + 2N), y (batch, L, dim / groups) summed over groups.
    perm (groups, L) int32 or None (identity). Gradients come back in the inputs' layouts."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, perm, Wdt):  # noqa: D102
        ext = load()
        need_grad = any(ctx.needs_input_grad[:8]) or ctx.needs_input_grad[10]
        y, last, ckpt = ext.fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, need_grad, perm, Wdt)
        ctx.delta_softplus, ctx.perm = delta_softplus, perm
        ctx.set_materialize_grads(False)
        if need_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, Wdt, ckpt)
        return y, last

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dlast):  # noqa: D102
        u, delta, A, B, C, D, z, delta_bias, Wdt, ckpt = ctx.saved_tensors
        dy = torch.zeros_like(u) if dy is None else dy.contiguous().to(u.dtype)
        if dlast is not None:
            dlast = dlast.contiguous().to(u.dtype)
        du, ddelta, dA, dB, dC, dD, dz, dbias, dWdt = load().bwd(
            u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, ckpt, dy, dlast, ctx.perm, Wdt)
        return du, ddelta, dA, dB, dC, dD, dz, dbias, None, None, dWdt


def _check_available(device: torch.device) -> None:
    if load() is None:
        raise RuntimeError(f"selective_scan backend 'cpu' is unavailable: {load_error()}")
    if device.type != 'cpu':
        raise RuntimeError(f"selective_scan backend 'cpu' needs CPU tensors, got {device}")


def selective_scan_cpu(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                       delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                       return_last_state: bool = False
                       ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Selective scan with the compiled CPU kernel (CPU tensors; float64 stays float64,
    other dtypes are computed in float32 and y is returned in u's dtype)."""
    _check_available(u.device)
    x = prepare(u, delta, A, B, C, D, z, delta_bias)  # B, C: (batch, groups, N, L), read in place
    y, last = _ScanCpu.apply(x.u, x.delta, x.A, x.B, x.C, x.D, x.z, x.delta_bias, bool(delta_softplus), None, None)
    y = y.to(u.dtype)
    return (y, last) if return_last_state else y


def cross_scan_cpu(x: torch.Tensor, dt_weight: torch.Tensor, A: torch.Tensor, rows: torch.Tensor,
                   perm: torch.Tensor, D: Optional[torch.Tensor] = None, delta_bias: Optional[torch.Tensor] = None,
                   delta_softplus: bool = True) -> torch.Tensor:
    """The kernel's cross mode (the contract is ss2d_scan.cross_selective_scan's): x (batch, L, D)
    shared by the K directions, dt_weight (K * D, R), rows (batch, K, L, R + 2N), perm (K, L);
    returns y (batch, L, D) summed over directions, in x's dtype."""
    _check_available(x.device)
    acc = compute_dtype(x.dtype)
    r = rows.to(acc)
    if not (r.stride(3) == 1 and (r.is_contiguous() or r.transpose(1, 2).is_contiguous())):
        r = r.contiguous()  # the kernel takes the two dense layouts of rows as they are
    y, _ = _ScanCpu.apply(cast_to(x, acc), None, cast_to(A, acc), r, None, cast_to(D, acc), None,
                          cast_to(delta_bias, acc), bool(delta_softplus), perm.to(torch.int32).contiguous(),
                          cast_to(dt_weight, acc))
    return y.to(x.dtype)
