"""Classical non-blind deconvolution baseline (known Gaussian kernel) and its evaluation.

Method: scikit-image's Wiener filter (`skimage.restoration.wiener`), per colour channel, on
the image reflect-padded by the kernel radius (the filter works in the Fourier domain, i.e.
assumes a periodic image; without padding the wrapped borders cost ~9 dB). The balance
(regularisation) is chosen per evaluation as the best mean PSNR over BALANCES on the set
being evaluated: an oracle choice, so the classical row is an upper bound for this method.

Why Wiener: measured on 4 scikit-image photos (256 x 256, 61 x 61 Gaussian, sigma 3, 8-bit
LQ, no noise): blurred 24.57 dB / 0.697; Richardson-Lucy 10/30/100 iterations 26.10 / 26.85 /
27.47 dB (and 3-40 s); Wiener balance 1e-3 28.30 dB / 0.816, 3e-4 28.50 dB / 0.817,
1e-4 28.50 dB / 0.803; unsupervised Wiener 24.51 dB / 0.469. Richardson-Lucy stays
available (method='rl').

Metrics are BasicSR's (`basicsr.metrics.calculate_metric`): PSNR/SSIM on 8-bit RGB, all
channels, crop_border 0 (no border is special for deblurring at the same size), the same
settings as the validation in the option files, so rows compare with the training log.
"""
from __future__ import annotations

import copy
import os.path as osp
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

# The same blur and kernel as the datasets, so the baseline sees exactly their degradation.
from serpent_basicsr.data.degradations import blur, gaussian_kernel as _dataset_gaussian_kernel

BALANCES: Tuple[float, ...] = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
DEFAULT_METRICS: Dict[str, Dict[str, Any]] = {
    'psnr': dict(type='calculate_psnr', crop_border=0, test_y_channel=False),
    'ssim': dict(type='calculate_ssim', crop_border=0, test_y_channel=False),
}


def gaussian_kernel(kernel_size: int = 61, sigma: float = 3.0) -> np.ndarray:
    """Isotropic Gaussian kernel summing to 1: the dataset's own (serpent_basicsr.data.degradations)."""
    if kernel_size % 2 != 1 or sigma <= 0:
        raise ValueError(f'kernel_size must be odd and sigma > 0, got {kernel_size}, {sigma}')
    return _dataset_gaussian_kernel(kernel_size, sigma).astype(np.float64)


def deconvolve(img: np.ndarray, kernel: np.ndarray, method: str = 'wiener', balance: float = 3e-4,
               iterations: int = 30) -> np.ndarray:
    """Non-blind deconvolution of a float image in [0, 1] (H x W or H x W x C), per channel.

    method 'wiener' (skimage.restoration.wiener with `balance`) or 'rl'
    (richardson_lucy with `iterations`). Returns float64 in [0, 1], same shape."""
    from skimage import restoration

    x = np.asarray(img, np.float64)
    squeeze = x.ndim == 2
    if squeeze:
        x = x[..., None]
    pad = kernel.shape[0] // 2
    mode = 'reflect' if min(x.shape[:2]) > pad else 'symmetric'
    xp = np.pad(x, ((pad, pad), (pad, pad), (0, 0)), mode=mode)
    out = np.empty_like(xp)
    for c in range(xp.shape[2]):
        if method == 'wiener':
            out[..., c] = restoration.wiener(xp[..., c], kernel, balance, clip=True)
        elif method == 'rl':
            out[..., c] = restoration.richardson_lucy(xp[..., c], kernel, num_iter=iterations, clip=True)
        else:
            raise ValueError(f"method must be 'wiener' or 'rl', got {method!r}")
    out = np.clip(out[pad:-pad, pad:-pad], 0.0, 1.0)
    return out[..., 0] if squeeze else out


# ------------------------------------------------------------------------ validation pairs
# name, LQ float RGB HWC [0, 1], GT float RGB HWC [0, 1], the blur kernel used (None: not known)
Pair = Tuple[str, np.ndarray, np.ndarray, Optional[np.ndarray]]


def pairs_from_dataset(dataset_opt: Dict[str, Any]) -> Iterator[Pair]:
    """LQ/GT pairs exactly as a BasicSR dataset (e.g. GaussianDeblurDataset) produces them,
    with the kernel the dataset reports per item (`kernel`), if any."""
    import serpent_basicsr  # noqa: F401  (registers our datasets)
    from basicsr.data import build_dataset

    opt = copy.deepcopy(dict(dataset_opt))
    opt.setdefault('phase', 'val')
    opt.setdefault('scale', 1)
    ds = build_dataset(opt)
    for i in range(len(ds)):
        item = ds[i]
        path = item.get('lq_path') or item.get('gt_path') or f'{i:04d}'
        name = osp.splitext(osp.basename(str(path)))[0]
        kernel = item.get('kernel')
        kernel = None if kernel is None else kernel.double().numpy()
        yield name, _chw_to_hwc(item['lq']), _chw_to_hwc(item['gt']), kernel


