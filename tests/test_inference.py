"""Inference: any size, tiles blended to match the untiled result, file formats, folder mode, errors."""
from __future__ import annotations

import os

import serpent_basicsr  # noqa: F401

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

from serpent_basicsr.inference import main, read_image, restore_image, size_multiple_of

from conftest import tiny_swinir

SPEC = "{type: SRVGGNetCompact, num_in_ch: 3, num_out_ch: 3, num_feat: 8, num_conv: 2, upscale: 1}"


class ConvNet(torch.nn.Module):
    """Three 3x3 convs: receptive-field radius 3 pixels."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class Down4Net(ConvNet):
    """Needs H and W divisible by 4 (like a U-Net); says so through `size_multiple`."""
    size_multiple = 4

    def forward(self, x):
        assert x.shape[-1] % 4 == 0 and x.shape[-2] % 4 == 0, x.shape
        y = torch.nn.functional.avg_pool2d(self.body(x), 4)
        return x + torch.nn.functional.interpolate(y, scale_factor=4, mode='nearest')


def test_odd_size_is_padded_and_cropped():
    img = cv2.resize(skdata.astronaut(), (53, 37))
    out = restore_image(Down4Net(), img)
    assert out.shape == img.shape and out.dtype == np.uint8
    with pytest.raises(AssertionError):
        restore_image(Down4Net(), img, pad_multiple=1)


def test_window_attention_nets_are_padded_to_their_window():
    """BasicSR's SwinIR neither pads nor declares a multiple: the window size of its blocks is used."""
    from basicsr.archs import build_network

    torch.manual_seed(0)
    swinir = build_network(tiny_swinir())
    assert size_multiple_of(swinir) == 8
    assert size_multiple_of(build_network({'type': 'Serpent', 'preset': 'serpent_s'})) > 1
    assert size_multiple_of(ConvNet()) == 1 and size_multiple_of(Down4Net()) == 4
    img = cv2.resize(skdata.astronaut(), (53, 37))
    out = restore_image(swinir, img)
    assert out.shape == img.shape and out.dtype == np.uint8
    with pytest.raises(Exception):  # unpadded, its window partition fails
        restore_image(swinir, img, pad_multiple=1)


def test_tiled_equals_untiled_for_a_local_net():
    img = np.random.default_rng(0).random((101, 77, 3), dtype=np.float32)
    net = ConvNet()
    full = restore_image(net, img)
    tiled = restore_image(net, img, tile=32, tile_overlap=16)  # overlap/4 = 4 >= radius 3
    assert np.abs(full - tiled).max() < 1e-5
    rough = restore_image(net, img, tile=32, tile_overlap=0)  # seams without overlap
    assert np.abs(full - rough).max() > 1e-3


def test_large_image_in_tiles_matches_untiled():
    img = cv2.resize(skdata.coffee(), (1100, 700))
    net = ConvNet()
    tiled = restore_image(net, img, tile=256, tile_overlap=32)
    assert tiled.shape == img.shape
    assert np.abs(tiled.astype(int) - restore_image(net, img).astype(int)).max() <= 1


def test_gray_and_rgba_keep_their_layout():
    net = ConvNet()
    gray16 = (np.random.default_rng(1).random((20, 30)) * 65535).astype(np.uint16)
    out = restore_image(net, gray16)
    assert out.shape == gray16.shape and out.dtype == np.uint16
    rgba = np.dstack([skdata.astronaut()[:40, :40], np.full((40, 40), 7, np.uint8)])
    out = restore_image(net, rgba, tile=24, tile_overlap=8)
    assert out.shape == rgba.shape and (out[..., 3] == 7).all()


@pytest.fixture()
def ckpt(tmp_path):
    from serpent_basicsr.inference import build_net
    import yaml
    net = build_net(yaml.safe_load(SPEC))
    path = tmp_path / 'net.pth'
    torch.save({'params': net.state_dict(), 'params_ema': net.state_dict()}, path)
    return str(path)


def test_folder_mode_formats_and_a_corrupt_file(tmp_path, ckpt, capsys):
    src = tmp_path / 'in'
    src.mkdir()
    cv2.imwrite(str(src / 'rgb.png'), skdata.chelsea()[:45, :61, ::-1])
    cv2.imwrite(str(src / 'gray16.png'), (np.random.default_rng(2).random((33, 21)) * 65535).astype(np.uint16))
    cv2.imwrite(str(src / 'rgba.png'), np.dstack([skdata.coffee()[:30, :30], np.full((30, 30), 200, np.uint8)]))
    (src / 'broken.png').write_bytes(b'not a png at all')
    (src / 'notes.txt').write_text('ignored')
    out = tmp_path / 'out'
    rc = main(['--net', SPEC, '--model', ckpt, '-i', str(src), '-o', str(out), '--tile', '16', '--tile-overlap', '8',
               '--device', 'cpu'])
    assert rc == 1  # one image failed, the others were written
    assert 'broken.png' in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ['gray16.png', 'rgb.png', 'rgba.png']  # no temp files left
    assert read_image(str(out / 'gray16.png')).dtype == np.uint16
    assert read_image(str(out / 'rgba.png')).shape == (30, 30, 4)
    assert read_image(str(out / 'rgb.png')).shape == (45, 61, 3)


