"""Cross-scan selective scan: SS2D's cross-scan, scan and cross-merge as one op.

A (batch, D, H, W) map is scanned along K = 1, 2 or 4 directions (row-major, column-major and
their reverses), each with its own delta, B, C and parameters, and the K outputs are summed back
onto the pixels. Everything is given in pixel (row-major) order:

    x      (batch, D, L)         the scanned input, shared by the K directions (L = H * W)
    delta  (batch, K * D, L)     per direction and channel
    A      (K * D, N); D, delta_bias (K * D,)
    BC     (batch, K, L, 2N)     B in the first N of each row, C in the last N (rows may be a
                                 transposed (batch, L, K, 2N) tensor: what a projection gives)
    -> y   (batch, L, D)         channels-last, summed over directions

The compiled 'cpu' backend walks each direction's pixel order inside the kernel (`perm`) and
accumulates y in place, so the K copies of x, the reversed / transposed B, C, delta and the
merge passes of a plain cross_scan -> selective_scan -> cross_merge never exist. Every other
backend runs that plain composition (gathers by the same permutations), which is also the
specification the fused path is tested against.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

from . import cpu_scan
from .dispatch import resolve_backend

DIRECTIONS = (1, 2, 4)


@functools.lru_cache(maxsize=64)
def _direction_perms(height: int, width: int, directions: int) -> torch.Tensor:
    length = height * width
    row = torch.arange(length, dtype=torch.int64)
    col = row.view(height, width).t().reshape(-1)  # step t visits pixel (t % H, t // H)
    perms = [row, col, row.flip(0), col.flip(0)][:directions]
    return torch.stack(perms).to(torch.int32)


def direction_perms(height: int, width: int, directions: int = 4) -> torch.Tensor:
    """(K, H * W) int32: entry [k, t] is the row-major pixel index visited at step t of direction k
    (row-major, column-major, reversed row-major, reversed column-major; the first K)."""
    if directions not in DIRECTIONS:
        raise ValueError(f'directions must be one of {DIRECTIONS}, got {directions!r}')
    if height < 1 or width < 1:
        raise ValueError(f'height and width must be positive, got {height} x {width}')
    return _direction_perms(int(height), int(width), int(directions))


def _composed(x, delta, A, BC, D, delta_bias, delta_softplus, perm, backend):
    """cross-scan by gathers, one selective_scan over all K * D channels, merge by scatters."""
    from serpent_basicsr import ops  # at call time: the efficiency counter patches ops.selective_scan

    b, d, length = x.shape
    k, n = perm.shape[0], A.shape[1]
    idx = perm.long()
    xs = torch.stack([x[..., idx[i]] for i in range(k)], dim=1)                       # (b, K, D, L)
    ds = torch.stack([delta.view(b, k, d, length)[:, i][..., idx[i]] for i in range(k)], dim=1)
    bcs = torch.stack([BC[:, i, idx[i]] for i in range(k)], dim=1)                     # (b, K, L, 2N)
    bs, cs = bcs[..., :n].transpose(2, 3), bcs[..., n:].transpose(2, 3)               # (b, K, N, L)
    ys = ops.selective_scan(xs.reshape(b, k * d, length), ds.reshape(b, k * d, length), A, bs, cs,
                            D=D, delta_bias=delta_bias, delta_softplus=delta_softplus, backend=backend)
    ys = ys.view(b, k, d, length)
    out = x.new_zeros(b, d, length, dtype=ys.dtype)
    for i in range(k):
        out = out.index_add(2, idx[i], ys[:, i])
    return out.transpose(1, 2)


def cross_selective_scan(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, BC: torch.Tensor,
                         height: int, width: int, D: Optional[torch.Tensor] = None,
                         delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = True,
                         backend: Optional[str] = None) -> torch.Tensor:
    """SS2D's scan over K = BC.shape[1] directions of an H x W map (shapes in the module doc);
    returns y (batch, H * W, D) summed over directions. backend as for selective_scan."""
    if x.dim() != 3 or x.shape[2] != height * width:
        raise ValueError(f'cross_selective_scan: x must be (batch, D, H*W={height * width}), got {tuple(x.shape)}')
    b, d, length = x.shape
    if BC.dim() != 4 or BC.shape[0] != b or BC.shape[2] != length or BC.shape[3] != 2 * A.shape[-1]:
        raise ValueError(f'cross_selective_scan: BC must be (batch={b}, K, L={length}, 2N={2 * A.shape[-1]}), '
                         f'got {tuple(BC.shape)}')
    k = BC.shape[1]
    if delta.shape != (b, k * d, length):
        raise ValueError(f'cross_selective_scan: delta must be (batch, K * D, L) = {(b, k * d, length)}, '
                         f'got {tuple(delta.shape)}')
    perm = direction_perms(height, width, k)
    if resolve_backend(x.device, backend) == 'cpu':
        return cpu_scan.cross_scan_cpu(x, delta, A, BC, perm, D, delta_bias, delta_softplus)
    return _composed(x, delta, A, BC, D, delta_bias, delta_softplus, perm.to(x.device), backend).to(x.dtype)
