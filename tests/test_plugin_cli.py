"""The `basicsr` command and BasicSR's pipelines on CPU (issue 6)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from serpent_basicsr.cli import main

from conftest import REPO, eval_options, run, train_options, write_yml


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    files = list(folder.rglob('events.out.tfevents.*'))
    assert files, f'no TensorBoard event file under {folder}'
    acc = EventAccumulator(str(files[0].parent))
    acc.Reload()
    return acc


def test_version_and_help(tmp_path):
    out = run(['basicsr', '--version'], tmp_path)
    assert out.returncode == 0, out.stderr
    assert 'serpent-basicsr' in out.stdout and 'basicsr 1.4.2' in out.stdout and 'scan backend:' in out.stdout
    out = run(['basicsr', '--help'], tmp_path)
    assert out.returncode == 0 and all(cmd in out.stdout for cmd in ('train', 'test', 'restore'))
    out = run(['basicsr', 'train', '--help'], tmp_path)
    assert all(flag in out.stdout for flag in ('-opt', '--launcher', '--auto_resume', '--debug', '--local_rank',
                                               '--force_yml'))


@pytest.fixture(scope='module')
def trained(tmp_path_factory, photo_pairs) -> Path:
    """One `basicsr train` run (4 iterations, checkpoints at 2 and 4), shared by several tests."""
    root = tmp_path_factory.mktemp('trained')
    yml = write_yml(root / 'train.yml', train_options('swinir_cpu', photo_pairs, total_iter=4))
    out = run(['basicsr', 'train', '-opt', str(yml)], root)
    assert out.returncode == 0, out.stderr[-3000:]
    return root


def test_train_writes_checkpoints_ema_states_and_tensorboard(trained):
    exp = trained / 'experiments' / 'swinir_cpu'
    ckpt = torch.load(exp / 'models' / 'net_g_4.pth', map_location='cpu')
    assert {'params', 'params_ema'} <= set(ckpt)
    assert sorted(p.name for p in (exp / 'training_states').glob('*.state')) == ['2.state', '4.state']
    tags = _events(trained / 'tb_logger' / 'swinir_cpu').Tags()['scalars']
    assert 'losses/l_pix' in tags and 'metrics/photos_val/psnr' in tags


def test_few_images_still_reach_total_iter(tmp_path, photo_pairs):
    # 3 images, batch 2, drop_last: basicsr alone would stop at iteration 3 of 5.
    yml = write_yml(tmp_path / 'train.yml', train_options('short', photo_pairs, total_iter=5, checkpoint_freq=5))
    out = run(['basicsr', 'train', '-opt', str(yml)], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / 'experiments/short/models/net_g_5.pth').exists()


def test_auto_resume_on_cpu_restores_iteration_and_ema(tmp_path, trained, photo_pairs, monkeypatch):
    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
    opt = train_options('swinir_cpu', photo_pairs, total_iter=4)
    yml = tmp_path / 'train.yml'
    exp = tmp_path / 'experiments' / 'swinir_cpu'
    (exp / 'training_states' / '4.state').unlink()  # as if killed right after the checkpoint at 2

    # In-process: the state loads on CPU and the models come back with the saved EMA weights.
    import basicsr.train as bt
    from basicsr.models import build_model
    from basicsr.utils.options import parse_options
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, 'argv', ['basicsr train', '-opt', str(yml), '--auto_resume'])
    parsed, _ = parse_options(str(tmp_path), is_train=True)
    state = bt.load_resume_state(parsed)
    assert state['iter'] == 2
    model = build_model(parsed)
    saved = torch.load(exp / 'models' / 'net_g_2.pth', map_location='cpu')
    for key, value in model.net_g_ema.state_dict().items():
        assert torch.equal(value, saved['params_ema'][key]), key
    for key, value in model.net_g.state_dict().items():
        assert torch.equal(value, saved['params'][key]), key
    model.resume_training(state)
    assert model.optimizers[0].state_dict()['state'], 'optimizer state not restored'

    # And the command itself continues from 2, not from 0.
    write_yml(yml, dict(opt, train=dict(opt['train'], total_iter=6)))
    out = run(['basicsr', 'train', '-opt', str(yml), '--auto_resume'], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert 'Resuming training from epoch' in log and 'iter: 2.' in log
    assert 'iter:       1,' not in log
    assert (exp / 'models' / 'net_g_6.pth').exists()


def test_resume_state_option_on_cpu(tmp_path, photo_pairs):
    opt = train_options('resume_path', photo_pairs, total_iter=2)
    yml = write_yml(tmp_path / 'train.yml', opt)
    assert run(['basicsr', 'train', '-opt', str(yml)], tmp_path).returncode == 0
    state = tmp_path / 'experiments/resume_path/training_states/2.state'
    opt = dict(opt, path=dict(opt['path'], resume_state=str(state)), train=dict(opt['train'], total_iter=4))
    out = run(['basicsr', 'train', '-opt', str(write_yml(yml, opt))], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / 'experiments/resume_path/models/net_g_4.pth').exists()


def test_torchrun_two_processes_gloo(tmp_path, photo_pairs):
    yml = write_yml(tmp_path / 'train.yml', train_options('ddp_cpu', photo_pairs, total_iter=2))
    out = run(['torchrun', '--nproc_per_node=2', '--master_port=29517', '-m', 'serpent_basicsr.train',
               '-opt', str(yml), '--launcher', 'pytorch'], tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    log = next((tmp_path / 'experiments/ddp_cpu').glob('train_*.log')).read_text()
    assert 'World size (gpu number): 2' in log
    assert (tmp_path / 'experiments/ddp_cpu/models/net_g_2.pth').exists()


def test_basicsr_test_writes_metrics_and_images(tmp_path, trained, photo_pairs):
    model = trained / 'experiments/swinir_cpu/models/net_g_4.pth'
    yml = write_yml(tmp_path / 'test.yml', eval_options('eval_tiny', photo_pairs, model))
    out = run(['python', '-m', 'serpent_basicsr.test', '-opt', str(yml)], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    results = tmp_path / 'results' / 'eval_tiny'
    assert len(list((results / 'visualization' / 'photos').glob('*.png'))) == 3
    log = next(results.glob('test_*.log')).read_text()
    assert '# psnr:' in log


def test_real_esrgan_style_user_script(tmp_path, photo_pairs):
    yml = write_yml(tmp_path / 'train.yml', train_options('own_script', photo_pairs, total_iter=2))
    script = tmp_path / 'my_train.py'
    script.write_text('import os\nimport serpent_basicsr  # registers Serpent\n'
                      'from basicsr.train import train_pipeline\n'
                      'if __name__ == "__main__":\n    train_pipeline(os.getcwd())\n')
    out = run(['python', str(script), '-opt', str(yml)], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / 'experiments/own_script/models/net_g_2.pth').exists()


@pytest.mark.parametrize('case', ['missing_file', 'yaml_syntax', 'unknown_type', 'missing_key', 'force_yml',
                                  'force_yml_unknown_key', 'missing_dataroot'])
def test_bad_input_gives_one_line_cause(tmp_path, photo_pairs, case, monkeypatch, capsys):
    opt = train_options('bad', photo_pairs)
    yml = tmp_path / 'train.yml'
    extra = []
    expect = ''
    if case == 'missing_file':
        yml, expect = tmp_path / 'nope.yml', 'no such option file'
    elif case == 'yaml_syntax':
        yml.write_text('name: bad\nmodel_type: SRModel\ndatasets:\n  train: [unclosed\nnum_gpu: 0\n')
        expect = 'line '
    elif case == 'unknown_type':
        opt['network_g']['type'] = 'SwinlR'
        write_yml(yml, opt)
        expect = "network_g.type: unknown arch type 'SwinlR'; did you mean SwinIR"
    elif case == 'missing_key':
        del opt['train']['total_iter']
        write_yml(yml, opt)
        expect = 'missing required option train.total_iter'
    elif case == 'force_yml':
        write_yml(yml, opt)
        extra, expect = ['--force_yml', 'train:ema_decay'], "--force_yml 'train:ema_decay'"
    elif case == 'force_yml_unknown_key':
        write_yml(yml, opt)
        extra, expect = ['--force_yml', 'train:ema_decy=0.5'], 'option train:ema_decy does not exist'
    elif case == 'missing_dataroot':
        opt['datasets']['train']['dataroot_gt'] = str(tmp_path / 'no_such_folder')
        write_yml(yml, opt)
        expect = 'no_such_folder'
    monkeypatch.chdir(tmp_path)
    assert main(['train', '-opt', str(yml)] + extra) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith('error:')]
    assert len(lines) == 1 and expect in lines[0], err[-3000:]
    assert 'Traceback' not in err
    assert not (tmp_path / 'experiments' / 'bad' / 'models').exists() or case == 'missing_dataroot'


def test_import_order_and_double_import(tmp_path):
    code = ('import basicsr, serpent_basicsr, importlib\n'
            'importlib.reload(serpent_basicsr)\nserpent_basicsr.compat.apply()\n'
            'from basicsr.utils.registry import ARCH_REGISTRY\nprint("SwinIR" in ARCH_REGISTRY)\n')
    out = run(['python', '-c', code], tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == 'True', out.stderr


def test_compat_alias_without_pth_hook(tmp_path):
    # Running from a source checkout (no .pth installed): `import serpent_basicsr` must be enough.
    code = ('import sys, serpent_basicsr_startup as s\n'
            'sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, s.FunctionalTensorAlias)]\n'
            'import serpent_basicsr, basicsr.data.degradations as d\n'
            'import torchvision.transforms.functional as F\nprint(d.rgb_to_grayscale is F.rgb_to_grayscale)\n')
    out = run(['python', '-c', code], REPO)
    assert out.returncode == 0 and out.stdout.strip() == 'True', out.stderr


def test_environment_tensorboard_cli_and_mamba_ssm_installed(tmp_path):
    # tensorboard's CLI dies when tb-nightly sits beside it; basicsr is installed without it.
    out = run(['tensorboard', '--version'], tmp_path)
    assert out.returncode == 0 and out.stdout.strip(), out.stderr[-2000:]
    # mamba-ssm is installed (its CUDA extension is not, on CPU machines) and stays unimported.
    code = ('import importlib.util, sys, serpent_basicsr, torch\n'
            'u = torch.randn(1, 4, 8); A = -torch.rand(4, 2); B = torch.randn(1, 1, 2, 8)\n'
            'serpent_basicsr.ops.selective_scan(u, u.abs(), A, B, B)\n'
            'print(importlib.util.find_spec("mamba_ssm") is not None, "mamba_ssm" in sys.modules)\n')
    out = run(['python', '-c', code], tmp_path)
    assert out.returncode == 0 and out.stdout.split() == ['True', 'False'], out.stderr[-2000:]


_FAULTS = """
import os, resource, sys
import serpent_basicsr, torch
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(16 * 2 ** 20)  # 64 MB: 16384 pages of 4 KB
print(os.environ['THP_MEM_ALLOC_ENABLE'], os.environ['OMP_WAIT_POLICY'],
      resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


_REUSE = """
import resource
import serpent_basicsr, torch
src = torch.ones(3 * 2 ** 19)  # 6 MB: a mid-size activation
torch.empty_like(src).fill_(1)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.empty_like(src).fill_(1)  # allocated, written, freed: like an activation per step
print(serpent_basicsr.memory.settings()['malloc'], (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) // 20)
"""


def test_malloc_reuse_is_opt_in_and_keeps_freed_tensors_without_page_faults(tmp_path):
    """With huge pages on, glibc maps and zeroes every new multi-MB tensor afresh (~300-500 faults per
    6 MB tensor here); SERPENT_MALLOC_REUSE=1 sets malloc thresholds that keep such blocks for reuse.
    Off by default (training peak memory grew ~10% with it)."""
    import os
    import subprocess
    if not sys.platform.startswith('linux'):
        pytest.skip('glibc malloc settings are Linux-only')
    env = {k: v for k, v in os.environ.items()
           if k not in ('THP_MEM_ALLOC_ENABLE', 'SERPENT_MEMORY_DEFAULTS', 'SERPENT_MALLOC_REUSE',
                        'MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_')}

    def run(**extra):
        out = subprocess.run([sys.executable, '-c', _REUSE], env=dict(env, **extra), cwd=tmp_path,
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        setting, faults = out.stdout.rsplit(maxsplit=1)
        return setting, int(faults)

    assert run()[0] == 'glibc defaults'
    setting, faults = run(SERPENT_MALLOC_REUSE='1')
    if setting.startswith('unchanged'):
        pytest.skip(f'malloc not tunable here: {setting}')
    assert setting == 'reuse: mmap_threshold=32MB trim_threshold=64MB'
    assert faults < 1536 // 8, faults  # a fresh 6 MB block is 1536 pages of 4 KB
    assert run(SERPENT_MALLOC_REUSE='1', MALLOC_TRIM_THRESHOLD_='131072')[0] == 'yours (MALLOC_*_THRESHOLD_ set)'
    assert run(SERPENT_MALLOC_REUSE='1', SERPENT_MEMORY_DEFAULTS='0')[0] == 'off (SERPENT_MEMORY_DEFAULTS=0)'


def _thp_mode() -> str:
    try:
        text = Path('/sys/kernel/mm/transparent_hugepage/enabled').read_text()
    except OSError:
        return 'absent'
    return text.split('[', 1)[1].split(']', 1)[0] if '[' in text else 'absent'


def test_import_defaults_huge_pages_and_passive_omp_unless_the_user_set_them(tmp_path):
    import os
    import subprocess
    env = {k: v for k, v in os.environ.items() if k not in ('THP_MEM_ALLOC_ENABLE', 'OMP_WAIT_POLICY')}
    out = subprocess.run([sys.executable, '-c', _FAULTS], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    thp, omp, faults = out.stdout.split()
    assert (thp, omp) == ('1', 'PASSIVE')
    if _thp_mode() in ('madvise', 'always'):
        # Huge pages: a few dozen faults of 2 MB instead of 16384 of 4 KB (allow fallbacks).
        assert int(faults) < 16384 // 4, faults
    out = subprocess.run([sys.executable, '-c', _FAULTS], env=dict(env, THP_MEM_ALLOC_ENABLE='0'), cwd=tmp_path,
                         capture_output=True, text=True)
    thp, _, faults = out.stdout.split()
    assert thp == '0'
    if _thp_mode() == 'madvise':
        assert int(faults) >= 16384 // 2, faults  # the user's choice wins: 4 KB pages
