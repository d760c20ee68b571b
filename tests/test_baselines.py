"""Classical deconvolution baseline and the end-of-training report."""
from __future__ import annotations

import serpent_basicsr  # noqa: F401

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from serpent_basicsr import baselines, report


def _photo(size=128):
    return cv2.resize(skdata.astronaut(), (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def test_classical_beats_blurred_on_a_real_photo():
    k = baselines.gaussian_kernel(61, 3.0)
    gt = _photo()
    lq = np.round(baselines.blur(gt, k) * 255) / 255  # 8-bit LQ, as stored on disk
    rows = baselines.evaluate_baselines([('astronaut', lq.astype(np.float32), gt, None)], k)
    assert rows['classical']['psnr'] > rows['blurred']['psnr'] + 1.0
    assert rows['classical']['ssim'] > rows['blurred']['ssim']
    assert rows['classical']['balance'] in baselines.BALANCES


def test_richardson_lucy_improves_too_and_keeps_shape():
    k = baselines.gaussian_kernel(21, 2.0)
    gt = _photo(64)
    lq = baselines.blur(gt, k)
    out = baselines.deconvolve(lq, k, 'rl', iterations=10)
    assert out.shape == gt.shape
    s_out, s_lq = baselines.score([out], [gt]), baselines.score([lq], [gt])
    assert s_out['psnr'] > s_lq['psnr']
    assert baselines.deconvolve(lq[..., 0], k).shape == gt.shape[:2]
    with pytest.raises(ValueError, match='method'):
        baselines.deconvolve(lq, k, 'magic')


def test_report_reads_the_training_log(tmp_path, capsys):
    exp = tmp_path / 'experiments' / 'demo'
    exp.mkdir(parents=True)
    (exp / 'demo.yml').write_text(
        'name: demo\nnetwork_g: {type: Serpent}\n'
        'datasets:\n  val: {name: photos, type: GaussianDeblurDataset, kernel_size: 21, sigma: 2.0}\n'
        'val:\n  metrics:\n    psnr: {type: calculate_psnr, crop_border: 0}\n'
        '    ssim: {type: calculate_ssim, crop_border: 0}\n'
        '    lpips: {type: lpips}\n')
    (exp / 'train_demo_20260101_000000.log').write_text(
        '2026 INFO: Validation photos\n\t # psnr: 20.0000\tBest: 20.0 @ 2 iter\n\t # ssim: 0.5000\n\n'
        '2026 INFO: Validation photos\n\t # psnr: 31.2500\tBest: 31.25 @ 4 iter\n'
        '\t # ssim: 0.9100\tBest: 0.91 @ 4 iter\n\n')
    val = tmp_path / 'val'
    val.mkdir()
    cv2.imwrite(str(val / 'a.png'), (_photo(64)[..., ::-1] * 255).astype(np.uint8))
    assert report.main(['--exp', str(exp), '--val-dir', str(val)]) == 0
    text = capsys.readouterr().out
    assert '| trained Serpent | 31.2500 | 0.9100 |' in text
    assert str(tmp_path / 'tb_logger' / 'demo') in text
    assert report.main(['--exp', str(tmp_path / 'nope')]) == 2
