"""Parameters and forward FLOPs of a network, including the selective scan.

torch.utils.flop_counter counts matmuls and convolutions (2 FLOPs per multiply-add) and
ignores element-wise ops; it cannot see inside the scan (a Python loop of element-wise ops or
a custom kernel). So the count runs with FLOP-free stand-ins for
`serpent_basicsr.ops.selective_scan` and `.cross_selective_scan` that record each call's shape, and the scan is added
analytically: SCAN_FLOPS_PER_ELEMENT per (batch, channel, position, state) element, i.e.
exp(delta*A) (2), delta*B*u (2), h = a*h + b (2), y += C*h (2), plus the D skip / softplus
amortised (1). Everything else element-wise (LayerNorm, SiLU, softmax) is uncounted, for
Serpent and SwinIR alike.

The model is copied to the meta device when possible, so counting 1024 x 1024 costs no
compute and no memory.

CLI: python -m serpent_basicsr.archs.efficiency --preset serpent_b --size 256
"""
from __future__ import annotations

import argparse
import copy
import json
from typing import Any, Dict, List, Sequence
from unittest import mock

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from serpent_basicsr import ops

SCAN_FLOPS_PER_ELEMENT = 9


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def count_params_flops(net: nn.Module, input_shape: Sequence[int], meta: bool = True) -> Dict[str, Any]:
    """Forward cost of `net` on one input of `input_shape` (B, C, H, W).

    Returns params, flops (= flops_other + flops_scan), flops_other (FlopCounterMode, scan
    excluded), flops_scan (analytic: the scan, plus the dt projection the cross scan fuses in),
    scan_calls and scan_elements (sum of batch * dim * L * N).
    """
    calls: List[int] = []
    dt_proj: List[int] = []  # FLOPs of projections fused into the scan (matmuls the counter cannot see)

    def scan_stand_in(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False, backend=None):
        batch, dim, length = u.shape
        calls.append(batch * dim * length * A.shape[-1])
        y = u * 1.0  # element-wise: invisible to FlopCounterMode, same shape and dtype
        return (y, u.new_zeros(batch, dim, A.shape[-1])) if return_last_state else y

    def cross_scan_stand_in(x, rows, dt_weight, A, height, width, D=None, delta_bias=None, delta_softplus=True,
                            backend=None):
        batch, length, _ = x.shape  # one scan element per direction, channel, pixel and state
        calls.append(batch * dt_weight.shape[0] * length * A.shape[-1])
        dt_proj.append(2 * batch * dt_weight.shape[0] * length * dt_weight.shape[1])  # fused dt projection
        return x * 1.0

    params = count_params(net)
    model, device = net, next(net.parameters()).device
    if meta:
        model, device = copy.deepcopy(net).to('meta'), torch.device('meta')
    was_training = model.training
    model.eval()
    x = torch.zeros(tuple(input_shape), device=device)
    counter = FlopCounterMode(display=False)
    try:
        with mock.patch.object(ops, 'selective_scan', scan_stand_in), \
                mock.patch.object(ops, 'cross_selective_scan', cross_scan_stand_in), counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    scan_elements = sum(calls)
    flops_other = int(counter.get_total_flops())
    flops_scan = SCAN_FLOPS_PER_ELEMENT * scan_elements + sum(dt_proj)
    return dict(params=params, flops=flops_other + flops_scan, flops_other=flops_other,
                flops_scan=flops_scan, scan_calls=len(calls), scan_elements=scan_elements,
                input_shape=list(input_shape))


def build_named(name: str, **overrides: Any) -> nn.Module:
    """'serpent_s' / 'serpent_b' / 'serpent_l' (Serpent presets; '<preset>_ckpt' with
    use_checkpoint), 'swinir' (BasicSR SwinIR, 11.5 M, scale 1) or 'swinir_small' (0.9 M)."""
    from basicsr.archs.swinir_arch import SwinIR

    from .serpent_arch import PRESETS, Serpent
    if name in PRESETS:
        return Serpent(preset=name, **overrides)
    if name.endswith('_ckpt') and name[:-5] in PRESETS:  # same preset, activation checkpointing
        return Serpent(preset=name[:-5], use_checkpoint=True, **overrides)
    swin = dict(upscale=1, img_size=64, window_size=8, mlp_ratio=2, upsampler='', resi_connection='1conv',
                in_chans=3, img_range=1.0)
    if name == 'swinir':
        return SwinIR(**{**swin, 'embed_dim': 180, 'depths': [6] * 6, 'num_heads': [6] * 6, **overrides})
    if name == 'swinir_small':
        return SwinIR(**{**swin, 'embed_dim': 60, 'depths': [6] * 4, 'num_heads': [6] * 4, **overrides})
    raise ValueError(f"model: unknown name {name!r}; valid: {sorted(PRESETS) + ['swinir', 'swinir_small']}")


def main(argv: Sequence[str] = None) -> None:
    ap = argparse.ArgumentParser(description='Parameters and GFLOPs (scan included) of Serpent / SwinIR.')
    ap.add_argument('--preset', default='serpent_b',
                    help='serpent_s | serpent_b | serpent_l | swinir | swinir_small')
    ap.add_argument('--size', type=int, nargs='+', default=[256], help='square input size(s)')
    ap.add_argument('--batch', type=int, default=1)
    ap.add_argument('--json', action='store_true', help='print JSON lines instead of text')
    args = ap.parse_args(argv)
    net = build_named(args.preset)
    for size in args.size:
        r = count_params_flops(net, (args.batch, 3, size, size))
        r['model'] = args.preset
        if args.json:
            print(json.dumps(r))
        else:
            print(f"{args.preset} @ {size}x{size}: {r['params'] / 1e6:.3f} M params, "
                  f"{r['flops'] / 1e9:.2f} GFLOPs (scan {r['flops_scan'] / 1e9:.2f}, rest "
                  f"{r['flops_other'] / 1e9:.2f})")


if __name__ == '__main__':
    main()
