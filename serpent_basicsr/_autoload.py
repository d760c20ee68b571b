"""Import every module of a sub-package whose name ends with a suffix (BasicSR's convention),
so that a new `*_arch.py` / `*_dataset.py` / `*_model.py` registers itself just by existing."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import List


def import_modules(package: str, folder: str, suffix: str) -> List[str]:
    names = sorted(p.stem for p in Path(folder).glob(f'*{suffix}.py'))
    for name in names:
        importlib.import_module(f'{package}.{name}')
    return names
