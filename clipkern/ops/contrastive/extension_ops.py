"""torch.library glue for the csrc contrastive ops (backend="cuda"): fake (meta) implementations
and autograd for clipkern::contrastive_fwd, mirroring the Triton custom op triton_contrastive_lse
(same outputs, same non-differentiable max outputs). The schemas and kernels live in csrc/
(ops.cpp, cpu/contrastive.cpp, cuda/*.cu); importing this module loads the extension and raises
BackendUnavailable, with the reason, when it cannot be loaded. Registration runs once, on import.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..._checks import register_no_double_backward
from ..base import accumulation_dtype, extension_ops
from . import lse_backward, lse_setup_context

_OPS = extension_ops()


@torch.library.register_fake("clipkern::contrastive_fwd")
def _(x, y, scale):
    rows, cols, acc = x.shape[0], y.shape[0], accumulation_dtype(x)
    return tuple(x.new_empty(n, dtype=acc) for n in (rows, rows, cols, cols))


@torch.library.register_fake("clipkern::contrastive_bwd")
def _(x, y, scale, row_max, row_logsum, col_max, col_logsum, g_row, g_col, pos_grad=None):
    # contiguous outputs (both implementations allocate fresh ones), dscale on the features' device
    return x.new_empty(x.shape), y.new_empty(y.shape), x.new_empty((), dtype=accumulation_dtype(x))


torch.library.register_autograd("clipkern::contrastive_fwd", lse_backward(_OPS.contrastive_bwd),
                               setup_context=lse_setup_context)
register_no_double_backward("clipkern::contrastive_bwd", "contrastive statistics", "cuda")


def cuda_contrastive_lse(x: Tensor, y: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(row_max, row_logsum, col_max, col_logsum) of S = scale · x yᵀ (csrc twin of
    triton_contrastive_lse); differentiate only max + logsum."""
    return _OPS.contrastive_fwd(x, y, scale)


# ---- the whole loss in one op pair (csrc/composite/contrastive_loss.cpp), the twin of triton_clip_loss
@torch.library.register_fake("clipkern::contrastive_loss_fwd")
def _(x, y, scale, labels, symmetric):
    rows, cols, acc = x.shape[0], y.shape[0], accumulation_dtype(x)
    return (x.new_empty((), dtype=acc), *(x.new_empty(n, dtype=acc) for n in (rows, rows, cols, cols)),
            x.new_empty((), dtype=acc))


@torch.library.register_fake("clipkern::contrastive_loss_bwd")
def _(x, y, scale, labels, row_max, row_logsum, col_max, col_logsum, raw_pos_sum, g, symmetric):
    return x.new_empty(x.shape), y.new_empty(y.shape), x.new_empty((), dtype=accumulation_dtype(x))


def _loss_setup_context(ctx, inputs, output):
    x, y, scale, labels, symmetric = inputs
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)  # no zero-filled gradients for the statistics (no extra ops)
    ctx.symmetric = symmetric
    ctx.save_for_backward(x, y, scale, labels, *output[1:])


def _loss_backward(ctx, g, *_unused):
    if g is None:  # only the (non-differentiable) statistics were used
        return None, None, None, None, None
    x, y, scale, labels, *stats = ctx.saved_tensors
    dx, dy, dscale = _OPS.contrastive_loss_bwd(x, y, scale, labels, *stats, g, ctx.symmetric)
    return dx, dy, dscale.to(scale.dtype), None, None


torch.library.register_autograd("clipkern::contrastive_loss_fwd", _loss_backward, setup_context=_loss_setup_context)
register_no_double_backward("clipkern::contrastive_loss_bwd", "contrastive loss", "cuda")


def cuda_clip_loss(x: Tensor, y: Tensor, scale: Tensor, labels: Tensor | None, symmetric: bool) -> Tensor:
    """The mean contrastive loss of S = scale · x yᵀ in one csrc op pair (labels None: row i's positive
    is column i); scale in the features' accumulation dtype."""
    return _OPS.contrastive_loss_fwd(x, y, scale, labels, symmetric)[0]