def pairs_from_folder(gt_dir: str, kernel: np.ndarray, noise_sigma: float = 0.0, seed: int = 0) -> Iterator[Pair]:
    """Blur every image in `gt_dir` with `kernel` (+ optional Gaussian noise, sigma in [0, 1]
    units), for folders without a dataset option."""
    import cv2

    from serpent_basicsr.inference import list_images

    if not osp.isdir(gt_dir):
        raise FileNotFoundError(f'validation folder not found: {gt_dir}')
    files = list_images(gt_dir)
    if not files:
        raise FileNotFoundError(f'no images in validation folder {gt_dir}')
    rng = np.random.default_rng(seed)
    for f in files:
        img = cv2.imread(f, cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f'cannot read image {f} (corrupt or unsupported format)')
        gt = img[..., ::-1].astype(np.float64) / 255.0
        lq = blur(gt, kernel)
        if noise_sigma:
            lq = lq + rng.normal(0, noise_sigma, lq.shape)
        yield osp.splitext(osp.basename(f))[0], np.clip(lq, 0, 1).astype(np.float32), gt.astype(np.float32), kernel


def _chw_to_hwc(t) -> np.ndarray:
    return t.detach().cpu().float().clamp(0, 1).numpy().transpose(1, 2, 0)


def to_uint8_bgr(img: np.ndarray) -> np.ndarray:
    """Float RGB [0, 1] -> uint8 BGR, rounding like basicsr.utils.tensor2img."""
    return (np.clip(img, 0, 1)[..., ::-1] * 255.0).round().astype(np.uint8)


# ------------------------------------------------------------------------ evaluation
def score(outputs: Sequence[np.ndarray], gts: Sequence[np.ndarray],
          metrics: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, float]:
    """Mean of each BasicSR metric over float RGB [0, 1] images (8-bit, as in validation)."""
    from basicsr.metrics import calculate_metric

    metrics = metrics or DEFAULT_METRICS
    out: Dict[str, float] = {}
    for name, mopt in metrics.items():
        vals = [calculate_metric(dict(img=to_uint8_bgr(o), img2=to_uint8_bgr(g)), mopt) for o, g in zip(outputs, gts)]
        out[name] = float(np.mean(vals))
    return out


def evaluate_baselines(pairs: Sequence[Pair], kernel: Optional[np.ndarray] = None,
                       metrics: Optional[Dict[str, Dict[str, Any]]] = None,
                       balances: Sequence[float] = BALANCES) -> Dict[str, Dict[str, Any]]:
    """{'blurred': {...}, 'classical': {..., 'method': ..., 'balance': ...}} on the pairs.
    Each pair is deconvolved with its own kernel, else with `kernel`. The Wiener balance is
    the best mean PSNR over `balances` (oracle, see module doc)."""
    pairs = list(pairs)
    if not pairs:
        raise ValueError('no validation pairs to evaluate')
    gts = [p[2] for p in pairs]
    result: Dict[str, Dict[str, Any]] = {'blurred': score([p[1] for p in pairs], gts, metrics)}
    best: Optional[Tuple[float, float, List[np.ndarray]]] = None
    for b in balances:
        outs = [deconvolve(p[1], _kernel_of(p, kernel), 'wiener', balance=b) for p in pairs]
        psnr = score(outs, gts, {'psnr': DEFAULT_METRICS['psnr']})['psnr']
        if best is None or psnr > best[0]:
            best = (psnr, b, outs)
    result['classical'] = dict(score(best[2], gts, metrics), method='wiener', balance=best[1])
    return result


def _kernel_of(pair: Pair, default: Optional[np.ndarray]) -> np.ndarray:
    k = pair[3] if len(pair) > 3 and pair[3] is not None else default
    if k is None:
        raise ValueError(f'{pair[0]}: the blur kernel is not known (give one to evaluate_baselines)')
    return np.asarray(k, np.float64)


def kernel_from_dataset_opt(dataset_opt: Dict[str, Any]) -> np.ndarray:
    """The known blur kernel of a GaussianDeblurDataset-style option (sizes/sigma keys as used
    by serpent_basicsr.data.gaussian_deblur_dataset; defaults 61 / 3.0)."""
    size = dataset_opt.get('kernel_size', 61)
    sigma = dataset_opt.get('sigma', 3.0)
    if isinstance(sigma, (list, tuple)):
        if len(set(sigma)) != 1:
            raise ValueError(f'the classical baseline needs one known kernel; the dataset samples sigma from {sigma}')
        sigma = sigma[0]
    return gaussian_kernel(int(size), float(sigma))


__all__ = ['BALANCES', 'DEFAULT_METRICS', 'gaussian_kernel', 'blur', 'deconvolve', 'pairs_from_dataset',
           'pairs_from_folder', 'score', 'evaluate_baselines', 'kernel_from_dataset_opt', 'to_uint8_bgr']
