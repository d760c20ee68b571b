"""GaussianDeblurDataset / DegradationDataset (issue 2) on real photos: folder vs LMDB, determinism,
the reported kernel, SR sizes, odd inputs and bad options."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy.signal import convolve2d

from basicsr.utils.registry import DATASET_REGISTRY
from serpent_basicsr.data.gaussian_deblur_dataset import DegradationDataset, GaussianDeblurDataset

from test_data_common import load_script, quiet, tiny_default  # noqa: F401  (fixture)


def make(opt_root: Path, phase: str = 'val', lmdb: bool = False, cls=GaussianDeblurDataset, **opt):
    root = str(opt_root) + ('.lmdb' if lmdb else '')
    base = dict(dataroot_gt=root, io_backend={'type': 'lmdb' if lmdb else 'disk'}, phase=phase, name='t')
    return cls(dict(base, **opt))


def items_equal(a, b):
    assert Path(a['lq_path']).stem == Path(b['lq_path']).stem  # a file path (disk) or key (LMDB)
    for key in ('lq', 'gt', 'kernel'):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_registered():
    assert DATASET_REGISTRY.get('GaussianDeblurDataset') is GaussianDeblurDataset
    assert DATASET_REGISTRY.get('DegradationDataset') is DegradationDataset


def test_items_are_basicsr_style(tiny_default):
    ds = make(tiny_default / 'val')
    assert len(ds) == 3
    item = ds[0]
    assert set(item) == {'lq', 'gt', 'lq_path', 'gt_path', 'kernel'}
    assert item['gt'].shape == (3, 48, 48) and item['lq'].shape == (3, 48, 48)
    assert item['gt'].dtype == torch.float32 and 0 <= item['lq'].min() and item['lq'].max() <= 1
    assert item['kernel'].shape == (61, 61)  # defaults: 61 x 61, sigma 3
    # RGB order (basicsr img2tensor with bgr2rgb): compare with the file read by OpenCV (BGR)
    bgr = cv2.imread(item['gt_path']).astype(np.float32) / 255
    np.testing.assert_allclose(item['gt'].numpy(), bgr[:, :, ::-1].transpose(2, 0, 1), atol=1e-7)
    assert item['lq'].std() < item['gt'].std()  # blurred


@pytest.mark.parametrize('phase', ['val', 'train'])
def test_folder_and_lmdb_give_identical_items(tiny_default, phase):
    opt = dict(sigma=[1.0, 3.0], kernel_type='anisotropic', noise_std=2.0, gt_size=32, use_hflip=True, use_rot=True)
    for split in ('train', 'val'):
        disk, lmdb = make(tiny_default / split, phase, **opt), make(tiny_default / split, phase, lmdb=True, **opt)
        assert len(disk) == len(lmdb) and disk.keys == lmdb.keys
        for i in range(len(disk)):
            torch.manual_seed(i)
            a = disk[i]
            torch.manual_seed(i)
            items_equal(a, lmdb[i])


def test_val_degradation_repeats_across_instances_and_orderings(tiny_default, tmp_path):
    opt = dict(sigma=[0.5, 4.0], kernel_type='anisotropic', noise_std=[1, 5], jpeg_quality=[40, 90], seed=3)
    a, b = make(tiny_default / 'val', **opt), make(tiny_default / 'val', **opt)
    torch.manual_seed(123)  # torch's RNG must not matter outside training
    for i in range(len(a)):
        items_equal(a[i], b[i])
    # a meta_info listing the images in another order: same image, same degradation
    meta = tmp_path / 'meta.txt'
    meta.write_text(''.join(f'{Path(p).name}\n' for p in reversed(a.paths)))
    c = make(tiny_default / 'val', meta_info_file=str(meta), **opt)
    assert c.paths == list(reversed(a.paths))
    items_equal(a[0], c[len(c) - 1])
    # another seed draws other degradations
    d = make(tiny_default / 'val', **dict(opt, seed=4))
    assert not torch.equal(a[0]['kernel'], d[0]['kernel'])


def test_train_sampling_is_random_and_differs_across_workers(tiny_default):
    ds = make(tiny_default / 'train', 'train', gt_size=32, kernel_size=11, sigma=[0.5, 3], use_hflip=True)
    ds.paths, ds.keys = ds.paths[:1] * 8, ds.keys[:1] * 8  # one photo, eight samples
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2)
    crops = [b['gt'][0] for b in loader]
    distinct = {tuple(c.flatten()[:64].tolist()) for c in crops}
    assert len(distinct) == 8  # workers would repeat each other with numpy's global RNG
    torch.manual_seed(0)
    again = [b['gt'][0] for b in torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2)]
    for x, y in zip(crops, again):  # reproducible from torch's seed (BasicSR's manual_seed)
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def _direct_blur(gt_chw: torch.Tensor, kernel: torch.Tensor) -> np.ndarray:
    k = kernel.double().numpy()
    p = k.shape[0] // 2
    img = gt_chw.double().numpy()
    return np.stack([convolve2d(np.pad(c, p, mode='reflect'), k, mode='valid') for c in img])


@pytest.mark.parametrize('opt', [dict(kernel_type='anisotropic', sigma=[1, 4]),
                                 dict(cls=DegradationDataset, blur='motion', kernel_size=31, motion_length=[8, 25])])
def test_lq_equals_direct_convolution_with_reported_kernel(tiny_default, opt):
    for phase in ('val', 'train'):  # train: the crop alone (crop_context: false, the default)
        ds = make(tiny_default / 'val', phase, gt_size=40, **opt)
        item = ds[1]
        # reflect-101 borders (numpy 'reflect', cv2.BORDER_REFLECT_101), true convolution
        np.testing.assert_allclose(item['lq'].numpy(), _direct_blur(item['gt'], item['kernel']), atol=2e-6)


DIHEDRAL = [lambda a, k=k, t=t: np.rot90(a, k).transpose(1, 0, 2) if t else np.rot90(a, k)
            for k in range(4) for t in (False, True)]


@pytest.mark.parametrize('scale,ks,resize', [(1, 21, 'matlab'), (2, 11, 'matlab'), (4, 9, 'cv2')])
def test_train_crop_in_context_equals_the_whole_photo_degraded(tmp_path, scale, ks, resize):
    """crop_context: true: a training pair is a window of (whole photo, whole photo degraded),
    flipped/rotated together, and the LQ window sits on the whole photo's LQ grid. The photo encodes
    each pixel's row and column in two channels, so the GT crop tells where it came from."""
    h, w, size = 90, 75, 32
    yy, xx = np.mgrid[0:h, 0:w]
    photo = np.stack([yy / h, xx / w, np.random.default_rng(0).random((h, w))], -1)
    (tmp_path / 'p').mkdir()
    cv2.imwrite(str(tmp_path / 'p' / 'a.png'), np.round(photo * 65535).astype(np.uint16))
    ds = make(tmp_path / 'p', 'train', cls=DegradationDataset, gt_size=size, kernel_size=ks, scale=scale,
              resize=resize, use_hflip=True, use_rot=True, crop_context=True)
    photo = ds.load_gt(0)[:h - h % scale, :w - w % scale]
    from serpent_basicsr.data.degradations import blur, downsample
    whole_lq = np.clip(downsample(blur(photo, ds[0]['kernel'].double().numpy()), scale, resize), 0, 1)
    seen = set()
    for seed in range(24):
        torch.manual_seed(seed)
        item = ds[0]
        gt, lq = (item[k].numpy().transpose(1, 2, 0)[:, :, ::-1] for k in ('gt', 'lq'))  # BGR HWC
        found = []
        for f in DIHEDRAL:  # which orientation and window of the photo is this crop?
            g = f(gt)
            top, left = int(round(g[0, 0, 0] * h)), int(round(g[0, 0, 1] * w))
            if np.array_equal(g, photo[top:top + size, left:left + size]):
                found.append((f, top, left))
        assert len(found) == 1
        f, top, left = found[0]
        assert top % scale == 0 and left % scale == 0  # on the LQ grid
        s = size // scale
        np.testing.assert_allclose(f(lq), whole_lq[top // scale:top // scale + s, left // scale:left // scale + s],
                                   atol=2e-6)
        seen.add((DIHEDRAL.index(f), top == 0 or left == 0 or top + size == photo.shape[0]))
    assert len({o for o, _ in seen}) > 4 and {b for _, b in seen} == {True, False}  # flips, borders covered
    old = make(tmp_path / 'p', 'train', cls=DegradationDataset, gt_size=size, kernel_size=ks, scale=scale,
               resize=resize, crop_context=False)[0]
    assert old['lq'].shape == item['lq'].shape
    with pytest.raises(ValueError, match='crop_context'):
        make(tmp_path / 'p', 'train', cls=DegradationDataset, gt_size=size, crop_context='yes')


def test_sr_mode_lq_is_gt_over_factor(tiny_default):
    from basicsr.utils.matlab_functions import imresize
    tr = make(tiny_default / 'train', 'train', scale=8, gt_size=32, kernel_size=21)
    item = tr[0]
    assert item['gt'].shape == (3, 32, 32) and item['lq'].shape == (3, 4, 4)
    va = make(tiny_default / 'train', 'val', scale=8, kernel_size=21)
    for i in range(len(va)):
        item = va[i]
        h, w = cv2.imread(va.paths[i]).shape[:2]
        assert item['gt'].shape[1:] == (h - h % 8, w - w % 8)  # cropped at bottom/right to a multiple
        assert item['lq'].shape[1:] == (h // 8, w // 8)
    blurred = _direct_blur(item['gt'], item['kernel']).transpose(1, 2, 0).astype(np.float32)
    expected = np.clip(imresize(blurred, 1 / 8), 0, 1).transpose(2, 0, 1)
    np.testing.assert_allclose(item['lq'].numpy(), expected, atol=1e-5)
    cv = make(tiny_default / 'val', 'val', scale=4, resize='cv2', size_multiple=16)
    assert cv[0]['gt'].shape[1:] == (48, 48) and cv[0]['lq'].shape[1:] == (12, 12)


@pytest.fixture
def odd_images(tmp_path) -> Path:
    """A grayscale, an RGBA and a 16-bit photo (real, from scikit-image)."""
    from skimage import data
    folder = tmp_path / 'odd'
    folder.mkdir()
    gray = cv2.resize(data.camera(), (40, 40), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(folder / 'gray.png'), gray)
    rgb = cv2.resize(data.astronaut()[:, :, ::-1], (40, 40), interpolation=cv2.INTER_AREA)
    alpha = np.full((40, 40, 1), 7, np.uint8)
    cv2.imwrite(str(folder / 'rgba.png'), np.concatenate([rgb, alpha], axis=2))
    deep = rgb.astype(np.uint16) * 257 + 100  # values that 8 bits cannot hold
    cv2.imwrite(str(folder / 'deep.png'), deep)
    return folder


@pytest.mark.parametrize('lmdb', [False, True])
def test_grayscale_rgba_and_16bit(odd_images, lmdb):
    if lmdb:
        quiet(load_script('folder_to_lmdb').folder_to_lmdb, str(odd_images), str(odd_images) + '.lmdb')
    ds = make(odd_images, lmdb=lmdb, cls=DegradationDataset, blur='none')
    items = {Path(ds.paths[i]).stem: ds[i] for i in range(len(ds))}
    gray = cv2.imread(str(odd_images / 'gray.png'), cv2.IMREAD_UNCHANGED).astype(np.float32) / 255
    g = items['gray']['gt']
    assert g.shape == (3, 40, 40)
    for c in range(3):  # replicated to three channels
        np.testing.assert_allclose(g[c].numpy(), gray, atol=1e-7)
    rgba = cv2.imread(str(odd_images / 'rgba.png'), cv2.IMREAD_UNCHANGED)
    np.testing.assert_allclose(items['rgba']['gt'].numpy(),  # alpha dropped, RGB order
                               rgba[:, :, 2::-1].transpose(2, 0, 1).astype(np.float32) / 255, atol=1e-7)
    deep = cv2.imread(str(odd_images / 'deep.png'), cv2.IMREAD_UNCHANGED)
    assert deep.dtype == np.uint16
    np.testing.assert_allclose(items['deep']['gt'].numpy(),  # scaled by 65535, not truncated to 8 bits
                               deep[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / 65535, atol=1e-7)
    for item in items.values():
        torch.testing.assert_close(item['lq'], item['gt'])  # blur none: identity


def test_corrupt_image_error_names_the_file(tiny_default, tmp_path):
    folder = tmp_path / 'gt'
    shutil.copytree(tiny_default / 'val', folder)
    (folder / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'not really a png' * 10)
    ds = make(folder)
    index = [Path(p).name for p in ds.paths].index('broken.png')
    with pytest.raises(ValueError, match='broken.png: cannot decode'):
        ds[index]
    ds[(index + 1) % len(ds)]  # the others still load


def test_image_smaller_than_gt_size_names_the_file(tiny_default):
    ds = make(tiny_default / 'val', 'train', gt_size=64)
    with pytest.raises(ValueError, match=r'chelsea.png: image is 48x48, smaller than gt_size 64'):
        ds[0]
    with pytest.raises(ValueError, match=r'val.lmdb: 3 images are smaller than gt_size 64 .*e.g. chelsea'):
        make(tiny_default / 'val', 'train', lmdb=True, gt_size=64)  # LMDB: known from meta_info, at init


def test_lmdb_meta_info_with_missing_keys(tiny_default, tmp_path):
    meta = tmp_path / 'meta_info.txt'
    meta.write_text('chelsea.png (48,48,3) 1\nnot_there.png (48,48,3) 1\n')
    with pytest.raises(ValueError, match=r'meta_info.txt: 1 of 2 keys are not in the LMDB .*not_there'):
        make(tiny_default / 'val', lmdb=True, meta_info_file=str(meta))


@pytest.mark.parametrize('opt, error, match', [
    (dict(dataroot_gt='/no/such/folder'), FileNotFoundError, 'dataroot_gt: no such folder: /no/such/folder'),
    (dict(dataroot_gt='/no/such.lmdb', io_backend={'type': 'lmdb'}), FileNotFoundError,
     'dataroot_gt: no LMDB .*/no/such.lmdb'),
    (dict(kernel_size=60), ValueError, 'kernel_size: must be odd'),
    (dict(sigma=-1), ValueError, 'sigma: must be positive'),
    (dict(sigma=[-1, 2]), ValueError, 'sigma: must be positive'),
    (dict(phase='train', gt_size=36, scale=8), ValueError, 'gt_size: 36 is not divisible by scale 8'),
    (dict(phase='train'), ValueError, 'gt_size: required'),
    (dict(phase='training'), ValueError, 'phase'),
    (dict(io_backend={'type': 's3'}), ValueError, 'io_backend.type'),
    (dict(blur='motion'), ValueError, 'blur: GaussianDeblurDataset'),
    (dict(color='y'), ValueError, 'color'),
    (dict(meta_info_file='/no/meta.txt'), FileNotFoundError, 'meta_info_file: no such file'),
])
def test_bad_options_name_the_option(tiny_default, opt, error, match):
    full = dict(dataroot_gt=str(tiny_default / 'val'), io_backend={'type': 'disk'}, phase='val')
    full.update(opt)
    with pytest.raises(error, match=match):
        GaussianDeblurDataset(full)


def test_empty_folder(tmp_path):
    with pytest.raises(ValueError, match='dataroot_gt: no images'):
        make(tmp_path)


def test_mean_std_normalisation(tiny_default):
    plain = make(tiny_default / 'val')[0]
    norm = make(tiny_default / 'val', mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])[0]
    torch.testing.assert_close(norm['gt'], (plain['gt'] - 0.5) / 0.25)
    torch.testing.assert_close(norm['lq'], (plain['lq'] - 0.5) / 0.25)


def test_one_lmdb_shared_by_datasets_and_forked_workers(tiny_default, tmp_path):
    """Train and val subsets of one LMDB (FFHQ-style meta_info splits) in one process, and forked
    DataLoader workers while the parent holds the LMDB open: py-lmdb 3 refuses a second open of
    the same environment in a process, and a forked child inherits the parent's."""
    root = tiny_default / 'train'
    names = sorted(p.name for p in root.iterdir())
    (tmp_path / 'tr.txt').write_text('\n'.join(names[:5]) + '\n')
    (tmp_path / 'va.txt').write_text('\n'.join(names[5:]) + '\n')
    tr = make(root, 'train', lmdb=True, gt_size=32, kernel_size=11, meta_info_file=str(tmp_path / 'tr.txt'))
    va = make(root, 'val', lmdb=True, kernel_size=11, meta_info_file=str(tmp_path / 'va.txt'))
    disk_va = make(root, 'val', kernel_size=11, meta_info_file=str(tmp_path / 'va.txt'))
    assert len(tr) == 5 and len(va) == 2
    items_equal(va[0], disk_va[0])  # the parent now holds the LMDB open
    tr[0]
    batches = list(torch.utils.data.DataLoader(tr, batch_size=5, num_workers=2))
    assert batches[0]['gt'].shape == (5, 3, 32, 32)
    items_equal(va[1], disk_va[1])  # the parent's environment still works after the workers
