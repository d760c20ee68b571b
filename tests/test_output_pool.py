"""The cpu kernel's output pool (csrc/output_pool.h): large outputs reuse freed blocks, the results
do not change, the cap is kept, SERPENT_SCAN_POOL_MB=0 turns it off and a bad value is an error."""
import os
import pickle
import subprocess
import sys

import pytest
import torch

from serpent_basicsr.ops import cpu_scan, selective_scan

pytestmark = pytest.mark.skipif(cpu_scan.load() is None, reason='compiled cpu kernel not built')

DIM, L = 64, 8192  # y of 2 MB: the smallest output the pool takes


def inputs(requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = dict(u=torch.randn(1, DIM, L, generator=g), delta=torch.randn(1, DIM, L, generator=g) - 4,
             A=-torch.rand(DIM, 2, generator=g) - 0.5, B=torch.randn(1, 2, L, generator=g),
             C=torch.randn(1, 2, L, generator=g), D=torch.ones(DIM))
    return {k: v.requires_grad_(requires_grad) for k, v in x.items()}


def stats():
    hits, misses, blocks, free_bytes = cpu_scan.load().output_pool_stats()
    return dict(hits=hits, misses=misses, blocks=blocks, free_bytes=free_bytes)


ON_MB = 256  # the default cap (test_default_cap checks it)


@pytest.fixture
def pool_cap():
    """Set the cap for one test, restore the one in effect before afterwards."""
    ext = cpu_scan.load()
    before = ext.output_pool_cap_mb()
    yield ext.set_output_pool_mb
    ext.set_output_pool_mb(before)


def test_default_cap():
    code = 'from serpent_basicsr.ops import cpu_scan\nprint(cpu_scan.load().output_pool_cap_mb())\n'
    env = {k: v for k, v in os.environ.items() if k != 'SERPENT_SCAN_POOL_MB'}
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip().splitlines()[-1]) == ON_MB


def test_freed_outputs_are_reused_and_results_unchanged(pool_cap):
    pool_cap(ON_MB)
    x = inputs()
    y1 = selective_scan(**x, delta_softplus=True, backend='cpu')
    ref = y1.clone()
    del y1  # back to the pool
    s0 = stats()
    assert s0['blocks'] >= 1 and s0['free_bytes'] >= DIM * L * 4
    y2 = selective_scan(**x, delta_softplus=True, backend='cpu')
    s1 = stats()
    assert s1['hits'] == s0['hits'] + 1 and s1['misses'] == s0['misses']
    assert torch.equal(y2, ref)
    pool_cap(0)  # no pool: the same values from PyTorch's allocator; the pooled y stays valid
    y3 = selective_scan(**x, delta_softplus=True, backend='cpu')
    assert stats()['misses'] == s1['misses'] and stats()['blocks'] == 0
    assert torch.equal(y3, ref) and torch.equal(y2, ref)


def test_gradients_from_pooled_outputs(pool_cap):
    grads = []
    for cap in (0, ON_MB, ON_MB):  # off, first mapping, reuse
        pool_cap(cap)
        hits = stats()['hits']
        x = inputs(requires_grad=True)
        selective_scan(**x, delta_softplus=True, backend='cpu').square().sum().backward()
        grads.append([x[k].grad.clone() for k in ('u', 'delta', 'A', 'B', 'C', 'D')])
        del x
    assert stats()['hits'] - hits == 3  # y, du, ddelta (2 MB each) of the previous step
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            assert torch.equal(a, b)


def test_pooled_tensor_behaves_like_any_other(pool_cap):
    pool_cap(ON_MB)
    y = selective_scan(**inputs(), delta_softplus=True, backend='cpu')
    ref = y.clone()
    assert torch.equal(pickle.loads(pickle.dumps(y)), ref)
    y.resize_(2, DIM, L)  # storage grows through the pool's allocator
    assert torch.equal(y[:1], ref)
    y.resize_(1, DIM, L // 2)
    assert torch.equal(y, ref.flatten()[:DIM * L // 2].view(1, DIM, L // 2))


def test_cap_is_kept(pool_cap):
    pool_cap(ON_MB)
    ys = [selective_scan(**inputs(seed=s), delta_softplus=True, backend='cpu') for s in range(3)]
    del ys
    assert stats()['free_bytes'] >= 3 * DIM * L * 4
    pool_cap(5)  # 5 MB: at most two 2 MB blocks stay
    assert 0 < stats()['free_bytes'] <= 5 * 2 ** 20
    with pytest.raises(RuntimeError, match='must be >= 0 MB'):
        cpu_scan.load().set_output_pool_mb(-1)


@pytest.mark.parametrize('value, ok', [('0', True), ('64', True), ('lots', False), ('-3', False)])
def test_pool_env(value, ok):
    code = ('from serpent_basicsr.ops import cpu_scan, selective_scan\n'
            'import tests.test_output_pool as t\n'
            'selective_scan(**t.inputs(), backend="cpu")\n'
            'print(cpu_scan.load().output_pool_stats())\n')
    env = dict(os.environ, SERPENT_SCAN_POOL_MB=value, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if ok:
        assert out.returncode == 0, out.stderr
        blocks = eval(out.stdout.strip().splitlines()[-1])[2]
        assert blocks == (0 if value == '0' else 1)
    else:
        assert out.returncode != 0
        assert f"SERPENT_SCAN_POOL_MB='{value}': expected a whole number of MB >= 0" in out.stderr
