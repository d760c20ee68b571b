"""The cpu backend's own worker threads (csrc/task_pool.h, SERPENT_SCAN_THREADS): the pool itself under
stress (a C++ program), pool and OpenMP giving identical results, and how the mode is chosen."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from serpent_basicsr.ops import available_backends, cpu_scan, selective_scan

from conftest import REPO
from test_scan_ops import make_inputs, run

EXT = cpu_scan.load() if 'cpu' in available_backends() else None
needs_ext = pytest.mark.skipif(EXT is None, reason='compiled CPU kernel not built')
CXX = shutil.which('g++') or shutil.which('c++')


@pytest.mark.skipif(CXX is None, reason='no C++ compiler')
def test_pool_stress_program(tmp_path):
    """Every task of every job runs once, and only while its run() lasts, with spinning, sleeping and
    late workers; two callers at once; a forked child."""
    exe = tmp_path / 'task_pool_check'
    subprocess.run([CXX, '-O1', '-std=c++20', '-I', str(REPO / 'serpent_basicsr/ops/csrc'),
                    str(REPO / 'tests/task_pool_check.cpp'), '-o', str(exe), '-pthread'],
                   check=True, capture_output=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith('pool check ok'), out.stdout + out.stderr
    assert out.stdout.count('jobs ok') == 5  # four settings in this process, one in the child
    assert 'exception: rethrown to the caller' in out.stdout


def _with_threads(mode, fn):
    old = EXT.threads()
    EXT.set_threads(mode)
    try:
        return fn()
    finally:
        EXT.set_threads(old)


@needs_ext
@pytest.mark.parametrize('dtype,groups,lanes', [(torch.float32, 4, True), (torch.float32, 2, False),
                                               (torch.float64, 1, False)])
def test_pool_and_openmp_agree_exactly(dtype, groups, lanes):
    """Big enough to run in parallel on 2 threads (2^22 elements); each task writes its own outputs
    (partial dB / dC summed in a fixed order), so which thread ran it cannot change a bit."""
    old = torch.get_num_threads()
    inputs = make_inputs(5, batch=1, dim=64, n=16, length=4096, groups=groups, dtype=dtype)
    EXT.set_lane_forward(lanes)
    try:
        torch.set_num_threads(2)
        results = {m: _with_threads(m, lambda: run(lambda **kw: selective_scan(**kw, backend='cpu'), inputs))
                   for m in ('pool', 'openmp')}
    finally:
        torch.set_num_threads(old)
        EXT.set_lane_forward(True)
    for key, want in results['openmp'].items():
        assert torch.equal(results['pool'][key], want), key


@needs_ext
def test_pool_follows_torch_threads():
    """One thread: the call runs serially (same result); back to two: the pool is used again."""
    old = torch.get_num_threads()
    inputs = make_inputs(6, batch=1, dim=64, n=16, length=4096, groups=4, dtype=torch.float32)
    try:
        out = {}
        for threads in (2, 1, 2):
            torch.set_num_threads(threads)
            out.setdefault(threads, []).append(
                _with_threads('pool', lambda: run(lambda **kw: selective_scan(**kw, backend='cpu'), inputs)))
    finally:
        torch.set_num_threads(old)
    for res in (out[1][0], out[2][1]):
        for key, want in out[2][0].items():
            assert torch.equal(res[key], want), key


@needs_ext
def test_serial_threshold_follows_the_mode():
    """Calls below serial_work() elements run on the calling thread: 2^22 with OpenMP's threads (their
    hand-off is expensive), 2^20 with the pool's; set_threads resets it, set_serial_work overrides it."""
    old = EXT.threads()
    try:
        EXT.set_threads('openmp')
        assert EXT.serial_work() == 1 << 22
        EXT.set_threads('pool')
        assert EXT.serial_work() == 1 << 20
        EXT.set_serial_work(0)  # everything parallel: still the same results
        inputs = make_inputs(8, batch=1, dim=16, n=16, length=64, groups=2, dtype=torch.float32)
        parallel = run(lambda **kw: selective_scan(**kw, backend='cpu'), inputs)
        EXT.set_serial_work(1 << 30)
        serial = run(lambda **kw: selective_scan(**kw, backend='cpu'), inputs)
        for key, want in serial.items():
            torch.testing.assert_close(parallel[key], want, rtol=1e-5, atol=1e-6)
        with pytest.raises(RuntimeError, match='serial_work must be >= 0'):
            EXT.set_serial_work(-1)
    finally:
        EXT.set_threads(old)


