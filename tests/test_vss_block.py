"""SS2D / VSS block: cross-scan bookkeeping, receptive fields, the conv stand-in."""
from __future__ import annotations

from unittest import mock

import pytest
import torch
import torch.nn as nn

from serpent_basicsr import ops
from serpent_basicsr.archs.vss_block import (ConvMixer2D, SS2D, VSSBlock, cross_merge, cross_scan,
                                             ss2d_param_count)


def identity_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                  return_last_state=False, backend=None):
    return u


@pytest.mark.parametrize('directions', [1, 2, 4])
def test_cross_scan_merge_of_identity_is_k_times_input(directions):
    x = torch.randint(-50, 50, (2, 3, 5, 7)).float()  # integers: sums are exact
    xs = cross_scan(x, directions)
    assert xs.shape == (2, directions, 3, 35)
    merged = cross_merge(xs, 5, 7)
    assert torch.equal(merged, directions * x.flatten(2))


def test_cross_scan_orders():
    x = torch.arange(6.).view(1, 1, 2, 3)  # [[0, 1, 2], [3, 4, 5]]
    xs = cross_scan(x, 4)[0, :, 0]
    assert xs.tolist() == [[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5], [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]]


def test_ss2d_identity_scan_gives_four_times_input(monkeypatch):
    # the composed path (any backend but the fused cpu kernel) calls ops.selective_scan
    monkeypatch.setenv(ops.ENV_VAR, 'torch')
    torch.manual_seed(0)
    m = SS2D(d_inner=6, d_state=4, dt_rank=2, directions=4)
    m.out_norm = nn.Identity()
    x = torch.randint(-9, 9, (2, 6, 4, 5)).float()
    with mock.patch.object(ops, 'selective_scan', identity_scan):
        y = m(x)
    assert torch.equal(y, 4 * x.permute(0, 2, 3, 1))


def _reach(directions: int, h: int = 5, w: int = 6):
    """reach[p, q]: does output pixel p's gradient reach input pixel q (row-major indices)?"""
    torch.manual_seed(0)
    m = SS2D(d_inner=4, d_state=4, dt_rank=2, directions=directions).double()
    x = torch.randn(1, 4, h, w, dtype=torch.float64, requires_grad=True)
    y = m(x)
    v = torch.randn(4, dtype=torch.float64)  # not .sum(): LayerNorm outputs sum to a constant
    reach = torch.zeros(h * w, h * w, dtype=torch.bool)
    for p in range(h * w):
        (g,) = torch.autograd.grad((y[0, p // w, p % w] * v).sum(), x, retain_graph=True)
        g = g.abs().sum(1).flatten()
        reach[p] = g > 1e-10 * g.max()
    return reach


def test_ss2d_four_directions_global_receptive_field():
    assert _reach(4).all()


def test_ss2d_one_direction_reaches_causal_prefix_only():
    reach = _reach(1)
    n = reach.shape[0]
    causal = torch.ones(n, n, dtype=torch.bool).tril()  # input q <= output p in row-major order
    assert torch.equal(reach, causal)


def test_ss2d_two_directions_reach_row_and_column_prefixes():
    h, w = 5, 6
    reach = _reach(2, h, w)
    idx = torch.arange(h * w)
    r, c = idx // w, idx % w
    row_prefix = idx[None, :] <= idx[:, None]
    col_order = c * h + r
    col_prefix = col_order[None, :] <= col_order[:, None]
    assert torch.equal(reach, row_prefix | col_prefix)
    assert not reach.all()


def test_ss2d_init():
    m = SS2D(d_inner=8, d_state=5, dt_rank=3, directions=2)
    assert torch.allclose(m.A_logs, torch.log(torch.arange(1., 6.)).expand(16, 5))
    assert torch.equal(m.Ds, torch.ones(16))
    dt = torch.nn.functional.softplus(m.dt_projs_bias)
    assert dt.min() >= 1e-4 * 0.999 and dt.max() <= 0.1 * 1.001


@pytest.mark.parametrize('mixer', ['ssm', 'conv'])
@pytest.mark.parametrize('mlp_ratio', [0.0, 2.0])
def test_vss_block_shape_and_gradients(mixer, mlp_ratio):
    torch.manual_seed(0)
    blk = VSSBlock(8, d_state=4, directions=4, mlp_ratio=mlp_ratio, mixer=mixer, drop_path=0.1)
    assert (blk.mlp is not None) == (mlp_ratio > 0)
    x = torch.randn(2, 5, 7, 8, requires_grad=True)
    y = blk(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    for name, p in blk.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_conv_mixer_matches_ss2d_parameter_budget():
    for d_inner, n, r, k in [(96, 16, 3, 4), (192, 16, 6, 4), (64, 8, 2, 1)]:
        ss = ss2d_param_count(d_inner, n, r, k)
        conv = ConvMixer2D(d_inner, n, r, k)
        conv_params = sum(p.numel() for p in conv.conv.parameters())
        assert abs(conv_params - ss) / ss < 0.2, (d_inner, conv.kernel_size, conv_params, ss)
        real = SS2D(d_inner, n, r, k)
        assert sum(p.numel() for name, p in real.named_parameters() if 'out_norm' not in name) == ss


def test_bad_options_name_the_option():
    with pytest.raises(ValueError, match='directions'):
        cross_scan(torch.zeros(1, 1, 2, 2), 3)
    with pytest.raises(ValueError, match='directions'):
        SS2D(4, directions=8)
    with pytest.raises(ValueError, match='mixer'):
        VSSBlock(8, mixer='attention')
    with pytest.raises(ValueError, match='d_conv'):
        VSSBlock(8, d_conv=4)
    with pytest.raises(ValueError, match='expand'):
        VSSBlock(5, expand=1.5)
    with pytest.raises(ValueError, match='dt_rank'):
        VSSBlock(8, dt_rank=0)
