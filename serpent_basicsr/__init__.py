"""serpent-basicsr: Serpent (multi-scale selective state space models) as a BasicSR plugin.

`import serpent_basicsr` applies the compatibility fixes for basicsr 1.4.2 (see compat.py)
and registers our architectures, datasets and models in BasicSR's registries, so that
`basicsr.train.train_pipeline` can build them from option files.
"""
import os
import sys

# OpenMP threads that spin while waiting make every small op 6-10x slower as soon as any other
# process (a DataLoader worker, a second job) wants a core: measured 2.4 s vs 0.4 s per
# serpent_s training step on 2 cores. Sleeping waiters cost nothing measurable when idle.
# Only a default (set OMP_WAIT_POLICY yourself to override), and only effective when torch
# has not been imported yet, e.g. for the `basicsr` command.
_TORCH_FIRST = 'torch' in sys.modules
_USER_POLICY = os.environ.get('OMP_WAIT_POLICY')
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
# The policy OpenMP runs with (None: its default, spinning a while before sleeping): it reads the
# variable once, when torch loads it, so our default counts only if torch was not loaded yet. The
# scan kernel picks its threads by it (ops/cpu_scan.py).
OMP_WAIT_POLICY_SEEN = _USER_POLICY if _TORCH_FIRST else os.environ['OMP_WAIT_POLICY']

# Huge pages for large tensors by default, glibc malloc block reuse on request (memory.py has the
# measurements); set before torch's first large allocation, a value you set yourself wins.
from . import memory  # noqa: E402  (imports no torch)

memory.apply_defaults()

from .version import __version__  # noqa: E402
from . import compat  # noqa: E402

compat.apply()

from . import ops  # noqa: E402
from . import archs, data, models  # noqa: E402,F401  (import registers)

__all__ = ['__version__', 'ops', 'archs', 'data', 'models']
