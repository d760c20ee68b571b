"""Every `*_arch.py` module here registers its classes in BasicSR's registry on import."""
from os import path as osp

from serpent_basicsr._autoload import import_modules

MODULES = import_modules(__name__, osp.dirname(__file__), '_arch')
