"""Process-wide memory defaults for PyTorch on a CPU, applied by `import serpent_basicsr`.

Both are defaults only: a value you set yourself wins, and `SERPENT_MEMORY_DEFAULTS=0` turns both off.

1. `THP_MEM_ALLOC_ENABLE=1`: PyTorch's CPU allocator backs tensors of 2 MB and more with transparent
   huge pages (it madvises them; most kernels only give huge pages on request). Without it, every
   large activation is fresh 4 KB pages that the kernel faults in and zeroes one by one: a serpent_b
   training step at 1024 x 1024 took 3.2 million page faults and 40.3 s, with it 0.18 million and
   34.4 s. Read at torch's first large allocation, so it only works when set before that.
2. glibc malloc thresholds (Linux/glibc only): with huge pages on, PyTorch asks for 2 MB-aligned
   blocks, which glibc served from fresh mappings every time and unmapped on free, so each new tensor
   of a few MB was faulted in and zeroed again: allocating and filling a 6 MB tensor took 3.0 ms
   instead of 0.17 ms (300 page faults per allocation). Blocks up to `MMAP_THRESHOLD` now stay on the
   heap for reuse (11 faults per allocation, 0.13 ms), and up to `TRIM_THRESHOLD` of free memory at
   the heap's top is kept. These are the values glibc's own adaptive thresholds grow to at most, so
   what the process holds on to is bounded as it is for any program whose large frees raised them.
   Skipped when you set `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` (glibc read those at
   start-up).
"""
from __future__ import annotations

import ctypes
import os
import sys
from typing import Dict, Optional

MMAP_THRESHOLD = 32 * 2 ** 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # what glibc's adaptive rule pairs with it
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)

_applied: Dict[str, Optional[str]] = {}


def _glibc() -> Optional[ctypes.CDLL]:
    if not sys.platform.startswith('linux'):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # musl and others lack it (and mallopt's meaning)
        return libc
    except (OSError, AttributeError):
        return None


def apply_defaults() -> Dict[str, Optional[str]]:
    """Apply the defaults above once per process; returns what is in effect (see `settings`)."""
    if _applied:
        return settings()
    if os.environ.get('SERPENT_MEMORY_DEFAULTS', '1') == '0':
        _applied.update(THP_MEM_ALLOC_ENABLE=os.environ.get('THP_MEM_ALLOC_ENABLE'), malloc='off (SERPENT_MEMORY_DEFAULTS=0)')
        return settings()
    os.environ.setdefault('THP_MEM_ALLOC_ENABLE', '1')
    _applied['THP_MEM_ALLOC_ENABLE'] = os.environ['THP_MEM_ALLOC_ENABLE']
    if any(k in os.environ for k in ('MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_')):
        _applied['malloc'] = 'yours (MALLOC_*_THRESHOLD_ set)'
        return settings()
    libc = _glibc()
    if libc is None:
        _applied['malloc'] = 'unchanged (not glibc)'
        return settings()
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _applied['malloc'] = (f'mmap_threshold={MMAP_THRESHOLD >> 20}MB trim_threshold={TRIM_THRESHOLD >> 20}MB'
                          if ok else 'unchanged (mallopt refused)')
    return settings()


def settings() -> Dict[str, Optional[str]]:
    """What `apply_defaults` put in effect: {'THP_MEM_ALLOC_ENABLE': ..., 'malloc': ...}."""
    return dict(_applied)
