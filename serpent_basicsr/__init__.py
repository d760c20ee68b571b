"""serpent-basicsr: Serpent (multi-scale selective state space models) as a BasicSR plugin.

`import serpent_basicsr` applies the compatibility fixes for basicsr 1.4.2 (see compat.py)
and registers our architectures, datasets and models in BasicSR's registries, so that
`basicsr.train.train_pipeline` can build them from option files.
"""
from .version import __version__
from . import compat

compat.apply()

from . import ops  # noqa: E402
from . import archs, data, models  # noqa: E402,F401  (import registers)

__all__ = ['__version__', 'ops', 'archs', 'data', 'models']
