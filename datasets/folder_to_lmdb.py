#!/usr/bin/env python
"""Pack a folder of images into an LMDB with meta_info.txt (basicsr.utils.lmdb_util format).

Uses basicsr's make_lmdb_from_imgs, with three fixes around it:
- every image is decoded first, so a corrupt file stops the run before anything is written and
  the error names it; the sizes read there give map_size (basicsr guesses it from the first
  image only, which fails for folders of mixed sizes);
- the LMDB is written to a hidden temporary sibling (`.<name>.tmp-<pid>.lmdb`) and renamed into
  place only when complete and verified, so the target is never half-written (on failure the
  temporary folder is removed; basicsr itself exits the process if the target exists);
- keys are the paths relative to the folder without extension: a key with a dot, space or
  non-ASCII character is an error naming the file (basicsr cuts keys at the first dot).

Images are stored losslessly as PNG (16-bit and alpha are kept as they are); the datasets
decode them exactly as from the folder.

Example: python datasets/folder_to_lmdb.py datasets/data/ffhq256 datasets/data/ffhq256.lmdb
"""
from __future__ import annotations

import argparse
import contextlib
import os
import os.path as osp
import shutil
import sys
from typing import Iterator, List, Tuple

IMG_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')


def list_images(folder: str, recursive: bool = False) -> List[str]:
    """Image paths relative to `folder`, sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [osp.relpath(osp.join(root, f), folder) for f in files if f.lower().endswith(IMG_EXTENSIONS)]
        if not recursive:
            break
    return sorted(found)


def image_key(rel_path: str) -> str:
    key = osp.splitext(rel_path)[0].replace(os.sep, '/')
    if '.' in key or any(c.isspace() for c in key) or not key.isascii():
        raise ValueError(f'{rel_path}: LMDB keys (file names without extension) may not contain dots, spaces '
                         'or non-ASCII characters; rename the file')
    return key


def scan(folder: str, rel_paths: List[str]) -> int:
    """Decode every image (naming any that fails) and return the total raw size in bytes."""
    import cv2
    total = 0
    for rel in rel_paths:
        img = cv2.imread(osp.join(folder, rel), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError(f'{osp.join(folder, rel)}: cannot decode image (corrupt or not an image)')
        total += img.nbytes
    return total


def _remove_stale_temps(lmdb_path: str) -> None:
    """Temporary folders left by a killed run (its pid no longer alive)."""
    parent, name = osp.split(osp.abspath(lmdb_path))
    prefix = f'.{name}.tmp-'
    for entry in os.listdir(parent):
        if entry.startswith(prefix) and entry.endswith('.lmdb'):
            pid = entry[len(prefix):-len('.lmdb')]
            alive = pid.isdigit() and osp.exists(f'/proc/{pid}')
            if not alive:
                shutil.rmtree(osp.join(parent, entry), ignore_errors=True)


def folder_to_lmdb(folder: str, lmdb_path: str, overwrite: bool = False, compress_level: int = 1,
                   recursive: bool = False) -> Tuple[int, str]:
    """Write `folder`'s images to `lmdb_path` atomically; returns (number of images, lmdb_path)."""
    lmdb_path = lmdb_path.rstrip('/')
    if not osp.isdir(folder):
        raise FileNotFoundError(f'input folder not found: {folder}')
    if not lmdb_path.endswith('.lmdb'):
        raise ValueError(f'output must end with .lmdb (basicsr convention): {lmdb_path}')
    if osp.exists(lmdb_path) and not overwrite:
        raise FileExistsError(f'output exists: {lmdb_path} (pass --overwrite to replace it)')
    rel_paths = list_images(folder, recursive)
    if not rel_paths:
        raise ValueError(f'no images ({", ".join(IMG_EXTENSIONS)}) in {folder}')
    keys = [image_key(p) for p in rel_paths]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})[0]
        raise ValueError(f'{folder}: two files share the key {dup!r} (same name, different extension)')
    map_size = int(scan(folder, rel_paths) * 1.5) + (64 << 20)  # PNG <= raw + headers; LMDB pages

    import lmdb
    import serpent_basicsr  # noqa: F401  (basicsr 1.4.2 needs its compat fix; slow: after the checks)
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs

    parent = osp.dirname(osp.abspath(lmdb_path))
    os.makedirs(parent, exist_ok=True)
    _remove_stale_temps(lmdb_path)
    tmp = osp.join(parent, f'.{osp.basename(lmdb_path)}.tmp-{os.getpid()}.lmdb')
    shutil.rmtree(tmp, ignore_errors=True)
    with built_atomically(tmp, lmdb_path):  # also on SystemExit from basicsr and KeyboardInterrupt
        make_lmdb_from_imgs(folder, tmp, rel_paths, keys, compress_level=compress_level, map_size=map_size)
        env = lmdb.open(tmp, readonly=True, lock=False)
        count = env.stat()['entries']
        env.close()
        if count != len(keys):
            raise RuntimeError(f'{lmdb_path}: wrote {count} entries, expected {len(keys)}')
    return len(keys), lmdb_path


def swap_into_place(tmp: str, out: str) -> None:
    """Move the finished folder `tmp` to `out`; an existing `out` is replaced only once `tmp` is
    complete (renamed aside first, then removed), so `out` is never half-written."""
    if osp.exists(out):
        trash = f'{tmp}.old'
        os.rename(out, trash)
        os.rename(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, out)


@contextlib.contextmanager
def built_atomically(tmp: str, out: str) -> Iterator[None]:
    """Run the body that fills the folder `tmp`; then swap it into `out`. On any failure
    (KeyboardInterrupt and basicsr's sys.exit included) `tmp` is removed and `out` is untouched."""
    try:
        yield
        swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog='\n\n'.join(__doc__.split('\n\n')[1:]))
    parser.add_argument('folder', help='folder of images (png, jpg, bmp, tif, webp, ...)')
    parser.add_argument('lmdb', help='output path, must end with .lmdb')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing output (swapped in at the end)')
    parser.add_argument('--recursive', action='store_true', help='include sub-folders (keys keep the sub-path)')
    parser.add_argument('--compress-level', type=int, default=1, choices=range(0, 10), metavar='0-9',
                        help='PNG compression level inside the LMDB (default 1: fast, lossless anyway)')
    args = parser.parse_args(argv)
    try:
        n, path = folder_to_lmdb(args.folder, args.lmdb, args.overwrite, args.compress_level, args.recursive)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    print(f'wrote {n} images to {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
