"""The degradation pipeline (issue 2): kernels, true convolution with reflect-101 borders, bicubic
downsampling, noise, JPEG on OpenCV 5, determinism and option errors."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from scipy.signal import convolve2d

import serpent_basicsr  # noqa: F401
from basicsr.data.degradations import bivariate_Gaussian
from basicsr.utils.matlab_functions import imresize
from serpent_basicsr.data.degradations import (Degradation, DegradationConfig, add_noise, blur, downsample,
                                               gaussian_kernel, jpeg, motion_kernel)


def direct_convolution(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Reference: reflect-101 padding (numpy 'reflect'), then a plain 2-D convolution per channel."""
    p = kernel.shape[0] // 2
    return np.stack([convolve2d(np.pad(img[..., c].astype(np.float64), p, mode='reflect'), kernel, mode='valid')
                     for c in range(img.shape[2])], axis=-1)


@pytest.fixture
def photo() -> np.ndarray:
    from skimage import data
    img = cv2.resize(data.astronaut()[:, :, ::-1], (72, 56), interpolation=cv2.INTER_AREA)
    return img.astype(np.float32) / 255.0


def test_gaussian_kernels_come_from_basicsr():
    k = gaussian_kernel(61, 3.0)
    assert k.shape == (61, 61) and math.isclose(k.sum(), 1.0)
    np.testing.assert_allclose(k, bivariate_Gaussian(61, 3.0, 3.0, 0.0, isotropic=True))
    a = gaussian_kernel(21, 1.0, 4.0, 0.6)
    np.testing.assert_allclose(a, bivariate_Gaussian(21, 1.0, 4.0, 0.6, isotropic=False))
    assert not np.allclose(a, a.T)  # anisotropic and rotated
    np.testing.assert_allclose(a, a[::-1, ::-1])  # Gaussians are point-symmetric


def test_motion_kernel_is_a_centred_normalised_trajectory():
    k = motion_kernel(31, 20.0, 0.3, 0.0, np.random.default_rng(0))
    assert math.isclose(k.sum(), 1.0) and k.min() >= 0
    ys, xs = np.mgrid[:31, :31]
    assert abs((k * xs).sum() - 15) < 0.5 and abs((k * ys).sum() - 15) < 0.5  # centroid at the centre
    support = np.argwhere(k > 1e-3)
    extent = np.hypot(*(support.max(0) - support.min(0)))
    assert 17 <= extent <= 23  # a straight path of length 20 at 0.3 rad
    np.testing.assert_array_equal(k, motion_kernel(31, 20.0, 0.3, 0.0, np.random.default_rng(0)))
    bent = motion_kernel(31, 20.0, 0.3, 2.0, np.random.default_rng(1))
    assert math.isclose(bent.sum(), 1.0) and not np.allclose(bent, k)


@pytest.mark.parametrize('which', ['gaussian', 'motion'])
def test_blur_is_a_true_convolution_with_reflect101_borders(photo, which):
    rng = np.random.default_rng(3)
    kernel = (gaussian_kernel(61, 3.0, 1.5, 0.4) if which == 'gaussian'
              else motion_kernel(21, 15.0, 0.9, 1.0, rng))
    if which == 'motion':
        assert not np.allclose(kernel, kernel[::-1, ::-1])  # asymmetric: orientation matters
    out = blur(photo, kernel)
    assert out.dtype == np.float32 and out.shape == photo.shape
    np.testing.assert_allclose(out, direct_convolution(photo, kernel), atol=2e-6)
    # also when the kernel is larger than the image (repeated reflection)
    small = photo[:20, :25]
    np.testing.assert_allclose(blur(small, kernel), direct_convolution(small, kernel), atol=2e-6)


