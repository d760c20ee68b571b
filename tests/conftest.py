"""Shared fixtures: tiny real photographs (from scikit-image) and helpers to run our CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

import serpent_basicsr  # noqa: F401  (compat + registries before anything imports basicsr)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PHOTOS = ('astronaut', 'coffee', 'chelsea')


def write_photos(folder: Path, size: int = 48, names=PHOTOS) -> List[Path]:
    """Real photos shipped with scikit-image, resized to `size` x `size`, as PNG."""
    import cv2
    from skimage import data
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        img = getattr(data, name)()[:, :, ::-1]
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        path = folder / f'{name}.png'
        cv2.imwrite(str(path), img)
        paths.append(path)
    return paths


@pytest.fixture(scope='session')
def photo_pairs(tmp_path_factory) -> Path:
    """gt/ and lq/ folders (Gaussian blur, sigma 1.5) of three real photos, 48 x 48."""
    import cv2
    root = tmp_path_factory.mktemp('pairs')
    for path in write_photos(root / 'gt'):
        (root / 'lq').mkdir(exist_ok=True)
        cv2.imwrite(str(root / 'lq' / path.name), cv2.GaussianBlur(cv2.imread(str(path)), (7, 7), 1.5))
    return root


def tiny_swinir() -> Dict[str, Any]:
    return dict(type='SwinIR', upscale=1, in_chans=3, img_size=32, window_size=8, img_range=1.0, depths=[1],
                embed_dim=12, num_heads=[2], mlp_ratio=2, upsampler='', resi_connection='1conv')


def train_options(name: str, data: Path, network: Dict[str, Any] = None, total_iter: int = 4,
                  checkpoint_freq: int = 2) -> Dict[str, Any]:
    """A complete BasicSR training option dict on `photo_pairs` data, small enough for CPU."""
    pair = dict(type='PairedImageDataset', dataroot_gt=str(data / 'gt'), dataroot_lq=str(data / 'lq'),
                io_backend={'type': 'disk'})
    return {
        'name': name, 'model_type': 'SRModel', 'scale': 1, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {
            'train': dict(pair, name='photos', gt_size=32, use_hflip=True, use_rot=True, num_worker_per_gpu=0,
                          batch_size_per_gpu=2, dataset_enlarge_ratio=1, prefetch_mode=None),
            'val': dict(pair, name='photos_val'),
        },
        'network_g': network or tiny_swinir(),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'ema_decay': 0.9,
            'optim_g': {'type': 'Adam', 'lr': 2e-4, 'weight_decay': 0, 'betas': [0.9, 0.99]},
            'scheduler': {'type': 'MultiStepLR', 'milestones': [1000], 'gamma': 0.5},
            'total_iter': total_iter, 'warmup_iter': -1,
            'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'},
        },
        'val': {'val_freq': checkpoint_freq, 'save_img': True,
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': checkpoint_freq, 'use_tb_logger': True},
        'dist_params': {'backend': 'nccl', 'port': 29500},
    }


def eval_options(name: str, data: Path, model_path: Path, network: Dict[str, Any] = None) -> Dict[str, Any]:
    return {
        'name': name, 'model_type': 'SRModel', 'scale': 1, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {'test_1': dict(type='PairedImageDataset', name='photos', dataroot_gt=str(data / 'gt'),
                                    dataroot_lq=str(data / 'lq'), io_backend={'type': 'disk'})},
        'network_g': network or tiny_swinir(),
        'path': {'pretrain_network_g': str(model_path), 'strict_load_g': True, 'param_key_g': 'params_ema'},
        'val': {'save_img': True, 'suffix': None,
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False}}},
    }


def write_yml(path: Path, opt: Dict[str, Any]) -> Path:
    import yaml
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return path


def run(args: List[str], cwd: Path, timeout: int = 300, env: Dict[str, str] = None) -> subprocess.CompletedProcess:
    """Run a command from the venv's bin folder (or python) in `cwd`, capturing output."""
    exe = args[0]
    if exe == 'python':
        exe = sys.executable
    elif (BIN / exe).exists():
        exe = str(BIN / exe)
    full_env = dict(os.environ, OMP_NUM_THREADS='1', **(env or {}))
    return subprocess.run([exe] + args[1:], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=full_env)
