"""Every shipped option file parses, passes our checks and builds its networks (none rots)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import REPO
from serpent_basicsr.options_check import check_options, load_yaml

OPTION_FILES = sorted((REPO / 'options').rglob('*.yml'))


def test_there_are_option_files():
    names = {p.relative_to(REPO / 'options').as_posix() for p in OPTION_FILES}
    assert {'serpent_deblur.yml', 'serpent_sr8x.yml', 'serpent_gan_deblur.yml', 'test/serpent_deblur.yml'} <= names


@pytest.mark.parametrize('path', OPTION_FILES, ids=lambda p: p.relative_to(REPO / 'options').as_posix())
def test_option_file_parses_and_builds(path: Path):
    from basicsr.archs import build_network
    opt = load_yaml(str(path))
    check_options(opt, str(path), is_train='test' not in path.relative_to(REPO / 'options').parts)
    for key in [k for k in opt if k.startswith('network_')]:
        net = build_network(dict(opt[key]))
        assert sum(p.numel() for p in net.parameters()) > 0
    if opt['network_g']['type'] == 'Serpent':
        net = build_network(dict(opt['network_g'])).eval()
        scale = opt.get('scale', 1)
        with torch.no_grad():
            out = net(torch.rand(1, 3, 13, 11))
        assert out.shape == (1, 3, 13 * scale, 11 * scale)
