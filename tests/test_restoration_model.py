"""RestorationModel: TensorBoard gets losses, lr, metrics and side-by-side validation images;
LPIPS is skipped with one warning when its weights are not on disk, computed when they are."""
from __future__ import annotations

import glob
import logging
import sys

import serpent_basicsr  # noqa: F401  (compat fixes + registration before basicsr)

import cv2
import numpy as np
import pytest
import torch
import yaml
from skimage import data as skdata

from serpent_basicsr.models import restoration_model as rm


def _write_pairs(root, names, size):
    photos = {'astronaut': skdata.astronaut(), 'coffee': skdata.coffee(), 'chelsea': skdata.chelsea()}
    for sub in ('gt', 'lq'):
        (root / sub).mkdir(parents=True)
    for name in names:
        img = cv2.resize(photos[name][..., ::-1], (size, size), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(root / 'gt' / f'{name}.png'), img)
        cv2.imwrite(str(root / 'lq' / f'{name}.png'), cv2.GaussianBlur(img, (9, 9), 1.5))


def _paired(name, root, phase):
    opt = dict(name=name, type='PairedImageDataset', dataroot_gt=str(root / 'gt'), dataroot_lq=str(root / 'lq'),
               io_backend=dict(type='disk'), filename_tmpl='{}')
    if phase == 'train':
        opt.update(gt_size=32, use_hflip=True, use_rot=False, num_worker_per_gpu=0, batch_size_per_gpu=2,
                   dataset_enlarge_ratio=4, prefetch_mode=None)
    return opt


def _events(tb_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tb_dir), size_guidance={'images': 0, 'scalars': 0})
    acc.Reload()
    return acc.Tags()


def test_train_pipeline_writes_losses_lr_metrics_images(tmp_path, monkeypatch):
    from basicsr.train import train_pipeline

    _write_pairs(tmp_path / 'train', ['astronaut', 'coffee'], 64)
    _write_pairs(tmp_path / 'val', ['chelsea', 'coffee'], 48)
    opt = dict(
        name='tbcheck', model_type='RestorationModel', scale=1, num_gpu=0, manual_seed=0,
        datasets=dict(train=_paired('tiny_train', tmp_path / 'train', 'train'),
                      val=_paired('tiny_val', tmp_path / 'val', 'val')),
        network_g=dict(type='SRVGGNetCompact', num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=1),
        path=dict(pretrain_network_g=None, strict_load_g=True, resume_state=None),
        train=dict(ema_decay=0.9, optim_g=dict(type='Adam', lr=1e-3),
                   scheduler=dict(type='MultiStepLR', milestones=[100], gamma=0.5),
                   total_iter=4, warmup_iter=-1, pixel_opt=dict(type='L1Loss', loss_weight=1.0)),
        val=dict(val_freq=2, save_img=False, tb_images=1,
                 metrics=dict(psnr=dict(type='calculate_psnr', crop_border=0, test_y_channel=False),
                              ssim=dict(type='calculate_ssim', crop_border=0, test_y_channel=False),
                              lpips=dict(type='lpips', better='lower'))),
        logger=dict(print_freq=1, save_checkpoint_freq=4, use_tb_logger=True),
    )
    opt_file = tmp_path / 'opt.yml'
    opt_file.write_text(yaml.safe_dump(opt))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))  # an empty cache: LPIPS must be skipped
    monkeypatch.setattr(sys, 'argv', ['train', '-opt', str(opt_file)])

    records = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())
    basicsr_logger = logging.getLogger('basicsr')
    basicsr_logger.addHandler(handler)
    # basicsr's get_root_logger configures the logger once per process (first caller wins): an
    # earlier in-process test may have left it at WARNING, which would hide the INFO lines.
    old_level = basicsr_logger.level
    basicsr_logger.setLevel(logging.INFO)
    try:
        train_pipeline(str(tmp_path))
    finally:
        basicsr_logger.removeHandler(handler)
        basicsr_logger.setLevel(old_level)

    tags = _events(tmp_path / 'tb_logger' / 'tbcheck')
    assert 'losses/l_pix' in tags['scalars']
    assert 'lr' in tags['scalars']
    assert {'metrics/tiny_val/psnr', 'metrics/tiny_val/ssim'} <= set(tags['scalars'])
    assert not any('lpips' in t for t in tags['scalars'])
    # tb_images: 1 -> only the first validation image, LQ | output | GT side by side.
    assert len(tags['images']) == 1
    assert tags['images'][0] in ('val_images/tiny_val/chelsea', 'val_images/tiny_val/coffee')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / 'tb_logger' / 'tbcheck'), size_guidance={'images': 0})
    acc.Reload()
    events = acc.Images(tags['images'][0])
    assert [e.step for e in events] == [2, 4, 5]  # two validations + BasicSR's final one (iter + 1)
    assert (events[0].width, events[0].height) == (3 * 48, 48)

    skipped = [m for m in records if m.startswith('LPIPS skipped:')]
    assert len(skipped) == 1 and 'not installed' in skipped[0]
    assert any('eta:' in m for m in records)  # BasicSR's MessageLogger prints an ETA
    assert glob.glob(str(tmp_path / 'experiments' / 'tbcheck' / 'models' / 'net_g_latest.pth'))


def _fake_lpips(tmp_path, monkeypatch):
    """A stand-in `lpips` package (mean absolute difference) and cache files at the paths
    the real ones would use, to test the glue without network or the real package."""
    pkg = tmp_path / 'fake' / 'lpips'
    (pkg / 'weights' / 'v0.1').mkdir(parents=True)
    (pkg / 'weights' / 'v0.1' / 'alex.pth').write_bytes(b'')
    (pkg / '__init__.py').write_text(
        'import torch\n'
        'class LPIPS(torch.nn.Module):\n'
        '    def __init__(self, net="alex", verbose=True):\n'
        '        super().__init__()\n'
        '    def forward(self, a, b):\n'
        '        return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)\n')
    monkeypatch.syspath_prepend(str(tmp_path / 'fake'))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.delitem(sys.modules, 'lpips', raising=False)
    rm._LPIPS_NETS.clear()


