"""Intra-modality separation (AlignCLIP IMSep) family: custom ops over the fused Triton kernels,
autograd and dispatch. Math: see reference.py and triton_kernels.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..._checks import register_no_double_backward
from .. import dispatch

from . import reference


@torch.library.custom_op("clipkern::triton_imsep_loss", mutates_args=())
def triton_imsep_loss(x: Tensor, u_hat: Tensor, diag: Tensor,
                      scale: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The mean IMSep loss of one modality, mean_i [lse_i(scale·M) − scale·diag_i], and the row and
    column (max, log-sum) of its logits (M is symmetric, so both describe the same softmax; the
    backward needs both): (loss, row_max, row_logsum, col_max, col_logsum), all fp32. Only the loss
    is differentiable (in x, diag and scale; u_hat is a constant)."""
    from .triton_launchers import imsep_loss_fwd

    return imsep_loss_fwd(x, u_hat, diag, scale)


@triton_imsep_loss.register_fake
def _(x, u_hat, diag, scale):
    return (scale.new_empty((), dtype=torch.float32),
            *(x.new_empty(x.shape[0], dtype=torch.float32) for _ in range(4)))


@torch.library.custom_op("clipkern::triton_imsep_loss_bwd", mutates_args=())
def triton_imsep_loss_bwd(x: Tensor, u_hat: Tensor, diag: Tensor, scale: Tensor, row_max: Tensor,
                          row_logsum: Tensor, col_max: Tensor, col_logsum: Tensor,
                          g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(dX, ∂L/∂diag, ∂L/∂scale) given the loss's upstream gradient g."""
    from .triton_launchers import imsep_loss_bwd

    return imsep_loss_bwd(x, u_hat, diag, scale, row_max, row_logsum, col_max, col_logsum, g)


@triton_imsep_loss_bwd.register_fake
def _(x, u_hat, diag, scale, row_max, row_logsum, col_max, col_logsum, g):
    return (x.new_empty(x.shape), x.new_empty(x.shape[0], dtype=torch.float32),
            scale.new_empty((), dtype=torch.float32))


def _setup_context(ctx, inputs, output):
    stats = output[1:]
    ctx.mark_non_differentiable(*stats)
    ctx.set_materialize_grads(False)  # no zero-filled gradients for the statistics (no extra ops)
    ctx.save_for_backward(*inputs, *stats)


def _backward(ctx, g, *_stat_grads):
    if g is None:  # only the (non-differentiable) statistics were used
        return None, None, None, None
    x, u_hat, diag, scale, *stats = ctx.saved_tensors
    dx, ddiag, dscale = triton_imsep_loss_bwd(x, u_hat, diag, scale, *stats, g)
    return dx, None, ddiag, dscale.to(scale.dtype)


triton_imsep_loss.register_autograd(_backward, setup_context=_setup_context)
register_no_double_backward(triton_imsep_loss_bwd, "IMSep loss", "triton")


def reference_loss(x: Tensor, y: Tensor, semantic: Tensor, scale: Tensor) -> Tensor:
    return reference.imsep_single(x, y, semantic, scale)


def triton_loss(x: Tensor, y: Tensor, semantic: Tensor, scale: Tensor) -> Tensor:
    u_hat = F.normalize(semantic.detach().float(), dim=1).to(x.dtype)
    diag = (x.float() * y.float()).sum(dim=1)
    return triton_imsep_loss(x, u_hat, diag, scale.float())[0]


def imsep_single(x: Tensor, y: Tensor, semantic: Tensor, scale: Tensor, backend: str) -> Tensor:
    """CE_rows(s·M) for one modality (x = its features, y = the other modality's); the backend's
    implementation comes from ops/dispatch.py."""
    return dispatch.run("imsep", backend, x, y, semantic, scale)


dispatch.bind("imsep", globals())
