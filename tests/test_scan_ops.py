"""Selective scan backends against the reference loop (float64), gradcheck, stability, dtypes."""
import pytest
import torch

from serpent_basicsr.ops import available_backends, selective_scan, selective_scan_ref

# backends that run on CPU tensors (the cuda one is checked in test_scan_backends.py when present)
CPU_BACKENDS = [b for b in available_backends() if b in ('cpu', 'torch')]


def make_inputs(seed, batch=2, dim=8, n=4, length=37, groups=2, softplus=True, use_z=True, use_d=True,
                use_bias=True, dtype=torch.float64, bc_3d=False):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()

    u = rnd(batch, dim, length)
    if softplus:
        delta = rnd(batch, dim, length, scale=0.5)
    else:  # without softplus the step must stay positive, as in real use (else the scan explodes)
        delta = (0.05 + 0.5 * torch.rand(batch, dim, length, generator=g, dtype=torch.float64)).to(dtype)
        delta.requires_grad_()
    A = (-0.2 - torch.rand(dim, n, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    bshape = (batch, n, length) if bc_3d else (batch, groups, n, length)
    B, C = rnd(*bshape), rnd(*bshape)
    D = rnd(dim) if use_d else None
    z = rnd(batch, dim, length) if use_z else None
    bias = rnd(dim, scale=0.5) if use_bias else None
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=bias, delta_softplus=softplus)


def run(fn, inputs, seed=123):
    """y, last state and the gradients of a random projection of both, for every tensor input."""
    y, last = fn(**inputs, return_last_state=True)
    g = torch.Generator().manual_seed(seed)
    wy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)
    wl = torch.randn(last.shape, generator=g, dtype=torch.float64).to(last.dtype)
    names = [k for k, v in inputs.items() if isinstance(v, torch.Tensor)]
    grads = torch.autograd.grad((y * wy).sum() + (last * wl).sum(), [inputs[k] for k in names])
    return {'y': y, 'last': last, **{'d' + k: gr for k, gr in zip(names, grads)}}


CASES = [  # (batch, dim, n, length, groups, softplus, z, D, bias, 3d B/C)
    (2, 8, 4, 37, 2, True, True, True, True, False),
    (1, 4, 1, 1, 1, False, False, False, False, False),   # length 1, d_state 1
    (2, 8, 16, 1, 4, True, True, True, True, False),      # length 1, d_state 16, 4 groups
    (1, 8, 16, 65, 4, True, False, True, True, False),    # crosses a chunk boundary (64)
    (2, 4, 16, 130, 1, False, True, False, False, False),
    (3, 12, 3, 19, 4, True, True, False, True, False),    # odd d_state (padding lanes)
    (1, 6, 5, 129, 3, False, False, True, True, True),     # (batch, N, L) B/C
    (1, 16, 16, 200, 1, True, True, True, True, False),   # 1 group x 16 channels (split dB/dC sums)
    (2, 4, 40, 23, 2, True, True, True, False, False),    # d_state 40: runtime-sized state path
]


@pytest.mark.parametrize('backend', CPU_BACKENDS)
@pytest.mark.parametrize('case', CASES, ids=lambda c: 'b{}d{}n{}L{}g{}sp{}z{}D{}bias{}3d{}'.format(*map(int, c)))
def test_matches_reference_float64(backend, case):
    b, d, n, length, groups, sp, use_z, use_d, use_bias, bc3 = case
    inputs = make_inputs(sum(case), b, d, n, length, groups, sp, use_z, use_d, use_bias, bc_3d=bc3)
    want = run(selective_scan_ref, inputs)
    got = run(lambda **kw: selective_scan(**kw, backend=backend), inputs)
    assert set(got) == set(want)
    for key in want:
        assert got[key].dtype == torch.float64, key
        torch.testing.assert_close(got[key], want[key], rtol=1e-9, atol=1e-10, msg=f'{backend}: {key}')


