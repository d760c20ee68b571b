"""Datasets that read clean (GT) images and degrade them on the fly: `DegradationDataset` and its
Gaussian-deblurring default `GaussianDeblurDataset` (the paper's FFHQ setting: 61x61 kernel,
sigma 3.0). Both are in BasicSR's DATASET_REGISTRY (`type: GaussianDeblurDataset`).

Reading (documented behaviour, checked by tests/test_data_*.py):
- GT comes from a folder (`io_backend: {type: disk}`; optional `meta_info_file` listing file
  names relative to `dataroot_gt`) or an LMDB made by basicsr's lmdb_util / datasets/folder_to_lmdb.py
  (`io_backend: {type: lmdb}`; keys from `meta_info_file` or `<dataroot_gt>/meta_info.txt`, all
  checked against the database once, at construction). Both go through basicsr's FileClient.
- Every image is decoded unchanged and converted to 3-channel float32 in [0, 1]: grayscale is
  replicated to 3 channels, an alpha channel is dropped (not composited), 8-bit is divided by 255
  and 16-bit by 65535. Output tensors are RGB CHW (basicsr's img2tensor with bgr2rgb).
- phase `train` (BasicSR sets `phase` from the datasets key): a random `gt_size` crop, optional
  flips/rotations, and a random degradation. By default the crop is degraded alone (reflect
  borders at all four crop edges: with 64 px crops and a 61x61 kernel about half its pixels see
  them). With `crop_context: true` the crop is degraded together with its surroundings (the blur
  kernel's radius plus the bicubic support, fewer where the photo ends) and then cut out, so a
  training LQ is exactly the window of the whole photo degraded (reflect borders only at the
  photo's own edges, as in validation); the crop then starts on the photo's scale grid.
  Phase `val`/`test`: the whole image, cropped at the
  bottom/right to a multiple of `scale` (and of `size_multiple`), BasicSR's own convention, and a
  degradation that depends only on (`seed`, image key), so metrics repeat across runs, processes,
  backends and orderings.
- An image's key is its path relative to `dataroot_gt` without extension (disk) or its LMDB key;
  datasets/folder_to_lmdb.py uses the same keys, so both backends give identical items.
- LQ = the pipeline of degradations.py on the GT crop (or its context, see above): blur (true
  convolution, reflect-101 borders) -> bicubic downsampling by `scale` -> Gaussian noise -> JPEG;
  `kernel` is the one used.
- Inside DataLoader workers OpenCV is set to one thread (the workers are the parallelism).
- Randomness: one numpy Generator per item. In training it is seeded from torch's RNG, which
  BasicSR seeds from `manual_seed` and DataLoader workers re-seed per worker, so workers never
  repeat each other's crops (the numpy global state would be copied into every worker).
"""
from __future__ import annotations

import math
import os
import os.path as osp
import zlib
from typing import Any, Dict, List, Mapping, Optional, Tuple

import cv2
import numpy as np
import torch
from torch.utils import data
from torchvision.transforms.functional import normalize

from basicsr.utils import FileClient, img2tensor, scandir
from basicsr.utils.registry import DATASET_REGISTRY

from .degradations import Degradation

IMG_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')
PHASES = ('train', 'val', 'test')


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def to_rgb_float(img: Optional[np.ndarray], name: str) -> np.ndarray:
    """A decoded image (any of gray, gray+alpha, BGR, BGRA; 8 or 16 bit) as float32 BGR in [0, 1]."""
    if img is None or img.size == 0:
        raise ValueError(f'{name}: cannot decode image (corrupt or not an image)')
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    elif img.dtype == np.uint16:
        img = img.astype(np.float32) / 65535.0
    else:
        raise ValueError(f'{name}: unsupported pixel type {img.dtype} (expected 8- or 16-bit)')
    if img.ndim == 2:
        img = img[:, :, None]
    channels = img.shape[2]
    if channels in (1, 2):  # gray (+ alpha)
        img = np.repeat(img[:, :, :1], 3, axis=2)
    elif channels == 4:  # BGRA: alpha dropped
        img = img[:, :, :3]
    elif channels != 3:
        raise ValueError(f'{name}: unsupported number of channels {channels}')
    return np.ascontiguousarray(img)


