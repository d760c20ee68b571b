"""Serpent presets vs BasicSR's SwinIR: parameters, GFLOPs (scan included), CPU inference and
training-step time and peak memory, and the largest square training size within a memory cap.

Every time/memory measurement runs in its own subprocess (peak RSS = the child's ru_maxrss),
watched by the parent, which kills it above --max-gb. Sizes whose memory or time, extrapolated
linearly in pixels from the largest size measured for the same model (or from the anchors the
issue measured on this machine for SwinIR), would exceed the cap, the free memory or
--max-seconds are not tried and are recorded as skipped with the estimate. Results merge into
results/efficiency.json (so the run can be done in pieces), then the Markdown table and the
plot are rebuilt from everything measured so far.

    python bench/efficiency/run_efficiency.py                      # everything (hours here)
    python bench/efficiency/run_efficiency.py --models serpent_b --sizes 128 256 --parts train
    python bench/efficiency/run_efficiency.py --report-only         # rebuild table + plot
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
RESULTS = HERE / 'results'
MODELS = ['serpent_s', 'serpent_b', 'serpent_l', 'serpent_b_ckpt', 'swinir', 'swinir_small']
LABELS = {'serpent_s': 'Serpent-S (ours)', 'serpent_b': 'Serpent-B (ours)', 'serpent_l': 'Serpent-L (ours)',
          'serpent_b_ckpt': 'Serpent-B + checkpointing',
          'swinir': 'SwinIR 11.5M', 'swinir_small': 'SwinIR small 0.9M'}
LADDER = [64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048]
# Training-step peak RSS (GB) measured on this machine when issue 5 was filed (batch 1, CPU):
# used only to decide what not to try; a size is never reported as measured from these.
ANCHORS = {('swinir', 'train'): {64: 3.2, 128: 10.3}, ('swinir_small', 'train'): {256: 11.2}}
GB = 1024 ** 3


# ----------------------------------------------------------------------------- worker (child)
def _rss_now() -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024
    return 0


def worker(spec: Dict[str, Any]) -> None:
    import torch
    import serpent_basicsr  # noqa: F401  (compat before basicsr)
    from serpent_basicsr import ops
    from serpent_basicsr.archs.efficiency import build_named

    torch.set_num_threads(spec['threads'])
    torch.manual_seed(0)
    net = build_named(spec['model'])
    size = spec['size']
    x = torch.rand(1, 3, size, size)
    if spec['mode'] == 'infer':
        net.eval()

        def step() -> None:
            with torch.inference_mode():
                net(x)
    else:
        net.train()
        target = torch.rand(1, 3, size, size)
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.l1_loss(net(x), target).backward()
            opt.step()
    base = _rss_now()
    times: List[float] = []
    start = time.perf_counter()
    # first call warms up (allocator, Adam state); repeat while the budget allows
    while len(times) < spec['repeats'] + 1:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > spec['budget_s']:
            break
    timed = times[1:] or times
    backends = ops.resolve_backend('cpu') if hasattr(ops, 'resolve_backend') else 'unknown'
    print('RESULT ' + json.dumps(dict(
        time_s=min(timed), times_s=times, warm=len(times) > 1, base_rss_gb=base / GB,
        peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB,
        scan_backend=backends)), flush=True)


# ----------------------------------------------------------------------------- parent
def mem_available_gb() -> float:
    with open('/proc/meminfo') as f:
        for line in f:
            if line.startswith('MemAvailable:'):
                return int(line.split()[1]) / 1024 ** 2
    return float('inf')


def run_child(spec: Dict[str, Any], cap_gb: float, timeout_s: float) -> Dict[str, Any]:
    """Run one measurement in a subprocess, killing it above cap_gb RSS or after timeout_s."""
    # PASSIVE: on a shared, oversubscribed machine spinning OpenMP workers slow small ops down
    # by 10-100x (measured here); it costs nothing on an idle machine.
    env = dict(os.environ, OMP_NUM_THREADS=str(spec['threads']), MKL_NUM_THREADS=str(spec['threads']))
    env.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), '--worker', json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    start, peak_seen, status = time.time(), 0.0, None
    while proc.poll() is None:
        try:
            with open(f'/proc/{proc.pid}/status') as f:
                rss = next((int(l.split()[1]) * 1024 / GB for l in f if l.startswith('VmRSS:')), 0.0)
        except OSError:
            rss = 0.0
        peak_seen = max(peak_seen, rss)
        if rss > cap_gb:
            proc.kill()
            status = f'killed by watchdog (RSS {rss:.1f} GB > cap {cap_gb:.0f} GB)'
        elif time.time() - start > timeout_s:
            proc.kill()
            status = f'killed after timeout {timeout_s:.0f} s'
        time.sleep(0.05)
    out, err = proc.communicate()
    if status:
        return dict(status=status, peak_rss_seen_gb=round(peak_seen, 2))
    lines = [l for l in out.splitlines() if l.startswith('RESULT ')]
    if proc.returncode != 0 or not lines:
        return dict(status=f'failed (exit {proc.returncode}): {err.strip().splitlines()[-1:] or ""}')
    return dict(status='ok', **json.loads(lines[-1][7:]))


def estimate(results: Dict[str, Any], model: str, mode: str, size: int) -> Optional[Dict[str, float]]:
    """Memory (GB) and time (s) at `size`, linear in pixels from the largest smaller size measured
    in this run for (model, mode), else from ANCHORS (memory only)."""
    sizes = results.get('models', {}).get(model, {}).get('sizes', {})
    done = [(int(s), r[mode]) for s, r in sizes.items()
            if mode in r and r[mode].get('status') == 'ok' and int(s) < size]
    if done:
        s0, r0 = max(done)
        k = (size / s0) ** 2
        return dict(gb=r0['base_rss_gb'] + (r0['peak_rss_gb'] - r0['base_rss_gb']) * k,
                    seconds=r0['time_s'] * k * 2, source=f'measured at {s0}')  # x2: warm-up + timed call
    anchors = {s: g for s, g in ANCHORS.get((model, mode), {}).items() if s <= size}
    if anchors:
        s0 = max(anchors)
        return dict(gb=1.0 + (anchors[s0] - 1.0) * (size / s0) ** 2, seconds=0.0,
                    source=f'issue anchor {anchors[s0]} GB at {s0}')
    return None


def measure(results: Dict[str, Any], model: str, size: int, mode: str, args) -> Dict[str, Any]:
    est = estimate(results, model, mode, size)
    free = mem_available_gb()
    if est is not None:
        if est['gb'] > args.max_gb:
            return dict(status=f"skipped (estimated {est['gb']:.0f} GB > {args.max_gb:.0f} GB cap; "
                               f"{est['source']})")
        if est['gb'] > free - 1.0:
            return dict(status=f"skipped (estimated {est['gb']:.1f} GB, only {free:.1f} GB free on the "
                               f"shared machine now; {est['source']})")
        if est['seconds'] > args.max_seconds:
            return dict(status=f"skipped (estimated {est['seconds']:.0f} s > --max-seconds "
                               f"{args.max_seconds:.0f}; {est['source']})")
    cap = min(args.max_gb, free - 0.5)
    spec = dict(model=model, size=size, mode=mode, threads=args.threads, repeats=args.repeats,
                budget_s=args.budget_s)
    print(f'[{time.strftime("%H:%M:%S")}] {model} {mode} {size}x{size} (cap {cap:.1f} GB) ...', flush=True)
    r = run_child(spec, cap, args.max_seconds * 3)
    print(f'    -> {json.dumps(r)}', flush=True)
    return r


def load() -> Dict[str, Any]:
    path = RESULTS / 'efficiency.json'
    return json.loads(path.read_text()) if path.exists() else {'models': {}}


def save(results: Dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / 'efficiency.json').write_text(json.dumps(results, indent=1, sort_keys=True))


def count_flops(results: Dict[str, Any], models: List[str], sizes: List[int]) -> None:
    import serpent_basicsr  # noqa: F401
    from serpent_basicsr.archs.efficiency import build_named, count_params_flops
    for model in models:
        net = build_named(model)
        entry = results['models'].setdefault(model, {'sizes': {}})
        for size in sizes:
            r = count_params_flops(net, (1, 3, size, size))
            entry['params'] = r['params']
            entry['sizes'].setdefault(str(size), {}).update(
                gflops=r['flops'] / 1e9, gflops_scan=r['flops_scan'] / 1e9)
        if model.startswith('serpent'):
            entry['options'] = {k: v for k, v in net.options.items()}


def max_train_size(results: Dict[str, Any], model: str, args) -> None:
    entry = results['models'][model]
    best, reason = None, 'ladder exhausted'
    ok = [int(s) for s, r in entry['sizes'].items() if r.get('train', {}).get('status') == 'ok']
    for size in [s for s in LADDER if s <= args.max_size]:
        rec = entry['sizes'].get(str(size), {}).get('train')
        if rec is None and ok and size < max(ok):
            continue  # a larger size already trained: no need to try this one
        if rec is None or (rec.get('status') != 'ok' and not args.keep):
            rec = measure(results, model, size, 'train', args)
            entry['sizes'].setdefault(str(size), {})['train'] = rec
            save(results)
        if rec.get('status') != 'ok':
            reason = f'{size}: {rec["status"]}'
            break
        best = size
    entry['max_train_size'] = dict(size=best, stopped_at=reason, cap_gb=args.max_gb,
                                   lower_bound=('seconds' in reason or 'exhausted' in reason
                                                or 'free' in reason or 'timeout' in reason))
    save(results)


# ----------------------------------------------------------------------------- report
def fmt(v: Optional[float], nd: int = 2) -> str:
    return '-' if v is None else f'{v:.{nd}f}'


def us_per_pixel(r: Dict[str, Any], mode: str, size: int) -> Optional[float]:
    x = r.get(mode) or {}
    return x['time_s'] / size ** 2 * 1e6 if x.get('status') == 'ok' else None


def scaling_table(results: Dict[str, Any], models: List[str], sizes: List[int]) -> str:
    """Time per pixel by size and its ratio at 1024 to 256 (issue 5: linear scaling, target <= 1.3)."""
    sizes = [s for s in sizes if any(us_per_pixel(results['models'][m]['sizes'].get(str(s), {}), mode, s)
                                     for m in models for mode in ('infer', 'train'))]
    lines = ['| model | mode | ' + ' | '.join(f'us/pixel {s}' for s in sizes) + ' | 1024 : 256 |',
             '|---|---|' + '---|' * (len(sizes) + 1)]
    for m in models:
        if m.startswith('swinir'):
            continue
        e = results['models'][m]['sizes']
        for mode in ('infer', 'train'):
            per = {s: us_per_pixel(e.get(str(s), {}), mode, s) for s in sizes}
            if all(v is None for v in per.values()):
                continue
            ratio = per.get(1024) / per[256] if per.get(1024) and per.get(256) else None
            lines.append(f'| {LABELS[m]} | {mode} | ' + ' | '.join(fmt(per[s], 1) for s in sizes)
                         + f' | {fmt(ratio)} |')
    return '\n'.join(lines)


def report(results: Dict[str, Any]) -> str:
    models = [m for m in MODELS if m in results['models']]
    sizes = sorted({int(s) for m in models for s in results['models'][m]['sizes']})
    meta = results.get('meta', {})
    lines = [f"Machine: {meta.get('machine', '?')}; torch {meta.get('torch', '?')}, "
             f"{meta.get('threads', '?')} threads; scan backend used on the CPU: "
             f"{meta.get('scan_backend_cpu', '?')} (available: {meta.get('scan_backends', '?')}); "
             f"THP_MEM_ALLOC_ENABLE={meta.get('thp_mem_alloc_enable', 'unset')}, "
             f"malloc {meta.get('malloc', 'as glibc defaults')}; "
             f"run {meta.get('date', '?')}.", '',
             '| model | params (M) | size | GFLOPs (scan) | ratio to SwinIR 11.5M | infer s | infer peak GB '
             '| train-step s | train peak GB | train us/pixel |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for m in models:
        e = results['models'][m]
        for s in sizes:
            r = e['sizes'].get(str(s))
            if r is None:
                continue
            ref = results['models'].get('swinir', {}).get('sizes', {}).get(str(s), {}).get('gflops')
            ratio = f"1/{ref / r['gflops']:.0f}" if ref and r.get('gflops') and m != 'swinir' else '-'
            cells = []
            for mode in ('infer', 'train'):
                x = r.get(mode)
                if x is None:
                    cells += ['not run', '-']
                elif x.get('status') == 'ok':
                    cells += [fmt(x['time_s']) + ('' if x.get('warm') else ' (1 call)'), fmt(x['peak_rss_gb'])]
                else:
                    cells += [x['status'], '-']
            t = r.get('train', {})
            us = fmt(t['time_s'] / s ** 2 * 1e6, 1) if t.get('status') == 'ok' else '-'
            scan = f" ({r['gflops_scan']:.1f})" if r.get('gflops_scan') else ''
            gf = f"{r['gflops']:.1f}" if r.get('gflops') else '-'
            lines.append(f"| {LABELS[m]} | {e['params'] / 1e6:.2f} | {s} | {gf}{scan} | {ratio} | "
                         + ' | '.join(cells) + f' | {us} |')
    lines += ['', scaling_table(results, models, sizes)]
    lines += ['', '| model | largest square training step (batch 1) | stopped at |', '|---|---|---|']
    for m in models:
        mt = results['models'][m].get('max_train_size')
        if mt:
            size = f"{mt['size']}" + (' (lower bound)' if mt['lower_bound'] else '')
            lines.append(f"| {LABELS[m]} | {size} | {mt['stopped_at']} |")
    return '\n'.join(lines) + '\n'


def plot(results: Dict[str, Any]) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for m in [m for m in MODELS if m in results['models']]:
        sz = results['models'][m]['sizes']
        xs = sorted(int(s) for s in sz if 'gflops' in sz[s])
        if not m.endswith('_ckpt'):  # same FLOPs as its preset
            a.plot(xs, [sz[str(s)]['gflops'] for s in xs], 'o-', label=LABELS[m])
        ms = sorted(int(s) for s in sz if sz[s].get('train', {}).get('status') == 'ok')
        if ms:
            b.plot(ms, [sz[str(s)]['train']['peak_rss_gb'] for s in ms], 'o-', label=LABELS[m])
    for ax, title, yl in ((a, 'Forward FLOPs (scan included)', 'GFLOPs'),
                          (b, 'CPU training step peak RSS (batch 1)', 'GB')):
        ax.set_xscale('log', base=2)
        ax.set_yscale('log')
        ax.set_xlabel('image side (pixels)')
        ax.set_ylabel(yl)
        ax.set_title(title)
        ax.grid(True, which='both', alpha=0.3)
        ax.legend(fontsize=8)
    b.axhline(24, color='k', ls='--', lw=0.8, label='24 GB (machine RAM)')
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / 'efficiency.png', dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--worker', help=argparse.SUPPRESS)
    ap.add_argument('--models', nargs='+', default=MODELS, choices=MODELS)
    ap.add_argument('--sizes', nargs='+', type=int, default=[128, 256, 512, 1024])
    ap.add_argument('--parts', nargs='+', default=['flops', 'infer', 'train', 'maxsize'],
                    choices=['flops', 'infer', 'train', 'maxsize'])
    ap.add_argument('--max-gb', type=float, default=20.0, help='memory cap per measurement (GB RSS)')
    ap.add_argument('--max-seconds', type=float, default=600.0, help='skip calls estimated longer than this')
    ap.add_argument('--max-size', type=int, default=2048, help='top of the max-size ladder')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--repeats', type=int, default=2, help='timed calls after the warm-up call')
    ap.add_argument('--budget-s', type=float, default=60.0, help='stop repeating once a child ran this long')
    ap.add_argument('--redo', action='store_true', help='re-measure entries already in the JSON')
    ap.add_argument('--keep', action='store_true', help='max-size: keep earlier failures instead of retrying')
    ap.add_argument('--report-only', action='store_true')
    args = ap.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    results = load()
    if not args.report_only:
        import torch
        import serpent_basicsr
        from serpent_basicsr import ops
        results['meta'] = dict(
            date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), torch=torch.__version__,
            serpent_basicsr=serpent_basicsr.__version__, threads=args.threads,
            scan_backends=ops.available_backends(), python=platform.python_version(),
            scan_backend_cpu=(ops.resolve_backend('cpu') if hasattr(ops, 'resolve_backend') else '?'),
            machine=f'{platform.machine()}, {os.cpu_count()} CPUs, '
                    f'{os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB:.0f} GB RAM (shared)',
            omp_wait_policy=os.environ.get('OMP_WAIT_POLICY', 'PASSIVE'),
            thp_mem_alloc_enable=os.environ.get('THP_MEM_ALLOC_ENABLE', '0'),
            malloc=serpent_basicsr.memory.settings().get('malloc', '?'),
            flops_note='forward, batch 1; FlopCounterMode (2 per multiply-add) + 9 per scan element')
        if 'flops' in args.parts:
            count_flops(results, args.models, sorted(set(args.sizes) | {128, 256, 512, 1024}))
            save(results)
        for mode in ('infer', 'train'):
            if mode not in args.parts:
                continue
            for model in args.models:
                entry = results['models'].setdefault(model, {'sizes': {}})
                for size in sorted(args.sizes):
                    rec = entry['sizes'].setdefault(str(size), {})
                    if mode in rec and rec[mode].get('status') == 'ok' and not args.redo:
                        continue
                    rec[mode] = measure(results, model, size, mode, args)
                    save(results)
        if 'maxsize' in args.parts:
            for model in args.models:
                max_train_size(results, model, args)
    save(results)
    md = report(results)
    (RESULTS / 'efficiency.md').write_text(md)
    plot(results)
    print(md)


if __name__ == '__main__':
    main()
