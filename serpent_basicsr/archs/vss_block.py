"""SS2D (2D selective scan) and the VSS block, VMamba style, plus a convolutional stand-in.

Layout: blocks take and return channels-last maps (B, H, W, C), as VMamba does; the mixers
(SS2D, ConvMixer2D) take the channels-first output of the block's depthwise conv
(B, D, H, W) and return a normalised channels-last map (B, H, W, D).

The scan itself is `serpent_basicsr.ops.selective_scan`, looked up at call time so that the
backend dispatcher (and the efficiency counter's stand-in) are picked up without re-import.
"""
from __future__ import annotations

import math
from typing import Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from basicsr.archs.swinir_arch import DropPath, Mlp

from serpent_basicsr import ops

VALID_DIRECTIONS = (1, 2, 4)


def _check_directions(directions: int) -> None:
    if directions not in VALID_DIRECTIONS:
        raise ValueError(f'directions must be one of {VALID_DIRECTIONS}, got {directions!r}')


def cross_scan(x: torch.Tensor, directions: int = 4) -> torch.Tensor:
    """Unroll (B, C, H, W) into K = directions sequences (B, K, C, H*W).

    Order: row-major, column-major, reversed row-major, reversed column-major (first K kept).
    """
    _check_directions(directions)
    seqs = [x.flatten(2)]
    if directions >= 2:
        seqs.append(x.transpose(2, 3).flatten(2))
    if directions == 4:
        seqs += [s.flip(-1) for s in seqs]
    return torch.stack(seqs, dim=1)


