"""One configurable degradation pipeline: blur -> bicubic downsampling -> Gaussian noise -> JPEG.

The classical model y = JPEG((x * k) downsampled by s + n). Every random choice is drawn from a
`numpy.random.Generator` passed in by the caller, so a degradation is reproducible from a seed.

Conventions (what the tests check):
- Images are float32 HWC in [0, 1] (BGR, as BasicSR reads them); kernels are float64, sum 1.
- `blur(img, k)` is a true 2-D convolution with `k` (not a correlation: the kernel is flipped
  before cv2.filter2D) with `BORDER_REFLECT_101` borders (numpy's `np.pad(mode='reflect')`:
  ... c b | a b c ... , the edge pixel is not repeated). Gaussian kernels are point-symmetric, so
  the flip only matters for motion kernels.
- Gaussian kernels come from basicsr.data.degradations (`bivariate_Gaussian` on `mesh_grid`);
  parameters are drawn here from the Generator (basicsr's `random_bivariate_Gaussian` uses the
  global numpy state, which is neither per-image reproducible nor worker-safe).
- Motion kernels (BasicSR has none): a random trajectory of length `motion_length` pixels, a
  straight segment at a uniform random angle bent by a Brownian change of direction whose total
  standard deviation is `motion_curvature` radians; the path is sampled densely, splatted onto the
  grid with bilinear weights, centred on its centroid (so the blur does not shift the image) and
  normalised to sum 1.
- Downsampling by an integer `scale` uses MATLAB-style bicubic with antialiasing
  (basicsr.utils.matlab_functions.imresize, the usual SR convention) or, with
  `resize: cv2`, cv2.resize INTER_CUBIC (no antialiasing). The output is exactly H/scale x W/scale;
  the input must be divisible by `scale` (the dataset crops to a multiple first).
- Noise: additive white Gaussian noise, `noise_std` in 8-bit levels (std / 255 in [0, 1] units),
  then clipped to [0, 1].
- JPEG: the image is rounded to uint8 and passed to cv2.imencode with an int quality (basicsr's
  `random_add_jpg_compression` passes a float quality and a float image, which OpenCV >= 4.14
  rejects), then decoded back to float32.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import cv2
import numpy as np

from basicsr.data.degradations import bivariate_Gaussian, mesh_grid

Range = Tuple[float, float]

BLURS = ('gaussian', 'motion', 'none')
KERNEL_TYPES = ('isotropic', 'anisotropic')
RESIZES = ('matlab', 'cv2')

# Option names and defaults shared by the datasets and datasets/make_degraded_pairs.py.
DEFAULTS: Dict[str, Any] = {
    'blur': 'gaussian',
    'kernel_size': 61,
    'sigma': 3.0,
    'kernel_type': 'isotropic',
    'sigma_y': None,            # anisotropic only; None = same as sigma
    'theta': [-math.pi, math.pi],  # anisotropic rotation (radians)
    'motion_length': [10.0, 30.0],
    'motion_curvature': 0.5,
    'noise_std': 0.0,
    'jpeg_quality': None,
    'scale': 1,
    'resize': 'matlab',
}


def _range(value: Any, name: str, low: float = -math.inf, high: float = math.inf) -> Range:
    """A number or a [min, max] pair as a (min, max) tuple, checked against [low, high]."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f'{name}: expected a number or [min, max], got {value!r}')
        lo, hi = value
    else:
        lo = hi = value
    try:
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        raise ValueError(f'{name}: expected a number or [min, max], got {value!r}') from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f'{name}: must be finite, got {value!r}')
    if lo > hi:
        raise ValueError(f'{name}: min {lo} is larger than max {hi}')
    if lo < low or hi > high:
        raise ValueError(f'{name}: must lie in [{low}, {high}], got {value!r}')
    return lo, hi


def _draw(rng: np.random.Generator, bounds: Range) -> float:
    return bounds[0] if bounds[0] == bounds[1] else float(rng.uniform(bounds[0], bounds[1]))


