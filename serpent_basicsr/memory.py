"""Process-wide memory settings for PyTorch on a CPU, applied by `import serpent_basicsr`.

`SERPENT_MEMORY_DEFAULTS=0` turns everything here off; a value you set yourself always wins.

1. On by default: `THP_MEM_ALLOC_ENABLE=1`. PyTorch's CPU allocator backs tensors of 2 MB and more
   with transparent huge pages (it madvises them; most kernels only give huge pages on request).
   Without it, every large activation is fresh 4 KB pages that the kernel faults in and zeroes one by
   one: a serpent_b training step at 1024 x 1024 took 3.2 million page faults and 40.3 s, with it
   0.18 million and 34.4 s. Read at torch's first large allocation, so it only works when set before.
2. Opt-in (`SERPENT_MALLOC_REUSE=1`; Linux/glibc): glibc malloc's mmap / trim thresholds set to
   `MMAP_THRESHOLD` / `TRIM_THRESHOLD` (the maxima of glibc's own adaptive thresholds). With huge
   pages on, PyTorch asks for 2 MB-aligned blocks, which glibc serves from fresh mappings and unmaps
   on free, so every new tensor of a few MB is faulted in and zeroed again: allocating and filling a
   6 MB tensor took 3.0 ms instead of 0.17 ms (300 page faults); with the thresholds 0.13 ms and ~10
   faults, and a scan-op call, whose output is such a tensor, 10-25% faster. Not the default because
   training did not get faster while its peak memory grew (freed blocks stay on the heap): serpent_b
   1.48 GB instead of 1.33 GB at 256 and 8.99 GB instead of 8.17 GB at 1024, SwinIR 10.6 instead of
   10.0 GB at 128. Skipped when you set `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_`.

The scan kernel's own outputs avoid that cost either way: it keeps freed blocks of 2 MB and more in a
pool of its own (`SERPENT_SCAN_POOL_MB`, default 256; ops/csrc/output_pool.h).
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
    """Apply the settings above once per process; returns what is in effect (see `settings`)."""
    if _applied:
        return settings()
    if os.environ.get('SERPENT_MEMORY_DEFAULTS', '1') == '0':
        _applied.update(THP_MEM_ALLOC_ENABLE=os.environ.get('THP_MEM_ALLOC_ENABLE'), malloc='off (SERPENT_MEMORY_DEFAULTS=0)')
        return settings()
    os.environ.setdefault('THP_MEM_ALLOC_ENABLE', '1')
    _applied['THP_MEM_ALLOC_ENABLE'] = os.environ['THP_MEM_ALLOC_ENABLE']
    _applied['malloc'] = _malloc_reuse() if os.environ.get('SERPENT_MALLOC_REUSE') == '1' else 'glibc defaults'
    return settings()


def _malloc_reuse() -> str:
    if any(k in os.environ for k in ('MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_')):
        return 'yours (MALLOC_*_THRESHOLD_ set)'
    libc = _glibc()
    if libc is None:
        return 'unchanged (not glibc)'
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return (f'reuse: mmap_threshold={MMAP_THRESHOLD >> 20}MB trim_threshold={TRIM_THRESHOLD >> 20}MB'
            if ok else 'unchanged (mallopt refused)')


def settings() -> Dict[str, Optional[str]]:
    """What `apply_defaults` put in effect: {'THP_MEM_ALLOC_ENABLE': ..., 'malloc': ...}."""
    return dict(_applied)