def cross_merge(ys: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of `cross_scan` summed over directions: (B, K, C, H*W) -> (B, C, H*W) row-major."""
    directions = ys.shape[1]
    _check_directions(directions)
    b, _, c, length = ys.shape
    if length != height * width:
        raise ValueError(f'sequence length {length} != height * width = {height} * {width}')

    def from_col(y: torch.Tensor) -> torch.Tensor:  # column-major sequence back to row-major
        return y.view(b, c, width, height).transpose(2, 3).reshape(b, c, length)

    out = ys[:, 0]
    if directions >= 2:
        out = out + from_col(ys[:, 1])
    if directions == 4:
        out = out + ys[:, 2].flip(-1) + from_col(ys[:, 3].flip(-1))
    return out


def resolve_dt_rank(dt_rank: Union[int, str], d_model: int) -> int:
    """'auto' = ceil(d_model / 16), Mamba's rule (d_model is the block width, not d_inner)."""
    if dt_rank == 'auto':
        return math.ceil(d_model / 16)
    if isinstance(dt_rank, bool) or not isinstance(dt_rank, int) or dt_rank < 1:
        raise ValueError(f"dt_rank must be 'auto' or a positive integer, got {dt_rank!r}")
    return dt_rank


class SS2D(nn.Module):
    """2D selective scan over K directions: (B, D, H, W) -> LayerNorm'ed (B, H, W, D).

    Each direction has its own x_proj (-> dt_rank + 2 * d_state), dt_proj and (A, D, dt bias)
    for its D channels; all K * D channels go through ONE cross_selective_scan call (B/C grouped
    per direction), equal to cross_scan -> selective_scan -> cross_merge.
    """

    def __init__(self, d_inner: int, d_state: int = 16, dt_rank: int = 4, directions: int = 4,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4) -> None:
        super().__init__()
        _check_directions(directions)
        self.d_inner, self.d_state, self.dt_rank, self.directions = d_inner, d_state, dt_rank, directions
        k = directions
        bound = d_inner ** -0.5  # nn.Linear's default init for x_proj
        self.x_proj_weight = nn.Parameter(torch.empty(k, dt_rank + 2 * d_state, d_inner).uniform_(-bound, bound))
        std = dt_rank ** -0.5  # Mamba's dt_proj init
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, dt_rank).uniform_(-std, std))
        # dt log-uniform in [dt_min, dt_max], floored, stored through an inverse softplus
        dt = torch.exp(torch.rand(k, d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(k * d_inner, 1)
        self.A_logs = nn.Parameter(torch.log(a))  # (K * D, N), A = -exp(A_log)
        self.Ds = nn.Parameter(torch.ones(k * d_inner))
        self.out_norm = nn.LayerNorm(d_inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w = x.shape
        k, n, r = self.directions, self.d_state, self.dt_rank
        # channels-last pixels (free when x is in channels_last memory format, as VSSBlock makes it)
        xc = x.permute(0, 2, 3, 1).reshape(b, h * w, d)
        # The projections are per pixel, so one matmul gives every direction's dt inputs, B and C in
        # pixel order; the scan walks each direction's order itself and applies dt_proj on the fly
        # (ops.cross_selective_scan): no cross-scan copies, no (B, K * D, L) delta tensor.
        rows = torch.matmul(xc, self.x_proj_weight.reshape(k * (r + 2 * n), d).t())  # (B, L, K * (R + 2N))
        rows = rows.view(b, h * w, k, r + 2 * n).transpose(1, 2)                    # (B, K, L, R + 2N)
        y = ops.cross_selective_scan(xc, rows, self.dt_projs_weight.reshape(k * d, r), -torch.exp(self.A_logs),
                                     h, w, D=self.Ds, delta_bias=self.dt_projs_bias.reshape(-1),
                                     delta_softplus=True)
        return self.out_norm(y.view(b, h, w, d))


def ss2d_param_count(d_inner: int, d_state: int, dt_rank: int, directions: int) -> int:
    """Parameters of SS2D without its out_norm (x_proj, dt_proj weight + bias, A_log, D)."""
    return directions * d_inner * (dt_rank + 2 * d_state + dt_rank + 1 + d_state + 1)


class ConvMixer2D(nn.Module):
    """Convolutional stand-in for SS2D: a depthwise k x k conv, same interface and out_norm.

    k is the odd size whose parameters (D * k^2 + D) come closest to SS2D's for the same
    (d_inner, d_state, dt_rank, directions), so the SSM's benefit can be isolated at a matched
    parameter budget (a local mixer instead of a global scan).
    """

    def __init__(self, d_inner: int, d_state: int = 16, dt_rank: int = 4, directions: int = 4) -> None:
        super().__init__()
        target = ss2d_param_count(d_inner, d_state, dt_rank, directions)
        k2 = max(target / d_inner - 1.0, 1.0)
        self.kernel_size = max(1, 2 * round((math.sqrt(k2) - 1) / 2) + 1)
        self.conv = nn.Conv2d(d_inner, d_inner, self.kernel_size, padding=self.kernel_size // 2,
                              groups=d_inner, bias=True)
        self.out_norm = nn.LayerNorm(d_inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_norm(self.conv(x).permute(0, 2, 3, 1))


class VSSBlock(nn.Module):
    """x + DropPath(out_proj(mixer(SiLU(DWConv(in_proj_x(LN x)))) * SiLU(in_proj_z(LN x)))),
    then an optional MLP sub-block (LN, Linear, GELU, Linear, residual) when mlp_ratio > 0.
    Input and output: (B, H, W, C)."""

    def __init__(self, dim: int, d_state: int = 16, expand: float = 2.0, d_conv: int = 3,
                 dt_rank: Union[int, str] = 'auto', directions: int = 4, mlp_ratio: float = 0.0,
                 drop_path: float = 0.0, mixer: str = 'ssm') -> None:
        super().__init__()
        d_inner = expand * dim
        if d_inner != int(d_inner) or d_inner < 1:
            raise ValueError(f'expand * channels must be a positive integer, got expand={expand} * {dim}')
        d_inner = int(d_inner)
        if not isinstance(d_conv, int) or d_conv < 1 or d_conv % 2 == 0:
            raise ValueError(f'd_conv must be a positive odd integer (same-size depthwise conv), got {d_conv!r}')
        rank = resolve_dt_rank(dt_rank, dim)
        self.norm = nn.LayerNorm(dim)
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)  # x and z halves
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=d_conv // 2, groups=d_inner, bias=True)
        if mixer == 'ssm':
            self.mixer = SS2D(d_inner, d_state, rank, directions)
        elif mixer == 'conv':
            self.mixer = ConvMixer2D(d_inner, d_state, rank, directions)
        else:
            raise ValueError(f"mixer must be 'ssm' or 'conv', got {mixer!r}")
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if mlp_ratio < 0:
            raise ValueError(f'mlp_ratio must be >= 0 (0 = no MLP), got {mlp_ratio}')
        self.mlp = None
        if mlp_ratio > 0:
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = Mlp(dim, hidden_features=max(1, int(dim * mlp_ratio)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xz = self.in_proj(self.norm(x))
        xi, z = xz.chunk(2, dim=-1)
        # channels_last memory: the conv reads the (B, H, W, D) pixels as they are and the mixer
        # gets channels-last pixels back without a copy
        xi = F.silu(self.conv2d(xi.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)))
        y = self.mixer(xi) * F.silu(z)
        x = x + self.drop_path(self.out_proj(y))
        if self.mlp is not None:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x
