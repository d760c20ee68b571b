"""The `basicsr` command: BasicSR's own train/test pipelines with our components registered.

    basicsr train -opt options/serpent_deblur.yml [--launcher none|pytorch|slurm]
                  [--auto_resume] [--debug] [--local_rank N] [--force_yml a:b=v ...]
    basicsr test  -opt options/test/serpent_deblur.yml
    basicsr restore ...          (see serpent_basicsr.inference)
    basicsr --version

train/test take exactly BasicSR's flags and run `basicsr.train.train_pipeline` /
`basicsr.test.test_pipeline` with the current directory as root (experiments/, results/,
tb_logger/ are created there, and --auto_resume looks there). The option file is checked
first (serpent_basicsr.options_check), so that bad input gets a one-line cause.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

PIPELINE_ERRORS = (FileNotFoundError, NotADirectoryError, ValueError, KeyError)


def _basicsr_parser(prog: str) -> argparse.ArgumentParser:
    """A copy of basicsr.utils.options.parse_options' flags, for --help and early checks."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument('-opt', type=str, required=True, help='Path to option YAML file.')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none', help='job launcher')
    parser.add_argument('--auto_resume', action='store_true', help='resume from the latest training state')
    parser.add_argument('--debug', action='store_true', help="prefix the name with 'debug_' (no TensorBoard)")
    parser.add_argument('--local_rank', type=int, default=0)
    parser.add_argument('--force_yml', nargs='+', default=None,
                        help='override existing options, e.g. train:ema_decay=0.999')
    return parser


def version_text() -> str:
    import basicsr
    import torch

    from . import __version__, ops
    return (f'serpent-basicsr {__version__}\nbasicsr {basicsr.__version__}\ntorch {torch.__version__}'
            f'\nscan backend: {ops.backend_summary()}')


def _fail(message: str) -> int:
    print(f'error: {message}', file=sys.stderr)
    return 2


def run_pipeline(kind: str, argv: List[str], prog: str) -> int:
    """Check the options, then hand BasicSR's own argv to its pipeline."""
    import serpent_basicsr  # noqa: F401  (compat fixes + registration)
    from .options_check import OptionError, apply_force_yml, check_options, load_yaml

    args = _basicsr_parser(prog).parse_args(argv)
    try:
        opt = load_yaml(args.opt)
        apply_force_yml(opt, args.force_yml)
        check_options(opt, args.opt, is_train=(kind == 'train'))
    except OptionError as exc:
        return _fail(str(exc))

    if kind == 'train':
        from basicsr.train import train_pipeline as pipeline
    else:
        from basicsr.test import test_pipeline as pipeline
    saved_argv = sys.argv
    sys.argv = [prog] + list(argv)  # parse_options reads sys.argv
    try:
        pipeline(os.getcwd())
    except PIPELINE_ERRORS as exc:
        if os.environ.get('SERPENT_TRACEBACK') == '1':
            raise
        # Bad paths and option values surface here (e.g. a dataset folder that does not
        # exist); show the cause, not 40 frames of BasicSR.
        return _fail(f'{type(exc).__name__}: {exc} (set SERPENT_TRACEBACK=1 for the traceback)')
    finally:
        sys.argv = saved_argv
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog='basicsr', description='BasicSR with Serpent (serpent-basicsr) registered.',
        epilog="Run 'basicsr <command> -h' for a command's flags.")
    parser.add_argument('--version', action='store_true', help='print versions and the scan backend')
    sub = parser.add_subparsers(dest='command', metavar='{train,test,restore}')
    sub.add_parser('train', help="train with BasicSR's train_pipeline (BasicSR's flags)", add_help=False)
    sub.add_parser('test', help="test with BasicSR's test_pipeline (BasicSR's flags)", add_help=False)
    sub.add_parser('restore', help='restore an image or a folder with a trained model', add_help=False)
    if not argv:
        parser.print_help()
        return 2
    if argv[0] == '--version':
        print(version_text())
        return 0
    if argv[0] in ('train', 'test'):
        return run_pipeline(argv[0], argv[1:], prog=f'basicsr {argv[0]}')
    if argv[0] == 'restore':
        from . import inference
        return inference.main(argv[1:])
    parser.parse_args(argv)  # prints help or a usage error
    return 2


if __name__ == '__main__':
    sys.exit(main())
