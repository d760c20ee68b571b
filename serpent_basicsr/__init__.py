"""serpent-basicsr: Serpent (multi-scale selective state space models) as a BasicSR plugin.

`import serpent_basicsr` applies the compatibility fixes for basicsr 1.4.2 (see compat.py)
and registers our architectures, datasets and models in BasicSR's registries, so that
`basicsr.train.train_pipeline` can build them from option files.
"""
import os

# OpenMP threads that spin while waiting make every small op 6-10x slower as soon as any other
# process (a DataLoader worker, a second job) wants a core: measured 2.4 s vs 0.4 s per
# serpent_s training step on 2 cores. Sleeping waiters cost nothing measurable when idle.
# Only a default (set OMP_WAIT_POLICY yourself to override), and only effective when torch
# has not been imported yet, e.g. for the `basicsr` command.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

# PyTorch's CPU allocator backs tensors of 2 MB and more with transparent huge pages when this is
# set (it madvises them; most kernels only give huge pages on request). Without it, every large
# activation is fresh 4 KB pages that the kernel faults in and zeroes one by one: a serpent_b
# training step at 1024 x 1024 took 3.2 million page faults (13 GB of pages) and 40.3 s, with it
# 0.18 million and 34.4 s; at 256 x 256 (memory reused by malloc) nothing changes. Read at torch's
# first large allocation, so it only takes effect when set before that; a value you set wins.
os.environ.setdefault('THP_MEM_ALLOC_ENABLE', '1')

from .version import __version__  # noqa: E402
from . import compat  # noqa: E402

compat.apply()

from . import ops  # noqa: E402
from . import archs, data, models  # noqa: E402,F401  (import registers)

__all__ = ['__version__', 'ops', 'archs', 'data', 'models']
