"""The shipped recipes end to end on CPU, shrunk with --force_yml (issue 3): the main job trains,
checkpoints, resumes with --auto_resume and is evaluated with its options/test file; the GAN and
8x SR recipes train a few iterations."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO, run
from test_data_common import build_tiny_default

SHRINK = ['train:total_iter=2', 'val:val_freq=2', 'logger:save_checkpoint_freq=2', 'logger:print_freq=1',
          'datasets:train:gt_size=32', 'datasets:train:num_worker_per_gpu=0',
          'datasets:train:dataset_enlarge_ratio=1', 'datasets:train:batch_size_per_gpu=2']


@pytest.fixture(scope='module')
def workdir(tmp_path_factory) -> Path:
    """A working directory whose datasets/data/default is a tiny build of the embedded photos."""
    root = tmp_path_factory.mktemp('recipes')
    build_tiny_default(root / 'datasets' / 'data')
    return root


def _tags(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(next(folder.rglob('events.out.tfevents.*')).parent))
    acc.Reload()
    return acc.Tags()


def test_main_recipe_train_resume_test(workdir):
    recipe = str(REPO / 'options' / 'serpent_deblur.yml')
    out = run(['basicsr', 'train', '-opt', recipe, '--force_yml'] + SHRINK, workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    exp = workdir / 'experiments' / 'serpent_deblur_default'
    assert (exp / 'models' / 'net_g_2.pth').exists() and (exp / 'training_states' / '2.state').exists()
    tags = _tags(workdir / 'tb_logger' / 'serpent_deblur_default')
    assert {'losses/l_pix', 'metrics/default_val/psnr', 'metrics/default_val/ssim'} <= set(tags['scalars'])
    assert any(t.startswith('val_images/default_val/') for t in tags['images'])

    # The run stopped after its checkpoint at 2 (as if killed); --auto_resume continues to 4.
    shrink4 = [s.replace('total_iter=2', 'total_iter=4') for s in SHRINK]
    out = run(['basicsr', 'train', '-opt', recipe, '--auto_resume', '--force_yml'] + shrink4, workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'Resuming training from epoch: 0, iter: 2.' in out.stdout + out.stderr
    assert (exp / 'models' / 'net_g_4.pth').exists()

    out = run(['basicsr', 'test', '-opt', str(REPO / 'options' / 'test' / 'serpent_deblur.yml')], workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    results = workdir / 'results' / 'serpent_deblur_default_test'
    assert list((results / 'visualization' / 'default_val').glob('*.png'))
    log = next(results.glob('test_*.log')).read_text()
    assert '# psnr:' in log and '# ssim:' in log


@pytest.mark.parametrize('recipe, name', [('serpent_gan_deblur.yml', 'serpent_gan_deblur_default'),
                                          ('serpent_sr8x.yml', 'serpent_sr8x_default')])
def test_other_recipes_train_a_few_iterations(workdir, recipe, name):
    out = run(['basicsr', 'train', '-opt', str(REPO / 'options' / recipe), '--force_yml'] + SHRINK, workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (workdir / 'experiments' / name / 'models' / 'net_g_2.pth').exists()
    if 'gan' in recipe:
        assert (workdir / 'experiments' / name / 'models' / 'net_d_2.pth').exists()
