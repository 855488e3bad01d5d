"""torch.library glue for the csrc all-pairs difference ops (backend="cuda"): fake implementations
and autograd for clipkern::pairdiff_fwd, mirroring the Triton custom op triton_pairdiff_lse (the
max output is non-differentiable; dA = scale·u, dR = scale·t, dscale = Σ t ⊙ r from the bwd op's
(u, t)). Importing this module loads the extension (BackendUnavailable with the reason if it
cannot); registration runs once, on import."""
from __future__ import annotations

import torch
from torch import Tensor

from ..._checks import register_no_double_backward
from ..base import accumulation_dtype, extension_ops
from . import pairdiff_backward, pairdiff_setup_context

_OPS = extension_ops()


@torch.library.register_fake("clipkern::pairdiff_fwd")
def _(a, r, scale):
    return tuple(a.new_empty(a.shape[0], dtype=accumulation_dtype(a)) for _ in range(2))


@torch.library.register_fake("clipkern::pairdiff_bwd")
def _(a, r, scale, lse_max, lse_logsum, g):
    acc = accumulation_dtype(a)
    return a.new_empty(a.shape, dtype=acc), r.new_empty(r.shape, dtype=acc)


torch.library.register_autograd("clipkern::pairdiff_fwd", pairdiff_backward(_OPS.pairdiff_bwd),
                               setup_context=pairdiff_setup_context)
register_no_double_backward("clipkern::pairdiff_bwd", "all-pairs difference statistics", "cuda")


def cuda_pairdiff_lse(a: Tensor, r: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """(max, logsum) per text p of L[p, i, j] = scale·(a[p, i] − a[p, j])·r[i, j] over i ≠ j (csrc
    twin of triton_pairdiff_lse); differentiate only max + logsum."""
    return _OPS.pairdiff_fwd(a, r, scale)
