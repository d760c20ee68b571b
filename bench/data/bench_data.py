#!/usr/bin/env python
"""Data-pipeline throughput: images/s of GaussianDeblurDataset through a torch DataLoader.

Default setting (the paper's training input): the embedded default train set (built first if
missing), random 256 x 256 crops with flips/rotations, 61 x 61 Gaussian blur with sigma 3.0,
batch 8, with 2 workers and with 0 workers (main process), from the folder and from the LMDB,
plus the 8x SR variant (blur + MATLAB bicubic). A per-stage breakdown (read+decode, crop with its
context, kernel, blur of the context, to-tensor) is measured single-threaded in this process. Optionally (--model) one training
step (forward, L1, backward, Adam) of a registered architecture is timed on the same batch shape,
and the ratio loader images/s : step images/s says whether the loader keeps up.

Writes bench/data/results/data_throughput.{json,md} (and prints the table). Timings on a shared
machine are noisy: compare rows of the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import platform
import sys
import time
from typing import Any, Dict, List

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def loader_throughput(opt: Dict[str, Any], workers: int, batch: int, batches: int, warmup: int) -> Dict[str, Any]:
    import torch
    from serpent_basicsr.data.gaussian_deblur_dataset import GaussianDeblurDataset
    ds = GaussianDeblurDataset(dict(opt))
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=batch * (batches + warmup))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers,
                                         persistent_workers=False, drop_last=True)
    torch.manual_seed(0)
    start = time.perf_counter()
    it = iter(loader)
    for _ in range(warmup):  # includes worker start-up
        next(it)
    t0 = time.perf_counter()
    n = 0
    for b in it:
        n += b['gt'].shape[0]
    dt = time.perf_counter() - t0
    return {'images': n, 'seconds': dt, 'images_per_s': n / dt, 'startup_and_warmup_s': t0 - start}


def stage_breakdown(opt: Dict[str, Any], reps: int) -> Dict[str, float]:
    """Milliseconds per image for each stage, one thread, this process."""
    import numpy as np
    from basicsr.utils import img2tensor
    from serpent_basicsr.data.degradations import blur
    from serpent_basicsr.data.gaussian_deblur_dataset import GaussianDeblurDataset
    ds = GaussianDeblurDataset(dict(opt))
    times: Dict[str, List[float]] = {k: [] for k in ('read_decode', 'crop_augment', 'kernel', 'blur', 'to_tensor')}
    for i in range(reps):
        idx = i % len(ds)
        rng = ds.rng_for(idx)
        t = time.perf_counter()
        img = ds.load_gt(idx)
        times['read_decode'].append(time.perf_counter() - t)
        t = time.perf_counter()
        # as __getitem__: the crop with its surroundings (none without crop_context), blurred whole, cut out
        region, (top, left, size) = ds.crop_in_context(img, rng, ds.paths[idx], ds.context_margin)
        gt = region[top:top + size, left:left + size]
        times['crop_augment'].append(time.perf_counter() - t)
        t = time.perf_counter()
        kernel, _ = ds.degradation.sample_kernel(rng)
        times['kernel'].append(time.perf_counter() - t)
        t = time.perf_counter()
        lq = blur(region, kernel)[top:top + size, left:left + size]
        times['blur'].append(time.perf_counter() - t)
        t = time.perf_counter()
        img2tensor([gt, lq])
        times['to_tensor'].append(time.perf_counter() - t)
    return {k: 1000 * float(np.median(v)) for k, v in times.items()}


def train_step_throughput(model: str, batch: int, size: int, steps: int, threads: int) -> Dict[str, Any]:
    import torch
    torch.set_num_threads(threads)
    from basicsr.utils.registry import ARCH_REGISTRY
    presets = ('serpent_s', 'serpent_b', 'serpent_l')
    net = ARCH_REGISTRY.get('Serpent')(preset=model) if model in presets else ARCH_REGISTRY.get(model)()
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    net = net.to(device)
    optim = torch.optim.Adam(net.parameters(), 2e-4)
    x, y = torch.rand(batch, 3, size, size, device=device), torch.rand(batch, 3, size, size, device=device)

    def step():
        loss = (net(x) - y).abs().mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        if device.type == 'cuda':
            torch.cuda.synchronize()

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t) / steps
    return {'model': model, 'device': str(device), 'threads': threads, 'batch': batch, 'size': size, 'step_s': dt,
            'images_per_s': batch / dt}


def markdown(res: Dict[str, Any]) -> str:
    lines = [f"Data throughput, {res['setting']} ({res['machine']}; {res['date']})", '',
             '| pipeline | backend | workers | images/s (median) | min - max | warm-up + start (s) |',
             '| --- | --- | --- | ---: | ---: | ---: |']
    for r in res['loader']:
        lines.append(f"| {r['pipeline']} | {r['backend']} | {r['workers']} | {r['images_per_s']:.1f} | "
                     f"{r['images_per_s_min']:.1f} - {r['images_per_s_max']:.1f} | {r['startup_and_warmup_s']:.1f} |")
    lines += ['', 'Per-stage cost, one thread (ms per image, median):', '',
              '| ' + ' | '.join(res['stages_ms']) + ' |', '|' + ' ---: |' * len(res['stages_ms']),
              '| ' + ' | '.join(f'{v:.2f}' for v in res['stages_ms'].values()) + ' |', '',
              f"Sum {sum(res['stages_ms'].values()):.1f} ms per image, i.e. about "
              f"{1000 / sum(res['stages_ms'].values()):.0f} images/s per free core (an estimate from these stage "
              "costs, not a loader measurement; N workers on N free cores should scale about linearly)."]
    if res.get('train_step'):
        s = res['train_step']
        ref = res['loader'][0]  # Gaussian, folder, 2 workers
        lines += ['', f"Training step of {s['model']} on {s['device']} ({s['threads']} threads, batch {s['batch']}, "
                      f"{s['size']}px): "
                      f"{s['step_s']:.3g} s = {s['images_per_s']:.3g} images/s; the Gaussian loader (folder, 2 workers) "
                      f"delivers {ref['images_per_s'] / s['images_per_s']:.3g}x what the step consumes"]
    else:
        lines += ['', 'Training step: not measured in this run (--model not given).']
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog='\n\n'.join(__doc__.split('\n\n')[1:]))
    parser.add_argument('--data', default=osp.join(REPO, 'datasets', 'data', 'default'),
                        help='default data folder (built with datasets/make_default_data.py if missing)')
    parser.add_argument('--gt-size', type=int, default=256)
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--batches', type=int, default=12, help='timed batches per configuration')
    parser.add_argument('--warmup', type=int, default=2, help='untimed first batches (worker start-up)')
    parser.add_argument('--rounds', type=int, default=3, help='interleaved repetitions; the median is reported')
    parser.add_argument('--stage-reps', type=int, default=24)
    parser.add_argument('--model', help='also time a training step: serpent_s/b/l or a registered arch name')
    parser.add_argument('--model-batch', type=int, default=8)
    parser.add_argument('--model-steps', type=int, default=3)
    parser.add_argument('--model-threads', type=int, default=os.cpu_count(), help='torch threads for the step')
    parser.add_argument('--out', default=osp.join(REPO, 'bench', 'data', 'results'))
    args = parser.parse_args(argv)

    sys.path.insert(0, osp.join(REPO, 'datasets'))
    import serpent_basicsr  # noqa: F401
    import torch
    torch.set_num_threads(1)  # one per process: the workers are the parallelism
    if not osp.isfile(osp.join(args.data, '.complete.json')):
        import contextlib
        import io
        from make_default_data import build
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            build(args.data)

    base = dict(phase='train', gt_size=args.gt_size, use_hflip=True, use_rot=True, kernel_size=61, sigma=3.0)
    disk = dict(base, dataroot_gt=osp.join(args.data, 'train'), io_backend={'type': 'disk'})
    lmdb = dict(base, dataroot_gt=osp.join(args.data, 'train.lmdb'), io_backend={'type': 'lmdb'})
    configs = [('gaussian 61x61 s3', 'disk', 2, disk), ('gaussian 61x61 s3', 'disk', 0, disk),
               ('gaussian 61x61 s3', 'lmdb', 2, lmdb), ('gaussian 61x61 s3', 'lmdb', 0, lmdb),
               ('gaussian + bicubic x8 (SR)', 'disk', 2, dict(disk, scale=8))]
    runs: List[List[Dict[str, Any]]] = [[] for _ in configs]
    for rnd in range(args.rounds):  # interleaved rounds, so load from other processes hits every row alike
        for i, (name, backend, workers, opt) in enumerate(configs):
            r = loader_throughput(opt, workers, args.batch, args.batches, args.warmup)
            runs[i].append(r)
            print(f'round {rnd + 1}: {name:28s} {backend:5s} workers={workers}: {r["images_per_s"]:.1f} images/s',
                  flush=True)
    loader = []
    for (name, backend, workers, _), rs in zip(configs, runs):
        ips = sorted(r['images_per_s'] for r in rs)
        loader.append({'pipeline': name, 'backend': backend, 'workers': workers,
                       'images_per_s': ips[len(ips) // 2], 'images_per_s_min': ips[0], 'images_per_s_max': ips[-1],
                       'startup_and_warmup_s': sorted(r['startup_and_warmup_s'] for r in rs)[len(rs) // 2],
                       'rounds': rs})
    import cv2
    res = {
        'setting': f'{args.gt_size}px crops, batch {args.batch}, {args.batches} timed batches after {args.warmup}, '
               f'median of {args.rounds} rounds',
        'machine': f'{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the '
                   f'end, torch threads 1 per process, cv2 threads {cv2.getNumThreads()} (1 in workers)',
        'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
        'loader': loader,
        'stages_ms': stage_breakdown(disk, args.stage_reps),
        'train_step': train_step_throughput(args.model, args.model_batch, args.gt_size, args.model_steps,
                                            args.model_threads)
        if args.model else None,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(osp.join(args.out, 'data_throughput.json'), 'w') as f:
        json.dump(res, f, indent=1)
    table = markdown(res)
    with open(osp.join(args.out, 'data_throughput.md'), 'w') as f:
        f.write(table)
    print(table)
    return 0


if __name__ == '__main__':
    sys.exit(main())
