"""Quality report: Serpent (small preset) vs SwinIR-small vs classical Wiener vs the blurred input.

    .venv/bin/python bench/quality/run.py --minutes 5            # small budget (~12 min total)
    .venv/bin/python bench/quality/run.py --models serpent --minutes 5 --lr 1e-3   # one model: a probe
    .venv/bin/python bench/quality/run.py --minutes 60 --patch 96 # bigger setting (documented)

Both networks get the same training batches (GaussianDeblurDataset on datasets/data/default/train:
random crops, 61x61 Gaussian blur with sigma 3.0, generated once per batch index and shared), the
same loss (L1), optimiser (Adam; lr cosine-decayed over each model's own compute budget, or constant)
and seed. They are trained interleaved, one step of
whichever has used less compute so far, so both see the same machine load; each model's clock
counts only its own training steps (forward, backward, optimiser step), not data generation.
A model stops when its clock reaches --minutes. Weights are snapshotted every --snap-every
iterations, which gives two comparisons from one run:
  equal wall-clock: each model's final weights (after --minutes of its own compute);
  equal iterations: both models at the largest snapshot iteration both reached.
Evaluation: the whole validation photos (GaussianDeblurDataset phase val: deterministic blur per
image), BasicSR's PSNR/SSIM (RGB, crop_border 0), plus the classical baseline (Wiener with the
known kernel, oracle-tuned balance: serpent_basicsr.baselines) and the blurred input.
Writes results/quality.json, results/quality.md and results/grid.png (LQ | classical | SwinIR |
Serpent | GT) under --out.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import os.path as osp
import platform
import sys
import time
from typing import Any, Dict, List

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)

import serpent_basicsr  # noqa: E402,F401  (compat fixes + registration before basicsr)

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from basicsr.archs import build_network  # noqa: E402
from basicsr.data import build_dataset  # noqa: E402

from serpent_basicsr import baselines  # noqa: E402
from serpent_basicsr.inference import restore_image  # noqa: E402

SWINIR_SMALL = dict(type='SwinIR', img_size=64, in_chans=3, embed_dim=60, depths=[6] * 4, num_heads=[6] * 4,
                    window_size=8, mlp_ratio=2, upscale=1, upsampler='', resi_connection='1conv')


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--minutes', type=float, default=5.0, help='training compute budget per model (default 5)')
    p.add_argument('--max-iters', type=int, default=None, help='optional cap on iterations per model')
    p.add_argument('--patch', type=int, default=64, help='training crop size (default 64)')
    p.add_argument('--batch', type=int, default=4)
    p.add_argument('--lr', type=float, default=2e-3,
                   help='peak Adam lr for both models (default 2e-3: the better of 1e-3 / 2e-3 for Serpent-s in 5-minute probes)')
    p.add_argument('--schedule', choices=('cosine', 'constant'), default='cosine',
                   help='cosine: lr decays to --eta-min over each model\'s own compute budget (default)')
    p.add_argument('--eta-min', type=float, default=1e-6)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--snap-every', type=int, default=50,
                   help='snapshot interval in iterations (default 50; each snapshot holds a copy of the weights, so 1 can use GBs when one model is much faster)')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--kernel-size', type=int, default=61)
    p.add_argument('--sigma', type=float, default=3.0)
    p.add_argument('--crop-context', action='store_true',
                   help='degrade each training crop with its surroundings (the dataset\'s crop_context: true) '
                        'instead of alone (default)')
    p.add_argument('--train-dir', default=osp.join(ROOT, 'datasets/data/default/train'))
    p.add_argument('--val-dir', default=osp.join(ROOT, 'datasets/data/default/val'))
    p.add_argument('--serpent-net', default="{type: Serpent, preset: serpent_s}", help='network spec (YAML)')
    p.add_argument('--swinir-net', default=None, help='network spec (YAML); default SwinIR-small')
    p.add_argument('--eval-tile', type=int, default=None, help='tile size for evaluation (default whole image)')
    p.add_argument('--models', default='swinir,serpent',
                   help='comma-separated subset of swinir,serpent (default both; one model alone is a probe: '
                        'no equal-wall-clock comparison, no equal-iterations rows)')
    p.add_argument('--self-ensemble', action='store_true',
                   help='also evaluate each model\'s final weights with the x8 flip/rotation self-ensemble '
                        '(extra rows; the targets are checked with and without it)')
    p.add_argument('--grid-images', type=int, default=3)
    p.add_argument('--save-weights', action='store_true',
                   help='also write each model\'s final weights to --out/<model>.pth (to re-evaluate, e.g. tiled)')
    p.add_argument('--out', default=osp.join(ROOT, 'bench/quality/results'))
    return p.parse_args(argv)


def degradation_opt(args) -> Dict[str, Any]:
    return dict(type='GaussianDeblurDataset', kernel_size=args.kernel_size, sigma=args.sigma, noise_std=0.0,
                io_backend={'type': 'disk'}, seed=args.seed)


class SharedBatches:
    """Batch i is generated once (deterministically from seed and i) and kept until both models used it."""

    def __init__(self, args, users: int) -> None:
        for d in (args.train_dir, args.val_dir):
            if not osp.isdir(d):
                raise SystemExit(f'error: data folder not found: {d} (run: python datasets/make_default_data.py)')
        opt = dict(degradation_opt(args), name='train', phase='train', dataroot_gt=args.train_dir,
                   gt_size=args.patch, use_hflip=True, use_rot=True, crop_context=args.crop_context)
        self.ds = build_dataset(opt)
        self.args, self.users, self.cache, self.seconds = args, users, {}, 0.0

    def get(self, i: int):
        if i not in self.cache:
            t0 = time.perf_counter()
            g = torch.Generator().manual_seed(self.args.seed * 1_000_003 + i)
            idx = torch.randint(len(self.ds), (self.args.batch,), generator=g).tolist()
            torch.manual_seed(self.args.seed * 1_000_003 + i)  # the dataset draws crops from torch's RNG
            items = [self.ds[j] for j in idx]
            self.cache[i] = [torch.stack([it['lq'] for it in items]), torch.stack([it['gt'] for it in items]), 0]
            self.seconds += time.perf_counter() - t0
        entry = self.cache[i]
        entry[2] += 1
        if entry[2] == self.users:
            del self.cache[i]
        return entry[0], entry[1]


class Trainee:
    def __init__(self, name: str, spec: Dict[str, Any], args) -> None:
        torch.manual_seed(args.seed)
        self.name, self.spec = name, spec
        self.net = build_network(copy.deepcopy(spec))
        self.params = sum(p.numel() for p in self.net.parameters())
        self.opt = torch.optim.Adam(self.net.parameters(), lr=args.lr, betas=(0.9, 0.99))
        self.iters, self.seconds, self.loss = 0, 0.0, float('nan')
        self.snaps: Dict[int, Dict[str, torch.Tensor]] = {}
        self.snap_seconds: Dict[int, float] = {}

    def set_lr(self, progress: float, args) -> None:
        """Cosine over the model's own progress (fraction of its compute budget or of --max-iters)."""
        lr = args.lr
        if args.schedule == 'cosine':
            lr = args.eta_min + (args.lr - args.eta_min) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        for group in self.opt.param_groups:
            group['lr'] = lr

    def step(self, lq: torch.Tensor, gt: torch.Tensor) -> None:
        self.net.train()
        t0 = time.perf_counter()
        loss = torch.nn.functional.l1_loss(self.net(lq), gt)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.seconds += time.perf_counter() - t0
        self.iters += 1
        self.loss = loss.item()

    def snapshot(self) -> None:
        self.snaps[self.iters] = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        self.snap_seconds[self.iters] = self.seconds


