"""Backend selection: automatic choice, overrides, clear errors, and no mamba_ssm import on CPU."""
import os
import subprocess
import sys

import pytest
import torch

from serpent_basicsr import ops
from serpent_basicsr.ops import ENV_VAR, available_backends, backend_summary, resolve_backend, selective_scan
from serpent_basicsr.ops import cpu_scan


def small_inputs(dtype=torch.float32, device='cpu'):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, 4, 9, generator=g, dtype=dtype)
    delta = torch.randn(1, 4, 9, generator=g, dtype=dtype)
    A = -torch.rand(4, 3, generator=g, dtype=dtype)
    B = torch.randn(1, 2, 3, 9, generator=g, dtype=dtype)
    C = torch.randn(1, 2, 3, 9, generator=g, dtype=dtype)
    return [t.to(device) for t in (u, delta, A, B, C)]


@pytest.fixture(autouse=True)
def no_env_override(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


def test_available_backends():
    avail = available_backends()
    assert avail[-2:] == ['torch', 'ref']
    assert ('cpu' in avail) == (cpu_scan.load_error() is None)
    assert set(avail) <= set(ops.BACKENDS)


def test_automatic_choice_on_cpu():
    want = 'cpu' if 'cpu' in available_backends() else 'torch'
    assert resolve_backend('cpu') == want
    assert backend_summary().startswith(want + ' (')
    assert 'available: ' + ', '.join(available_backends()) in backend_summary()


def test_cpu_call_never_imports_mamba_ssm():
    """Run in a fresh interpreter: mamba_ssm raises on import without its CUDA extension."""
    code = ('import sys, torch\n'
            'from serpent_basicsr.ops import selective_scan, available_backends, resolve_backend\n'
            'u = torch.randn(1, 4, 7)\n'
            'y = selective_scan(u, torch.rand(1, 4, 7), -torch.rand(4, 2), torch.randn(1, 2, 2, 7),\n'
            '                   torch.randn(1, 2, 2, 7), delta_softplus=True)\n'
            'available_backends()\n'
            'bad = [m for m in sys.modules if m.split(".")[0] in ("mamba_ssm", "selective_scan_cuda")]\n'
            'assert not bad, bad\n'
            'print(resolve_backend("cpu"))\n')
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ('cpu', 'torch')


@pytest.mark.skipif('cuda' in available_backends(), reason='the cuda backend is available here')
def test_forcing_cuda_without_extension_raises_clearly(monkeypatch):
    with pytest.raises(RuntimeError, match=r"backend 'cuda' \(requested by the backend argument\) is unavailable"):
        selective_scan(*small_inputs(), backend='cuda')
    monkeypatch.setenv(ENV_VAR, 'cuda')
    with pytest.raises(RuntimeError, match=ENV_VAR):
        selective_scan(*small_inputs())


def test_forcing_cpu_when_kernel_missing_raises_and_auto_falls_back(monkeypatch):
    monkeypatch.setattr(cpu_scan, 'load_error', lambda: 'simulated: kernel not built')
    with pytest.raises(RuntimeError, match="backend 'cpu'.*simulated: kernel not built"):
        resolve_backend('cpu', 'cpu')
    assert resolve_backend('cpu') == 'torch'
    assert 'cpu' not in available_backends()


def test_unknown_backend_names_the_source(monkeypatch):
    with pytest.raises(ValueError, match="unknown backend 'fast'.*backend argument"):
        selective_scan(*small_inputs(), backend='fast')
    monkeypatch.setenv(ENV_VAR, 'fast')
    with pytest.raises(ValueError, match=ENV_VAR):
        selective_scan(*small_inputs())


@pytest.mark.parametrize('name', ['torch', 'ref'] + (['cpu'] if 'cpu' in available_backends() else []))
def test_env_var_selects_backend(monkeypatch, name):
    monkeypatch.setenv(ENV_VAR, name)
    assert resolve_backend('cpu') == name
    assert backend_summary().startswith(f'{name} (') and ENV_VAR in backend_summary()
    x = small_inputs(torch.float64)
    torch.testing.assert_close(selective_scan(*x), ops.selective_scan_ref(*x), rtol=1e-10, atol=1e-12)


def test_argument_beats_env_var(monkeypatch):
    monkeypatch.setenv(ENV_VAR, 'ref')
    assert resolve_backend('cpu', 'torch') == 'torch'
    assert resolve_backend('cpu', 'auto') in ('cpu', 'torch')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_tensors_match_reference():
    x = small_inputs(torch.float32, 'cuda')
    want = ops.selective_scan_ref(*[t.cpu().double() for t in x], delta_softplus=True)
    for name in [b for b in available_backends() if b in ('cuda', 'torch')]:
        got = selective_scan(*x, delta_softplus=True, backend=name)
        assert got.is_cuda
        torch.testing.assert_close(got.cpu().double(), want, rtol=1e-4, atol=1e-4)
    if 'cpu' in available_backends():
        with pytest.raises(RuntimeError, match='needs CPU tensors'):
            selective_scan(*x, backend='cpu')


def test_broken_mamba_ssm_install_falls_back_with_its_reason(tmp_path):
    """A GPU machine whose mamba_ssm has its extension but does not import (a broken optional
    dependency of its package __init__): auto picks the torch backend, forcing cuda names the cause."""
    (tmp_path / 'selective_scan_cuda.py').write_text('')
    (tmp_path / 'mamba_ssm').mkdir()
    (tmp_path / 'mamba_ssm' / '__init__.py').write_text("raise ImportError('no module named triton_zoo')\n")
    code = ('import torch\n'
            'torch.cuda.is_available = lambda: True\n'
            'from serpent_basicsr.ops import dispatch\n'
            'assert dispatch.resolve_backend("cuda") == "torch"\n'
            'assert "cuda" not in dispatch.available_backends()\n'
            'try:\n'
            '    dispatch.resolve_backend("cuda", "cuda")\n'
            'except RuntimeError as exc:\n'
            '    print(exc)\n')
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env['PYTHONPATH'] = os.pathsep.join([str(tmp_path)] + [p for p in sys.path if p])
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "selective_scan_interface does not import (ImportError: no module named triton_zoo)" in out.stdout
