"""The GPU scripts must not rot on CPU-only machines: gpu_check's dry run (every part on the CPU at
tiny sizes) and build_mamba_kernel's refusals."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / 'bench' / 'gpu'


def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / 'gpu.json'
    proc = subprocess.run([sys.executable, str(GPU / 'gpu_check.py'), '--dry-run', '--out', str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r['dry_run'] and r['device'] != 'cuda'
    assert r['scan_check'] and all(c.get('ok') for c in r['scan_check']), r['scan_check']
    assert all(c.get('ok') for c in r['cross_scan_check']), r['cross_scan_check']
    # same weights on the same device: the model check compares a network with its copy exactly
    assert {m['model'] for m in r['model_check']} == {'serpent_s', 'serpent_b', 'serpent_l'}
    assert all(m['max_abs_err_out'] == 0 for m in r['model_check'])
    assert {t['backend'] for t in r['scan_timing']} >= {'torch'}
    assert all(t['forward_ms'] > 0 and t['fwd_bwd_ms'] > 0 for t in r['scan_timing'])
    timed = {t['model']: t for t in r['timing']}
    assert set(timed) == {'serpent_s', 'serpent_b', 'serpent_l', 'swinir', 'swinir_small'}
    assert all(t['forward']['ms'] > 0 and t['train_step']['ms'] > 0 and t['gflops'] > 0 for t in timed.values())


def test_gpu_check_refuses_without_cuda():
    proc = subprocess.run([sys.executable, str(GPU / 'gpu_check.py')], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    if proc.returncode == 0:
        pytest.skip('a CUDA device is visible here')
    assert 'no CUDA device visible' in proc.stderr


def test_build_mamba_kernel_names_a_missing_source(tmp_path):
    missing = tmp_path / 'mamba_ssm-9.9.tar.gz'
    proc = subprocess.run([sys.executable, str(GPU / 'build_mamba_kernel.py'), str(missing)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode != 0
    assert f'mamba-ssm source {missing} does not exist' in proc.stderr


def test_build_mamba_kernel_needs_a_gpu(tmp_path):
    src = tmp_path / 'mamba_src'
    src.mkdir()
    proc = subprocess.run([sys.executable, str(GPU / 'build_mamba_kernel.py'), str(src), '--out', str(tmp_path / 'k')],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    if proc.returncode == 0:
        pytest.skip('a CUDA device and nvcc are here')
    assert 'needs a visible CUDA GPU and nvcc' in proc.stderr or 'no csrc/selective_scan' in proc.stderr
