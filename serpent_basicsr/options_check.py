"""Check an option file before BasicSR sees it, so that bad input gets a one-line cause.

BasicSR reports a missing file, a YAML slip, an unknown `type:` or a missing key as a deep
traceback (often a KeyError far from the cause). Here each becomes an `OptionError` whose
message names the file, line or option path, and, for unknown types, the close names.
"""
from __future__ import annotations

import difflib
import os.path as osp
from typing import Any, Dict, Iterable, List, Optional

import yaml


class OptionError(ValueError):
    """A problem with the user's options; its message is meant to be shown as it is."""


REQUIRED_TRAIN = ('name', 'model_type', 'num_gpu', 'datasets', 'network_g', 'path', 'train', 'logger')
REQUIRED_TEST = ('name', 'model_type', 'num_gpu', 'datasets', 'network_g', 'path', 'val')
REQUIRED_TRAIN_SUB = {'train': ('total_iter', 'optim_g'), 'logger': ('print_freq', 'save_checkpoint_freq'),
                      'datasets': ('train',)}
REQUIRED_DATASET = ('name', 'type')
REQUIRED_TRAIN_DATASET = ('batch_size_per_gpu', 'num_worker_per_gpu')


def load_yaml(path: str) -> Dict[str, Any]:
    """Read an option file with BasicSR's ordered loader, reporting the file and line on error."""
    from basicsr.utils.options import ordered_yaml
    if not osp.isfile(path):
        raise OptionError(f'-opt: no such option file: {path}')
    try:
        with open(path) as f:
            opt = yaml.load(f, Loader=ordered_yaml()[0])
    except yaml.YAMLError as exc:
        mark = getattr(exc, 'problem_mark', None)
        where = f' line {mark.line + 1}, column {mark.column + 1}' if mark else ''
        problem = getattr(exc, 'problem', None) or str(exc).splitlines()[0]
        raise OptionError(f'{path}:{where}: YAML syntax error: {problem}') from None
    if not isinstance(opt, dict):
        raise OptionError(f'{path}: expected a mapping of options at the top level, got {type(opt).__name__}')
    return opt


def apply_force_yml(opt: Dict[str, Any], entries: Optional[Iterable[str]]) -> None:
    """Apply `--force_yml key:subkey=value` like BasicSR does, but check each entry first
    (BasicSR builds Python source from it and cannot create new keys)."""
    from basicsr.utils.options import _postprocess_yml_value
    for entry in entries or ():
        if entry.count('=') != 1:
            raise OptionError(f"--force_yml {entry!r}: expected KEY[:SUBKEY...]=VALUE (one '=')")
        keys, value = (part.strip() for part in entry.split('='))
        path = keys.split(':')
        if not keys or any(not k for k in path):
            raise OptionError(f'--force_yml {entry!r}: empty key in {keys!r}')
        node = opt
        for i, key in enumerate(path[:-1]):
            if not isinstance(node, dict) or key not in node:
                raise OptionError(f"--force_yml {entry!r}: option {':'.join(path[:i + 1])} does not exist")
            node = node[key]
        if not isinstance(node, dict) or path[-1] not in node:
            raise OptionError(f'--force_yml {entry!r}: option {keys} does not exist '
                              '(BasicSR can only override existing keys)')
        node[path[-1]] = _postprocess_yml_value(value)


def _require(mapping: Dict[str, Any], keys: Iterable[str], where: str, path: str) -> None:
    missing = [k for k in keys if k not in mapping]
    if missing:
        prefix = f'{where}.' if where else ''
        raise OptionError(f"{path}: missing required option {', '.join(prefix + k for k in missing)}")


def _check_type(section: Any, registry, option: str, path: str) -> None:
    if not isinstance(section, dict):
        raise OptionError(f'{path}: option {option} must be a mapping')
    if 'type' not in section:
        raise OptionError(f'{path}: missing required option {option}.type')
    name = section['type']
    if name in registry or f'{name}_basicsr' in registry:
        return
    known: List[str] = sorted(k for k, _ in registry)
    close = difflib.get_close_matches(str(name), known, n=4, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; registered: {', '.join(known)}"
    option = option if option == 'model_type' else f'{option}.type'
    raise OptionError(f"{path}: {option}: unknown {registry._name} type {name!r}{hint}")


def check_options(opt: Dict[str, Any], path: str, is_train: bool) -> None:
    """Check required keys and every registry `type:` in an option dict."""
    from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY

    _require(opt, REQUIRED_TRAIN if is_train else REQUIRED_TEST, '', path)
    if is_train:
        for section, keys in REQUIRED_TRAIN_SUB.items():
            if not isinstance(opt[section], dict):
                raise OptionError(f'{path}: option {section} must be a mapping')
            _require(opt[section], keys, section, path)
    _check_type({'type': opt['model_type']}, MODEL_REGISTRY, 'model_type', path)
    if not isinstance(opt['datasets'], dict) or not opt['datasets']:
        raise OptionError(f'{path}: option datasets must be a non-empty mapping')
    for phase, dataset in opt['datasets'].items():
        _check_type(dataset, DATASET_REGISTRY, f'datasets.{phase}', path)
        _require(dataset, REQUIRED_DATASET, f'datasets.{phase}', path)
        if is_train and phase == 'train':
            _require(dataset, REQUIRED_TRAIN_DATASET, f'datasets.{phase}', path)
    for key in [k for k in opt if k.startswith('network_')]:
        _check_type(opt[key], ARCH_REGISTRY, key, path)
    for key, value in (opt.get('train') or {}).items():
        if key.endswith('_opt') and isinstance(value, dict):
            _check_type(value, LOSS_REGISTRY, f'train.{key}', path)
    metrics = (opt.get('val') or {}).get('metrics') or {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            _check_type(value, METRIC_REGISTRY, f'val.metrics.{key}', path)
