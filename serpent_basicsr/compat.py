"""Narrow fixes that let basicsr 1.4.2 run on torch 2.14 / torchvision 0.29 / CPU-only machines.

Each fix says why it exists and is covered by tests/test_compat.py. Nothing here copies
BasicSR: functions are wrapped or replaced one at a time, and only where the original is
broken on the paths we use. `apply()` is idempotent and runs on `import serpent_basicsr`.
"""
from __future__ import annotations

import functools
import os
import os.path as osp

import serpent_basicsr_startup

_APPLIED = False


def _cuda_usable() -> bool:
    import torch
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def _patch_resume_state() -> None:
    """basicsr.train.load_resume_state maps the state to `torch.cuda.current_device()`, which
    raises on a machine without a GPU; torch >= 2.6 loads with weights_only=True, which
    rejects the training state (optimiser and scheduler state hold e.g. Counters); and
    `--auto_resume` looks in ./experiments rather than under the run's root path. The state
    file is one the trainer wrote, so it is loaded fully, onto the GPU when the run uses one
    and onto the CPU otherwise."""
    import torch
    import basicsr.train as bt

    def load_resume_state(opt):
        resume_state_path = None
        if opt['auto_resume']:
            state_dir = opt['path'].get('training_states') or osp.join('experiments', opt['name'], 'training_states')
            states = [float(v.split('.state')[0]) for v in (os.listdir(state_dir) if osp.isdir(state_dir) else [])
                      if v.endswith('.state')]
            if states:
                resume_state_path = osp.join(state_dir, f'{max(states):.0f}.state')
                opt['path']['resume_state'] = resume_state_path
        elif opt['path'].get('resume_state'):
            resume_state_path = opt['path']['resume_state']
        if resume_state_path is None:
            return None
        if not osp.isfile(resume_state_path):
            raise FileNotFoundError(f'path.resume_state: no such file: {resume_state_path}')
        use_gpu = _cuda_usable() and opt.get('num_gpu', 0) != 0
        device = torch.device('cuda', torch.cuda.current_device()) if use_gpu else torch.device('cpu')
        state = torch.load(resume_state_path, map_location=device, weights_only=False)
        bt.check_resume(opt, state['iter'])
        return state

    bt.load_resume_state = load_resume_state


def _patch_epoch_count() -> None:
    """basicsr counts iterations per epoch as ceil(images / batch), but its train loader drops
    the last incomplete batch, so with few images training ends before `total_iter` (and the
    final checkpoint is never written). Recount epochs from the loader's real length."""
    import math

    import basicsr.train as bt
    original = bt.create_train_val_dataloader

    @functools.wraps(original)
    def create_train_val_dataloader(opt, logger):
        train_loader, train_sampler, val_loaders, total_epochs, total_iters = original(opt, logger)
        if train_loader is not None and len(train_loader) > 0:
            total_epochs = max(total_epochs, math.ceil(total_iters / len(train_loader)))
        return train_loader, train_sampler, val_loaders, total_epochs, total_iters

    bt.create_train_val_dataloader = create_train_val_dataloader


def _patch_dist() -> None:
    """basicsr's init_dist hard-codes nccl and calls torch.cuda.set_device(rank % device_count)
    (ZeroDivisionError without GPUs), for both the pytorch (torchrun) and slurm launchers.
    We pick gloo when there is no usable GPU and only pin a device when there is one.
    BaseModel.model_to_device likewise passes device_ids=[current cuda device] to DDP."""
    import subprocess

    import torch
    import torch.distributed as dist
    import basicsr.utils.dist_util as du
    import basicsr.utils.options as bo
    from basicsr.models import base_model

    def init_dist(launcher, backend=None, **kwargs):
        use_cuda = _cuda_usable()
        backend = backend or ('nccl' if use_cuda else 'gloo')
        if launcher == 'pytorch':
            rank = int(os.environ['RANK'])
        elif launcher == 'slurm':
            rank = int(os.environ['SLURM_PROCID'])
            ntasks = int(os.environ['SLURM_NTASKS'])
            node_list = os.environ['SLURM_NODELIST']
            addr = subprocess.getoutput(f'scontrol show hostname {node_list} | head -n1')
            os.environ.setdefault('MASTER_PORT', str(kwargs.get('port', 29500)))
            os.environ.setdefault('MASTER_ADDR', addr)
            os.environ['WORLD_SIZE'] = str(ntasks)
            os.environ['LOCAL_RANK'] = str(rank % max(torch.cuda.device_count(), 1))
            os.environ['RANK'] = str(rank)
        else:
            raise ValueError(f'--launcher: invalid launcher type {launcher!r} (none, pytorch or slurm)')
        if use_cuda:
            torch.cuda.set_device(rank % torch.cuda.device_count())
        dist.init_process_group(backend=backend)

    du.init_dist = init_dist
    bo.init_dist = init_dist  # parse_options imported the name directly

    original = base_model.BaseModel.model_to_device

    @functools.wraps(original)
    def model_to_device(self, net):
        if self.opt.get('dist') and self.device.type == 'cpu':
            net = net.to(self.device)
            find_unused = self.opt.get('find_unused_parameters', False)
            return torch.nn.parallel.DistributedDataParallel(net, find_unused_parameters=find_unused)
        return original(self, net)

    base_model.BaseModel.model_to_device = model_to_device


def apply() -> None:
    """Apply every fix once. Safe to call again, and safe if basicsr was imported first."""
    global _APPLIED
    if _APPLIED:
        return
    serpent_basicsr_startup.install()
    _patch_resume_state()
    _patch_epoch_count()
    _patch_dist()
    _APPLIED = True
