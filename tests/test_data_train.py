"""`basicsr train` with GaussianDeblurDataset batches (issue 2): the sample YAML in tests/data_yml,
pointed at a tiny build of the embedded default data (LMDBs, 2 loader workers for train)."""
from __future__ import annotations

from pathlib import Path

import yaml

from conftest import run, write_yml
from test_data_common import tiny_default  # noqa: F401  (fixture)

YML = Path(__file__).parent / 'data_yml' / 'train_gaussian_deblur_tiny.yml'


def test_basicsr_train_with_gaussian_deblur_dataset(tiny_default, tmp_path):
    opt = yaml.safe_load(YML.read_text())
    train, val = opt['datasets']['train'], opt['datasets']['val']
    assert train['type'] == val['type'] == 'GaussianDeblurDataset'
    train.update(dataroot_gt=str(tiny_default / 'train.lmdb'), io_backend={'type': 'lmdb'}, gt_size=32,
                 kernel_size=21, num_worker_per_gpu=2)
    val.update(dataroot_gt=str(tiny_default / 'val.lmdb'), io_backend={'type': 'lmdb'}, kernel_size=21)
    opt['train']['total_iter'] = 2
    opt['logger']['save_checkpoint_freq'] = 2
    yml = write_yml(tmp_path / 'train.yml', opt)
    out = run(['basicsr', 'train', '-opt', str(yml)], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    exp = tmp_path / 'experiments' / opt['name']
    assert (exp / 'models' / 'net_g_2.pth').exists()
    log = next(exp.glob('train_*.log')).read_text()
    assert 'Validation default_val' in log and '# psnr:' in log
