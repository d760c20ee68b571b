"""bench/scan/bench_scan.py --quick end to end (the benchmark script must not rot)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO
from serpent_basicsr.ops import available_backends


@pytest.mark.skipif('cpu' not in available_backends(), reason='compiled CPU kernel not built')
def test_scan_bench_quick_prints_every_row_with_floors(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / 'bench' / 'scan' / 'bench_scan.py'), '--quick', '--threads', '1',
                          '--backends', 'cpu,cpu[generic],cpu[idle],cpu[openmp+idle]', '--reps', '1', '--rounds', '2',
                          '--out', str(tmp_path / 'results')],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    header = next(line for line in out.stdout.splitlines() if line.startswith('Selective scan'))
    # the floors use the better of two machine-rate measurements, both reported
    assert re.search(r'matmul \d+ GFLOP/s \(the better of .* \d+ / \d+ GFLOP/s', header), header
    assert "each row the median of 2 rounds' medians" in header, header
    rounds = [line for line in out.stdout.splitlines() if line.startswith("{'round': 2")]
    assert len(rounds) == 8  # every row measured again in round 2
    rows = [line.split('|')[1:-1] for line in out.stdout.splitlines() if line.startswith('| b')]
    # the quick shape x fwd, fwd+bwd x the kernel at its widest, capped at the portable SSE2 path, after
    # an idle gap on its own threads and on OpenMP's (the reference loop is not timed here)
    assert len(rows) == 8
    assert sorted(c[2].strip() for c in rows) == sorted(2 * ['cpu', 'cpu[generic]', 'cpu[idle]', 'cpu[openmp+idle]'])
    for row in rows:
        cells = [c.strip() for c in row]
        assert float(cells[6]) < 1e-5  # error against the float64 reference (computed in a child)
        assert float(cells[9]) > 1.0  # no call beats the arithmetic/memory floor
    ratios = next(line for line in out.stdout.splitlines() if line.startswith('cpu (defaults) vs cpu[variant]'))
    assert re.search(r'b2 2x8 N16 L300 fwd: cpu vs cpu\[generic\]: [0-9.]+x', ratios), ratios
    assert re.search(r'b2 2x8 N16 L300 fwd\+bwd: cpu\[idle\] vs cpu\[openmp\+idle\]: [0-9.]+x', ratios), ratios
    assert 'vs cpu[idle]' not in ratios  # compared with its OpenMP twin, not with plain cpu
    assert not (tmp_path / 'results' / 'scan_bench.json').exists()  # --quick writes nothing


def test_rounds_merge_to_the_median_of_their_medians(monkeypatch):
    # (importing the script sets OMP_WAIT_POLICY's default: kept to this test, like the path)
    monkeypatch.setenv('OMP_WAIT_POLICY', os.environ.get('OMP_WAIT_POLICY', 'PASSIVE'))
    monkeypatch.syspath_prepend(str(REPO / 'bench' / 'scan'))
    import bench_scan
    row = None
    for med, lo, err in [(5.0, 4.0, 1e-7), (9.0, 3.5, 3e-7), (6.0, 5.5, 2e-7)]:
        row = bench_scan.merge_round(row, {'median_ms': med, 'min_ms': lo, 'reps': 10, 'peak_extra_mb': med,
                                           'rel_err': err, 'finite': True, 'first_ms': 1.0})
    assert row['round_medians_ms'] == [5.0, 9.0, 6.0] and row['median_ms'] == 6.0  # the slow round outvoted
    assert row['min_ms'] == 3.5 and row['reps'] == 30 and row['peak_extra_mb'] == 9.0 and row['rel_err'] == 3e-7
    failed = bench_scan.merge_round(row, {'error': 'timeout after 1200 s'})
    assert failed == {'error': 'timeout after 1200 s'}
    assert bench_scan.merge_round(failed, {'median_ms': 1.0, 'min_ms': 1.0, 'reps': 1, 'peak_extra_mb': 0}) == failed


@pytest.mark.skipif('cpu' not in available_backends(), reason='compiled CPU kernel not built')
def test_layouts_bench_quick_prints_both_settings(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / 'bench' / 'scan' / 'bench_layouts.py'), '--quick', '--threads', '1',
                          '--out', str(tmp_path / 'results')], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [[c.strip() for c in line.split('|')[1:-1]] for line in out.stdout.splitlines()
            if line.startswith('| serpent')]
    assert [r[1] for r in rows] == ['infer', 'train']
    for row in rows:  # lanes s, states s, their ratio as printed
        lanes, states, ratio = float(row[3]), float(row[4]), float(row[5].rstrip('x'))
        assert lanes > 0 and states > 0 and abs(ratio - states / lanes) <= 0.02 * ratio + 0.01
    assert not (tmp_path / 'results').exists()  # --quick writes nothing