def test_single_file_from_option_file(tmp_path, ckpt):
    img = tmp_path / 'blurry.jpg'
    cv2.imwrite(str(img), cv2.GaussianBlur(skdata.astronaut()[::4, ::4, ::-1], (0, 0), 2))
    opt = tmp_path / 'test.yml'
    opt.write_text(f'network_g: {SPEC}\npath: {{pretrain_network_g: {ckpt}, param_key_g: params}}\n')
    assert main(['-opt', str(opt), '-i', str(img), '-o', str(tmp_path / 'sharp.png')]) == 0
    assert read_image(str(tmp_path / 'sharp.png')).shape == (128, 128, 3)


def test_errors_name_the_file(tmp_path, ckpt, capsys):
    img = tmp_path / 'a.png'
    cv2.imwrite(str(img), np.zeros((8, 8, 3), np.uint8))
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(b'garbage')
    cases = [
        (['--model', str(tmp_path / 'missing.pth')], 'missing.pth'),
        (['--model', str(bad)], 'bad.pth'),
        (['--model', ckpt, '--params-key', 'nope'], "'nope'"),
        (['--model', ckpt, '-i', str(tmp_path / 'nothere.png')], 'nothere.png'),
    ]
    for extra, needle in cases:
        argv = ['--net', SPEC, '-i', str(img), '-o', str(tmp_path / 'o')] + extra
        assert main(argv) == 2
        assert needle in capsys.readouterr().err
    wrong = SPEC.replace('num_feat: 8', 'num_feat: 16')
    assert main(['--net', wrong, '--model', ckpt, '-i', str(img), '-o', str(tmp_path / 'o')]) == 2
    assert 'does not match' in capsys.readouterr().err
    assert not (tmp_path / 'o').exists()


def test_tiled_close_to_untiled_for_a_tiny_serpent():
    from basicsr.utils.registry import ARCH_REGISTRY
    if 'Serpent' not in ARCH_REGISTRY:
        pytest.skip('Serpent arch not available')
    from basicsr.archs import build_network
    torch.manual_seed(0)
    net = build_network(dict(type='Serpent', patch_size=2, embed_dim=8, depths=[1], bottleneck_depth=1, d_state=4))
    img = np.random.default_rng(0).random((40, 56, 3), dtype=np.float32)  # odd multiple of the net's padding
    full = restore_image(net, img)
    assert full.shape == img.shape
    # Selective scans see the whole tile, so tiles differ from the whole image; the blend keeps
    # it small (measured max 5e-5 at overlap 16 and 8e-7 at 24 for this untrained net).
    assert np.abs(full - restore_image(net, img, tile=32, tile_overlap=16)).max() < 1e-3


def test_self_ensemble_is_the_mean_over_the_8_symmetries():
    # odd, not square; values kept off 0 and 1, so no output is clipped (the ensemble clips the mean)
    img = 0.3 + 0.4 * np.random.default_rng(2).random((37, 53, 3), dtype=np.float32)
    net = Down4Net()  # not equivariant, and needs padding to a multiple of 4
    expected = np.zeros_like(img)
    for transpose in (False, True):
        for k in range(4):  # numpy on H x W x C, independent of the torch implementation
            v = np.rot90(img.transpose(1, 0, 2) if transpose else img, k)
            y = np.rot90(restore_image(net, np.ascontiguousarray(v)), -k)
            expected += y.transpose(1, 0, 2) if transpose else y
    expected /= 8
    out = restore_image(net, img, self_ensemble=True)
    assert out.shape == img.shape and 0 < out.min() and out.max() < 1
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert np.abs(out - restore_image(net, img)).max() > 1e-3  # it does change a non-equivariant net
    tiled = restore_image(net, img, self_ensemble=True, tile=32, tile_overlap=16)
    assert tiled.shape == img.shape


def test_self_ensemble_cli(tmp_path, ckpt):
    src = tmp_path / 'in.png'
    cv2.imwrite(str(src), cv2.resize(skdata.astronaut(), (45, 31)))
    assert main(['--net', SPEC, '--model', ckpt, '-i', str(src), '-o', str(tmp_path / 'a.png')]) == 0
    assert main(['--net', SPEC, '--model', ckpt, '-i', str(src), '-o', str(tmp_path / 'b.png'),
                 '--self-ensemble']) == 0
    a, b = (cv2.imread(str(tmp_path / n)) for n in ('a.png', 'b.png'))
    assert a.shape == b.shape == (31, 45, 3) and not np.array_equal(a, b)
