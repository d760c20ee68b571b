"""serpent-basicsr: Serpent (arXiv 2403.17902) as a BasicSR plugin.

Build notes
- The CPU selective-scan kernel (serpent_basicsr/ops/csrc) is compiled with torch's
  cpp_extension and OpenMP (without OpenMP, at::parallel_for silently runs on one thread).
  No -march=native: the binary must run on any x86-64; SIMD is chosen at run time.
- If the kernel fails to build, the package still installs and falls back to the pure
  PyTorch scan, unless SERPENT_REQUIRE_CPU_KERNEL=1 (our Makefile sets it).
- A small .pth file is installed next to the package: it registers, lazily and without
  importing torch at start-up, the `torchvision.transforms.functional_tensor` alias that
  basicsr 1.4.2 needs, so `import basicsr` works even before `import serpent_basicsr`.
"""
import os
import shutil
import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
PTH = 'serpent_basicsr_compat.pth'
version = {}
exec((HERE / 'serpent_basicsr' / 'version.py').read_text(), version)


def _ext_modules():
    sources = sorted(str(p.relative_to(HERE)) for p in (HERE / 'serpent_basicsr/ops/csrc').glob('*.cpp'))
    if not sources:
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:  # torch is needed to build; install it first (see README)
        print('serpent-basicsr: torch not importable, skipping the CPU scan kernel', file=sys.stderr)
        return [], {}
    args = ['-O3', '-fopenmp', '-std=c++20']
    headers = sorted(str(p.relative_to(HERE)) for p in (HERE / 'serpent_basicsr/ops/csrc').glob('*.h'))
    ext = CppExtension('serpent_basicsr.ops._scan_cpu', sources, extra_compile_args=args,
                       extra_link_args=['-fopenmp'], depends=headers)

    class OptionalBuildExtension(BuildExtension):
        def build_extensions(self):
            try:
                super().build_extensions()
            except Exception as exc:  # noqa: BLE001 - any compiler failure
                if os.environ.get('SERPENT_REQUIRE_CPU_KERNEL') == '1':
                    raise
                print(f'serpent-basicsr: CPU scan kernel not built ({exc}); '
                      'the pure-PyTorch backend will be used', file=sys.stderr)

    return [ext], {'build_ext': OptionalBuildExtension.with_options(use_ninja=True)}


class BuildPyWithPth(build_py):
    """Ship the .pth file at the top of site-packages (wheel and regular installs)."""

    def run(self):
        super().run()
        shutil.copy(HERE / PTH, Path(self.build_lib) / PTH)


try:  # PEP 660 editable installs (`pip install -e .` with setuptools >= 64)
    from setuptools.command.editable_wheel import editable_wheel

    class EditableWheelWithPth(editable_wheel):
        """Every file in the unpacked folder goes into the editable wheel; this setuptools
        hook (also used for namespace .pth files) is where ours can join them."""

        def _install_namespaces(self, installation_dir, pth_prefix):
            super()._install_namespaces(installation_dir, pth_prefix)
            shutil.copy(HERE / PTH, Path(installation_dir) / PTH)
except ImportError:
    EditableWheelWithPth = None

ext_modules, cmdclass = _ext_modules()
cmdclass['build_py'] = BuildPyWithPth
if EditableWheelWithPth is not None:
    cmdclass['editable_wheel'] = EditableWheelWithPth

setup(
    name='serpent-basicsr',
    version=version['__version__'],
    description='Serpent: multi-scale selective state space models for image restoration, as a BasicSR plugin',
    long_description=(HERE / 'README.md').read_text() if (HERE / 'README.md').exists() else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['serpent_basicsr', 'serpent_basicsr.*']),
    py_modules=['serpent_basicsr_startup'],
    package_data={'serpent_basicsr.ops': ['csrc/*.cpp', 'csrc/*.h']},
    python_requires='>=3.9',
    # Versions are pinned in requirements.txt / the Makefile; these are the loose bounds.
    install_requires=['torch>=2.1', 'torchvision', 'basicsr==1.4.2', 'einops', 'opencv-python',
                      'lmdb', 'pyyaml', 'tensorboard', 'numpy', 'scikit-image', 'scipy'],
    extras_require={'cuda': ['mamba-ssm==2.3.2.post1']},
    entry_points={'console_scripts': ['basicsr=serpent_basicsr.cli:main']},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
