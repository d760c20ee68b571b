"""ops.cross_selective_scan: the cpu kernel's fused cross-scan against the plain composition
(cross-scan gathers -> selective_scan -> merge) on another backend, the specification."""
import pytest
import torch

from serpent_basicsr import ops
from serpent_basicsr.archs.vss_block import SS2D, cross_scan
from serpent_basicsr.ops import cross_selective_scan, direction_perms

HAS_CPU = 'cpu' in ops.available_backends()
needs_cpu = pytest.mark.skipif(not HAS_CPU, reason='compiled CPU kernel not built')


def make(batch, d, h, w, k, n, r, dtype=torch.float64, transposed_rows=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = dict(generator=g, dtype=dtype)
    length = h * w
    x = torch.randn(batch, length, d, **f)
    rows_full = torch.randn(batch, length, k, r + 2 * n, **f) if transposed_rows \
        else torch.randn(batch, k, length, r + 2 * n, **f)
    weight = 0.5 * torch.randn(k * d, r, **f)
    a = -3 * torch.rand(k * d, n, **f)
    skip = torch.randn(k * d, **f)
    bias = torch.randn(k * d, **f) - 2
    leaves = [t.requires_grad_() for t in (x, rows_full, weight, a, skip, bias)]
    rows = rows_full.transpose(1, 2) if transposed_rows else rows_full
    return leaves, dict(x=x, rows=rows, dt_weight=weight, A=a, height=h, width=w, D=skip, delta_bias=bias)


def run(kw, leaves, backend):
    y = cross_selective_scan(**kw, backend=backend)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(y.dtype)
    return [y] + list(torch.autograd.grad(y, leaves, dy))


def assert_all_close(got, want, rtol, atol):
    names = ['y', 'dx', 'drows', 'ddt_weight', 'dA', 'dD', 'ddelta_bias']
    for name, a, b in zip(names, got, want):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f'{name}: {m}')


@needs_cpu
@pytest.mark.parametrize('shape', [
    (2, 5, 7, 9, 4, 16, 3),    # batch 2, odd map, 4 directions
    (1, 3, 1, 1, 4, 16, 2),    # a single pixel
    (1, 4, 13, 3, 2, 3, 1),    # 2 directions, d_state 3 (padded lanes), rank 1
    (2, 6, 5, 70, 1, 16, 4),   # 1 direction, L > one chunk
    (1, 16, 64, 64, 4, 16, 3),  # above the serial threshold: channel blocks in parallel
])
@pytest.mark.parametrize('transposed_rows', [True, False])
def test_fused_cpu_equals_composition_float64(shape, transposed_rows):
    leaves, kw = make(*shape, transposed_rows=transposed_rows)
    got = run(kw, leaves, 'cpu')
    want = run(kw, leaves, 'ref' if shape[2] * shape[3] <= 64 else 'torch')
    assert_all_close(got, want, rtol=1e-10, atol=1e-10)


@needs_cpu
def test_fused_cpu_float32_matches_float64():
    leaves, kw = make(1, 8, 20, 24, 4, 16, 3)
    want = run(kw, leaves, 'cpu')
    leaves32 = [t.detach().float().requires_grad_() for t in leaves]
    kw32 = dict(kw, x=leaves32[0], rows=leaves32[1].transpose(1, 2), dt_weight=leaves32[2], A=leaves32[3],
                D=leaves32[4], delta_bias=leaves32[5])
    got = run(kw32, leaves32, 'cpu')
    assert got[0].dtype == torch.float32
    assert_all_close([t.double() for t in got], want, rtol=2e-3, atol=2e-3)


@needs_cpu
def test_fused_cpu_gradcheck():
    leaves, kw = make(1, 2, 3, 4, 4, 2, 2)
    names = ['x', 'rows', 'dt_weight', 'A', 'D', 'delta_bias']

    def f(*ts):
        args = dict(kw, **dict(zip(names, ts)))
        args['rows'] = args['rows'].transpose(1, 2)
        return cross_selective_scan(**args, backend='cpu')
    assert torch.autograd.gradcheck(f, tuple(leaves))


def test_direction_perms_follow_cross_scan():
    x = torch.randn(2, 3, 5, 7)
    for k in (1, 2, 4):
        perm = direction_perms(5, 7, k).long()
        xs = cross_scan(x, k)
        for i in range(k):
            assert torch.equal(x.flatten(2)[..., perm[i]], xs[:, i])


def test_bad_shapes_name_the_argument():
    leaves, kw = make(1, 4, 3, 5, 2, 4, 2)
    with pytest.raises(ValueError, match='x must be'):
        cross_selective_scan(**dict(kw, height=4))
    with pytest.raises(ValueError, match='rows must be'):
        cross_selective_scan(**dict(kw, rows=kw['rows'][..., :-1]))
    with pytest.raises(ValueError, match='dt_weight'):
        cross_selective_scan(**dict(kw, dt_weight=kw['dt_weight'][:-1]))
    with pytest.raises(ValueError, match='directions'):
        direction_perms(3, 5, 3)


@needs_cpu
def test_ss2d_fused_path_equals_composed_path(monkeypatch):
    torch.manual_seed(0)
    m = SS2D(d_inner=8, d_state=4, dt_rank=2, directions=4).double()
    x = torch.randn(2, 8, 6, 9, dtype=torch.float64, requires_grad=True)
    y = m(x)
    grads = torch.autograd.grad(y.square().sum(), [x] + list(m.parameters()))
    monkeypatch.setenv(ops.ENV_VAR, 'torch')
    y2 = m(x)
    grads2 = torch.autograd.grad(y2.square().sum(), [x] + list(m.parameters()))
    torch.testing.assert_close(y, y2, rtol=1e-10, atol=1e-10)
    for a, b in zip(grads, grads2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