def test_downsample_bicubic_by_integer_factor(photo):
    lq = downsample(photo, 8)
    assert lq.shape == (7, 9, 3) and lq.dtype == np.float32
    np.testing.assert_allclose(lq, imresize(photo, 1 / 8), atol=1e-6)  # MATLAB bicubic with antialiasing
    lq2 = downsample(photo, 4, 'cv2')
    np.testing.assert_allclose(lq2, cv2.resize(photo, (18, 14), interpolation=cv2.INTER_CUBIC))
    with pytest.raises(ValueError, match='scale'):
        downsample(photo[:50], 8)


def test_pipeline_sr_mode_order_and_kernel(photo):
    d = Degradation({'scale': 8, 'kernel_size': 21, 'sigma': 2.0})(photo, np.random.default_rng(0))
    assert d.lq.shape == (56 // 8, 72 // 8, 3)
    expected = np.clip(imresize(direct_convolution(photo, d.kernel).astype(np.float32), 1 / 8), 0, 1)
    np.testing.assert_allclose(d.lq, expected, atol=1e-5)
    assert d.params['sigma_x'] == 2.0 and d.params['scale'] == 8


def test_noise_and_jpeg(photo):
    flat = np.full((64, 64, 3), 0.5, np.float32)
    noisy = add_noise(flat, 10.0, np.random.default_rng(0))
    assert abs(float(noisy.std()) * 255 - 10.0) < 0.5
    np.testing.assert_array_equal(noisy, add_noise(flat, 10.0, np.random.default_rng(0)))
    # OpenCV 5 needs an int quality; basicsr's random_add_jpg_compression passes a float.
    low, high = jpeg(photo, 10), jpeg(photo, 95)
    assert low.dtype == np.float32 and low.shape == photo.shape
    err = lambda x: float(np.abs(x - photo).mean())  # noqa: E731
    assert err(low) > 2 * err(high) > 0
    d = Degradation({'jpeg_quality': [20, 30], 'noise_std': [1, 5]})(photo, np.random.default_rng(1))
    assert 20 <= d.params['jpeg_quality'] <= 30 and 1 <= d.params['noise_std'] <= 5


def test_deterministic_given_a_generator(photo):
    deg = Degradation({'kernel_type': 'anisotropic', 'sigma': [0.5, 4], 'noise_std': 5, 'jpeg_quality': [30, 90]})
    a, b = deg(photo, np.random.default_rng(7)), deg(photo, np.random.default_rng(7))
    np.testing.assert_array_equal(a.lq, b.lq)
    np.testing.assert_array_equal(a.kernel, b.kernel)
    c = deg(photo, np.random.default_rng(8))
    assert not np.array_equal(a.kernel, c.kernel)
    mot = Degradation({'blur': 'motion', 'kernel_size': 31, 'motion_length': [5, 20]})
    np.testing.assert_array_equal(mot(photo, np.random.default_rng(2)).lq, mot(photo, np.random.default_rng(2)).lq)


@pytest.mark.parametrize('opt, match', [
    ({'kernel_size': 60}, 'kernel_size: must be odd'),
    ({'kernel_size': 0}, 'kernel_size'),
    ({'sigma': -1.0}, 'sigma: must be positive'),
    ({'sigma': [2.0, 1.0]}, 'sigma: min'),
    ({'sigma': [1, 2, 3]}, 'sigma'),
    ({'blur': 'box'}, 'blur'),
    ({'kernel_type': 'round'}, 'kernel_type'),
    ({'noise_std': -1}, 'noise_std'),
    ({'jpeg_quality': 0}, 'jpeg_quality'),
    ({'jpeg_quality': 50.5}, 'jpeg_quality'),
    ({'scale': 0}, 'scale'),
    ({'scale': 2.5}, 'scale'),
    ({'resize': 'lanczos'}, 'resize'),
    ({'blur': 'motion', 'kernel_size': 15, 'motion_length': 20}, 'motion_length'),
])
def test_bad_options_name_the_option(opt, match):
    with pytest.raises(ValueError, match=match):
        DegradationConfig.from_options(opt)