def train(args, trainees: List[Trainee]) -> float:
    batches = SharedBatches(args, len(trainees))
    budget = args.minutes * 60.0
    last_print = time.time()
    for t in trainees:
        t.snapshot()
    while True:
        active = [t for t in trainees if t.seconds < budget and (args.max_iters is None or t.iters < args.max_iters)]
        if not active:
            break
        t = min(active, key=lambda x: x.seconds)
        lq, gt = batches.get(t.iters)
        progress = t.seconds / budget
        if args.max_iters:
            progress = max(progress, t.iters / args.max_iters)
        t.set_lr(progress, args)
        t.step(lq, gt)
        if t.iters % args.snap_every == 0:
            t.snapshot()
            # The equal-iteration point is at most the slowest model's iteration count: older
            # snapshots can go (keeps memory bounded by the models' speed difference).
            floor = min(x.iters for x in trainees) // args.snap_every * args.snap_every
            for x in trainees:
                for it in [i for i in x.snaps if i < floor]:
                    del x.snaps[it]
        if time.time() - last_print > 30:
            last_print = time.time()
            state = [f'{x.name}: iter {x.iters} ({x.seconds:.0f} s, loss {x.loss:.4f})' for x in trainees]
            print('  ' + '  '.join(state), flush=True)
    for t in trainees:
        t.snapshot()  # the final weights (equal wall-clock)
        if args.save_weights:
            path = osp.join(args.out, t.name.lower().replace(' ', '_') + '.pth')
            torch.save({'params': t.snaps[t.iters], 'spec': t.spec, 'iters': t.iters}, path + '.tmp')
            os.replace(path + '.tmp', path)  # never a half-written file
    return batches.seconds


