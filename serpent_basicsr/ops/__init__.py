"""Selective-scan (S6) op with interchangeable backends (see dispatch.py), and SS2D's cross-scan
version of it (ss2d_scan.py).

    from serpent_basicsr.ops import selective_scan, cross_selective_scan, available_backends
"""
from .dispatch import BACKENDS, ENV_VAR, available_backends, backend_summary, resolve_backend, selective_scan
from .reference import selective_scan_ref
from .ss2d_scan import cross_selective_scan, direction_perms

__all__ = ['selective_scan', 'selective_scan_ref', 'cross_selective_scan', 'direction_perms',
           'available_backends', 'backend_summary', 'resolve_backend', 'BACKENDS', 'ENV_VAR']
