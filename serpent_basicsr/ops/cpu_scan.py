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

from ._checks import compute_dtype, prepare

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
    """Kernel layout (csrc/selective_scan_cpu.cpp): BC = (batch, groups, L, 2N) rows of B then C;
    u (batch, dim, L) or shared over groups (batch, dim / groups, L); perm (groups, L) int32 or
    None; y_cl: y is channels-last (batch, L, dim / groups), summed over groups."""

    @staticmethod
    def forward(ctx, u, delta, A, BC, D, z, delta_bias, delta_softplus, perm, y_cl):  # noqa: D102
        ext = load()
        need_grad = any(ctx.needs_input_grad[:7])
        y, last, ckpt = ext.fwd(u, delta, A, BC, D, z, delta_bias, delta_softplus, need_grad, perm, y_cl)
        ctx.delta_softplus, ctx.perm, ctx.y_cl = delta_softplus, perm, y_cl
        ctx.set_materialize_grads(False)
        if need_grad:
            ctx.save_for_backward(u, delta, A, BC, D, z, delta_bias, ckpt)
        return y, last

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dlast):  # noqa: D102
        u, delta, A, BC, D, z, delta_bias, ckpt = ctx.saved_tensors
        if dy is None:
            b, dim, length = delta.shape
            dy = delta.new_zeros((b, length, dim // BC.shape[1]) if ctx.y_cl else delta.shape)
        dy = dy.contiguous().to(u.dtype)
        if dlast is not None:
            dlast = dlast.contiguous().to(u.dtype)
        du, ddelta, dA, dBC, dD, dz, dbias = load().bwd(
            u, delta, A, BC, D, z, delta_bias, ctx.delta_softplus, ckpt, dy, dlast, ctx.perm, ctx.y_cl)
        return du, ddelta, dA, dBC, dD, dz, dbias, None, None, None


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
    x = prepare(u, delta, A, B, C, D, z, delta_bias)
    # the kernel reads B and C as rows over the state: (batch, groups, L, 2N)
    bc = torch.cat([x.B, x.C], dim=2).transpose(2, 3).contiguous()
    y, last = _ScanCpu.apply(x.u, x.delta, x.A, bc, x.D, x.z, x.delta_bias, bool(delta_softplus), None, False)
    y = y.to(u.dtype)
    return (y, last) if return_last_state else y


def cross_scan_cpu(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, BC: torch.Tensor, perm: torch.Tensor,
                   D: Optional[torch.Tensor] = None, delta_bias: Optional[torch.Tensor] = None,
                   delta_softplus: bool = True) -> torch.Tensor:
    """The kernel's fused cross-scan (see ss2d_scan.cross_selective_scan for the contract):
    x (batch, D, L) shared by the K directions, delta (batch, K * D, L), BC (batch, K, L, 2N),
    perm (K, L) int32; returns y (batch, L, D) summed over directions, in x's dtype."""
    _check_available(x.device)
    acc = compute_dtype(x.dtype)

    def cast(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if t is None else t.to(acc).contiguous()

    bc = BC.to(acc)
    if not (bc.stride(3) == 1 and (bc.is_contiguous() or bc.transpose(1, 2).is_contiguous())):
        bc = bc.contiguous()
    y, _ = _ScanCpu.apply(cast(x), cast(delta), cast(A), bc, cast(D), None, cast(delta_bias),
                          bool(delta_softplus), perm.to(torch.int32).contiguous(), True)
    return y.to(x.dtype)
