"""The cpu backend's channels-in-lanes forward (AVX-512, float32, d_state 16, whole 16-channel groups)
against the float64 reference and against the state-layout forward it replaces there."""
import pytest
import torch

from serpent_basicsr.ops import available_backends, selective_scan, selective_scan_ref
from serpent_basicsr.ops import cpu_scan

from test_scan_ops import make_inputs, run

EXT = cpu_scan.load() if 'cpu' in available_backends() else None
pytestmark = pytest.mark.skipif(EXT is None or not EXT.has_isa('avx512'),
                                reason='needs the compiled kernel on an AVX-512 CPU')


def cpu_scan_with(lanes, **kw):
    """selective_scan on the cpu backend with the lane-layout forward on or off; the layout it ran."""
    EXT.set_lane_forward(lanes)
    try:
        out = selective_scan(**kw, backend='cpu')
        return out, EXT.last_forward_layout()
    finally:
        EXT.set_lane_forward(True)


def float32(inputs):
    return {k: (v.detach().float().requires_grad_() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}


def assert_close_scaled(got, want, tol, what):
    scale = want.abs().max().item()
    err = (got.double() - want.double()).abs().max().item()
    assert err <= tol * max(scale, 1.0), f'{what}: max err {err:.3g} (scale {scale:.3g})'


CASES = [  # (batch, dim, length, groups, softplus, z, D, bias): channels per group a multiple of 16
    (2, 32, 150, 2, True, True, True, True),     # one lane group per group, a partial last chunk
    (1, 64, 65, 4, True, False, True, True),     # four groups, just past a chunk boundary
    (1, 32, 1, 1, False, False, False, False),   # length 1, two lane groups in one group
    (2, 48, 64, 1, False, True, True, False),    # three lane groups, exactly one chunk
    (1, 16, 200, 1, True, True, False, True),
]


@pytest.mark.parametrize('case', CASES, ids=lambda c: 'b{}d{}L{}g{}sp{}z{}D{}bias{}'.format(*map(int, c)))
def test_lane_forward_matches_reference_and_state_layout(case):
    b, d, length, groups, sp, use_z, use_d, use_bias = case
    inputs = make_inputs(sum(case), b, d, 16, length, groups, sp, use_z, use_d, use_bias)
    want = run(selective_scan_ref, inputs)
    layouts = []

    def fn(lanes):
        def scan(**kw):
            out, layout = cpu_scan_with(lanes, **kw)
            layouts.append(layout)
            return out
        return scan

    got = run(fn(True), float32(inputs))
    states = run(fn(False), float32(inputs))
    assert layouts == ['lanes', 'states']
    for key in want:  # the forward's outputs, and the backward's gradients from its checkpoints
        assert got[key].dtype == torch.float32, key
        assert_close_scaled(got[key], want[key], 2e-5, f'lanes vs float64 {key}')
        assert_close_scaled(got[key], states[key], 1e-5, f'lanes vs states {key}')


def test_lane_forward_channel_blocks_on_threads():
    """A call large enough for the threads: channel blocks rounded to whole lane groups (96 channels,
    one group: blocks of 32), every channel written once."""
    inputs = float32(make_inputs(3, batch=1, dim=96, n=16, length=4096, groups=1, use_z=False))
    x = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    (y, last), layout = cpu_scan_with(True, **x, return_last_state=True)
    (y_states, last_states), _ = cpu_scan_with(False, **x, return_last_state=True)
    assert layout == 'lanes'
    assert_close_scaled(y, y_states, 1e-5, 'y')
    assert_close_scaled(last, last_states, 1e-5, 'last state')


@pytest.mark.parametrize('delta_max', [1.0, 60.0])
def test_lane_forward_decay_range(delta_max):
    """|delta A| up to 480: past the unclamped decay's range the lane groups take the clamped one."""
    g = torch.Generator().manual_seed(12)
    dim, n, length = 32, 16, 200
    u = torch.randn(1, dim, length, generator=g, dtype=torch.float64)
    delta = torch.rand(1, dim, length, generator=g, dtype=torch.float64) * delta_max
    A = (-torch.linspace(0.05, 8.0, n, dtype=torch.float64)).repeat(dim, 1)
    B = torch.randn(1, 1, n, length, generator=g, dtype=torch.float64)
    C = torch.randn(1, 1, n, length, generator=g, dtype=torch.float64)
    want = selective_scan_ref(u, delta, A, B, C)
    got, layout = cpu_scan_with(True, **dict(zip('u delta A B C'.split(), (t.float() for t in (u, delta, A, B, C)))))
    assert layout == 'lanes'
    assert_close_scaled(got, want, 2e-5, f'delta up to {delta_max}')


def test_lane_forward_nan_stays_in_its_channel():
    inputs = make_inputs(13, batch=1, dim=16, n=16, length=80, groups=1, dtype=torch.float32)
    x = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    x['delta'][0, 1, 30] = float('nan')
    y, layout = cpu_scan_with(True, **x)
    assert layout == 'lanes'
    assert torch.equal(torch.isnan(y), torch.isnan(selective_scan_ref(**x)))
    assert torch.isnan(y[0, 1, 30:]).all() and not torch.isnan(y[0, 0]).any() and not torch.isnan(y[0, 2:]).any()


@pytest.mark.parametrize('dim, n, groups, dtype', [
    (16, 16, 2, torch.float32),   # 8 channels per group: not a whole lane group
    (32, 32, 1, torch.float32),   # d_state 32
    (32, 8, 1, torch.float32),    # d_state 8
    (32, 16, 1, torch.float64),
])
def test_state_layout_where_lanes_do_not_apply(dim, n, groups, dtype):
    inputs = make_inputs(4, batch=1, dim=dim, n=n, length=70, groups=groups, dtype=dtype)
    x = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    y, layout = cpu_scan_with(True, **x)
    assert layout == 'states'
    assert_close_scaled(y, selective_scan_ref(**{k: (v.double() if isinstance(v, torch.Tensor) else v)
                                                 for k, v in x.items()}), 2e-5, 'y')


@pytest.mark.parametrize('shape', [
    (2, 32, 9, 11, 4, 3, True),     # batch 2, two lane groups, 4 directions, a partial second chunk
    (1, 16, 1, 1, 4, 2, True),      # a single pixel
    (1, 16, 5, 70, 2, 4, False),    # 2 directions, contiguous rows, L > 5 chunks
    (1, 48, 64, 64, 4, 3, True),    # above the serial threshold: channel blocks on threads
])
def test_lane_forward_cross_layout(shape):
    """SS2D's fused cross scan (channels-last u and y summed over the directions, delta projected per
    chunk, each direction's step order): the lane forward against the float64 composition and against
    the state layout, outputs and gradients (the backward continues from the lane forward's checkpoints)."""
    from test_cross_scan import make, run as run_cross
    batch, d, h, w, k, r, transposed = shape
    leaves, kw = make(batch, d, h, w, k, 16, r, transposed_rows=transposed)
    want = run_cross(kw, leaves, 'ref' if h * w <= 100 else 'torch')
    leaves32 = [t.detach().float().requires_grad_() for t in leaves]
    kw32 = dict(kw, x=leaves32[0], rows=leaves32[1].transpose(1, 2) if transposed else leaves32[1],
                dt_weight=leaves32[2], A=leaves32[3], D=leaves32[4], delta_bias=leaves32[5])
    got, states = [], []
    for lanes, out in ((True, got), (False, states)):
        EXT.set_lane_forward(lanes)
        try:
            out += run_cross(kw32, leaves32, 'cpu')
            assert EXT.last_forward_layout() == ('lanes' if lanes else 'states')
        finally:
            EXT.set_lane_forward(True)
    names = ['y', 'dx', 'drows', 'ddt_weight', 'dA', 'dD', 'ddelta_bias']
    def rel_err(a, b):
        return (a.double() - b).abs().max().item() / max(b.abs().max().item(), 1.0)

    for name, g32, s32, g64 in zip(names, got, states, want):
        # float32 against float64: within 2e-5, or no worse than the state layout where float32
        # accumulation over long sequences with slow decays makes both drift (1.7e-4 at 64 x 64)
        assert rel_err(g32, g64) <= max(2e-5, 1.25 * rel_err(s32, g64)), f'lanes vs float64 {name}'
        assert_close_scaled(g32, s32, 1e-5, f'lanes vs states {name}')
