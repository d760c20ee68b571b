"""The specification of the selective scan (S6): a plain loop over the sequence.

Every other backend is tested against this function in float64. It follows mamba-ssm's
`selective_scan_ref` semantics and shapes, but its backward is linear in the length: states
are collected in a list and stacked once, and the per-step inputs come from one `unbind` (slicing
a big tensor inside the loop would make autograd quadratic).
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F


def selective_scan_ref(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                       C: torch.Tensor, D: Optional[torch.Tensor] = None,
                       z: Optional[torch.Tensor] = None, delta_bias: Optional[torch.Tensor] = None,
                       delta_softplus: bool = False, return_last_state: bool = False
                       ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Reference selective scan.

    Shapes: u, delta, z: (batch, dim, L); A: (dim, N); B, C: (batch, groups, N, L) with
    dim % groups == 0 (channel d uses group d // (dim // groups)), or (batch, N, L) for one
    group; D, delta_bias: (dim,). Computation is in float32 (float64 for float64 inputs);
    the output has u's dtype. Returns y (batch, dim, L) and, if asked, the last state
    (batch, dim, N).
    """
    dtype_in = u.dtype
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A = u.to(acc), delta.to(acc), A.to(acc)
    if delta_bias is not None:
        delta = delta + delta_bias.to(acc)[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    groups = B.shape[1]
    if dim % groups:
        raise ValueError(f'dim ({dim}) must be divisible by the number of groups ({groups})')
    B = B.to(acc).repeat_interleave(dim // groups, dim=1)  # (batch, dim, N, L)
    C = C.to(acc).repeat_interleave(dim // groups, dim=1)
    deltaA = torch.exp(torch.einsum('bdl,dn->bdln', delta, A))
    deltaB_u = torch.einsum('bdl,bdnl,bdl->bdln', delta, B, u)
    x = u.new_zeros((batch, dim, A.shape[1]))
    ys = []
    # unbind once: indexing deltaA[:, :, i] inside the loop would make each step's backward
    # allocate a full (batch, dim, L, N) gradient, i.e. a quadratic backward.
    for a_i, bu_i, c_i in zip(deltaA.unbind(2), deltaB_u.unbind(2), C.unbind(3)):
        x = a_i * x + bu_i
        ys.append(torch.einsum('bdn,bdn->bd', x, c_i))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + u * D.to(acc)[..., None]
    if z is not None:
        y = y * F.silu(z.to(acc))
    y = y.to(dtype_in)
    return (y, x) if return_last_state else y