@pytest.mark.parametrize('backend', CPU_BACKENDS)
def test_gradcheck(backend):
    inputs = make_inputs(7, batch=1, dim=4, n=3, length=6, groups=2)
    names = [k for k, v in inputs.items() if isinstance(v, torch.Tensor)]

    def fn(*tensors):
        kw = dict(inputs, **dict(zip(names, tensors)))
        y, last = selective_scan(**kw, return_last_state=True, backend=backend)
        return y, last

    assert torch.autograd.gradcheck(fn, [inputs[k] for k in names], eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize('backend', CPU_BACKENDS)
def test_gradcheck_no_softplus_no_extras(backend):
    inputs = make_inputs(8, batch=2, dim=2, n=2, length=5, groups=1, softplus=False, use_z=False, use_d=False,
                         use_bias=False)
    names = [k for k, v in inputs.items() if isinstance(v, torch.Tensor)]

    def fn(*tensors):
        return selective_scan(**dict(inputs, **dict(zip(names, tensors))), backend=backend)

    assert torch.autograd.gradcheck(fn, [inputs[k] for k in names], eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize('backend', CPU_BACKENDS)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('regime', ['strong_decay', 'near_zero_delta'])
def test_long_sequence_stays_finite(backend, dtype, regime):
    length = 65536
    g = torch.Generator().manual_seed(3)
    u = torch.randn(1, 2, length, generator=g).to(dtype).requires_grad_()
    # softplus(30) = 30 with A down to -4: decay exp(-120) per step; softplus(-30) ~ 1e-13
    delta = torch.full((1, 2, length), 30.0 if regime == 'strong_decay' else -30.0, dtype=dtype, requires_grad=True)
    A = (-torch.linspace(0.5, 4.0, 8)).repeat(2, 1).to(dtype).requires_grad_()
    B = torch.randn(1, 1, 8, length, generator=g).to(dtype).requires_grad_()
    C = torch.randn(1, 1, 8, length, generator=g).to(dtype).requires_grad_()
    D = torch.ones(2, dtype=dtype, requires_grad=True)
    y, last = selective_scan(u, delta, A, B, C, D, delta_softplus=True, return_last_state=True, backend=backend)
    (y.sum() + last.sum()).backward()
    for name, t in (('y', y), ('last', last), ('du', u.grad), ('ddelta', delta.grad), ('dA', A.grad),
                    ('dB', B.grad), ('dC', C.grad), ('dD', D.grad)):
        assert torch.isfinite(t).all(), f'{backend} {regime}: {name} has NaN/Inf'
    if regime == 'near_zero_delta':  # state barely moves: y ~ D * u
        torch.testing.assert_close(y, u.detach() * 1.0, rtol=0, atol=1e-3)


@pytest.mark.parametrize('backend', CPU_BACKENDS)
def test_float32_close_to_float64_reference(backend):
    inputs = make_inputs(11, batch=2, dim=8, n=16, length=150, groups=4)
    want = run(selective_scan_ref, inputs)
    inputs32 = {k: (v.detach().float().requires_grad_() if isinstance(v, torch.Tensor) else v)
                for k, v in inputs.items()}
    got = run(lambda **kw: selective_scan(**kw, backend=backend), inputs32)
    for key in want:
        assert got[key].dtype == torch.float32, key
        scale = want[key].abs().max().item()
        err = (got[key].double() - want[key]).abs().max().item()
        assert err <= 2e-5 * max(scale, 1.0), f'{backend} {key}: max err {err:.3g} (scale {scale:.3g})'


@pytest.mark.parametrize('backend', CPU_BACKENDS)
@pytest.mark.parametrize('delta_max', [1.0, 60.0])
def test_float32_decay_range_matches_float64(backend, delta_max):
    """delta * A within float exp's easy range, and far outside it (the cpu kernel clamps only then)."""
    g = torch.Generator().manual_seed(12)
    dim, n, length = 4, 16, 200
    u = torch.randn(1, dim, length, generator=g, dtype=torch.float64)
    delta = torch.rand(1, dim, length, generator=g, dtype=torch.float64) * delta_max  # |delta A| up to 480
    A = (-torch.linspace(0.05, 8.0, n, dtype=torch.float64)).repeat(dim, 1)
    B = torch.randn(1, 1, n, length, generator=g, dtype=torch.float64)
    C = torch.randn(1, 1, n, length, generator=g, dtype=torch.float64)
    want = selective_scan_ref(u, delta, A, B, C)
    got = selective_scan(*(t.float() for t in (u, delta, A, B, C)), backend=backend)
    err = (got.double() - want).abs().max().item()
    assert err <= 2e-5 * max(want.abs().max().item(), 1.0), f'{backend}: max err {err:.3g}'


@pytest.mark.parametrize('backend', CPU_BACKENDS)
def test_nan_in_delta_propagates(backend):
    """A NaN is never clamped or rounded into a finite number (the reference gives NaN from there on)."""
    inputs = make_inputs(13, batch=1, dim=4, n=16, length=80, groups=1, dtype=torch.float32)
    x = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    x['delta'][0, 1, 30] = float('nan')
    y = selective_scan(**x, backend=backend)
    want = selective_scan_ref(**x)
    assert torch.equal(torch.isnan(y), torch.isnan(want)), backend
    assert torch.isnan(y[0, 1, 30:]).all() and not torch.isnan(y[0, 0]).any()


@pytest.mark.parametrize('backend', CPU_BACKENDS + ['ref'])
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_low_precision_inputs(backend, dtype):
    inputs = make_inputs(5, batch=1, dim=8, n=16, length=40, groups=4, dtype=dtype)
    y, last = selective_scan(**inputs, return_last_state=True, backend=backend)
    assert y.dtype == dtype and last.dtype == torch.float32
    inputs32 = {k: (v.detach().float() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    y32 = selective_scan(**inputs32, backend=backend)
    torch.testing.assert_close(y.float(), y32, rtol=2e-2, atol=2e-2)
    y.float().sum().backward()
    assert inputs['u'].grad.dtype == dtype and torch.isfinite(inputs['u'].grad.float()).all()


def _cpu_isas():
    """The kernel's instruction sets this CPU can run (the portable one always)."""
    from serpent_basicsr.ops import cpu_scan
    ext = cpu_scan.load()
    return [isa for isa in ('generic', 'avx2', 'avx512') if ext is not None and ext.has_isa(isa)]


@pytest.mark.skipif('cpu' not in CPU_BACKENDS, reason='compiled CPU kernel not built')
@pytest.mark.parametrize('n', [16, 32, 8, 24, 64, 80])  # AVX-512: 1, 2 vectors, not a multiple of 16, 4, runtime 5
def test_cpu_kernel_isas_agree(n):
    """Every SIMD path this CPU has gives the portable path's outputs and gradients, in the plain and
    the cross (SS2D) layouts. With AVX-512, float states in whole 16-lane vectors take its kernels and
    the other sizes (and float64) the AVX2 ones, so both sides of that choice are covered."""
    from serpent_basicsr.ops import cpu_scan, cross_selective_scan
    ext = cpu_scan.load()

    def cross(dtype):
        g = torch.Generator().manual_seed(n)
        k, d, h, w, r = 4, 10, 9, 11, 3  # (10 channels: 8 x 8 column transposes and an edge)
        f = dict(generator=g, dtype=torch.float64)
        leaves = [t.to(dtype).requires_grad_() for t in (
            torch.randn(1, h * w, d, **f), torch.randn(1, h * w, k, r + 2 * n, **f), 0.5 * torch.randn(k * d, r, **f),
            -0.2 - torch.rand(k * d, n, **f), torch.randn(k * d, **f), torch.randn(k * d, **f) - 2)]
        x, rows, weight, a, skip, bias = leaves
        y = cross_selective_scan(x, rows.transpose(1, 2), weight, a, h, w, D=skip, delta_bias=bias, backend='cpu')
        dy = torch.randn(y.shape, **f).to(dtype)
        return [y] + list(torch.autograd.grad(y, leaves, dy))

    results = {}
    for isa in _cpu_isas():
        ext.set_isa(isa)
        try:
            for dtype in (torch.float32, torch.float64):
                inputs = make_inputs(21, batch=1, dim=8, n=n, length=150, groups=2, dtype=dtype)
                results[isa, dtype] = (run(lambda **kw: selective_scan(**kw, backend='cpu'), inputs), cross(dtype))
        finally:
            ext.set_isa('auto')
    for isa in _cpu_isas()[1:]:
        for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-12)):
            (plain, crossed), (want_plain, want_cross) = results[isa, dtype], results['generic', dtype]
            for key, want in want_plain.items():
                torch.testing.assert_close(plain[key], want, rtol=tol, atol=tol, msg=lambda m: f'{isa} {key}: {m}')
            for i, (got, want) in enumerate(zip(crossed, want_cross)):
                torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=lambda m: f'{isa} cross {i}: {m}')


@pytest.mark.skipif('cpu' not in CPU_BACKENDS, reason='compiled CPU kernel not built')
def test_cpu_forward_and_backward_on_different_isas():
    """The forward's checkpoints do not depend on the SIMD path: a backward on another path (the
    setting changed in between) gives the same gradients."""
    from serpent_basicsr.ops import cpu_scan
    ext = cpu_scan.load()
    isas = _cpu_isas()
    inputs = make_inputs(5, batch=1, dim=8, n=16, length=150, groups=2, dtype=torch.float32)
    leaves = [v for v in inputs.values() if isinstance(v, torch.Tensor)]
    try:
        ext.set_isa(isas[-1])
        y = selective_scan(**inputs, backend='cpu')
        want = torch.autograd.grad(y.sum(), leaves)
        y = selective_scan(**inputs, backend='cpu')
        ext.set_isa(isas[0])  # the portable path for the backward
        got = torch.autograd.grad(y.sum(), leaves)
    finally:
        ext.set_isa('auto')
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif('cpu' not in CPU_BACKENDS, reason='compiled CPU kernel not built')
def test_cpu_isa_choice_and_refusals():
    from serpent_basicsr.ops import cpu_scan
    ext = cpu_scan.load()
    try:
        for isa in ('generic', 'avx2', 'avx512'):
            if ext.has_isa(isa):
                ext.set_isa(isa)
                assert ext.isa().startswith(isa)
            else:
                with pytest.raises(RuntimeError, match='lacks'):
                    ext.set_isa(isa)
        with pytest.raises(RuntimeError, match="isa must be"):
            ext.set_isa('sse9')
        ext.set_isa('auto')
        assert ext.isa().startswith(_cpu_isas()[-1])  # auto = the widest this CPU has
    finally:
        ext.set_isa('auto')


@pytest.mark.skipif('cpu' not in CPU_BACKENDS, reason='compiled CPU kernel not built')
def test_cpu_isa_environment_variable():
    """SERPENT_CPU_ISA caps the instruction set; a bad value is an error that names the variable."""
    import os
    import subprocess
    import sys
    code = 'from serpent_basicsr.ops import backend_summary; print(backend_summary())'
    env = dict(os.environ, SERPENT_CPU_ISA='generic')
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and 'generic (sse2)' in out.stdout, out.stderr
    env['SERPENT_CPU_ISA'] = 'avx1024'
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "SERPENT_CPU_ISA='avx1024'" in out.stderr


@pytest.mark.skipif('cpu' not in CPU_BACKENDS, reason='compiled CPU kernel not built')
@pytest.mark.parametrize('dim,length,groups', [(16, 16384, 1), (5, 53000, 1), (16, 16384, 4), (16, 16384, 2)])
def test_cpu_kernel_threads_agree(dim, length, groups):
    """Big enough (2^22 elements) for the OpenMP path; 1 and 2 threads split the work differently.
    With 2 threads and one group: 4 channel blocks with partial dB / dC (5 channels make blocks of
    2, 2, 1 and an empty one, which must still zero its share); 4 groups: one task per group, each
    writing its group's dB / dC directly; 2 groups: 2 blocks per group, partials per group."""
    old = torch.get_num_threads()
    inputs = make_inputs(31, batch=1, dim=dim, n=16, length=length, groups=groups)
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(run(lambda **kw: selective_scan(**kw, backend='cpu'), inputs))
    finally:
        torch.set_num_threads(old)
    for key in results[0]:
        torch.testing.assert_close(results[1][key], results[0][key], rtol=1e-12, atol=1e-12)


@pytest.mark.skipif('cpu' not in CPU_BACKENDS, reason='compiled CPU kernel not built')
@pytest.mark.parametrize('use_z', [False, True])
def test_cpu_kernel_streamed_outputs(use_z):
    """float32 outputs of 4 MB and more (y, du, ddelta, dz) are written with streaming stores; they
    must equal the float64 kernel's (whose outputs take plain stores) to float32 accuracy, in every
    element (a chunk left unwritten or written twice would show)."""
    x32 = make_inputs(41, batch=1, dim=64, n=16, length=16384 + 5, groups=4, use_z=use_z, dtype=torch.float32)
    x64 = {k: v.detach().double().requires_grad_() if isinstance(v, torch.Tensor) else v for k, v in x32.items()}
    assert x32['u'].numel() * 4 >= 4 * 2 ** 20  # above the kernel's streaming threshold
    r32 = run(lambda **kw: selective_scan(**kw, backend='cpu'), x32)
    r64 = run(lambda **kw: selective_scan(**kw, backend='cpu'), x64)
    for key in r32:
        ref = r64[key]
        err = (r32[key].double() - ref).abs().max().item() / max(ref.abs().max().item(), 1e-30)
        assert err < 1e-4, (key, err)


@pytest.mark.skipif('cpu' not in CPU_BACKENDS, reason='compiled CPU kernel not built')
def test_cpu_kernel_keeps_only_chunk_checkpoints():
    """The saved state is (batch, dim, L / chunk, N_padded), never (batch, dim, L, N)."""
    from serpent_basicsr.ops import cpu_scan
    ext = cpu_scan.load()
    x = make_inputs(1, batch=1, dim=4, n=16, length=1000, groups=1, dtype=torch.float32)
    u, delta, A, B, C, D, z, bias = [x[k].detach() for k in ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')]
    args = (u, delta, A, B, C, D, z, bias, True)
    _, _, ckpt = ext.fwd(*args, True, None, None)
    k = ext.chunk_size()
    assert tuple(ckpt.shape) == (1, 4, -(-1000 // k), 16)
    _, _, none = ext.fwd(*args, False, None, None)
    assert none.numel() == 0


def test_bad_shapes_name_the_argument():
    x = make_inputs(2, batch=1, dim=4, n=3, length=10, groups=2)
    with pytest.raises(ValueError, match='B must be'):
        selective_scan(**dict(x, B=x['B'][..., :5]))
    with pytest.raises(ValueError, match='divisible'):
        selective_scan(**dict(x, B=torch.randn(1, 3, 3, 10), C=torch.randn(1, 3, 3, 10)))
    with pytest.raises(ValueError, match='delta_bias'):
        selective_scan(**dict(x, delta_bias=torch.randn(5)))
