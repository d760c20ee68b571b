"""bench/quality/run.py end to end with tiny networks and budgets (the script must not rot)."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from basicsr.archs import build_network

from conftest import REPO, tiny_swinir, write_photos


def _load_quality_bench():
    spec = importlib.util.spec_from_file_location('quality_run', REPO / 'bench' / 'quality' / 'run.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TINY_SERPENT = '{type: Serpent, embed_dim: 8, depths: [1], bottleneck_depth: 1, d_state: 2}'


def _args(tmp_path, *extra):
    write_photos(tmp_path / 'train', size=40)
    write_photos(tmp_path / 'val', size=36, names=('coffee',))
    return ['--train-dir', str(tmp_path / 'train'), '--val-dir', str(tmp_path / 'val'), '--patch', '32',
            '--batch', '2', '--kernel-size', '9', '--sigma', '1.5', '--max-iters', '3', '--snap-every', '1',
            '--minutes', '5', '--threads', '1', '--out', str(tmp_path / 'out'), '--serpent-net', TINY_SERPENT,
            *extra]


def test_quality_bench_trains_both_models_and_writes_the_report(tmp_path):
    quality = _load_quality_bench()
    swin = json.dumps(tiny_swinir())
    assert quality.main(_args(tmp_path, '--swinir-net', swin)) == 0
    res = json.loads((tmp_path / 'out' / 'quality.json').read_text())
    methods = [r['method'] for r in res['rows']]
    assert methods[:2] == ['blurred input', methods[1]] and methods[1].startswith('classical Wiener')
    assert 'Serpent (equal wall-clock)' in methods and 'SwinIR-small (equal iterations)' in methods
    by = {r['method']: r for r in res['rows']}
    assert by['Serpent (equal wall-clock)']['iters'] == 3 and by['Serpent (equal iterations)']['iters'] == 3
    assert set(res['targets']) == {'serpent_ge_swinir_equal_time', 'serpent_ge_classical_plus_1db'}
    assert (tmp_path / 'out' / 'grid.png').stat().st_size > 0
    assert '| Serpent (equal wall-clock) |' in (tmp_path / 'out' / 'quality.md').read_text()


def test_quality_bench_single_model_probe_and_bad_model_name(tmp_path):
    quality = _load_quality_bench()
    assert quality.main(_args(tmp_path, '--models', 'serpent', '--save-weights', '--self-ensemble')) == 0
    res = json.loads((tmp_path / 'out' / 'quality.json').read_text())
    assert [r['method'] for r in res['rows']][2:] == ['Serpent (equal wall-clock)',
                                                      'Serpent (equal wall-clock, x8 self-ensemble)']
    plain, ens = res['rows'][2:]
    assert plain['iters'] == ens['iters'] == 3 and plain['psnr'] != ens['psnr']
    assert set(res['targets']) == {'serpent_ge_classical_plus_1db', 'serpent_self_ensemble_ge_classical_plus_1db'}
    assert 'with the x8 self-ensemble' in (tmp_path / 'out' / 'quality.md').read_text()
    # --save-weights: the final weights, loadable into the network the spec builds (BasicSR's key)
    saved = torch.load(tmp_path / 'out' / 'serpent.pth')
    net = build_network(dict(saved['spec']))
    net.load_state_dict(saved['params'])
    assert saved['iters'] == 3 and not list((tmp_path / 'out').glob('*.tmp'))
    assert quality.main(_args(tmp_path, '--models', 'swinir', '--swinir-net', json.dumps(tiny_swinir()))) == 0
    res = json.loads((tmp_path / 'out' / 'quality.json').read_text())
    assert [r['method'] for r in res['rows']][2:] == ['SwinIR-small (equal wall-clock)'] and res['targets'] == {}
    with pytest.raises(SystemExit, match='--models'):
        quality.main(_args(tmp_path, '--models', 'serpent,unet'))
