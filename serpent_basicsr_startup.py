"""Interpreter start-up hook (imported by serpent_basicsr_compat.pth).

basicsr 1.4.2 does `from torchvision.transforms.functional_tensor import rgb_to_grayscale`,
a module torchvision removed in 0.17. This installs a finder that answers that one module
name with `torchvision.transforms.functional` (where rgb_to_grayscale lives now), only when
something imports it: nothing heavy is imported at start-up. serpent_basicsr.compat does the
same when the .pth file is not installed (e.g. running from a source checkout).
"""
import importlib
import importlib.abc
import importlib.util
import sys

ALIAS = 'torchvision.transforms.functional_tensor'
TARGET = 'torchvision.transforms.functional'


class _AliasLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return importlib.import_module(TARGET)

    def exec_module(self, module):
        pass


class FunctionalTensorAlias(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        # Appended last to sys.meta_path: only asked when no torchvision module of that name
        # exists, so an old torchvision that still ships it keeps its own.
        if fullname != ALIAS:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader())


def install() -> None:
    if not any(isinstance(f, FunctionalTensorAlias) for f in sys.meta_path):
        sys.meta_path.append(FunctionalTensorAlias())


install()