def evaluate(net: torch.nn.Module, pairs, args, self_ensemble: bool = False) -> Dict[str, Any]:
    """restore_image pads each photo to the multiple the net needs (SwinIR: its window size)."""
    t0 = time.perf_counter()
    outs = [restore_image(net, p[1], tile=args.eval_tile, tile_overlap=32, self_ensemble=self_ensemble)
            for p in pairs]
    res = baselines.score(outs, [p[2] for p in pairs])
    res['eval_seconds'] = round(time.perf_counter() - t0, 1)
    return res, outs


def grid(pairs, columns: Dict[str, List[np.ndarray]], path: str, n: int) -> None:
    """Rows: validation images; columns: LQ | classical | SwinIR | Serpent | GT with labels."""
    rows = []
    for i in range(min(n, len(pairs))):
        panels = []
        for label, imgs in columns.items():
            img = baselines.to_uint8_bgr(imgs[i])
            band = np.full((24, img.shape[1], 3), 255, np.uint8)
            cv2.putText(band, label, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
            panels.append(np.concatenate([band, img], axis=0))
            panels.append(np.full((img.shape[0] + 24, 4, 3), 255, np.uint8))
        rows.append(np.concatenate(panels[:-1], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    cv2.imwrite(path, np.concatenate(rows, axis=0), [cv2.IMWRITE_PNG_COMPRESSION, 9])


def markdown(res: Dict[str, Any]) -> str:
    cfg = res['config']
    lines = [f'Validation: {res["val_images"]} photos ({", ".join(res["val_names"])}), Gaussian blur '
             f'{cfg["kernel_size"]}x{cfg["kernel_size"]} sigma {cfg["sigma"]}; '
             'PSNR/SSIM RGB, crop 0 (BasicSR metrics).',
             f'Training: crops {cfg["patch"]}{" (degraded with their context)" if cfg.get("crop_context") else ""}, batch {cfg["batch"]}, L1, Adam lr {cfg["lr"]} '
             f'({cfg.get("schedule", "constant")} over each model\'s budget), '
             f'{cfg["minutes"]} min of training compute per model, {cfg["threads"]} CPU threads, shared machine.', '',
             '| method | params | iterations | train time (s) | PSNR (dB) | SSIM |', '|---|---|---|---|---|---|']
    for r in res['rows']:
        cells = [r['method'], r.get('params', '-'), r.get('iters', '-'), r.get('train_seconds', '-'),
                 f'{r["psnr"]:.2f}', f'{r["ssim"]:.4f}']
        lines.append('| ' + ' | '.join(str(c) for c in cells) + ' |')
    tg = res['targets']
    lines += ['', f'Targets: Serpent >= SwinIR-small at equal wall-clock: {tg.get("serpent_ge_swinir_equal_time", "n/a")}; '
              f'Serpent >= classical + 1 dB: {tg.get("serpent_ge_classical_plus_1db", "n/a")}'
              + (f' (with the x8 self-ensemble: {tg["serpent_self_ensemble_ge_classical_plus_1db"]})'
                 if 'serpent_self_ensemble_ge_classical_plus_1db' in tg else '') + '.']
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    swin_spec = yaml.safe_load(args.swinir_net) if args.swinir_net else dict(SWINIR_SMALL, img_size=args.patch)
    chosen = [m.strip().lower() for m in args.models.split(',') if m.strip()]
    unknown = sorted(set(chosen) - {'swinir', 'serpent'})
    if unknown or not chosen:
        raise SystemExit(f'error: --models: expected a subset of swinir,serpent, got {args.models!r}')
    specs = {name: spec for key, name, spec in (('swinir', 'SwinIR-small', swin_spec),
                                                 ('serpent', 'Serpent', yaml.safe_load(args.serpent_net)))
             if key in chosen}
    trainees = [Trainee(n, s, args) for n, s in specs.items()]
    names = ', '.join(f'{t.name} ({t.params / 1e6:.2f} M params)' for t in trainees)
    print(f'training {names} for {args.minutes} min each', flush=True)
    data_seconds = train(args, trainees)

    val_opt = dict(degradation_opt(args), name='val', phase='val', dataroot_gt=args.val_dir)
    pairs = list(baselines.pairs_from_dataset(val_opt))
    print(f'evaluating on {len(pairs)} validation photos', flush=True)
    classical = baselines.evaluate_baselines(pairs)
    bal = classical['classical']['balance']
    rows = [dict(method='blurred input', **classical['blurred']),
            dict(method=f'classical Wiener (known kernel, balance {bal:g})',
                 **{k: classical['classical'][k] for k in ('psnr', 'ssim')})]
    common = max(set.intersection(*(set(t.snaps) for t in trainees)) - {0} or {0})
    comparisons = [('equal wall-clock', lambda t: t.iters)]
    if len(trainees) > 1:
        comparisons.append(('equal iterations', lambda t: common))
    final_outs, cache = {}, {}
    for label, pick in comparisons:
        for t in trainees:
            it = pick(t)
            if (t.name, it) not in cache:  # the slower model's final weights serve both comparisons
                t.net.load_state_dict(t.snaps[it])
                cache[(t.name, it)] = evaluate(t.net, pairs, args)
            scores, outs = cache[(t.name, it)]
            if label == 'equal wall-clock':
                final_outs[t.name] = outs
            rows.append(dict(method=f'{t.name} ({label})', params=t.params, iters=it,
                             train_seconds=round(t.snap_seconds[it], 1), **scores))
            print(f'  {rows[-1]}', flush=True)
    if args.self_ensemble:
        for t in trainees:
            t.net.load_state_dict(t.snaps[t.iters])
            scores, _ = evaluate(t.net, pairs, args, self_ensemble=True)
            rows.append(dict(method=f'{t.name} (equal wall-clock, x8 self-ensemble)', params=t.params, iters=t.iters,
                             train_seconds=round(t.snap_seconds[t.iters], 1), **scores))
            print(f'  {rows[-1]}', flush=True)
    by = {r['method']: r for r in rows}
    serp, swin = by.get('Serpent (equal wall-clock)'), by.get('SwinIR-small (equal wall-clock)')
    targets = {}
    if serp and swin:
        targets['serpent_ge_swinir_equal_time'] = bool(serp['psnr'] >= swin['psnr'])
    if serp:
        targets['serpent_ge_classical_plus_1db'] = bool(serp['psnr'] >= classical['classical']['psnr'] + 1.0)
    serp_se = by.get('Serpent (equal wall-clock, x8 self-ensemble)')
    if serp_se:
        targets['serpent_self_ensemble_ge_classical_plus_1db'] = bool(
            serp_se['psnr'] >= classical['classical']['psnr'] + 1.0)
    res = dict(
        config=dict(vars(args), serpent_spec=specs.get('Serpent'), swinir_spec=specs.get('SwinIR-small')),
        machine=dict(platform=platform.platform(), torch=torch.__version__, cpu_count=os.cpu_count()),
        data_generation_seconds=round(data_seconds, 1), val_images=len(pairs), val_names=[p[0] for p in pairs],
        rows=rows, targets=targets)
    with open(osp.join(args.out, 'quality.json'), 'w') as f:
        json.dump(res, f, indent=2, default=str)
    md = markdown(res)
    with open(osp.join(args.out, 'quality.md'), 'w') as f:
        f.write(md)
    classical_outs = [baselines.deconvolve(p[1], p[3], 'wiener', balance=bal) for p in pairs]
    columns = {'blurred input': [p[1] for p in pairs], 'classical (Wiener)': classical_outs}
    columns.update(final_outs)  # SwinIR-small, then Serpent (the order of specs)
    columns['ground truth'] = [p[2] for p in pairs]
    grid(pairs, columns, osp.join(args.out, 'grid.png'), args.grid_images)
    print(md)
    print(f'wrote {args.out}/quality.json, quality.md, grid.png')
    return 0


if __name__ == '__main__':
    sys.exit(main())
