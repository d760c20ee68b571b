"""The 'cpu' backend: autograd.Function around the compiled C++ kernel (csrc/selective_scan_cpu.cpp).

The forward stores the scan state every `chunk_size()` steps; the backward recomputes the states
chunk by chunk from those checkpoints, so no (batch, dim, L, N) tensor is ever kept.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional, Tuple, Union

import torch
from torch.autograd.function import once_differentiable

from ._checks import prepare

_EXT: Optional[ModuleType] = None
_ERROR: Optional[str] = None
_TRIED = False


def load() -> Optional[ModuleType]:
    """The compiled extension, or None (the reason is in `load_error()`)."""
    global _EXT, _ERROR, _TRIED
    if not _TRIED:
        _TRIED = True
        try:
            _EXT = importlib.import_module('serpent_basicsr.ops._scan_cpu')
        except ImportError as exc:  # not built, or built against another torch
            _ERROR = (f'the compiled kernel serpent_basicsr.ops._scan_cpu does not import ({exc}); '
                      'build it with `python setup.py build_ext --inplace` or reinstall the package')
    return _EXT


def load_error() -> Optional[str]:
    load()
    return _ERROR


class _ScanCpu(torch.autograd.Function):

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):  # noqa: D102
        ext = load()
        need_grad = any(ctx.needs_input_grad[:8])
        y, last, ckpt = ext.fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, need_grad)
        ctx.delta_softplus = delta_softplus
        ctx.set_materialize_grads(False)
        if need_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        return y, last

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dlast):  # noqa: D102
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        dy = torch.zeros_like(u) if dy is None else dy.contiguous().to(u.dtype)
        if dlast is not None:
            dlast = dlast.contiguous().to(u.dtype)
        du, ddelta, dA, dB, dC, dD, dz, dbias = load().bwd(
            u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, ckpt, dy, dlast)
        return du, ddelta, dA, dB, dC, dD, dz, dbias, None


def selective_scan_cpu(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                       delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                       return_last_state: bool = False
                       ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Selective scan with the compiled CPU kernel (CPU tensors; float64 stays float64,
    other dtypes are computed in float32 and y is returned in u's dtype)."""
    if load() is None:
        raise RuntimeError(f"selective_scan backend 'cpu' is unavailable: {load_error()}")
    if u.device.type != 'cpu':
        raise RuntimeError(f"selective_scan backend 'cpu' needs CPU tensors, got {u.device}")
    x = prepare(u, delta, A, B, C, D, z, delta_bias)
    y, last = _ScanCpu.apply(*x, bool(delta_softplus))
    y = y.to(u.dtype)
    return (y, last) if return_last_state else y
