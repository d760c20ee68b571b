"""Serpent: a multi-scale U-Net of VSS (selective state space) blocks for image restoration.

Sepehri, Fabian, Soltanolkotabi, "Serpent: Scalable and Efficient Image Restoration via
Multi-scale Structured State Space Models" (arXiv 2403.17902). The paper gives the structure,
not every size: the presets below are OUR reconstruction, not the paper's configurations.

    patchify P x P -> [VSS blocks, patch merging] x S -> bottleneck VSS blocks
    -> [patch expanding, skip fusion, VSS blocks] x S -> expand x P (x upscale) -> 3x3 conv
    -> + input (bicubically upsampled when upscale > 1)

Any H x W works: the input is reflect-padded to a multiple of P * 2**S and the output cropped.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from .vss_block import VALID_DIRECTIONS, VSSBlock, resolve_dt_rank

DEFAULTS: Dict[str, Any] = dict(
    num_in_ch=3, num_out_ch=3, patch_size=2, embed_dim=48, depths=[1, 2, 2], bottleneck_depth=2,
    decoder_depths=None, d_state=16, expand=2.0, d_conv=3, dt_rank='auto', directions=4,
    mlp_ratio=0.0, drop_path_rate=0.0, skip_fusion='concat', global_residual=True, upscale=1,
    mixer='ssm', use_checkpoint=False)

# OUR reconstruction: the paper names Serpent-B/L but publishes no exact sizes. All use three
# downsamplings, d_state 16, expand 2, 4 directions, no MLP; they differ in patch size (the
# paper's main speed knob), width and top-scale depth. Sized so that at 512 x 512 serpent_b
# costs ~1/100 of SwinIR's (11.5 M) FLOPs with < half its parameters, serpent_l ~1/50 (the
# paper: Serpent-L at ~40x less compute than SwinIR-B) and serpent_s ~1/500 (patch 4).
# DEFAULTS above equal serpent_b.
PRESETS: Dict[str, Dict[str, Any]] = {
    'serpent_s': dict(patch_size=4, embed_dim=32, depths=[2, 2, 2], bottleneck_depth=2),
    'serpent_b': dict(patch_size=2, embed_dim=48, depths=[1, 2, 2], bottleneck_depth=2),
    'serpent_l': dict(patch_size=2, embed_dim=64, depths=[2, 2, 2], bottleneck_depth=2),
}


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (B, C, H, W) at the bottom/right to multiples of `multiple`, reflecting.

    Reflection needs pad < size; for larger pads it is repeated (each step reflects the
    already padded image), and a 1-pixel side is replicated.
    """
    for dim in (-1, -2):
        need = (-x.shape[dim]) % multiple
        while need > 0:
            size = x.shape[dim]
            step = min(need, size - 1) if size > 1 else need
            pad = (0, step, 0, 0) if dim == -1 else (0, 0, 0, step)
            x = F.pad(x, pad, mode='reflect' if size > 1 else 'replicate')
            need -= step
    return x