def decode_image(content: Optional[bytes], name: str) -> np.ndarray:
    """Bytes from a FileClient -> float32 BGR HWC in [0, 1]; errors name the file or key."""
    if content is None:
        raise KeyError(f'{name}: not found in the LMDB')
    buf = np.frombuffer(content, np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    return to_rgb_float(img, name)


def read_meta_names(meta_info: str) -> List[str]:
    """File names from a basicsr meta_info file: the first token of each line."""
    if not osp.isfile(meta_info):
        raise FileNotFoundError(f'meta_info_file: no such file: {meta_info}')
    with open(meta_info) as f:
        return [line.split()[0] for line in f if line.strip()]


def read_lmdb_keys(meta_info: str) -> List[str]:
    """LMDB keys: meta_info names without their extension (basicsr's lmdb_util convention)."""
    return [osp.splitext(n)[0] for n in read_meta_names(meta_info)]


def read_meta_shapes(meta_info: str) -> Dict[str, Tuple[int, ...]]:
    """{key: (h, w, c)} for the lines of a basicsr meta_info that carry a shape like `(h,w,c)`."""
    shapes = {}
    with open(meta_info) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[1].startswith('(') and parts[1].endswith(')'):
                try:
                    shapes[osp.splitext(parts[0])[0]] = tuple(int(v) for v in parts[1][1:-1].split(','))
                except ValueError:
                    pass
    return shapes


# One LMDB FileClient per database per process. py-lmdb (>= 3.0) refuses to open an environment
# that is already open in the process, which happens with two datasets on one LMDB (train and
# val subsets via meta_info) and in forked DataLoader workers, which inherit the parent's open
# environments. A child closes its inherited copy first: with readonly and lock=False that only
# unmaps the child's view and closes the child's descriptors; the parent's stays valid.
_LMDB_CLIENTS: Dict[str, Tuple[int, FileClient]] = {}


def lmdb_client(root: str) -> FileClient:
    """The process's FileClient for the LMDB at `root` (client key 'gt')."""
    key, pid = osp.realpath(root), os.getpid()
    entry = _LMDB_CLIENTS.get(key)
    if entry is not None and entry[0] == pid:
        return entry[1]
    if entry is not None:  # inherited through fork
        for env in entry[1].client._client.values():  # basicsr 1.4.2 LmdbBackend: {client_key: env}
            env.close()
    client = FileClient('lmdb', db_paths=[root], client_keys=['gt'], readonly=True, lock=False, readahead=False)
    _LMDB_CLIENTS[key] = (pid, client)
    return client


def check_lmdb(root: str, keys: List[str], meta_info: str) -> None:
    """Fail at construction if the LMDB lacks any key listed in meta_info."""
    env = lmdb_client(root).client._client['gt']
    with env.begin(write=False) as txn:
        stored = {k.decode('ascii', 'replace') for k in txn.cursor().iternext(keys=True, values=False)}
    missing = [k for k in keys if k not in stored]
    if missing:
        shown = ', '.join(missing[:5]) + (' ...' if len(missing) > 5 else '')
        raise ValueError(f'meta_info_file {meta_info}: {len(missing)} of {len(keys)} keys are not in the LMDB '
                         f'{root}: {shown}')


def _positive_int(opt: Mapping[str, Any], key: str, default: Any = None) -> int:
    value = opt.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f'{key}: expected a positive integer, got {value!r}')
    return int(value)


