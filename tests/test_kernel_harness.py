"""bench/scan/kernel_harness.cpp: the CPU scan kernels built without torch (the tool for timing kernel
changes without rebuilding the extension) must keep compiling against the kernels' headers and agree
with its float64 loop."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from conftest import REPO

CXX = shutil.which('g++') or shutil.which('c++')


@pytest.mark.skipif(CXX is None, reason='no C++ compiler')
def test_kernel_harness_builds_checks_and_times(tmp_path):
    exe = tmp_path / 'kernel_harness'
    # -O1: builds in about a minute (-O3, for timing, takes a few); the check is the same code
    subprocess.run([CXX, '-O1', '-std=c++20', '-I', str(REPO / 'serpent_basicsr/ops/csrc'),
                    str(REPO / 'bench/scan/kernel_harness.cpp'), '-o', str(exe)], check=True, capture_output=True)
    # each instruction set (capped at what this CPU has: the header line says which ran)
    for isa in ('generic', 'avx2', 'avx512'):
        check = subprocess.run([str(exe), '--isa', isa, '--check'], capture_output=True, text=True)
        assert check.returncode == 0 and check.stdout.strip().endswith('check ok'), check.stdout
        assert re.match(r'isa (generic|avx2|avx512) ', check.stdout)
        # every state-size path (N 1, 5, 16, 32, 40, 48, 64, 80) in float and double, 8 outputs each;
        # with AVX-512 also the lane-layout forward (8 shapes, then the backward from its checkpoints)
        lanes = check.stdout.startswith('isa avx512')
        assert len(re.findall(r'^(float|double) .*: y ', check.stdout, re.M)) == 48 + (8 if lanes else 0)
        assert len(re.findall(r'^float .* lanes: y ', check.stdout, re.M)) == (8 if lanes else 0)
        timed = subprocess.run([str(exe), '--isa', isa, '130', '1'], capture_output=True, text=True, check=True).stdout
        assert re.search(r'^forward \(states\) L 130: best of 1 [0-9.]+ ms', timed, re.M)
        assert bool(re.search(r'^forward \(lanes\)  L 130: best of 1 [0-9.]+ ms', timed, re.M)) == lanes
        assert re.search(r'^backward +L 130: best of 1 [0-9.]+ ms', timed, re.M)
    bad = subprocess.run([str(exe), '0'], capture_output=True, text=True)
    assert bad.returncode == 2 and 'usage' in bad.stderr
    bad = subprocess.run([str(exe), '--isa', 'avx9', '100'], capture_output=True, text=True)
    assert bad.returncode == 2 and '--isa' in bad.stderr


@pytest.mark.skipif(CXX is None, reason='no C++ compiler')
def test_kernel_harness_timing_only_build(tmp_path):
    exe = tmp_path / 'kernel_harness_timing'
    subprocess.run([CXX, '-O1', '-std=c++20', '-DTIMING_ONLY', '-I', str(REPO / 'serpent_basicsr/ops/csrc'),
                    str(REPO / 'bench/scan/kernel_harness.cpp'), '-o', str(exe)], check=True, capture_output=True)
    for isa in ('generic', 'avx2', 'avx512'):
        timed = subprocess.run([str(exe), '--isa', isa, '70', '1'], capture_output=True, text=True, check=True).stdout
        assert re.search(r'^backward +L 70: best of 1 [0-9.]+ ms', timed, re.M)
    refused = subprocess.run([str(exe), '--check'], capture_output=True, text=True)
    assert refused.returncode == 2 and 'TIMING_ONLY' in refused.stderr