@needs_ext
def test_extension_refuses_bad_settings():
    with pytest.raises(RuntimeError, match="threads must be 'pool' or 'openmp'"):
        EXT.set_threads('tbb')
    with pytest.raises(RuntimeError, match='spin must be 0-100000 us'):
        EXT.set_pool_spin_us(-1)
    old = EXT.pool_spin_us()
    EXT.set_pool_spin_us(0)
    assert EXT.pool_spin_us() == 0
    EXT.set_pool_spin_us(old)


class FakeExt:
    def __init__(self):
        self.mode, self.spin = None, None

    def set_threads(self, mode):
        self.mode = mode

    def set_pool_spin_us(self, us):
        self.spin = us


@pytest.mark.parametrize('seen,spincount,env,want', [
    ('PASSIVE', None, None, 'pool'),       # our default, read by OpenMP: its threads sleep
    ('passive', None, 'auto', 'pool'),
    ('ACTIVE', None, None, 'openmp'),      # spinning OpenMP threads would hold the cores
    (None, None, None, 'openmp'),          # torch loaded first, policy unset: libgomp spins a while
    ('PASSIVE', '10000', None, 'openmp'),  # GOMP_SPINCOUNT makes passive threads spin too
    ('ACTIVE', None, 'pool', 'pool'),      # a forced mode wins
    ('PASSIVE', None, ' OpenMP ', 'openmp'),
])
def test_thread_mode_choice(monkeypatch, seen, spincount, env, want):
    import serpent_basicsr
    monkeypatch.setattr(serpent_basicsr, 'OMP_WAIT_POLICY_SEEN', seen)
    for name, value in (('GOMP_SPINCOUNT', spincount), (cpu_scan.THREADS_ENV, env)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    monkeypatch.delenv(cpu_scan.SPIN_ENV, raising=False)
    ext = FakeExt()
    cpu_scan._apply_threads_env(ext)
    assert (ext.mode, ext.spin) == (want, None)


def test_thread_settings_refuse_bad_values(monkeypatch):
    monkeypatch.setenv(cpu_scan.THREADS_ENV, 'tbb')
    with pytest.raises(ValueError, match="SERPENT_SCAN_THREADS='tbb'"):
        cpu_scan._apply_threads_env(FakeExt())
    monkeypatch.setenv(cpu_scan.THREADS_ENV, 'pool')
    for bad in ('fast', '-5', '200000'):
        monkeypatch.setenv(cpu_scan.SPIN_ENV, bad)
        with pytest.raises(ValueError, match=f"SERPENT_SCAN_SPIN_US='{bad}'"):
            cpu_scan._apply_threads_env(FakeExt())
    monkeypatch.setenv(cpu_scan.SPIN_ENV, '250')
    ext = FakeExt()
    cpu_scan._apply_threads_env(ext)
    assert (ext.mode, ext.spin) == ('pool', 250)


@needs_ext
@pytest.mark.parametrize('env,torch_first,want', [
    ({'OMP_WAIT_POLICY': 'PASSIVE'}, True, 'its own thread pool'),
    ({}, False, 'its own thread pool'),   # serpent_basicsr first: its PASSIVE default reaches OpenMP
    ({}, True, 'OpenMP'),                 # torch first: OpenMP never saw our default
    ({'OMP_WAIT_POLICY': 'PASSIVE', 'SERPENT_SCAN_THREADS': 'openmp', 'SERPENT_SCAN_SPIN_US': '7'}, False, 'OpenMP'),
])
def test_thread_mode_in_a_fresh_process(env, torch_first, want):
    """End to end, as `basicsr --version` reports it (backend_summary)."""
    code = ('import torch; ' if torch_first else '') + (
        'import serpent_basicsr; from serpent_basicsr.ops import backend_summary, cpu_scan; '
        'print(backend_summary()); print(cpu_scan.load().pool_spin_us())')
    base = {k: v for k, v in os.environ.items()
            if k not in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT', 'SERPENT_SCAN_THREADS', 'SERPENT_SCAN_SPIN_US')}
    out = subprocess.run([sys.executable, '-c', code], env={**base, **env}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    summary, spin = out.stdout.strip().splitlines()[-2:]
    assert f'threads ({want})' in summary, summary
    assert spin == env.get('SERPENT_SCAN_SPIN_US', '100')
