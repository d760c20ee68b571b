"""End-of-training summary: blurred input vs classical deconvolution vs the trained network.

    python -m serpent_basicsr.report --exp experiments/serpent_deblur [--rerun] [--val-dir DIR] [--json out.json]

Reads the option file BasicSR copied into the experiment folder; evaluates the blurred input
and the classical Wiener baseline (serpent_basicsr.baselines) on that option's validation
set with the same degradation and metric settings; takes the network's numbers from the
last validation in the training log (or, with --rerun, runs models/net_g_latest.pth on the
same pairs); prints a table and where the TensorBoard logs, images and checkpoints are.
"""
from __future__ import annotations

import argparse
import glob
import json
import os.path as osp
import re
import sys
from typing import Any, Dict, Optional, Sequence, Tuple

from serpent_basicsr import baselines

_BLOCK = re.compile(r'Validation (\S+)\n((?:\s*# \w+: \S+.*\n?)+)')
_LINE = re.compile(r'# (\w+): (\S+)')


def find_option_file(exp_dir: str) -> str:
    files = sorted(glob.glob(osp.join(exp_dir, '*.yml')), key=osp.getmtime)
    if not files:
        raise FileNotFoundError(f'no option file (*.yml) in experiment folder {exp_dir}')
    return files[-1]


def last_validation(exp_dir: str, dataset: Optional[str] = None) -> Tuple[Dict[str, float], str]:
    """Metrics of the last 'Validation <dataset>' block in the newest train_*.log."""
    logs = sorted(glob.glob(osp.join(exp_dir, 'train_*.log')))
    if not logs:
        raise FileNotFoundError(f'no training log (train_*.log) in {exp_dir}')
    for log in reversed(logs):
        with open(log, errors='replace') as f:
            blocks = [m for m in _BLOCK.finditer(f.read()) if dataset is None or m.group(1) == dataset]
        if blocks:
            return {k: float(v) for k, v in _LINE.findall(blocks[-1].group(2))}, log
    raise ValueError(f'no validation results for {dataset or "any dataset"} in {", ".join(logs)}')


def _val_dataset_opt(opt: Dict[str, Any], path: str) -> Dict[str, Any]:
    for phase, dopt in (opt.get('datasets') or {}).items():
        if phase.split('_')[0] in ('val', 'test'):
            return dopt
    raise ValueError(f'option file {path} has no datasets.val')


def summarize(exp_dir: str, val_dir: Optional[str] = None, rerun: bool = False) -> Dict[str, Any]:
    import yaml

    if not osp.isdir(exp_dir):
        raise FileNotFoundError(f'experiment folder not found: {exp_dir}')
    opt_path = find_option_file(exp_dir)
    with open(opt_path) as f:
        opt = yaml.safe_load(f)
    dopt = _val_dataset_opt(opt, opt_path)
    metrics = {k: v for k, v in ((opt.get('val') or {}).get('metrics') or baselines.DEFAULT_METRICS).items()
               if v.get('type') not in ('calculate_lpips', 'lpips')}
    try:
        kernel = baselines.kernel_from_dataset_opt(dopt)
    except ValueError:  # a sampled sigma: the dataset reports each item's kernel instead
        kernel = None
    if val_dir and dopt.get('type') in ('GaussianDeblurDataset', 'DegradationDataset'):
        dopt = dict(dopt, dataroot_gt=val_dir, io_backend={'type': 'disk'}, meta_info_file=None)
        val_dir = None
    if val_dir:  # another dataset type: blur the folder with the known kernel ourselves
        if kernel is None:
            raise ValueError('--val-dir needs one known kernel (kernel_size/sigma) in the val dataset options')
        pairs = list(baselines.pairs_from_folder(val_dir, kernel))
    else:
        pairs = list(baselines.pairs_from_dataset(dopt))
    rows = baselines.evaluate_baselines(pairs, kernel, metrics)
    name = opt.get('name', osp.basename(osp.normpath(exp_dir)))
    if rerun:
        from serpent_basicsr.inference import build_net, load_weights, restore_image
        ckpt = osp.join(exp_dir, 'models', 'net_g_latest.pth')
        net = build_net(opt['network_g'])
        load_weights(net, ckpt)
        outs = [restore_image(net, p[1]) for p in pairs]
        rows['network'] = dict(baselines.score(outs, [p[2] for p in pairs], metrics), source=ckpt)
    else:
        vals, log = last_validation(exp_dir, dopt.get('name'))
        rows['network'] = dict({k: v for k, v in vals.items() if k in metrics}, source=log)
    root = osp.dirname(osp.dirname(osp.abspath(exp_dir)))
    return dict(
        name=name, network=(opt.get('network_g') or {}).get('type', '?'), images=len(pairs), metrics=list(metrics),
        rows=rows, paths=dict(tensorboard=osp.join(root, 'tb_logger', name), experiment=osp.abspath(exp_dir),
                              images=osp.join(osp.abspath(exp_dir), 'visualization'),
                              checkpoints=osp.join(osp.abspath(exp_dir), 'models')))


def format_summary(s: Dict[str, Any]) -> str:
    names = s['metrics']
    balance = s['rows']['classical']['balance']
    labels = {'blurred': 'blurred input', 'classical': f'classical (Wiener, balance {balance:g})',
              'network': f'trained {s["network"]}'}
    lines = [f'Validation on {s["images"]} images ({s["name"]}):',
             '| ' + ' | '.join(['method'] + names) + ' |', '|' + '---|' * (len(names) + 1)]
    for key in ('blurred', 'classical', 'network'):
        row = s['rows'][key]
        lines.append('| ' + ' | '.join([labels[key]] + [f'{row[m]:.4f}' if m in row else 'n/a' for m in names]) + ' |')
    lines.append(f'network numbers from: {s["rows"]["network"]["source"]}')
    lines.append(f'TensorBoard: tensorboard --logdir {s["paths"]["tensorboard"]}')
    lines.append(f'Validation images: {s["paths"]["images"]}   checkpoints: {s["paths"]["checkpoints"]}')
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog='python -m serpent_basicsr.report', description=__doc__.split('\n\n')[0])
    p.add_argument('--exp', required=True, help='experiment folder, e.g. experiments/serpent_deblur')
    p.add_argument('--val-dir', help='folder of sharp photos, degraded like the val set (default: the val set)')
    p.add_argument('--rerun', action='store_true', help='run net_g_latest.pth instead of reading the log')
    p.add_argument('--json', help='also write the summary here')
    args = p.parse_args(argv)
    try:
        s = summarize(args.exp, args.val_dir, args.rerun)
    except (OSError, ValueError, KeyError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(format_summary(s))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(s, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
