"""Restoration models: BasicSR's SRModel / SRGANModel / ESRGANModel plus better monitoring.

Beyond BasicSR, at every validation these models
- write the first `val.tb_images` validation images (default 3) to TensorBoard as one
  side-by-side picture, LQ (resized to GT size) | output | GT, under the tag
  `val_images/<dataset name>/<image name>`, so the slider shows how they evolve;
- log the learning rate(s) to TensorBoard next to the losses (`lr`, or `lr_g`/`lr_d`);
- compute LPIPS when a `val.metrics` entry has `type: calculate_lpips` (alias `lpips`) and
  the `lpips` package and its weights are already on disk. Otherwise the entry is dropped
  with one warning line ("LPIPS skipped: ...") and training goes on: nothing is downloaded.
With `val.self_ensemble: true` the outputs of validation and `basicsr test` are the x8
geometric self-ensemble (mean over the 8 flips/rotations; 8x the time).

Everything else (PSNR/SSIM through `val.metrics`, EMA, checkpoints, resume) is BasicSR's own.
TensorBoard is only on when `logger.use_tb_logger` is true and the experiment name does not
contain 'debug' (BasicSR's rule); without a TensorBoard logger the images are simply skipped.
"""
from __future__ import annotations

import importlib
import importlib.util
import os.path as osp
from collections import OrderedDict
from typing import Any, Dict, Optional, Tuple
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
from basicsr.models.esrgan_model import ESRGANModel
from basicsr.models.srgan_model import SRGANModel
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger
from basicsr.utils.registry import METRIC_REGISTRY, MODEL_REGISTRY

from ..inference import geometric_self_ensemble

LPIPS_TYPES = ('calculate_lpips', 'lpips')
# torchvision weights each LPIPS backbone loads (lpips builds them with pretrained=True).
_LPIPS_BACKBONES = {
    'alex': 'AlexNet_Weights.IMAGENET1K_V1',
    'vgg': 'VGG16_Weights.IMAGENET1K_V1',
    'squeeze': 'SqueezeNet1_1_Weights.IMAGENET1K_V1',
}
_LPIPS_NETS: Dict[Tuple[str, str], torch.nn.Module] = {}


# ----------------------------------------------------------------------------------- LPIPS
def lpips_status(net: str = 'alex') -> Tuple[bool, str]:
    """Whether LPIPS with backbone `net` can run without any download, and if not, why.

    Checks, in order: the `lpips` package is importable, its linear-layer weights are in the
    package, and the torchvision backbone weights are in the torch hub cache
    (`torch.hub.get_dir()/checkpoints/<file>`; set TORCH_HOME to move it)."""
    if net not in _LPIPS_BACKBONES:
        return False, f'unknown LPIPS net {net!r} (choose one of {sorted(_LPIPS_BACKBONES)})'
    spec = importlib.util.find_spec('lpips')
    if spec is None or spec.origin is None:
        return False, 'the `lpips` package is not installed (pip install lpips)'
    linear = osp.join(osp.dirname(spec.origin), 'weights', 'v0.1', f'{net}.pth')
    if not osp.isfile(linear):
        return False, f'the lpips linear weights are missing: {linear}'
    backbone = lpips_backbone_path(net)
    if not osp.isfile(backbone):
        return False, f'the {net} backbone weights are not in the torch hub cache: {backbone} (copy the file there)'
    return True, 'ok'


def lpips_backbone_path(net: str) -> str:
    """Where torchvision looks for the backbone weights before it would download them."""
    from torchvision.models import get_weight
    url = get_weight(_LPIPS_BACKBONES[net]).url
    return osp.join(torch.hub.get_dir(), 'checkpoints', osp.basename(urlparse(url).path))


def _lpips_net(net: str, device: torch.device) -> torch.nn.Module:
    key = (net, str(device))
    if key not in _LPIPS_NETS:
        ok, why = lpips_status(net)
        if not ok:  # never let lpips/torchvision reach for the network
            raise RuntimeError(f'LPIPS unavailable: {why}')
        lpips = importlib.import_module('lpips')
        _LPIPS_NETS[key] = lpips.LPIPS(net=net, verbose=False).to(device).eval()
    return _LPIPS_NETS[key]


@METRIC_REGISTRY.register()
def calculate_lpips(img: np.ndarray, img2: np.ndarray, net: str = 'alex', crop_border: int = 0, **kwargs: Any) -> float:
    """LPIPS distance (lower is better) between two HWC BGR images in [0, 255] (BasicSR's
    metric convention). Raises RuntimeError when weights are not available locally."""
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border]
        img2 = img2[crop_border:-crop_border, crop_border:-crop_border]
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')

    def to_tensor(x: np.ndarray) -> torch.Tensor:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 2:
            x = np.repeat(x[..., None], 3, axis=2)
        x = x[..., ::-1].copy()  # BGR -> RGB
        return torch.from_numpy(x).permute(2, 0, 1)[None].to(device) / 127.5 - 1.0

    with torch.no_grad():
        return float(_lpips_net(net, device)(to_tensor(img), to_tensor(img2)).mean())