@dataclass
class DegradationConfig:
    """Validated degradation options (see DEFAULTS and the module docstring)."""
    blur: str = 'gaussian'
    kernel_size: int = 61
    sigma: Range = (3.0, 3.0)
    kernel_type: str = 'isotropic'
    sigma_y: Range = (3.0, 3.0)
    theta: Range = (-math.pi, math.pi)
    motion_length: Range = (10.0, 30.0)
    motion_curvature: float = 0.5
    noise_std: Range = (0.0, 0.0)
    jpeg_quality: Optional[Tuple[int, int]] = None
    scale: int = 1
    resize: str = 'matlab'

    @classmethod
    def from_options(cls, opt: Mapping[str, Any]) -> 'DegradationConfig':
        """Read BasicSR-style options (unknown keys are ignored: they belong to the dataset)."""
        o = {k: opt.get(k, v) for k, v in DEFAULTS.items()}
        blur = str(o['blur']).lower()
        if blur not in BLURS:
            raise ValueError(f'blur: expected one of {BLURS}, got {o["blur"]!r}')
        ks = o['kernel_size']
        if isinstance(ks, bool) or not isinstance(ks, (int, np.integer)) or ks < 1:
            raise ValueError(f'kernel_size: expected a positive odd integer, got {ks!r}')
        if ks % 2 == 0:
            raise ValueError(f'kernel_size: must be odd (the kernel needs a centre pixel), got {ks}')
        sigma = _range(o['sigma'], 'sigma')
        if sigma[0] <= 0:
            raise ValueError(f'sigma: must be positive, got {o["sigma"]!r}')
        kernel_type = str(o['kernel_type']).lower()
        if kernel_type not in KERNEL_TYPES:
            raise ValueError(f'kernel_type: expected one of {KERNEL_TYPES}, got {o["kernel_type"]!r}')
        sigma_y = sigma if o['sigma_y'] is None else _range(o['sigma_y'], 'sigma_y')
        if sigma_y[0] <= 0:
            raise ValueError(f'sigma_y: must be positive, got {o["sigma_y"]!r}')
        theta = _range(o['theta'], 'theta')
        length = _range(o['motion_length'], 'motion_length', 0.0)
        if blur == 'motion' and length[1] > ks - 1:
            raise ValueError(f'motion_length: {length[1]} does not fit in kernel_size {ks} '
                             f'(must be at most kernel_size - 1 = {ks - 1})')
        curvature = float(o['motion_curvature'])
        if curvature < 0:
            raise ValueError(f'motion_curvature: must be >= 0, got {curvature}')
        noise = _range(o['noise_std'], 'noise_std', 0.0)
        jpeg = None
        if o['jpeg_quality'] is not None:
            q = _range(o['jpeg_quality'], 'jpeg_quality', 1, 100)
            if q[0] != int(q[0]) or q[1] != int(q[1]):
                raise ValueError(f'jpeg_quality: expected integers in [1, 100], got {o["jpeg_quality"]!r}')
            jpeg = (int(q[0]), int(q[1]))
        scale = o['scale']
        if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
            raise ValueError(f'scale: expected a positive integer downscale factor, got {scale!r}')
        resize = str(o['resize']).lower()
        if resize not in RESIZES:
            raise ValueError(f'resize: expected one of {RESIZES}, got {o["resize"]!r}')
        return cls(blur, int(ks), sigma, kernel_type, sigma_y, theta, length, curvature, noise, jpeg, int(scale),
                   resize)


@dataclass
class Degraded:
    """The result of one degradation: the LQ image, the blur kernel used and the drawn parameters."""
    lq: np.ndarray
    kernel: np.ndarray
    params: Dict[str, Any] = field(default_factory=dict)


def gaussian_kernel(kernel_size: int, sigma_x: float, sigma_y: Optional[float] = None,
                    theta: float = 0.0) -> np.ndarray:
    """Normalised (an)isotropic Gaussian kernel, via basicsr's bivariate_Gaussian."""
    isotropic = sigma_y is None
    grid, _, _ = mesh_grid(kernel_size)
    return bivariate_Gaussian(kernel_size, sigma_x, sigma_x if isotropic else sigma_y, theta, grid=grid,
                              isotropic=isotropic)


