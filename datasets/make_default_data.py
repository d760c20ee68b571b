#!/usr/bin/env python
"""Build the embedded default data set from real photographs bundled with our dependencies.

No network is needed: the photos are files inside the installed scikit-image (skimage/data) and
matplotlib (grace_hopper.jpg) packages; nothing is fetched (pooch-downloaded skimage images are
not used). Train and validation use different photos:
- train: astronaut, rocket, motorcycle_left, motorcycle_right (a stereo pair: both in train, so no
  near-duplicate crosses the split), hubble_deep_field, immunohistochemistry (ihc), retina;
  each is shrunk (INTER_AREA) so its shorter side is at most --train-short-side, then cut into
  overlapping --sub-size tiles every --sub-step pixels (the last tile touches the far edge), so a
  batch of 8 fits in one epoch and any gt_size <= --sub-size can be cropped;
- val: chelsea, coffee, grace_hopper (a face, as in FFHQ); centre square crop resized to
  --val-size (256: the paper's FFHQ-256 setting, and quick to validate on a CPU).

Writes (default --out datasets/data/default): train/*.png, val/*.png, train.lmdb, val.lmdb
(with meta_info.txt) and .complete.json. Idempotent: a complete build with the same settings is
skipped; anything else (missing, partial, other settings, --force) is rebuilt in a temporary
sibling folder and renamed into place, so the output is never half-written.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import shutil
import sys
from typing import Dict, List, Optional

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, HERE)
from folder_to_lmdb import built_atomically, folder_to_lmdb  # noqa: E402

FORMAT_VERSION = 1
TRAIN_PHOTOS = {  # name -> file inside skimage/data
    'astronaut': 'astronaut.png', 'rocket': 'rocket.jpg', 'motorcycle_left': 'motorcycle_left.png',
    'motorcycle_right': 'motorcycle_right.png', 'hubble_deep_field': 'hubble_deep_field.jpg',
    'immunohistochemistry': 'ihc.png', 'retina': 'retina.jpg',
}
VAL_PHOTOS = {'chelsea': 'chelsea.png', 'coffee': 'coffee.png', 'grace_hopper': None}  # None: matplotlib


def photo_path(file: Optional[str]) -> Optional[str]:
    """Path of a bundled photo, or None if the package or file is absent."""
    if file is None:
        try:
            import matplotlib
        except ImportError:
            return None
        path = osp.join(matplotlib.get_data_path(), 'sample_data', 'grace_hopper.jpg')
    else:
        import skimage.data
        path = osp.join(osp.dirname(skimage.data.__file__), file)
    return path if osp.isfile(path) else None


def read_photo(path: str):
    import cv2
    img = cv2.imread(path, cv2.IMREAD_COLOR)  # BGR uint8
    if img is None:
        raise ValueError(f'{path}: cannot decode bundled photo')
    return img


def shrink(img, short_side: int):
    import cv2
    h, w = img.shape[:2]
    if short_side <= 0 or min(h, w) <= short_side:
        return img
    f = short_side / min(h, w)
    return cv2.resize(img, (max(short_side, round(w * f)), max(short_side, round(h * f))), interpolation=cv2.INTER_AREA)


def tile_starts(length: int, size: int, step: int) -> List[int]:
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, step))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def make_train(out: str, short_side: int, sub_size: int, sub_step: int) -> List[str]:
    import cv2
    os.makedirs(out)
    names = []
    for name, file in TRAIN_PHOTOS.items():
        path = photo_path(file)
        if path is None:
            print(f'skipping {name}: not bundled in this scikit-image', file=sys.stderr)
            continue
        img = shrink(read_photo(path), short_side)
        h, w = img.shape[:2]
        if sub_size <= 0 or min(h, w) < sub_size:
            tiles = {name: img}
        else:
            tiles = {f'{name}_s{i:02d}': img[y:y + sub_size, x:x + sub_size]
                     for i, (y, x) in enumerate((y, x) for y in tile_starts(h, sub_size, sub_step)
                                                for x in tile_starts(w, sub_size, sub_step))}
        for tile_name, tile in tiles.items():
            cv2.imwrite(osp.join(out, f'{tile_name}.png'), tile)
            names.append(f'{tile_name}.png')
    return names


def make_val(out: str, size: int) -> List[str]:
    import cv2
    os.makedirs(out)
    names = []
    for name, file in VAL_PHOTOS.items():
        path = photo_path(file)
        if path is None:
            print(f'skipping {name}: not bundled', file=sys.stderr)
            continue
        img = read_photo(path)
        if size > 0:
            h, w = img.shape[:2]
            s = min(h, w)
            top, left = (h - s) // 2, (w - s) // 2
            img = cv2.resize(img[top:top + s, left:left + s], (size, size), interpolation=cv2.INTER_AREA)
        cv2.imwrite(osp.join(out, f'{name}.png'), img)
        names.append(f'{name}.png')
    return names


def is_complete(out: str, settings: Dict) -> bool:
    marker = osp.join(out, '.complete.json')
    if not osp.isfile(marker):
        return False
    try:
        with open(marker) as f:
            done = json.load(f)
    except (OSError, ValueError):
        return False
    if done.get('settings') != settings:
        return False
    for split in ('train', 'val'):
        files = done.get('files', {}).get(split) or []
        if not files or not all(osp.isfile(osp.join(out, split, n)) for n in files):
            return False
        for part in ('data.mdb', 'meta_info.txt'):
            if not osp.isfile(osp.join(out, f'{split}.lmdb', part)):
                return False
    return True


def _settings(short_side: int, sub_size: int, sub_step: int, val_size: int) -> Dict:
    return {'version': FORMAT_VERSION, 'train_short_side': short_side, 'sub_size': sub_size,
            'sub_step': sub_step, 'val_size': val_size}


def existing(out: str, short_side: int = 512, sub_size: int = 384, sub_step: int = 256,
             val_size: int = 256) -> Optional[Dict]:
    """The completion record of a complete build with these settings, else None."""
    if not is_complete(osp.abspath(out), _settings(short_side, sub_size, sub_step, val_size)):
        return None
    with open(osp.join(osp.abspath(out), '.complete.json')) as f:
        return json.load(f)


def build(out: str, short_side: int = 512, sub_size: int = 384, sub_step: int = 256, val_size: int = 256,
          force: bool = False) -> Dict:
    """Build (or keep) the default data set at `out`; returns the completion record."""
    settings = _settings(short_side, sub_size, sub_step, val_size)
    out = osp.abspath(out)
    if not force and is_complete(out, settings):
        return existing(out, short_side, sub_size, sub_step, val_size)
    parent = osp.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = osp.join(parent, f'.{osp.basename(out)}.tmp-{os.getpid()}')
    shutil.rmtree(tmp, ignore_errors=True)
    with built_atomically(tmp, out):
        files = {'train': make_train(osp.join(tmp, 'train'), short_side, sub_size, sub_step),
                 'val': make_val(osp.join(tmp, 'val'), val_size)}
        for split in ('train', 'val'):
            if not files[split]:
                raise RuntimeError(f'no bundled photos found for {split} (is scikit-image installed?)')
            folder_to_lmdb(osp.join(tmp, split), osp.join(tmp, f'{split}.lmdb'))
        record = {'settings': settings, 'files': files}
        with open(osp.join(tmp, '.complete.json'), 'w') as f:
            json.dump(record, f, indent=1)
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog='\n\n'.join(__doc__.split('\n\n')[1:]))
    parser.add_argument('--out', default=osp.join(HERE, 'data', 'default'), help='output folder (default: %(default)s)')
    parser.add_argument('--train-short-side', type=int, default=512,
                        help='shrink train photos so the shorter side is at most this (0: keep; default %(default)s)')
    parser.add_argument('--sub-size', type=int, default=384,
                        help='train tile size (0: whole photos; default %(default)s)')
    parser.add_argument('--sub-step', type=int, default=256, help='train tile step (default %(default)s)')
    parser.add_argument('--val-size', type=int, default=256,
                        help='val: centre square crop resized to this (0: whole photo; default %(default)s)')
    parser.add_argument('--force', action='store_true', help='rebuild even if complete')
    args = parser.parse_args(argv)
    if args.sub_size > 0 and args.sub_step <= 0:
        parser.error('--sub-step must be positive')
    settings = (args.train_short_side, args.sub_size, args.sub_step, args.val_size)
    record = None if args.force else existing(args.out, *settings)
    if record is None:  # only now import torch/basicsr (slow)
        import contextlib
        import io
        import serpent_basicsr  # noqa: F401  (basicsr 1.4.2 needs the compat fix before import)
        log = io.StringIO()
        try:  # basicsr's LMDB writer prints a line and a progress bar per image
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                record = build(args.out, *settings, force=args.force)
        except Exception as exc:
            print(log.getvalue()[-2000:], file=sys.stderr)
            print(f'error: {exc}', file=sys.stderr)
            return 2
    print(f"default data at {args.out}: {len(record['files']['train'])} train and "
          f"{len(record['files']['val'])} val images (folders and .lmdb)")
    return 0


if __name__ == '__main__':
    sys.exit(main())
