"""Cross-scan selective scan: SS2D's cross-scan, dt projection, scan and cross-merge as one op.

A (batch, D, H, W) map is scanned along K = 1, 2 or 4 directions (row-major, column-major and
their reverses), each with its own projections and parameters, and the K outputs are summed back
onto the pixels. Everything is given per pixel, in row-major pixel order:

    x          (batch, L, D)           channels-last input, shared by the K directions (L = H * W)
    rows       (batch, K, L, R + 2N)   per direction and pixel: the R dt inputs, then B (N), C (N);
                                       may be a transposed (batch, L, K, R + 2N) tensor (what one
                                       projection of x gives)
    dt_weight  (K * D, R)              delta = dt_weight @ dt inputs (+ delta_bias, softplus)
    A (K * D, N); D, delta_bias (K * D,)
    -> y       (batch, L, D)           channels-last, summed over directions

The compiled 'cpu' backend walks each direction's pixel order inside the kernel (`perm`), computes
delta from the R dt inputs on the fly and accumulates y in place: the K copies of x, the
(batch, K * D, L) delta tensor, the reversed / transposed B, C and the merge passes of a plain
cross_scan -> selective_scan -> cross_merge never exist. Every other backend runs that plain
composition (gathers by the same permutations), which is also the specification the fused path
is tested against.
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


def _composed(x, rows, dt_weight, A, D, delta_bias, delta_softplus, perm, backend):
    """Plain composition: delta by a matmul, cross-scan by gathers, one selective_scan over all
    K * D channels, merge by index_add."""
    from serpent_basicsr import ops  # at call time: the efficiency counter patches ops.selective_scan

    b, length, d = x.shape
    k, n, r = perm.shape[0], A.shape[1], dt_weight.shape[1]
    idx = perm.long()
    xt = x.transpose(1, 2)                                                             # (b, D, L)
    dts = rows[..., :r].transpose(2, 3)                                                # (b, K, R, L)
    deltas = torch.matmul(dt_weight.view(k, d, r), dts)                                # (b, K, D, L)
    xs = torch.stack([xt[..., idx[i]] for i in range(k)], dim=1)                       # (b, K, D, L)
    ds = torch.stack([deltas[:, i][..., idx[i]] for i in range(k)], dim=1)
    bcs = torch.stack([rows[:, i, idx[i], r:] for i in range(k)], dim=1)               # (b, K, L, 2N)
    bs, cs = bcs[..., :n].transpose(2, 3), bcs[..., n:].transpose(2, 3)               # (b, K, N, L)
    ys = ops.selective_scan(xs.reshape(b, k * d, length), ds.reshape(b, k * d, length), A, bs, cs,
                            D=D, delta_bias=delta_bias, delta_softplus=delta_softplus, backend=backend)
    ys = ys.view(b, k, d, length)
    out = xt.new_zeros(b, d, length, dtype=ys.dtype)
    for i in range(k):
        out = out.index_add(2, idx[i], ys[:, i])
    return out.transpose(1, 2)


def cross_selective_scan(x: torch.Tensor, rows: torch.Tensor, dt_weight: torch.Tensor, A: torch.Tensor,
                         height: int, width: int, D: Optional[torch.Tensor] = None,
                         delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = True,
                         backend: Optional[str] = None) -> torch.Tensor:
    """SS2D's scan over K = rows.shape[1] directions of an H x W map (shapes in the module doc);
    returns y (batch, H * W, D) summed over directions. backend as for selective_scan."""
    if x.dim() != 3 or x.shape[1] != height * width:
        raise ValueError(f'cross_selective_scan: x must be (batch, H*W={height * width}, D), got {tuple(x.shape)}')
    b, length, d = x.shape
    if dt_weight.dim() != 2 or A.dim() != 2 or dt_weight.shape[0] != A.shape[0]:
        raise ValueError(f'cross_selective_scan: dt_weight (K*D, R) and A (K*D, N) must agree, got '
                         f'{tuple(dt_weight.shape)} and {tuple(A.shape)}')
    width_row = dt_weight.shape[1] + 2 * A.shape[1]
    if rows.dim() != 4 or rows.shape[0] != b or rows.shape[2] != length or rows.shape[3] != width_row:
        raise ValueError(f'cross_selective_scan: rows must be (batch={b}, K, L={length}, R + 2N={width_row}), '
                         f'got {tuple(rows.shape)}')
    k = rows.shape[1]
    if A.shape[0] != k * d:
        raise ValueError(f'cross_selective_scan: A must have K * D = {k * d} rows, got {A.shape[0]}')
    perm = direction_perms(height, width, k)
    if resolve_backend(x.device, backend) == 'cpu':
        return cpu_scan.cross_scan_cpu(x, dt_weight, A, rows, perm, D, delta_bias, delta_softplus)
    y = _composed(x, rows, dt_weight, A, D, delta_bias, delta_softplus, perm.to(x.device), backend)
    return y.to(x.dtype)