def test_lpips_status_explains_what_is_missing(tmp_path, monkeypatch):
    _fake_lpips(tmp_path, monkeypatch)
    ok, why = rm.lpips_status('alex')
    assert not ok and 'torch hub cache' in why and str(tmp_path / 'torch_home') in why
    with pytest.raises(RuntimeError, match='LPIPS unavailable'):
        rm.calculate_lpips(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8))
    assert not rm.lpips_status('nonet')[0]


def test_lpips_computed_when_weights_are_cached(tmp_path, monkeypatch):
    _fake_lpips(tmp_path, monkeypatch)
    backbone = rm.lpips_backbone_path('alex')
    assert backbone.startswith(str(tmp_path / 'torch_home'))
    import os
    os.makedirs(os.path.dirname(backbone))
    open(backbone, 'wb').close()
    assert rm.lpips_status('alex') == (True, 'ok')
    a = np.zeros((8, 8, 3), np.uint8)
    b = np.full((8, 8, 3), 255, np.uint8)
    assert rm.calculate_lpips(a, b) == pytest.approx(2.0)  # [-1, 1] scaling: |(-1) - 1|
    rm._LPIPS_NETS.clear()


def test_side_by_side_resizes_lq():
    vis = {'lq': torch.rand(1, 3, 8, 8), 'result': torch.rand(1, 3, 16, 16), 'gt': torch.rand(1, 3, 16, 16)}
    assert rm.side_by_side(vis).shape == (3, 16, 48)
    del vis['gt']
    assert rm.side_by_side(vis).shape == (3, 16, 32)


@pytest.mark.parametrize('model_type', ['RestorationGANModel', 'RestorationESRGANModel'])
def test_gan_variants_train_and_log_images(tmp_path, model_type):
    from basicsr.models import build_model
    from torch.utils.data import DataLoader
    from torch.utils.tensorboard import SummaryWriter
    from basicsr.data import build_dataset

    _write_pairs(tmp_path / 'val', ['coffee'], 32)
    val_opt = dict(_paired('gan_val', tmp_path / 'val', 'val'), phase='val', scale=1)
    opt = dict(
        name='gan', model_type=model_type, scale=1, num_gpu=0, is_train=True, dist=False, rank=0, world_size=1,
        network_g=dict(type='SRVGGNetCompact', num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=1),
        network_d=dict(type='UNetDiscriminatorSN', num_in_ch=3, num_feat=8, skip_connection=True),
        path=dict(pretrain_network_g=None, pretrain_network_d=None, visualization=str(tmp_path / 'vis')),
        train=dict(ema_decay=0.9, optim_g=dict(type='Adam', lr=1e-4), optim_d=dict(type='Adam', lr=2e-4),
                   scheduler=dict(type='MultiStepLR', milestones=[100], gamma=0.5),
                   pixel_opt=dict(type='L1Loss', loss_weight=1.0),
                   gan_opt=dict(type='GANLoss', gan_type='vanilla', loss_weight=0.1)),
        val=dict(save_img=False, metrics=dict(psnr=dict(type='calculate_psnr', crop_border=0))),
    )
    model = build_model(opt)
    batch = {'lq': torch.rand(2, 3, 32, 32), 'gt': torch.rand(2, 3, 32, 32)}
    for it in (1, 2):
        model.feed_data(batch)
        model.optimize_parameters(it)
    log = model.get_current_log()
    assert {'l_g_gan', 'l_d_real', 'lr_g', 'lr_d'} <= set(log) and log['lr_d'] == pytest.approx(2e-4)
    writer = SummaryWriter(str(tmp_path / 'tb'))
    model.validation(DataLoader(build_dataset(val_opt), batch_size=1), 2, writer, False)
    writer.close()
    tags = _events(tmp_path / 'tb')
    assert tags['images'] == ['val_images/gan_val/coffee'] and 'metrics/gan_val/psnr' in tags['scalars']


@pytest.mark.parametrize('ema', [False, True])
def test_val_self_ensemble_outputs_the_mean_over_8_symmetries(ema):
    from basicsr.models import build_model
    net = dict(type='SRVGGNetCompact', num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=1)
    opt = dict(name='se', model_type='RestorationModel', scale=1, num_gpu=0, is_train=False, dist=False,
               network_g=net, path=dict(pretrain_network_g=None, strict_load_g=True),
               val=dict(self_ensemble=True, metrics=None))
    model = build_model(opt)
    if ema:
        model.net_g_ema = model.net_g  # what BasicSR's EMA copy looks like to test()
    lq = torch.rand(1, 3, 12, 20)
    model.feed_data({'lq': lq})
    model.test()
    with torch.no_grad():
        outs = []
        for t in (False, True):
            for k in range(4):
                v = torch.rot90(lq.transpose(2, 3) if t else lq, k, (2, 3))
                y = torch.rot90(model.net_g(v), -k, (2, 3))
                outs.append(y.transpose(2, 3) if t else y)
        expected = torch.stack(outs).mean(0)
        plain = model.net_g(lq)
    torch.testing.assert_close(model.output, expected, atol=1e-6, rtol=0)
    assert (model.output - plain).abs().max() > 1e-4  # the net is not equivariant: it matters
    model.opt['val']['self_ensemble'] = False
    model.test()
    torch.testing.assert_close(model.output, plain)
