"""Sigmoid contrastive (SigLIP) family: the fused loss as a torch.library custom op over the Triton
kernels, its autograd, and the family's implementations for ops/dispatch.py. Math: reference.py and
triton_kernels.py."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..._checks import register_no_double_backward
from .. import dispatch
from . import reference


@torch.library.custom_op("clipkern::triton_sigmoid_loss", mutates_args=())
def triton_sigmoid_loss(x: Tensor, y: Tensor, scale: Tensor, bias: Optional[Tensor],
                        labels: Optional[Tensor]) -> Tensor:
    """Mean SigLIP loss −Σ_ij log σ(z_ij (scale·x_i·y_j + bias)) / M without the M×N matrix (fp32 0-d).
    bias None: no bias; labels None: row i's positive is column i."""
    from .triton_launchers import sigmoid_loss_fwd

    return sigmoid_loss_fwd(x, y, scale, bias, labels)


@triton_sigmoid_loss.register_fake
def _(x, y, scale, bias, labels):
    return x.new_empty((), dtype=torch.float32)


@torch.library.custom_op("clipkern::triton_sigmoid_loss_bwd", mutates_args=())
def triton_sigmoid_loss_bwd(x: Tensor, y: Tensor, scale: Tensor, bias: Optional[Tensor], labels: Optional[Tensor],
                            g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(dX, dY, [dscale, dbias]) given the upstream gradient g (0-d): dscale and dbias as one fp32 (2,)
    tensor (one reduction; outputs of a custom op may not alias each other). dbias is computed (and
    ignored) without a bias."""
    from .triton_launchers import sigmoid_loss_bwd

    return sigmoid_loss_bwd(x, y, scale, bias, labels, g)


@triton_sigmoid_loss_bwd.register_fake
def _(x, y, scale, bias, labels, g):
    return x.new_empty(x.shape), y.new_empty(y.shape), x.new_empty((2,), dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    x, y, scale, bias, labels = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, y, scale, bias, labels)


def _backward(ctx, g):
    x, y, scale, bias, labels = ctx.saved_tensors
    dx, dy, dsb = triton_sigmoid_loss_bwd(x, y, scale, bias, labels, g)
    return dx, dy, dsb[0].to(scale.dtype), dsb[1].to(bias.dtype) if ctx.has_bias else None, None


triton_sigmoid_loss.register_autograd(_backward, setup_context=_setup_context)
register_no_double_backward(triton_sigmoid_loss_bwd, "SigLIP loss", "triton")


def reference_loss(a: Tensor, c: Tensor, scale: Tensor, bias: Tensor | None, labels: Tensor | None) -> Tensor:
    labels = torch.arange(a.shape[0], device=a.device) if labels is None else labels
    return reference.sigmoid_loss(a, c, scale, bias, labels)


def triton_loss(a: Tensor, c: Tensor, scale: Tensor, bias: Tensor | None, labels: Tensor | None) -> Tensor:
    return triton_sigmoid_loss(a, c, scale.float(), None if bias is None else bias.float(), labels)


def extension_loss(a: Tensor, c: Tensor, scale: Tensor, bias: Tensor | None, labels: Tensor | None) -> Tensor:
    from .extension_ops import cuda_sigmoid_loss  # loads the csrc extension on first use

    return cuda_sigmoid_loss(a, c, scale, bias, labels)


def sigmoid_loss(a: Tensor, c: Tensor, scale: Tensor, bias: Tensor | None, labels: Tensor | None,
                 backend: str) -> Tensor:
    """−Σ_ij log σ(z_ij L_ij) / B with L = scale·a cᵀ + bias and positives (i, labels[i]) (labels
    None: (i, i)). The backend's implementation comes from ops/dispatch.py."""
    return dispatch.run("sigmoid", backend, a, c, scale, bias, labels)


dispatch.bind("sigmoid", globals())
