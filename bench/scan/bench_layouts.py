"""Whole-model effect of the CPU scan's channels-in-lanes forward: Serpent inference and training steps
with it on and off, in one process, alternating (the machine is shared: compare the ratio).

    .venv/bin/python bench/scan/bench_layouts.py            # writes results/layouts.{json,md}
    .venv/bin/python bench/scan/bench_layouts.py --quick    # one tiny case, nothing written

Each case runs `--rounds` rounds; a round times `--reps` calls with the lane forward on, then off
(`set_lane_forward`), after one warm-up call each. Reported: the best round's median per setting.
The backward is the same kernel either way; SS2D's blocks reach the scan through the fused cross
layout.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# (preset, mode, batch, size)
CASES = [('serpent_s', 'infer', 1, 256), ('serpent_s', 'infer', 1, 512), ('serpent_b', 'infer', 1, 256),
         ('serpent_s', 'train', 8, 64), ('serpent_s', 'train', 1, 256), ('serpent_b', 'train', 1, 256)]


def measure(preset: str, mode: str, batch: int, size: int, rounds: int, reps: int) -> dict:
    import torch
    from serpent_basicsr.archs.serpent_arch import Serpent
    from serpent_basicsr.ops import cpu_scan
    ext = cpu_scan.load()
    torch.manual_seed(0)
    model = Serpent(preset=preset)
    x, target = torch.rand(batch, 3, size, size), torch.rand(batch, 3, size, size)
    opt = torch.optim.Adam(model.parameters(), 1e-4)

    def call():
        if mode == 'infer':
            with torch.no_grad():
                model.eval()(x)
        else:
            loss = (model.train()(x) - target).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    best = {}
    try:
        for _ in range(rounds):
            for lanes in (True, False):
                ext.set_lane_forward(lanes)
                call()
                times = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    call()
                    times.append(time.perf_counter() - t0)
                key = 'lanes_s' if lanes else 'states_s'
                best[key] = min(best.get(key, float('inf')), statistics.median(times))
    finally:
        ext.set_lane_forward(True)
    return {'preset': preset, 'mode': mode, 'batch': batch, 'size': size, **best,
            'speedup': best['states_s'] / best['lanes_s']}


def to_markdown(res: dict) -> str:
    lines = [f"Serpent with the scan's lane forward on vs off, {res['threads']} threads, {res['cpu']}, "
             f"{res['rounds']} rounds x {res['reps']} calls (best round's median).", '',
             '| model | mode | batch x size | lanes s | states s | lanes faster |', '|---|---|---|---:|---:|---:|']
    for r in res['rows']:
        lines.append(f"| {r['preset']} | {r['mode']} | {r['batch']} x {r['size']}^2 | {r['lanes_s']:.4g} | "
                     f"{r['states_s']:.4g} | {r['speedup']:.2f}x |")
    return '\n'.join(lines) + '\n'


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--reps', type=int, default=3)
    ap.add_argument('--quick', action='store_true', help='one tiny case, nothing written (a smoke run)')
    ap.add_argument('--out', default=str(HERE / 'results'))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import serpent_basicsr  # noqa: F401  (memory defaults before torch allocates)
    import torch
    from serpent_basicsr.ops import cpu_scan
    ext = cpu_scan.load()
    if ext is None:
        sys.exit(f'bench_layouts: the compiled kernel is needed ({cpu_scan.load_error()})')
    torch.set_num_threads(args.threads)
    cpu = platform.processor() or platform.machine()
    for line in open('/proc/cpuinfo'):
        if line.startswith('model name'):
            cpu = line.split(':', 1)[1].strip()
            break
    cases = [('serpent_s', 'infer', 1, 64), ('serpent_s', 'train', 2, 32)] if args.quick else CASES
    rounds, reps = (1, 1) if args.quick else (args.rounds, args.reps)
    rows = []
    for case in cases:
        rows.append(measure(*case, rounds=rounds, reps=reps))
        print(rows[-1], flush=True)
    res = {'cpu': cpu, 'threads': args.threads, 'isa': ext.isa(), 'rounds': rounds, 'reps': reps, 'rows': rows}
    md = to_markdown(res)
    print(md)
    if not args.quick:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / 'layouts.json').write_text(json.dumps(res, indent=1))
        (out / 'layouts.md').write_text(md)
        print(f'wrote {out}/layouts.json and layouts.md')


if __name__ == '__main__':
    main()