@DATASET_REGISTRY.register()
class DegradationDataset(data.Dataset):
    """GT images from a folder or LMDB, degraded on the fly by serpent_basicsr.data.degradations.

    Options: dataroot_gt, io_backend, meta_info_file, phase, gt_size, use_hflip, use_rot, crop_context, seed,
    size_multiple, mean, std, color, plus every degradation option (blur, kernel_size, sigma,
    kernel_type, sigma_y, theta, motion_length, motion_curvature, noise_std, jpeg_quality, scale,
    resize). See the module docstring and the README's options table.
    Items: {'lq', 'gt': float32 RGB CHW tensors, 'lq_path', 'gt_path': the file path (disk) or key
    (LMDB), 'kernel': the blur kernel used (float32, kernel_size x kernel_size)}.
    """

    def __init__(self, opt: Dict[str, Any]):
        super().__init__()
        self.opt = opt
        self.phase = opt.get('phase')
        if self.phase not in PHASES:
            raise ValueError(f'phase: expected one of {PHASES} (BasicSR sets it from the datasets key), '
                             f'got {self.phase!r}')
        self.degradation = Degradation(opt)
        self.scale = self.degradation.cfg.scale
        self.seed = int(opt.get('seed', 0))
        self.use_hflip = bool(opt.get('use_hflip', False))
        self.use_rot = bool(opt.get('use_rot', False))
        self.crop_context = opt.get('crop_context', False)
        if not isinstance(self.crop_context, bool):
            raise ValueError(f'crop_context: expected true or false, got {self.crop_context!r}')
        # train: pixels of surroundings degraded with each crop (0: the crop alone)
        self.context_margin = self.degradation.context_margin() if self.crop_context else 0
        self.mean, self.std = opt.get('mean'), opt.get('std')
        color = str(opt.get('color', 'rgb')).lower()
        if color != 'rgb':
            raise ValueError(f"color: only 'rgb' is supported (inputs are converted to RGB), got {color!r}")
        multiple = _positive_int(opt, 'size_multiple', 1)
        self.multiple = multiple * self.scale // math.gcd(multiple, self.scale)
        self.gt_size = None
        if self.phase == 'train':
            if opt.get('gt_size') is None:
                raise ValueError('gt_size: required for phase train (the crop size)')
            self.gt_size = _positive_int(opt, 'gt_size')
            if self.gt_size % self.scale:
                raise ValueError(f'gt_size: {self.gt_size} is not divisible by scale {self.scale} '
                                 '(LQ must be exactly gt_size / scale)')
        self.io_backend_opt = dict(opt.get('io_backend') or {'type': 'disk'})
        self.backend = self.io_backend_opt.pop('type', 'disk')
        self.root = opt.get('dataroot_gt')
        if not self.root:
            raise ValueError('dataroot_gt: required (a folder of GT images or an .lmdb)')
        self.root = str(self.root)
        self.paths, self.keys = self._list_images()
        self.file_client: Optional[FileClient] = None
        self._pid = os.getpid()

    # ----------------------------------------------------------------------------- listing
    def _list_images(self) -> Tuple[List[str], List[str]]:
        meta = self.opt.get('meta_info_file')
        if self.backend == 'lmdb':
            if not (self.root.endswith('.lmdb') and osp.isfile(osp.join(self.root, 'data.mdb'))):
                raise FileNotFoundError(f'dataroot_gt: no LMDB (a folder ending in .lmdb with data.mdb) at '
                                        f'{self.root}')
            meta = meta or osp.join(self.root, 'meta_info.txt')
            keys = read_lmdb_keys(meta)
            if not keys:
                raise ValueError(f'meta_info_file {meta}: lists no images')
            check_lmdb(self.root, keys, meta)
            if self.gt_size is not None:  # the shapes are known: fail now rather than mid-training
                wanted = set(keys)
                small = [k for k, hw in read_meta_shapes(meta).items() if min(hw[:2]) < self.gt_size and k in wanted]
                if small:
                    raise ValueError(f'{self.root}: {len(small)} images are smaller than gt_size {self.gt_size} '
                                     f'(per {meta}), e.g. {small[0]}')
            return keys, keys
        if self.backend != 'disk':
            raise ValueError(f"io_backend.type: expected 'disk' or 'lmdb', got {self.backend!r}")
        if not osp.isdir(self.root):
            raise FileNotFoundError(f'dataroot_gt: no such folder: {self.root}')
        if meta:
            paths = [osp.join(self.root, n) for n in read_meta_names(meta)]
            missing = [p for p in paths if not osp.isfile(p)]
            if missing:
                raise FileNotFoundError(f'meta_info_file {meta}: {len(missing)} listed files are missing, '
                                        f'e.g. {missing[0]}')
        else:
            recursive = bool(self.opt.get('recursive', False))
            paths = sorted(osp.join(self.root, p) for p in scandir(self.root, recursive=recursive)
                           if is_image_file(p))
        if not paths:
            raise ValueError(f'dataroot_gt: no images ({", ".join(IMG_EXTENSIONS)}) in {self.root}')
        keys = [osp.splitext(osp.relpath(p, self.root))[0].replace(os.sep, '/') for p in paths]
        return paths, keys

    # ----------------------------------------------------------------------------- items
    def __len__(self) -> int:
        return len(self.paths)

    def rng_for(self, index: int) -> np.random.Generator:
        """Train: fresh randomness from torch's (per-worker seeded) RNG. Val/test: a function of
        (seed, image key) only, independent of order, backend and process."""
        if self.phase == 'train':
            return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        return np.random.default_rng([self.seed, zlib.crc32(self.keys[index].encode('utf-8'))])

    def load_gt(self, index: int) -> np.ndarray:
        if self.file_client is None or self._pid != os.getpid():  # lazily: each worker opens its own
            self._pid = os.getpid()
            self.file_client = (lmdb_client(self.root) if self.backend == 'lmdb'
                                else FileClient(self.backend, **self.io_backend_opt))
            if data.get_worker_info() is not None:
                cv2.setNumThreads(1)  # workers are the parallelism; OpenCV threads would oversubscribe
        path = self.paths[index]
        try:
            content = self.file_client.get(path, 'gt')
        except OSError as exc:
            raise OSError(f'{path}: cannot read ({exc})') from exc
        return decode_image(content, path)

    def crop_and_augment(self, img: np.ndarray, rng: np.random.Generator, name: str) -> np.ndarray:
        """Val/test: the whole image cut to a multiple of `multiple`. Train: a random gt_size crop,
        flipped/rotated (the crop alone, without context; see crop_in_context)."""
        h, w = img.shape[:2]
        if self.phase != 'train':
            hh, ww = h - h % self.multiple, w - w % self.multiple
            if hh == 0 or ww == 0:
                raise ValueError(f'{name}: image {h}x{w} is smaller than scale/size_multiple {self.multiple}')
            return np.ascontiguousarray(img[:hh, :ww])
        region, _ = self.crop_in_context(img, rng, name, margin=0)
        return region

    def crop_in_context(self, img: np.ndarray, rng: np.random.Generator, name: str,
                        margin: int) -> Tuple[np.ndarray, Tuple[int, int, int]]:
        """A random gt_size crop with up to `margin` pixels of its surroundings (fewer where the
        photo ends), flipped/rotated together: returns (region, (top, left, size) of the crop in
        it). With a margin (a multiple of scale) the crop starts on the scale grid of the photo cut
        to a multiple of scale, so its LQ is on the whole photo's LQ grid."""
        size = self.gt_size
        h, w = img.shape[:2]
        if h < size or w < size:
            raise ValueError(f'{name}: image is {h}x{w}, smaller than gt_size {size}')
        step = self.scale if margin else 1
        h, w = h - h % step, w - w % step
        top = step * int(rng.integers(0, (h - size) // step + 1))
        left = step * int(rng.integers(0, (w - size) // step + 1))
        r0, c0 = max(0, top - margin), max(0, left - margin)
        img = img[r0:min(h, top + size + margin), c0:min(w, left + size + margin)]
        top, left = top - r0, left - c0
        if self.use_hflip and rng.random() < 0.5:
            img, left = img[:, ::-1], img.shape[1] - left - size
        if self.use_rot:
            if rng.random() < 0.5:
                img, top = img[::-1], img.shape[0] - top - size
            if rng.random() < 0.5:
                img, top, left = img.transpose(1, 0, 2), left, top
        return np.ascontiguousarray(img), (top, left, size)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        path = self.paths[index]
        rng = self.rng_for(index)
        if self.phase == 'train':
            region, (top, left, size) = self.crop_in_context(self.load_gt(index), rng, path, self.context_margin)
            gt = np.ascontiguousarray(region[top:top + size, left:left + size])
            out = self.degradation(region, rng, crop=(top, left, size))
        else:
            gt = self.crop_and_augment(self.load_gt(index), rng, path)
            out = self.degradation(gt, rng)
        img_gt, img_lq = img2tensor([gt, out.lq], bgr2rgb=True, float32=True)
        if self.mean is not None or self.std is not None:
            normalize(img_lq, self.mean, self.std, inplace=True)
            normalize(img_gt, self.mean, self.std, inplace=True)
        return {'lq': img_lq, 'gt': img_gt, 'lq_path': path, 'gt_path': path,
                'kernel': torch.from_numpy(out.kernel.astype(np.float32))}


@DATASET_REGISTRY.register()
class GaussianDeblurDataset(DegradationDataset):
    """DegradationDataset with Gaussian blur (default 61x61, sigma 3.0, isotropic); noise, JPEG and
    `scale` may be added. For motion blur or no blur use `type: DegradationDataset`."""

    def __init__(self, opt: Dict[str, Any]):
        blur = str(opt.get('blur', 'gaussian')).lower()
        if blur != 'gaussian':
            raise ValueError(f"blur: GaussianDeblurDataset always uses Gaussian blur, got {blur!r} "
                             '(use type: DegradationDataset for motion or no blur)')
        super().__init__(opt)
