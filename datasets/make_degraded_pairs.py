#!/usr/bin/env python
"""Write fixed degraded LQ/GT pairs from a folder of GT images, for reproducible evaluation with
BasicSR's PairedImageDataset (dataroot_lq: OUT/lq, dataroot_gt: OUT/gt) or any other tool.

The degradation is exactly the one DegradationDataset applies in phase val/test with the same
options and --seed (the randomness depends only on the seed and the image name), with the GT
cropped at the bottom/right to a multiple of --scale (and --size-multiple). Outputs:
  OUT/gt/<name>.png, OUT/lq/<name>.png  8-bit PNG (or 16-bit with --bit-depth 16), same names
  OUT/degradation.json                  settings, and per image the drawn parameters and sizes
  OUT/kernels.npz                       the blur kernel of every image (array name = image name)
Everything is written to a temporary sibling folder and renamed to OUT at the end, so OUT is
never half-written. An existing OUT is an error unless --overwrite.

Example (the paper's Gaussian deblurring, 61x61, sigma 3):
  python datasets/make_degraded_pairs.py datasets/data/default/val datasets/data/default_val_pairs
8x super-resolution:  ... --scale 8
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import shutil
import sys
from typing import Any, Dict

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from folder_to_lmdb import built_atomically  # noqa: E402


def _write(path: str, img, bit_depth: int) -> None:
    """float32 BGR HWC in [0, 1] -> PNG."""
    import cv2
    import numpy as np
    top = 65535 if bit_depth == 16 else 255
    img = np.clip(np.rint(img * top), 0, top).astype(np.uint16 if bit_depth == 16 else np.uint8)
    os.makedirs(osp.dirname(path), exist_ok=True)
    if not cv2.imwrite(path, img):
        raise OSError(f'{path}: cannot write')


def make_pairs(gt_folder: str, out: str, options: Dict[str, Any], seed: int = 0, bit_depth: int = 8,
               overwrite: bool = False, recursive: bool = False) -> Dict[str, Any]:
    """Degrade every image of `gt_folder` into `out`; returns the json record."""
    import numpy as np
    from serpent_basicsr.data.degradations import describe
    from serpent_basicsr.data.gaussian_deblur_dataset import DegradationDataset

    out = osp.abspath(out.rstrip('/'))
    if osp.exists(out) and not overwrite:
        raise FileExistsError(f'output exists: {out} (pass --overwrite to replace it)')
    opt = dict(options, phase='test', dataroot_gt=gt_folder, io_backend={'type': 'disk'}, seed=seed,
               recursive=recursive)
    dataset = DegradationDataset(opt)  # checks every option and the folder
    parent = osp.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = osp.join(parent, f'.{osp.basename(out)}.tmp-{os.getpid()}')
    shutil.rmtree(tmp, ignore_errors=True)
    record: Dict[str, Any] = {
        'source': osp.abspath(gt_folder), 'seed': seed, 'bit_depth': bit_depth,
        'size_multiple': dataset.multiple, 'degradation': describe(dataset.degradation.cfg),
        'border': 'BORDER_REFLECT_101 (true convolution)', 'images': {}}
    kernels = {}
    with built_atomically(tmp, out):
        for i in range(len(dataset)):  # the same steps as DegradationDataset.__getitem__ (phase test)
            key, name = dataset.keys[i], f'{dataset.keys[i]}.png'
            rng = dataset.rng_for(i)
            gt = dataset.crop_and_augment(dataset.load_gt(i), rng, dataset.paths[i])
            deg = dataset.degradation(gt, rng)
            _write(osp.join(tmp, 'gt', name), gt, bit_depth)
            _write(osp.join(tmp, 'lq', name), deg.lq, bit_depth)
            record['images'][name] = dict(deg.params, gt_size=list(gt.shape[:2]), lq_size=list(deg.lq.shape[:2]))
            kernels[key.replace('/', '__')] = deg.kernel.astype(np.float32)
        np.savez_compressed(osp.join(tmp, 'kernels.npz'), **kernels)
        with open(osp.join(tmp, 'degradation.json'), 'w') as f:
            json.dump(record, f, indent=1)
    return record


def _number_or_range(text: str):
    parts = [float(p) for p in text.replace(',', ' ').split()]
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f'expected a number or "min,max", got {text!r}')
    return parts[0] if len(parts) == 1 else parts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog='\n\n'.join(__doc__.split('\n\n')[1:]))
    parser.add_argument('gt_folder', help='folder of clean images')
    parser.add_argument('out', help='output folder (gets lq/, gt/, degradation.json, kernels.npz)')
    parser.add_argument('--seed', type=int, default=0, help='seed (default %(default)s)')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing output folder')
    parser.add_argument('--recursive', action='store_true', help='include sub-folders')
    parser.add_argument('--bit-depth', type=int, choices=(8, 16), default=8, help='PNG bit depth (default 8)')
    parser.add_argument('--size-multiple', type=int, help='also crop GT to a multiple of this (default 1)')
    g = parser.add_argument_group('degradation (defaults as in the datasets: Gaussian 61x61, sigma 3)')
    g.add_argument('--blur', choices=('gaussian', 'motion', 'none'))
    g.add_argument('--kernel-size', type=int, help='odd kernel size (default 61)')
    g.add_argument('--sigma', type=_number_or_range, help='Gaussian sigma or "min,max" (default 3.0)')
    g.add_argument('--kernel-type', choices=('isotropic', 'anisotropic'))
    g.add_argument('--sigma-y', type=_number_or_range, help='anisotropic second sigma (default: --sigma)')
    g.add_argument('--theta', type=_number_or_range, help='anisotropic rotation, radians (default "-pi,pi")')
    g.add_argument('--motion-length', type=_number_or_range, help='motion path length in pixels (default "10,30")')
    g.add_argument('--motion-curvature', type=float, help='motion path bending, radians (default 0.5)')
    g.add_argument('--noise-std', type=_number_or_range, help='Gaussian noise std in 8-bit levels (default 0)')
    g.add_argument('--jpeg-quality', type=_number_or_range, help='JPEG quality or "min,max" (default: no JPEG)')
    g.add_argument('--scale', type=int, help='bicubic downscale factor (default 1)')
    g.add_argument('--resize', choices=('matlab', 'cv2'), help='bicubic flavour (default matlab)')
    args = parser.parse_args(argv)
    names = ('blur', 'kernel_size', 'sigma', 'kernel_type', 'sigma_y', 'theta', 'motion_length', 'motion_curvature',
             'noise_std', 'jpeg_quality', 'scale', 'resize', 'size_multiple')
    options = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    try:
        import serpent_basicsr  # noqa: F401  (basicsr 1.4.2 needs the compat fix before import)
        record = make_pairs(args.gt_folder, args.out, options, args.seed, args.bit_depth, args.overwrite,
                            args.recursive)
    except (ValueError, KeyError, OSError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    print(f"wrote {len(record['images'])} LQ/GT pairs to {args.out}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
