"""Selective-scan benchmark: every backend and the reference loop, in one run.

    .venv/bin/python bench/scan/bench_scan.py            # issue 4's shapes, writes results/
    .venv/bin/python bench/scan/bench_scan.py --quick    # tiny smoke run (no results written)

For each shape (batch, groups x channels, d_state, length), backend and mode (forward, forward +
backward), float32, 2 threads, a fresh Python process:
  1. builds the inputs, resets the peak-RSS counter (/proc/self/clear_refs) and runs the call once:
     peak extra memory = VmHWM - VmRSS before the call (torch's CPU memory is invisible to tracemalloc);
  2. times further calls, at least `--reps` of them and at least `--min-time` seconds' worth (median
     and min, ms; the number of calls is in the JSON).
Every row is measured in each of `--rounds` rounds (3), one round after another over the run, and
shows the median of its rounds' medians (each round's is in the JSON): the machine's speed moves by
~25% for seconds at a time, enough to put a single measurement in a slow stretch.
The error is the max |y - y_ref64| over max |y_ref64|, y_ref64 the reference loop in float64.
Floors: bytes of u, delta, B, C read and y written (forward; the backward adds dy read and
du, ddelta, dB, dC written) over the measured copy bandwidth, and 9 (forward) / 30 (forward +
backward) FLOPs per (batch, channel, position, state) over the measured float32 matmul rate;
the floor is the larger of the two, and `x floor` is the time over it. The rates are measured
before and after the timings and the better of each is used (a rate measured while another job held
a core would make the floor too slow and every call look close to it).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# What `basicsr` users get (serpent_basicsr's default, and `make bench-scan`'s): OpenMP threads
# that sleep, and with them the scan kernel's own thread pool (SERPENT_SCAN_THREADS=auto). Set
# before torch loads, in this process and in the children.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
IDLE_GAP_S = 0.002  # cpu[idle]: the caller busy this long before each timed call (the workers asleep)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SHAPES = [(1, 4, 96, 16, 1024), (1, 4, 96, 16, 4096), (1, 4, 96, 16, 16384), (4, 4, 192, 16, 1024)]
FLOPS_PER_ELEM = {'fwd': 9, 'fwd+bwd': 30}
MAX_REPS = 300  # timed calls per measurement at most (--min-time)


def _status_kb(field: str) -> int:
    for line in open('/proc/self/status'):
        if line.startswith(field + ':'):
            return int(line.split()[1])
    raise KeyError(field)


def make_inputs(shape, dtype, requires_grad):
    import torch
    batch, groups, cpg, n, length = shape
    dim = groups * cpg
    g = torch.Generator().manual_seed(0)
    f64 = dict(generator=g, dtype=torch.float64)
    # Serpent-like values: A = -(1..N), D = 1, delta ~ softplus(-4.6 + noise) ~ 0.01
    x = dict(u=torch.randn(batch, dim, length, **f64), delta=torch.randn(batch, dim, length, **f64) - 4.6,
             A=-torch.arange(1, n + 1, dtype=torch.float64).repeat(dim, 1),
             B=torch.randn(batch, groups, n, length, **f64), C=torch.randn(batch, groups, n, length, **f64),
             D=torch.ones(dim, dtype=torch.float64), delta_bias=0.1 * torch.randn(dim, **f64))
    return {k: v.to(dtype).requires_grad_(requires_grad) for k, v in x.items()}


def split_backend(name: str):
    """'cpu[avx2]' -> ('cpu', {'avx2'}): a backend and its variant's parts, joined by '+' (an
    instruction-set cap, 'states', 'reuse', 'nopool', 'openmp', 'idle'); 'cpu' -> ('cpu', set())."""
    backend, _, variant = name.partition('[')
    return backend, set(filter(None, variant.rstrip(']').split('+')))


def child(spec: dict) -> dict:
    """One measurement in this (fresh) process."""
    backend, parts = split_backend(spec['backend'])
    for part in parts:
        if part == 'reuse':
            os.environ['SERPENT_MALLOC_REUSE'] = '1'  # applied by `import serpent_basicsr`
        elif part == 'nopool':
            os.environ['SERPENT_SCAN_POOL_MB'] = '0'  # read when the kernel loads
        elif part == 'openmp':
            os.environ['SERPENT_SCAN_THREADS'] = 'openmp'  # read when the kernel loads
        elif part not in ('states', 'idle'):
            os.environ['SERPENT_CPU_ISA'] = part  # read when the kernel loads
    import torch
    sys.path.insert(0, str(ROOT))
    torch.set_num_threads(spec['threads'])
    from serpent_basicsr.ops import selective_scan
    if 'states' in parts:
        from serpent_basicsr.ops import cpu_scan
        cpu_scan.load().set_lane_forward(False)
    shape, mode = tuple(spec['shape']), spec['mode']
    grad = mode == 'fwd+bwd'
    x = make_inputs(shape, torch.float32, grad)

    def call():
        if grad:
            y = selective_scan(**x, delta_softplus=True, backend=backend)
            y.backward(dy)
            for t in x.values():
                t.grad = None
            return y.detach()
        with torch.no_grad():
            return selective_scan(**x, delta_softplus=True, backend=backend)

    dy = torch.randn(x['u'].shape, generator=torch.Generator().manual_seed(1)) if grad else None
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    before = _status_kb('VmRSS')
    t0 = time.perf_counter()
    y = call()
    first = time.perf_counter() - t0
    peak = _status_kb('VmHWM')
    out = {'peak_extra_mb': (peak - before) / 1024, 'peak_reset': reset, 'first_ms': first * 1e3}
    if spec.get('ref_path'):
        ref = torch.load(spec['ref_path'])
        out['rel_err'] = float((y.double() - ref).abs().max() / ref.abs().max())
        out['finite'] = bool(torch.isfinite(y).all())
    # at least `reps` calls and, for short calls, at least `min_time_s` of them (the first few calls of a
    # fresh process run slower: a 0.6 ms call's median over 9 calls moved by 30% between runs)
    times = []
    while len(times) < spec['reps'] or (sum(times) < spec.get('min_time_s', 0) and len(times) < MAX_REPS):
        if 'idle' in parts:  # busy, as a model between two scans, while the workers go to sleep
            t_end = time.perf_counter() + IDLE_GAP_S
            while time.perf_counter() < t_end:
                pass
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    out['median_ms'] = statistics.median(times) * 1e3 if times else first * 1e3
    out['min_ms'] = min(times) * 1e3 if times else first * 1e3
    out['reps'] = len(times)
    return out


def child_ref64(spec: dict) -> dict:
    """float64 reference output, saved for the error column."""
    import torch
    sys.path.insert(0, str(ROOT))
    torch.set_num_threads(spec['threads'])
    from serpent_basicsr.ops import selective_scan_ref
    x = make_inputs(tuple(spec['shape']), torch.float64, False)
    with torch.no_grad():
        torch.save(selective_scan_ref(**x, delta_softplus=True), spec['ref_path'])
    return {}


def run_child(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), '--child', json.dumps(spec)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {'error': f'timeout after {timeout:.0f} s'}
    if out.returncode != 0:
        return {'error': out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f'rc {out.returncode}'}
    return json.loads(out.stdout.strip().splitlines()[-1])


def merge_round(acc, one: dict) -> dict:
    """A row over rounds: median_ms the median of the rounds' medians (each round's in
    round_medians_ms), min_ms the least call, reps summed, peak memory and error the largest seen;
    a round that failed makes the row an error."""
    if 'error' in one or (acc is not None and 'error' in acc):
        return one if 'error' in one else acc
    if acc is None:
        acc = {**one, 'round_medians_ms': []}
    else:
        acc['min_ms'] = min(acc['min_ms'], one['min_ms'])
        acc['reps'] += one['reps']
        acc['peak_extra_mb'] = max(acc['peak_extra_mb'], one['peak_extra_mb'])
        if 'rel_err' in one:
            acc['rel_err'] = max(acc.get('rel_err', 0.0), one['rel_err'])
            acc['finite'] = acc.get('finite', True) and one['finite']
    acc['round_medians_ms'].append(one['median_ms'])
    acc['median_ms'] = statistics.median(acc['round_medians_ms'])
    return acc


def machine_rates(threads: int) -> dict:
    """Copy bandwidth (bytes read + written per second) and float32 matmul rate, best of 5."""
    import torch
    torch.set_num_threads(threads)
    src = torch.rand(64 * 2 ** 20)  # 256 MiB
    dst = torch.empty_like(src)
    best = float('inf')
    for _ in range(6):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    bw = 2 * src.numel() * 4 / best
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = float('inf')
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return {'copy_GBps': bw / 1e9, 'matmul_GFLOPs': 2 * 2048 ** 3 / best / 1e9}


def floors_ms(shape, mode, rates) -> dict:
    batch, groups, cpg, n, length = shape
    dim = groups * cpg
    bdl, bgnl = batch * dim * length, batch * groups * n * length
    nbytes = 4 * (3 * bdl + 2 * bgnl)                    # u, delta, y; B, C
    if mode == 'fwd+bwd':
        nbytes += 4 * (3 * bdl + 2 * bgnl + 3 * bdl + 2 * bgnl)  # re-read inputs, dy; du, ddelta, dB, dC
    mem = nbytes / (rates['copy_GBps'] * 1e9) * 1e3
    arith = FLOPS_PER_ELEM[mode] * bdl * n / (rates['matmul_GFLOPs'] * 1e9) * 1e3
    return {'memory_floor_ms': mem, 'arith_floor_ms': arith, 'floor_ms': max(mem, arith)}


def shape_name(shape) -> str:
    batch, groups, cpg, n, length = shape
    return f'b{batch} {groups}x{cpg} N{n} L{length}'


def to_markdown(res: dict) -> str:
    m = res['machine']
    rs, re_ = m.get('rates_start', m['rates']), m.get('rates_end', m['rates'])
    lines = [f"Selective scan, float32, {m['threads']} threads, {m['cpu']}; copy {m['rates']['copy_GBps']:.1f} GB/s, "
             f"matmul {m['rates']['matmul_GFLOPs']:.0f} GFLOP/s (the better of this run's measurements before / after "
             f"the timings: {rs['matmul_GFLOPs']:.0f} / {re_['matmul_GFLOPs']:.0f} GFLOP/s, "
             f"{rs['copy_GBps']:.1f} / {re_['copy_GBps']:.1f} GB/s); load average "
             f"{m['loadavg_start']} at start, {m['loadavg_end']} at end; cpu kernel: {m['cpu_kernel']}; "
             f"memory defaults (serpent_basicsr.memory): {m.get('memory', '?')}; "
             f"OMP_WAIT_POLICY={m.get('omp_wait_policy', '?')}; each row the median of {m.get('rounds', 1)} "
             f"rounds' medians.", '',
             '| shape | mode | backend | median ms | min ms | peak extra MB | rel. err vs f64 ref | vs ref (x faster) '
             '| floor ms | x floor |', '|---|---|---|---:|---:|---:|---:|---:|---:|---:|']
    for r in res['rows']:
        if 'error' in r:
            lines.append(f"| {r['shape_name']} | {r['mode']} | {r['backend']} | {r['error']} | | | | | | |")
            continue
        speed = f"{r['speedup_vs_ref']:.1f}" if r.get('speedup_vs_ref') else '-'
        err = f"{r['rel_err']:.1e}" if 'rel_err' in r else '-'
        lines.append(f"| {r['shape_name']} | {r['mode']} | {r['backend']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | "
                     f"{r['peak_extra_mb']:.0f} | {err} | {speed} | {r['floor_ms']:.2f} | {r['x_floor']:.1f} |")
    ratios = variant_ratios(res['rows'])
    if ratios:
        lines += ['', 'cpu (defaults) vs cpu[variant], and cpu[idle] vs cpu[openmp+idle], same run (median; above 1: '
                  'the first is faster): '
                  + '; '.join(f'{k}: {v:.2f}x' for k, v in ratios.items())]
    return '\n'.join(lines) + '\n'


def variant_ratios(rows) -> dict:
    """Speed of the plain cpu rows over the cpu[variant] rows of the same shape and mode, and of
    cpu[idle] over cpu[openmp+idle] (the pool against OpenMP when every call wakes the workers)."""
    med = {(r['shape_name'], r['mode'], r['backend']): r['median_ms'] for r in rows if 'error' not in r}
    out = {}
    for (name, mode, backend) in med:
        base = 'cpu[idle]' if backend == 'cpu[openmp+idle]' else 'cpu'
        if backend.startswith('cpu[') and backend != 'cpu[idle]' and (name, mode, base) in med:
            out[f"{name} {mode}: {base} vs {backend}"] = med[name, mode, backend] / med[name, mode, base]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--child', help=argparse.SUPPRESS)
    ap.add_argument('--ref64', help=argparse.SUPPRESS)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--backends', default='auto',
                    help="comma list of backends and cpu variants (parts joined by '+'): cpu[avx2] / cpu[generic] "
                         "(the kernels capped at that instruction set), cpu[states] (the state-layout forward "
                         "everywhere), cpu[nopool] (the kernel's output pool off: SERPENT_SCAN_POOL_MB=0), "
                         "cpu[openmp] (OpenMP's threads: SERPENT_SCAN_THREADS=openmp), cpu[idle] (the caller busy "
                         f"{IDLE_GAP_S * 1e3:g} ms before each timed call, so the workers are asleep), cpu[reuse] "
                         "(SERPENT_MALLOC_REUSE=1); or 'auto': every CPU backend + ref, cpu[nopool], cpu[openmp], "
                         "cpu[idle], cpu[openmp+idle], and where the CPU has AVX-512 cpu[avx2] and cpu[states]")
    ap.add_argument('--ref-max-length', type=int, default=4096,
                    help='skip the reference loop above this length (it is slow and large); 0 = never skip')
    ap.add_argument('--reps', type=int, default=5, help='timed calls per measurement at least (ref: at most 2)')
    ap.add_argument('--min-time', type=float, default=0.5,
                    help='and at least this many seconds of timed calls (not for ref; at most %d calls)' % MAX_REPS)
    ap.add_argument('--rounds', type=int, default=3,
                    help='measure every row this many times, round after round over the run; a row shows the '
                         'median of its rounds\' medians')
    ap.add_argument('--timeout', type=float, default=1200, help='seconds per measurement process')
    ap.add_argument('--quick', action='store_true', help='one tiny shape, nothing written (a smoke run)')
    ap.add_argument('--out', default=str(HERE / 'results'))
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error(f'--rounds must be at least 1, got {args.rounds}')
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.ref64:
        print(json.dumps(child_ref64(json.loads(args.ref64))))
        return

    sys.path.insert(0, str(ROOT))
    import torch
    from serpent_basicsr import memory
    from serpent_basicsr.ops import available_backends, backend_summary
    shapes = [(2, 2, 8, 16, 300)] if args.quick else SHAPES
    if args.backends == 'auto':
        backends = [b for b in available_backends() if b in ('cpu', 'torch')] + ['ref']
        from serpent_basicsr.ops import cpu_scan
        if 'cpu' in backends:  # variants, for the ratios: no output pool; OpenMP's threads instead of the
            # kernel's pool, back to back and after an idle gap; the AVX2 kernels, the state layout
            extra = ['cpu[nopool]', 'cpu[openmp]', 'cpu[idle]', 'cpu[openmp+idle]']
            extra += ['cpu[avx2]', 'cpu[states]'] if cpu_scan.load().has_isa('avx512') else []
            backends[backends.index('cpu') + 1:backends.index('cpu') + 1] = extra
    else:
        backends = args.backends.split(',')
    out_dir = Path(args.out)
    tmp = out_dir / 'tmp'
    tmp.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    machine = {'cpu': platform.processor() or platform.machine(), 'threads': args.threads,
               'torch': torch.__version__, 'cpu_kernel': backend_summary(),
               'loadavg_start': ' '.join(f'{x:.1f}' for x in os.getloadavg()), 'memory': memory.settings(),
               'omp_wait_policy': os.environ.get('OMP_WAIT_POLICY'), 'rounds': args.rounds}
    for line in open('/proc/cpuinfo'):
        if line.startswith('model name'):
            machine['cpu'] = line.split(':', 1)[1].strip()
            break
    machine['rates'] = machine_rates(args.threads)
    print(f"machine: {machine}", flush=True)
    # Rounds: every row is measured once per round, the rounds one after another over the whole run,
    # and its median is the median of its rounds' medians (this machine's speed moves by 25% for
    # seconds at a time: one measurement could sit in a slow stretch).
    ref_paths, have_ref64, merged = {}, {}, {}
    for shape in shapes:
        ref_paths[shape] = str(tmp / f'ref64_{"_".join(map(str, shape))}.pt')
        r = subprocess.run([sys.executable, str(Path(__file__).resolve()), '--ref64',
                            json.dumps({'shape': shape, 'threads': args.threads, 'ref_path': ref_paths[shape]})],
                           capture_output=True, text=True, timeout=args.timeout)
        have_ref64[shape] = r.returncode == 0
    order = sorted(backends, key=lambda b: b != 'ref')  # ref first in the table
    for rnd in range(args.rounds):
        for shape in shapes:
            for mode in ('fwd', 'fwd+bwd'):
                for backend in order:
                    key = (shape, mode, backend)
                    if backend == 'ref' and args.ref_max_length and shape[-1] > args.ref_max_length:
                        merged[key] = {'error': f'skipped (L > --ref-max-length {args.ref_max_length})'}
                        continue
                    spec = {'shape': shape, 'backend': backend, 'mode': mode, 'threads': args.threads,
                            'reps': min(args.reps, 2) if backend == 'ref' else args.reps,
                            'min_time_s': 0 if backend == 'ref' else args.min_time,
                            'ref_path': ref_paths[shape] if have_ref64[shape] else None}
                    one = run_child(spec, args.timeout)
                    print({'round': rnd + 1, 'shape': shape_name(shape), 'mode': mode, 'backend': backend,
                           **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in one.items()}}, flush=True)
                    merged[key] = merge_round(merged.get(key), one)
    for path in ref_paths.values():
        if os.path.exists(path):
            os.remove(path)
    rows = []
    for shape in shapes:
        for mode in ('fwd', 'fwd+bwd'):
            ref = merged.get((shape, mode, 'ref'), {})
            for backend in order:
                row = {'shape': shape, 'shape_name': shape_name(shape), 'mode': mode, 'backend': backend,
                       **merged[shape, mode, backend]}
                if 'error' not in row and backend != 'ref' and 'median_ms' in ref:
                    row['speedup_vs_ref'] = ref['median_ms'] / row['median_ms']
                rows.append(row)
    machine['loadavg_end'] = ' '.join(f'{x:.1f}' for x in os.getloadavg())
    # The floors use the better of the rates measured before and after the timings: a rate measured
    # while another job held a core would make the floor slow and every call look close to it.
    machine['rates_start'], machine['rates_end'] = machine['rates'], machine_rates(args.threads)
    machine['rates'] = {k: max(machine['rates_start'][k], machine['rates_end'][k]) for k in machine['rates_start']}
    for row in rows:
        if 'error' not in row:
            row.update(floors_ms(tuple(row['shape']), row['mode'], machine['rates']))
            row['x_floor'] = row['median_ms'] / row['floor_ms']
    res = {'machine': machine, 'rows': rows}
    md = to_markdown(res)
    print(md)
    try:
        tmp.rmdir()
    except OSError:
        pass
    if not args.quick:
        (out_dir / 'scan_bench.json').write_text(json.dumps(res, indent=1))
        (out_dir / 'scan_bench.md').write_text(md)
        print(f'wrote {out_dir}/scan_bench.json and scan_bench.md')


if __name__ == '__main__':
    main()
