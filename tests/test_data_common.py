"""Helpers shared by tests/test_data_*.py (no tests here): the datasets/ scripts as modules, and a
tiny build of the embedded default data set (real bundled photos, shrunk to keep tests fast)."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType

import pytest

import serpent_basicsr  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / 'datasets'


def load_script(name: str) -> ModuleType:
    """datasets/<name>.py imported as a module (the folder is not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def quiet(fn, *args, **kwargs):
    """Run basicsr's chatty LMDB writer without flooding the test log."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn(*args, **kwargs)


def build_tiny_default(root: Path) -> Path:
    """datasets/make_default_data.py with small sizes: the real photos, whole (no tiles), train shorter
    side 64, val 48 x 48; folders and LMDBs."""
    mdd = load_script('make_default_data')
    out = root / 'default'
    quiet(mdd.build, str(out), short_side=64, sub_size=0, sub_step=0, val_size=48)
    return out


@pytest.fixture(scope='session')
def tiny_default(tmp_path_factory) -> Path:
    return build_tiny_default(tmp_path_factory.mktemp('data'))