def motion_kernel(kernel_size: int, length: float, angle: float, curvature: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Random-trajectory motion kernel (see the module docstring), float64, sums to 1."""
    if kernel_size % 2 == 0:
        raise ValueError(f'kernel_size: must be odd, got {kernel_size}')
    n = max(2, int(math.ceil(length * 4)) + 1)  # 4 samples per pixel of path
    turns = rng.normal(0.0, 1.0, n - 1) * (curvature / math.sqrt(n - 1))
    angles = angle + np.concatenate([[0.0], np.cumsum(turns)[:-1]])
    step = length / (n - 1)
    xs = np.concatenate([[0.0], np.cumsum(step * np.cos(angles))])
    ys = np.concatenate([[0.0], np.cumsum(step * np.sin(angles))])
    c = kernel_size // 2
    xs, ys = xs - xs.mean() + c, ys - ys.mean() + c
    # A bent path may span less than `length`, never more, so it fits once centred.
    xs = np.clip(xs, 0, kernel_size - 1 - 1e-9)
    ys = np.clip(ys, 0, kernel_size - 1 - 1e-9)
    kernel = np.zeros((kernel_size, kernel_size))
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    for dy, dx, w in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        np.add.at(kernel, (np.minimum(y0 + dy, kernel_size - 1), np.minimum(x0 + dx, kernel_size - 1)), w)
    return kernel / kernel.sum()


def blur(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve every channel with `kernel`, BORDER_REFLECT_101 borders; float32 in, float32 out."""
    if kernel.shape == (1, 1):
        return img.astype(np.float32, copy=True) * np.float32(kernel[0, 0])
    flipped = np.ascontiguousarray(kernel[::-1, ::-1], dtype=np.float32)
    out = cv2.filter2D(img.astype(np.float32, copy=False), -1, flipped, borderType=cv2.BORDER_REFLECT_101)
    return out.reshape(img.shape)


def downsample(img: np.ndarray, scale: int, method: str = 'matlab') -> np.ndarray:
    """Bicubic downsampling by an integer factor; H and W must be divisible by `scale`."""
    if scale == 1:
        return img
    h, w = img.shape[:2]
    if h % scale or w % scale:
        raise ValueError(f'scale: image size {h}x{w} is not divisible by the downscale factor {scale}')
    if method == 'cv2':
        out = cv2.resize(img, (w // scale, h // scale), interpolation=cv2.INTER_CUBIC)
    else:
        from basicsr.utils.matlab_functions import imresize
        out = imresize(img, 1.0 / scale)
    return np.ascontiguousarray(out.reshape(h // scale, w // scale, *img.shape[2:]), dtype=np.float32)


def add_noise(img: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Additive white Gaussian noise with std in 8-bit levels, clipped to [0, 1]."""
    if std <= 0:
        return img
    noisy = img + rng.normal(0.0, std / 255.0, img.shape).astype(np.float32)
    return np.clip(noisy, 0.0, 1.0)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip at an integer quality (1..100) through OpenCV."""
    q = int(quality)
    u8 = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode('.jpg', u8, [int(cv2.IMWRITE_JPEG_QUALITY), q])
    if not ok:
        raise RuntimeError(f'jpeg_quality: OpenCV failed to encode a JPEG at quality {q}')
    out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return (out.astype(np.float32) / 255.0).reshape(img.shape)


class Degradation:
    """The pipeline configured by options; `__call__(img, rng)` returns a `Degraded`."""

    def __init__(self, opt: Union[Mapping[str, Any], DegradationConfig, None] = None):
        self.cfg = opt if isinstance(opt, DegradationConfig) else DegradationConfig.from_options(opt or {})

    def sample_kernel(self, rng: np.random.Generator) -> Tuple[np.ndarray, Dict[str, Any]]:
        c = self.cfg
        if c.blur == 'none':
            return np.ones((1, 1)), {'blur': 'none'}
        if c.blur == 'motion':
            length = _draw(rng, c.motion_length)
            angle = float(rng.uniform(-math.pi, math.pi))
            kernel = motion_kernel(c.kernel_size, length, angle, c.motion_curvature, rng)
            return kernel, {'blur': 'motion', 'length': length, 'angle': angle, 'curvature': c.motion_curvature}
        sigma_x = _draw(rng, c.sigma)
        if c.kernel_type == 'isotropic':
            return gaussian_kernel(c.kernel_size, sigma_x), {'blur': 'gaussian', 'sigma_x': sigma_x,
                                                             'sigma_y': sigma_x, 'theta': 0.0}
        sigma_y = _draw(rng, c.sigma_y)
        theta = _draw(rng, c.theta)
        kernel = gaussian_kernel(c.kernel_size, sigma_x, sigma_y, theta)
        return kernel, {'blur': 'gaussian', 'sigma_x': sigma_x, 'sigma_y': sigma_y, 'theta': theta}

    def context_margin(self) -> int:
        """Pixels of surroundings that decide the blurred, downsampled value at a pixel: the kernel's
        radius plus the bicubic support (2 * scale), rounded up to a multiple of scale."""
        s = self.cfg.scale
        reach = self.cfg.kernel_size // 2 + (2 * s if s > 1 else 0)
        return -(-reach // s) * s

    def __call__(self, img: np.ndarray, rng: np.random.Generator,
                 crop: Optional[Tuple[int, int, int]] = None) -> Degraded:
        """Degrade `img`. With `crop` = (top, left, size), multiples of scale, `img` is the crop's
        context: it is blurred and downsampled whole and the LQ of the crop is cut out before noise
        and JPEG, so the LQ is what degrading the whole photo gives there (no artificial border)."""
        c = self.cfg
        kernel, params = self.sample_kernel(rng)
        out = blur(img, kernel)
        out = np.clip(downsample(out, c.scale, c.resize), 0.0, 1.0)  # bicubic overshoots
        if crop is not None:
            if any(v % c.scale for v in crop):
                raise ValueError(f'crop: {crop} must be multiples of scale {c.scale}')
            top, left, size = (v // c.scale for v in crop)
            out = np.ascontiguousarray(out[top:top + size, left:left + size])
        params.update(scale=c.scale, resize=c.resize)
        std = _draw(rng, c.noise_std)
        out = add_noise(out, std, rng)
        params['noise_std'] = std
        if c.jpeg_quality is not None:
            q = int(rng.integers(c.jpeg_quality[0], c.jpeg_quality[1] + 1))
            out = jpeg(out, q)
            params['jpeg_quality'] = q
        return Degraded(out.astype(np.float32, copy=False), kernel, params)


def describe(cfg: DegradationConfig) -> Dict[str, Any]:
    """JSON-friendly view of a config (for logs and datasets/make_degraded_pairs.py)."""
    d = dict(cfg.__dict__)
    for k, v in d.items():
        if isinstance(v, tuple):
            d[k] = list(v)
    return d


__all__ = ['DEFAULTS', 'DegradationConfig', 'Degraded', 'Degradation', 'gaussian_kernel', 'motion_kernel', 'blur',
           'downsample', 'add_noise', 'jpeg', 'describe']