if 'lpips' not in METRIC_REGISTRY:  # short alias: `{type: lpips}`
    METRIC_REGISTRY._do_register('lpips', calculate_lpips)


# ----------------------------------------------------------------------------------- models
class RestorationMonitorMixin:
    """TensorBoard image panel, learning-rate scalars and guarded LPIPS for BasicSR models.
    Must come before the BasicSR model class in the bases."""

    def __init__(self, opt: Dict[str, Any]) -> None:
        super().__init__(opt)
        self._tb_image_ctx: Optional[Dict[str, Any]] = None
        self._drop_unavailable_lpips()

    # -- LPIPS: decided once, before the first validation fixes the metric names.
    def _drop_unavailable_lpips(self) -> None:
        val = self.opt.get('val') or {}
        metrics = val.get('metrics') or {}
        for name in [n for n, m in metrics.items() if (m or {}).get('type') in LPIPS_TYPES]:
            ok, why = lpips_status(metrics[name].get('net', 'alex'))
            if not ok:
                get_root_logger().warning(f'LPIPS skipped: {why}; metric {name!r} is not reported.')
                del metrics[name]
        if 'metrics' in val and not metrics:
            val['metrics'] = None

    # -- learning rate next to the losses (MessageLogger writes non-`l_` keys as they are).
    def get_current_log(self) -> Dict[str, float]:
        log = OrderedDict(super().get_current_log())
        lrs = [opt.param_groups[0]['lr'] for opt in self.optimizers]  # BasicSR's getter reports only the first
        names = ['lr'] if len(lrs) == 1 else ['lr_g', 'lr_d'] if len(lrs) == 2 else [f'lr_{i}' for i in range(len(lrs))]
        log.update({n: float(v) for n, v in zip(names, lrs)})
        return log

    # -- `val: {self_ensemble: true}`: validation / `basicsr test` outputs are the x8 self-ensemble.
    def test(self) -> None:
        if not (self.opt.get('val') or {}).get('self_ensemble'):
            return super().test()
        net = self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                self.output = geometric_self_ensemble(net, self.lq)
        finally:
            net.train(was_training)

    # -- image panel: BasicSR calls feed_data / test / get_current_visuals once per image.
    def feed_data(self, data: Dict[str, Any]) -> None:
        super().feed_data(data)
        self._last_lq_path = data.get('lq_path')

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        count = int(self.opt['val'].get('tb_images', 3))
        if tb_logger is not None and count > 0:
            self._tb_image_ctx = dict(
                tb=tb_logger, dataset=dataloader.dataset.opt['name'], iter=current_iter, left=count)
        try:
            super().nondist_validation(dataloader, current_iter, tb_logger, save_img)
        finally:
            self._tb_image_ctx = None
            if tb_logger is not None:
                tb_logger.flush()

    def get_current_visuals(self):
        visuals = super().get_current_visuals()
        ctx = self._tb_image_ctx
        if ctx is not None and ctx['left'] > 0:
            ctx['left'] -= 1
            path = self._last_lq_path
            path = path[0] if isinstance(path, (list, tuple)) else path
            name = osp.splitext(osp.basename(path))[0] if path else f'image{ctx["left"]}'
            ctx['tb'].add_image(f'val_images/{ctx["dataset"]}/{name}', side_by_side(visuals), ctx['iter'])
        return visuals


def side_by_side(visuals: Dict[str, torch.Tensor]) -> torch.Tensor:
    """CHW RGB picture in [0, 1]: LQ resized (bicubic) to the output size | output | GT."""
    out = visuals['result'][0].float().clamp(0, 1)
    lq = visuals['lq'][0:1].float()
    if lq.shape[-2:] != out.shape[-2:]:
        lq = F.interpolate(lq, size=out.shape[-2:], mode='bicubic', align_corners=False)
    panels = [lq[0].clamp(0, 1), out]
    if 'gt' in visuals and visuals['gt'][0].shape == out.shape:
        panels.append(visuals['gt'][0].float().clamp(0, 1))
    return torch.cat(panels, dim=2)


@MODEL_REGISTRY.register()
class RestorationModel(RestorationMonitorMixin, SRModel):
    """SRModel (pixel/perceptual loss, EMA) with the monitoring described in the module doc."""


@MODEL_REGISTRY.register()
class RestorationGANModel(RestorationMonitorMixin, SRGANModel):
    """SRGANModel (network_d, gan_opt, ...) with the same monitoring."""


@MODEL_REGISTRY.register()
class RestorationESRGANModel(RestorationMonitorMixin, ESRGANModel):
    """ESRGANModel (relativistic GAN) with the same monitoring."""


__all__ = ['RestorationModel', 'RestorationGANModel', 'RestorationESRGANModel', 'RestorationMonitorMixin',
           'calculate_lpips', 'lpips_status', 'lpips_backbone_path', 'side_by_side']
