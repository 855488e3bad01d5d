"""Softmax contrastive family: torch.library custom ops over the fused Triton kernels, their
autograd, and the dispatch between backends. Math: see reference.py and triton_kernels.py."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..._checks import register_no_double_backward
from .. import dispatch
from ..base import accumulation_dtype, zero_grad_term
from . import reference


@torch.library.custom_op("clipkern::triton_contrastive_lse", mutates_args=())
def triton_contrastive_lse(x: Tensor, y: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Row and column statistics of S = scale · x yᵀ without materialising S:
    (row_max, row_logsum, col_max, col_logsum), with lse = max + logsum.

    Gradients are defined for lse: the max outputs are marked non-differentiable, so use them only
    as `max + logsum` (their split merely keeps the backward's exp arguments small and exact)."""
    from .triton_launchers import contrastive_fwd

    return contrastive_fwd(x, y, scale)


@triton_contrastive_lse.register_fake
def _(x, y, scale):
    rows, cols = x.shape[0], y.shape[0]
    return tuple(x.new_empty(n, dtype=torch.float32) for n in (rows, rows, cols, cols))


@torch.library.custom_op("clipkern::triton_contrastive_lse_bwd", mutates_args=())
def triton_contrastive_lse_bwd(x: Tensor, y: Tensor, scale: Tensor, row_max: Tensor, row_logsum: Tensor,
                               col_max: Tensor, col_logsum: Tensor, g_row: Tensor,
                               g_col: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    from .triton_launchers import contrastive_bwd

    return contrastive_bwd(x, y, scale, row_max, row_logsum, col_max, col_logsum, g_row, g_col)


@triton_contrastive_lse_bwd.register_fake
def _(x, y, scale, row_max, row_logsum, col_max, col_logsum, g_row, g_col):
    return torch.empty_like(x), torch.empty_like(y), scale.new_empty((), dtype=torch.float32)


def lse_setup_context(ctx, inputs, output):
    """For an lse op's (row_max, row_logsum, col_max, col_logsum[, col_moment]): only the logsums are
    differentiable (the moment, where there is one, is a constant)."""
    x, y, scale = inputs
    row_max, _, col_max, _, *extra = output
    ctx.mark_non_differentiable(row_max, col_max, *extra)
    ctx.save_for_backward(x, y, scale, *output[:4])


def lse_backward(bwd_op):
    """The autograd backward of an lse op (Triton's here, the csrc one in extension_ops.py) over its bwd op."""
    def backward(ctx, _g_row_max, g_row, _g_col_max, g_col, *_g_extra):
        x, y, scale, row_max, row_logsum, col_max, col_logsum = ctx.saved_tensors
        g_row = torch.zeros_like(row_logsum) if g_row is None else g_row
        g_col = torch.zeros_like(col_logsum) if g_col is None else g_col
        dx, dy, dscale = bwd_op(x, y, scale, row_max, row_logsum, col_max, col_logsum, g_row, g_col)
        return dx, dy, dscale.to(scale.dtype)
    return backward


_triton_lse_backward = lse_backward(triton_contrastive_lse_bwd)
triton_contrastive_lse.register_autograd(_triton_lse_backward, setup_context=lse_setup_context)
register_no_double_backward(triton_contrastive_lse_bwd, "contrastive statistics", "triton")


@torch.library.custom_op("clipkern::triton_contrastive_lse_moment", mutates_args=())
def triton_contrastive_lse_moment(x: Tensor, y: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor,
                                                                                Tensor]:
    """`triton_contrastive_lse` plus the column moment e[j] = Σ_i P_c[i, j]·(x yᵀ)[i, j], the derivative
    of col_lse[j] by the scale (non-differentiable output), from the same pass. The distributed loss
    routes each column's scale gradient to the rank that owns the column with it."""
    from .triton_launchers import contrastive_fwd_moment

    return contrastive_fwd_moment(x, y, scale)


@triton_contrastive_lse_moment.register_fake
def _(x, y, scale):
    rows, cols = x.shape[0], y.shape[0]
    return tuple(x.new_empty(n, dtype=torch.float32) for n in (rows, rows, cols, cols, cols))


triton_contrastive_lse_moment.register_autograd(_triton_lse_backward, setup_context=lse_setup_context)


@torch.library.custom_op("clipkern::triton_clip_loss", mutates_args=())
def triton_clip_loss(x: Tensor, y: Tensor, scale: Tensor, labels: Optional[Tensor],
                     symmetric: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The whole mean contrastive loss in two kernels and one sum: (loss, row_max, row_logsum,
    col_max, col_logsum, label_counts). labels None means row i's positive is column i. Only the
    loss is differentiable; the rest is what the backward needs."""
    from .triton_launchers import clip_loss_fwd

    return clip_loss_fwd(x, y, scale, labels, symmetric)


@triton_clip_loss.register_fake
def _(x, y, scale, labels, symmetric):
    rows, cols = x.shape[0], y.shape[0] if symmetric else 0
    f32 = torch.float32
    counts = cols if symmetric and labels is not None else 0
    return (x.new_empty((), dtype=f32), x.new_empty(rows, dtype=f32), x.new_empty(rows, dtype=f32),
            x.new_empty(cols, dtype=f32), x.new_empty(cols, dtype=f32), x.new_empty(counts, dtype=torch.int32))


@torch.library.custom_op("clipkern::triton_clip_loss_bwd", mutates_args=())
def triton_clip_loss_bwd(x: Tensor, y: Tensor, scale: Tensor, labels: Optional[Tensor], row_max: Tensor,
                         row_logsum: Tensor, col_max: Tensor, col_logsum: Tensor, counts: Tensor, g: Tensor,
                         symmetric: bool) -> tuple[Tensor, Tensor, Tensor]:
    from .triton_launchers import clip_loss_bwd

    return clip_loss_bwd(x, y, scale, labels, row_max, row_logsum, col_max, col_logsum, counts, g, symmetric)


@triton_clip_loss_bwd.register_fake
def _(x, y, scale, labels, row_max, row_logsum, col_max, col_logsum, counts, g, symmetric):
    return x.new_empty(x.shape), y.new_empty(y.shape), x.new_empty((), dtype=torch.float32)


def _loss_setup_context(ctx, inputs, output):
    x, y, scale, labels, symmetric = inputs
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)  # no zero-filled gradients for the statistics (no extra ops)
    ctx.symmetric = symmetric
    ctx.has_labels = labels is not None
    ctx.save_for_backward(x, y, scale, labels if labels is not None else None, *output[1:])


def _loss_backward(ctx, g, *_unused):
    if g is None:  # only the (non-differentiable) statistics were used
        return None, None, None, None, None
    x, y, scale, labels, row_m, row_logl, col_m, col_logl, counts = ctx.saved_tensors
    dx, dy, dscale = triton_clip_loss_bwd(x, y, scale, labels, row_m, row_logl, col_m, col_logl, counts, g,
                                          ctx.symmetric)
    return dx, dy, dscale.to(scale.dtype), None, None


triton_clip_loss.register_autograd(_loss_backward, setup_context=_loss_setup_context)
register_no_double_backward(triton_clip_loss_bwd, "contrastive loss", "triton")


def lse_moment_op(backend: str):
    """(row_max, row_logsum, col_max, col_logsum, col_moment) of a backend: the Triton kernel computes
    the moment in its forward pass; other backends get None (the caller computes it in torch)."""
    return triton_contrastive_lse_moment if backend == "triton" else None


def lse_op(backend: str):
    """The fused (row_max, row_logsum, col_max, col_logsum) op of a backend: the Triton custom op, or
    its csrc twin for backend="cuda" (imported, and the extension loaded, on first use)."""
    if backend == "cuda":
        from .extension_ops import cuda_contrastive_lse

        return cuda_contrastive_lse
    return triton_contrastive_lse


def reference_loss(a: Tensor, c: Tensor, scale: Tensor, bias: Tensor | None, labels: Tensor | None,
                   symmetric: bool) -> Tensor:
    labels = torch.arange(a.shape[0], device=a.device) if labels is None else labels
    return reference.contrastive_loss(a, c, scale, bias, labels, symmetric)


def triton_loss(a: Tensor, c: Tensor, scale: Tensor, bias: Tensor | None, labels: Tensor | None,
                symmetric: bool) -> Tensor:
    loss = triton_clip_loss(a, c, scale.float(), labels, symmetric)[0]
    return loss if bias is None else loss + zero_grad_term(bias)


def extension_loss(a: Tensor, c: Tensor, scale: Tensor, bias: Tensor | None, labels: Tensor | None,
                   symmetric: bool) -> Tensor:
    from .extension_ops import cuda_clip_loss

    # one scale in the op's accumulation dtype (fp64 for fp64 features on a CPU) for the statistics and
    # the positives: an fp32-rounded scale against an fp64 one left a nonzero loss where it must be 0
    loss = cuda_clip_loss(a, c, scale.to(accumulation_dtype(a)), labels, symmetric)
    return loss if bias is None else loss + zero_grad_term(bias)


def contrastive_loss(a: Tensor, c: Tensor, scale: Tensor, bias: Tensor | None, labels: Tensor | None,
                     symmetric: bool, backend: str) -> Tensor:
    """Mean softmax-contrastive loss of S = scale·a cᵀ (+ bias) with positives (i, labels[i])
    (labels None: (i, i), which needs rows ≤ columns). symmetric=True averages the row and column
    directions (CLIP); False gives the row direction only (one half of open_clip's local loss).
    Inputs are validated by the caller; the backend's implementation comes from ops/dispatch.py."""
    return dispatch.run("contrastive", backend, a, c, scale, bias, labels, symmetric)


dispatch.bind("contrastive", globals())