class PatchMerging(nn.Module):
    """2x2 neighbours concatenated, LayerNorm, linear 4C -> 2C: (B, H, W, C) -> (B, H/2, W/2, 2C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(x, 'b (h p1) (w p2) c -> b h w (p2 p1 c)', p1=2, p2=2)
        return self.reduction(self.norm(x))


class PatchExpanding(nn.Module):
    """Linear C -> 2C, pixel shuffle x2, LayerNorm: (B, H, W, C) -> (B, 2H, 2W, C/2)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.expand = nn.Linear(dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(dim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(self.expand(x), 'b h w (p1 p2 c) -> b (h p1) (w p2) c', p1=2, p2=2)
        return self.norm(x)


class SkipFusion(nn.Module):
    """'concat': linear(2C -> C) of [decoder, encoder]; 'add': decoder + encoder."""

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.proj = nn.Linear(2 * dim, dim) if mode == 'concat' else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.proj is None:
            return x + skip
        return self.proj(torch.cat([x, skip], dim=-1))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def resolve_options(preset: Optional[str], given: Dict[str, Any]) -> Dict[str, Any]:
    """DEFAULTS, then the preset's values, then every option given explicitly (not None)."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f'preset: unknown preset {preset!r}; valid presets: {sorted(PRESETS)}')
    opts = {**DEFAULTS, **(PRESETS[preset] if preset else {})}
    opts.update({k: v for k, v in given.items() if v is not None})
    return opts


def _validate(o: Dict[str, Any]) -> None:
    for name in ('num_in_ch', 'num_out_ch', 'patch_size', 'embed_dim', 'd_state', 'upscale'):
        if not _is_int(o[name]) or o[name] < 1:
            raise ValueError(f'{name} must be a positive integer, got {o[name]!r}')
    for name in ('depths', 'decoder_depths'):
        v = o[name]
        if v is None:
            continue
        if not isinstance(v, (list, tuple)) or not v or not all(_is_int(d) and d >= 0 for d in v):
            raise ValueError(f'{name} must be a non-empty list of non-negative integers, got {v!r}')
    if o['decoder_depths'] is not None and len(o['decoder_depths']) != len(o['depths']):
        raise ValueError(f"decoder_depths must have one entry per encoder scale (len(depths) = "
                         f"{len(o['depths'])}), got {list(o['decoder_depths'])}")
    if not _is_int(o['bottleneck_depth']) or o['bottleneck_depth'] < 0:
        raise ValueError(f"bottleneck_depth must be a non-negative integer, got {o['bottleneck_depth']!r}")
    if o['directions'] not in VALID_DIRECTIONS:
        raise ValueError(f"directions must be one of {VALID_DIRECTIONS}, got {o['directions']!r}")
    if o['skip_fusion'] not in ('concat', 'add'):
        raise ValueError(f"skip_fusion must be 'concat' or 'add', got {o['skip_fusion']!r}")
    if o['mixer'] not in ('ssm', 'conv'):
        raise ValueError(f"mixer must be 'ssm' or 'conv', got {o['mixer']!r}")
    if not isinstance(o['expand'], (int, float)) or o['expand'] <= 0:
        raise ValueError(f"expand must be a positive number, got {o['expand']!r}")
    d_inner = o['expand'] * o['embed_dim']
    if d_inner != int(d_inner):
        raise ValueError(f"embed_dim * expand must be an integer (the SSM width), got embed_dim="
                         f"{o['embed_dim']} * expand={o['expand']}")
    if not _is_int(o['d_conv']) or o['d_conv'] < 1 or o['d_conv'] % 2 == 0:
        raise ValueError(f"d_conv must be a positive odd integer, got {o['d_conv']!r}")
    resolve_dt_rank(o['dt_rank'], o['embed_dim'])
    if not isinstance(o['mlp_ratio'], (int, float)) or o['mlp_ratio'] < 0:
        raise ValueError(f"mlp_ratio must be >= 0 (0 = no MLP), got {o['mlp_ratio']!r}")
    if not isinstance(o['drop_path_rate'], (int, float)) or not 0 <= o['drop_path_rate'] < 1:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {o['drop_path_rate']!r}")
    if o['global_residual'] and o['num_in_ch'] != o['num_out_ch']:
        raise ValueError(f"global_residual needs num_in_ch == num_out_ch, got {o['num_in_ch']} and "
                         f"{o['num_out_ch']} (set global_residual: false)")


@ARCH_REGISTRY.register()
class Serpent(nn.Module):
    """Serpent U-Net. Every option defaults to the preset's value, else to DEFAULTS.

    Args (see the README's option table): num_in_ch, num_out_ch, patch_size, embed_dim,
    depths (VSS blocks per encoder scale, finest first; len = number of downsamplings),
    bottleneck_depth, decoder_depths (per scale, finest first; default = depths), d_state,
    expand, d_conv, dt_rank ('auto' = ceil(C / 16) per block width C), directions (1, 2, 4),
    mlp_ratio (0 = no MLP), drop_path_rate (linear over all blocks), skip_fusion ('concat' or
    'add'), global_residual, upscale (output = upscale x input size), mixer ('ssm' or 'conv',
    a parameter-matched depthwise-conv stand-in), use_checkpoint (recompute each VSS block in the
    backward pass: less training memory, ~1.3x the time; like SwinIR's option), preset
    ('serpent_s', 'serpent_b', 'serpent_l').
    """

    def __init__(self, num_in_ch: Optional[int] = None, num_out_ch: Optional[int] = None,
                 patch_size: Optional[int] = None, embed_dim: Optional[int] = None,
                 depths: Optional[Sequence[int]] = None, bottleneck_depth: Optional[int] = None,
                 decoder_depths: Optional[Sequence[int]] = None, d_state: Optional[int] = None,
                 expand: Optional[float] = None, d_conv: Optional[int] = None,
                 dt_rank: Union[int, str, None] = None, directions: Optional[int] = None,
                 mlp_ratio: Optional[float] = None, drop_path_rate: Optional[float] = None,
                 skip_fusion: Optional[str] = None, global_residual: Optional[bool] = None,
                 upscale: Optional[int] = None, mixer: Optional[str] = None,
                 use_checkpoint: Optional[bool] = None, preset: Optional[str] = None) -> None:
        super().__init__()
        given = dict(locals())
        for k in ('self', '__class__', 'preset'):
            given.pop(k, None)
        o = resolve_options(preset, given)
        _validate(o)
        o['depths'] = list(o['depths'])
        o['decoder_depths'] = list(o['decoder_depths'] if o['decoder_depths'] is not None else o['depths'])
        self.options: Dict[str, Any] = dict(o, preset=preset)
        p, e, s = o['patch_size'], o['embed_dim'], o['upscale']
        n_scales = len(o['depths'])
        self.pad_multiple = p * 2 ** n_scales
        self.upscale, self.global_residual, self.num_in_ch = s, o['global_residual'], o['num_in_ch']
        self.use_checkpoint = bool(o['use_checkpoint'])

        all_depths = o['depths'] + [o['bottleneck_depth']] + o['decoder_depths'][::-1]
        rates = torch.linspace(0, o['drop_path_rate'], max(sum(all_depths), 1)).tolist()
        block_kw = dict(d_state=o['d_state'], expand=o['expand'], d_conv=o['d_conv'], dt_rank=o['dt_rank'],
                        directions=o['directions'], mlp_ratio=o['mlp_ratio'], mixer=o['mixer'])

        def stage(dim: int, depth: int) -> nn.Sequential:
            blocks = [VSSBlock(dim, drop_path=rates.pop(0), **block_kw) for _ in range(depth)]
            return nn.Sequential(*blocks)

        self.patch_embed = nn.Conv2d(o['num_in_ch'], e, p, stride=p)
        self.embed_norm = nn.LayerNorm(e)
        dims = [e * 2 ** i for i in range(n_scales + 1)]
        self.encoder = nn.ModuleList([stage(dims[i], o['depths'][i]) for i in range(n_scales)])
        self.merges = nn.ModuleList([PatchMerging(dims[i]) for i in range(n_scales)])
        self.bottleneck = stage(dims[-1], o['bottleneck_depth'])
        # decoder modules are indexed by scale (0 = finest) but built and run deepest first
        dec: List[nn.Module] = [None] * n_scales
        for i in reversed(range(n_scales)):
            dec[i] = stage(dims[i], o['decoder_depths'][i])
        self.decoder = nn.ModuleList(dec)
        self.expands = nn.ModuleList([PatchExpanding(dims[i + 1]) for i in range(n_scales)])
        self.fusions = nn.ModuleList([SkipFusion(dims[i], o['skip_fusion']) for i in range(n_scales)])
        # back to full (upscaled) resolution: linear to (P*s)^2 * C_head, pixel shuffle, 3x3 conv
        self.head_ch = max(8, e // s)
        self.head_norm = nn.LayerNorm(e)
        self.head_expand = nn.Linear(e, (p * s) ** 2 * self.head_ch)
        self.conv_out = nn.Conv2d(self.head_ch, o['num_out_ch'], 3, padding=1)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _run(self, blocks: nn.Sequential, f: torch.Tensor) -> torch.Tensor:
        for blk in blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                f = checkpoint(blk, f, use_reentrant=False)
            else:
                f = blk(f)
        return f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_in_ch:
            raise ValueError(f'Serpent expects (B, {self.num_in_ch}, H, W) input (num_in_ch), got {tuple(x.shape)}')
        h, w = x.shape[-2:]
        f = self.patch_embed(pad_to_multiple(x, self.pad_multiple)).permute(0, 2, 3, 1)
        f = self.embed_norm(f)
        skips = []
        for blocks, merge in zip(self.encoder, self.merges):
            f = self._run(blocks, f)
            skips.append(f)
            f = merge(f)
        f = self._run(self.bottleneck, f)
        for i in reversed(range(len(self.decoder))):
            f = self.fusions[i](self.expands[i](f), skips[i])
            f = self._run(self.decoder[i], f)
        f = self.head_expand(self.head_norm(f)).permute(0, 3, 1, 2)
        f = F.pixel_shuffle(f, self.options['patch_size'] * self.upscale)
        out = self.conv_out(f)[..., :h * self.upscale, :w * self.upscale]
        if self.global_residual:
            base = x if self.upscale == 1 else F.interpolate(
                x, scale_factor=self.upscale, mode='bicubic', align_corners=False)
            out = out + base
        return out
