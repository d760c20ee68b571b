"""Selective-scan (S6) op with interchangeable backends (see dispatch.py).

    from serpent_basicsr.ops import selective_scan, available_backends, backend_summary
"""
from .dispatch import BACKENDS, ENV_VAR, available_backends, backend_summary, resolve_backend, selective_scan
from .reference import selective_scan_ref

__all__ = ['selective_scan', 'selective_scan_ref', 'available_backends', 'backend_summary', 'resolve_backend',
           'BACKENDS', 'ENV_VAR']
