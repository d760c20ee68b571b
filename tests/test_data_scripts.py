"""datasets/ scripts (issue 2): --help, atomic folder_to_lmdb, idempotent default data, fixed pairs."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest

from serpent_basicsr.data.gaussian_deblur_dataset import DegradationDataset

from test_data_common import SCRIPTS, build_tiny_default, load_script, quiet, tiny_default  # noqa: F401


def leftovers(parent: Path, name: str):
    return [p.name for p in parent.iterdir() if p.name.startswith(f'.{name}')]


@pytest.mark.parametrize('script', ['make_default_data', 'folder_to_lmdb', 'make_degraded_pairs'])
def test_help(script):
    out = subprocess.run([sys.executable, str(SCRIPTS / f'{script}.py'), '--help'], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.startswith('usage:'), out.stderr


def test_folder_to_lmdb_roundtrip_and_overwrite(tiny_default, tmp_path):
    f2l = load_script('folder_to_lmdb')
    target = tmp_path / 'val.lmdb'
    n, _ = quiet(f2l.folder_to_lmdb, str(tiny_default / 'val'), str(target))
    assert n == 3 and (target / 'meta_info.txt').read_text().splitlines()[0] == 'chelsea.png (48,48,3) 1'
    env = lmdb.open(str(target), readonly=True, lock=False)
    with env.begin() as txn:
        png = txn.get(b'coffee')
    env.close()
    stored = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(stored, cv2.imread(str(tiny_default / 'val' / 'coffee.png'), cv2.IMREAD_UNCHANGED))
    with pytest.raises(FileExistsError, match='--overwrite'):
        f2l.folder_to_lmdb(str(tiny_default / 'val'), str(target))
    n, _ = quiet(f2l.folder_to_lmdb, str(tiny_default / 'train'), str(target), overwrite=True)
    assert n == 7 and len((target / 'meta_info.txt').read_text().splitlines()) == 7
    assert leftovers(tmp_path, 'val.lmdb') == []
    # the CLI: a clear one-line error and exit status 2
    out = subprocess.run([sys.executable, str(SCRIPTS / 'folder_to_lmdb.py'), str(tiny_default / 'val'),
                          str(target)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and 'error: output exists' in out.stderr


def test_folder_to_lmdb_corrupt_image_leaves_nothing(tiny_default, tmp_path):
    f2l = load_script('folder_to_lmdb')
    src = tmp_path / 'src'
    shutil.copytree(tiny_default / 'val', src)
    (src / 'middle.png').write_bytes(b'garbage')  # sorted between chelsea/coffee and grace_hopper
    with pytest.raises(ValueError, match='middle.png: cannot decode'):
        quiet(f2l.folder_to_lmdb, str(src), str(tmp_path / 'out.lmdb'))
    assert not (tmp_path / 'out.lmdb').exists() and leftovers(tmp_path, 'out.lmdb') == []


def test_folder_to_lmdb_failure_while_writing_leaves_nothing(tiny_default, tmp_path, monkeypatch):
    """A failure after the LMDB was opened (here: the second image) removes the temporary folder,
    and an existing target stays as it was."""
    import basicsr.utils.lmdb_util as lu
    f2l = load_script('folder_to_lmdb')
    target = tmp_path / 'out.lmdb'
    quiet(f2l.folder_to_lmdb, str(tiny_default / 'val'), str(target))
    before = (target / 'meta_info.txt').read_text()
    original, calls = lu.read_img_worker, []

    def failing(path, key, level):
        calls.append(key)
        if len(calls) == 2:
            raise OSError(f'{path}: disk full')
        return original(path, key, level)

    monkeypatch.setattr(lu, 'read_img_worker', failing)
    with pytest.raises(OSError, match='disk full'):
        quiet(f2l.folder_to_lmdb, str(tiny_default / 'train'), str(target), overwrite=True)
    assert len(calls) == 2 and leftovers(tmp_path, 'out.lmdb') == []
    assert (target / 'meta_info.txt').read_text() == before
    calls.clear()
    with pytest.raises(OSError):
        quiet(f2l.folder_to_lmdb, str(tiny_default / 'train'), str(tmp_path / 'new.lmdb'))
    assert not (tmp_path / 'new.lmdb').exists() and leftovers(tmp_path, 'new.lmdb') == []


def test_folder_to_lmdb_rejects_dotted_keys(tmp_path):
    f2l = load_script('folder_to_lmdb')
    (tmp_path / 'a').mkdir()
    cv2.imwrite(str(tmp_path / 'a' / 'img.v2.png'), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match='img.v2.png: LMDB keys .* may not contain dots'):
        f2l.folder_to_lmdb(str(tmp_path / 'a'), str(tmp_path / 'a.lmdb'))


def test_make_default_data_is_idempotent_and_rebuilds_incomplete(tmp_path, monkeypatch):
    mdd = load_script('make_default_data')
    out = build_tiny_default(tmp_path)
    record = json.loads((out / '.complete.json').read_text())
    assert len(record['files']['train']) == 7 and record['files']['val'] == ['chelsea.png', 'coffee.png',
                                                                             'grace_hopper.png']
    assert not set(record['files']['train']) & set(record['files']['val'])  # different photos
    stamp = (out / 'val' / 'coffee.png').stat().st_mtime_ns
    build_tiny_default(tmp_path)  # complete: skipped
    assert (out / 'val' / 'coffee.png').stat().st_mtime_ns == stamp
    (out / 'val' / 'coffee.png').unlink()  # incomplete: rebuilt
    build_tiny_default(tmp_path)
    assert (out / 'val' / 'coffee.png').exists()
    # a failing rebuild (settings changed) leaves the old complete build and no temporary folder
    monkeypatch.setattr(mdd, 'folder_to_lmdb', lambda *a, **k: (_ for _ in ()).throw(OSError('boom')))
    with pytest.raises(OSError, match='boom'):
        quiet(mdd.build, str(out), short_side=64, sub_size=0, sub_step=0, val_size=32)
    assert mdd.existing(str(out), 64, 0, 0, 48) is not None and leftovers(tmp_path, 'default') == []


def test_make_default_data_tiles(tmp_path):
    mdd = load_script('make_default_data')
    record = quiet(mdd.build, str(tmp_path / 'd'), short_side=96, sub_size=64, sub_step=48, val_size=32)
    sizes = {cv2.imread(str(tmp_path / 'd' / 'train' / n)).shape[:2] for n in record['files']['train']}
    assert sizes == {(64, 64)} and len(record['files']['train']) > 7
    assert (tmp_path / 'd' / 'train.lmdb' / 'data.mdb').exists()


def test_make_degraded_pairs_matches_the_dataset_and_paired_dataset(tiny_default, tmp_path):
    from basicsr.data.paired_image_dataset import PairedImageDataset
    mdp = load_script('make_degraded_pairs')
    opts = dict(scale=2, sigma=[1.0, 2.0], kernel_size=21, noise_std=1.0)
    out = tmp_path / 'pairs'
    record = mdp.make_pairs(str(tiny_default / 'val'), str(out), opts, seed=5)
    assert sorted(os.listdir(out)) == ['degradation.json', 'gt', 'kernels.npz', 'lq']
    assert json.loads((out / 'degradation.json').read_text())['images'] == record['images']
    ds = DegradationDataset(dict(opts, dataroot_gt=str(tiny_default / 'val'), io_backend={'type': 'disk'},
                                 phase='val', seed=5))
    paired = PairedImageDataset(dict(dataroot_gt=str(out / 'gt'), dataroot_lq=str(out / 'lq'),
                                     io_backend={'type': 'disk'}, phase='val', scale=2))
    kernels = np.load(out / 'kernels.npz')
    by_name = {Path(paired[j]['lq_path']).name: paired[j] for j in range(len(paired))}  # scandir order
    assert sorted(by_name) == [f'{k}.png' for k in ds.keys]
    for i in range(len(ds)):
        a, b = ds[i], by_name[f'{ds.keys[i]}.png']
        assert np.abs(a['lq'].numpy() - b['lq'].numpy()).max() <= 0.5 / 255 + 1e-6  # 8-bit PNG
        assert np.abs(a['gt'].numpy() - b['gt'].numpy()).max() <= 0.5 / 255 + 1e-6
        np.testing.assert_allclose(kernels[ds.keys[i]], a['kernel'].numpy())
        assert 1.0 <= record['images'][f'{ds.keys[i]}.png']['sigma_x'] <= 2.0
    with pytest.raises(FileExistsError):
        mdp.make_pairs(str(tiny_default / 'val'), str(out), opts)
    with pytest.raises(ValueError, match='kernel_size: must be odd'):
        mdp.make_pairs(str(tiny_default / 'val'), str(tmp_path / 'bad'), {'kernel_size': 8})
    assert not (tmp_path / 'bad').exists() and leftovers(tmp_path, 'bad') == []
