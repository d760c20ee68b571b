"""Shape/dtype checks and casting shared by the scan backends."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch


class ScanInputs(NamedTuple):
    u: torch.Tensor
    delta: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor  # always (batch, groups, N, L) here
    C: torch.Tensor
    D: Optional[torch.Tensor]
    z: Optional[torch.Tensor]
    delta_bias: Optional[torch.Tensor]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else (float32, bf16, fp16) accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def cast_to(t: Optional[torch.Tensor], dtype: torch.dtype, contiguous: bool = True) -> Optional[torch.Tensor]:
    """t in the compute dtype (differentiable), made contiguous unless asked not to; None stays None."""
    if t is None:
        return None
    if t.dtype != dtype:  # (a no-op .to() still costs ~1 us: 8 per scan call)
        t = t.to(dtype)
    return t.contiguous() if contiguous else t


def check_shapes(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor]) -> None:
    """Raise ValueError naming the argument whose shape does not fit mamba-ssm's conventions."""
    if u.dim() != 3:
        raise ValueError(f'selective_scan: u must be (batch, dim, L), got shape {tuple(u.shape)}')
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f'selective_scan: delta must have u\'s shape {tuple(u.shape)}, got {tuple(delta.shape)}')
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f'selective_scan: A must be (dim={dim}, N), got {tuple(A.shape)}')
    if A.is_complex():
        raise ValueError('selective_scan: complex A is not supported')
    n = A.shape[1]
    for name, t in (('B', B), ('C', C)):
        ok = (t.dim() in (3, 4) and t.shape[0] == batch and t.shape[-1] == length and t.shape[-2] == n)
        if not ok:
            raise ValueError(f'selective_scan: {name} must be (batch={batch}, groups, N={n}, L={length}) '
                             f'or (batch, N, L), got {tuple(t.shape)}')
    gb = B.shape[1] if B.dim() == 4 else 1
    gc = C.shape[1] if C.dim() == 4 else 1
    if gb != gc:
        raise ValueError(f'selective_scan: B and C must have the same number of groups, got {gb} and {gc}')
    if gb == 0 or dim % gb:
        raise ValueError(f'selective_scan: dim ({dim}) must be divisible by the number of groups ({gb})')
    for name, t in (('D', D), ('delta_bias', delta_bias)):
        if t is not None and tuple(t.shape) != (dim,):
            raise ValueError(f'selective_scan: {name} must be (dim={dim},), got {tuple(t.shape)}')
    if z is not None and z.shape != u.shape:
        raise ValueError(f'selective_scan: z must have u\'s shape {tuple(u.shape)}, got {tuple(z.shape)}')


def prepare(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
            D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
            contiguous: bool = True) -> ScanInputs:
    """Check shapes, cast to the compute dtype, give B/C a group axis (all differentiable)."""
    check_shapes(u, delta, A, B, C, D, z, delta_bias)
    acc = compute_dtype(u.dtype)

    def cast(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return cast_to(t, acc, contiguous)

    B = B.unsqueeze(1) if B.dim() == 3 else B
    C = C.unsqueeze(1) if C.dim() == 3 else C
    return ScanInputs(cast(u), cast(delta), cast(A), cast(B), cast(C), cast(D), cast(z), cast(delta_bias))
