"""Sigmoid contrastive (SigLIP) family: custom ops over the fused Triton kernels, autograd and
dispatch. Math: see reference.py and triton_kernels.py."""
from __future__ import annotations

import torch
from torch import Tensor

from ... import _backend

from . import reference


@torch.library.custom_op("clipkern::triton_sigmoid_rows", mutates_args=())
def triton_sigmoid_rows(x: Tensor, y: Tensor, scale: Tensor, bias: Tensor, labels: Tensor) -> Tensor:
    """Per-row SigLIP loss ℓ[i] = Σ_j −log σ(z_ij (scale·x_i·y_j + bias)), without the B×N matrix."""
    from .triton_ops import sigmoid_fwd

    return sigmoid_fwd(x, y, scale, bias, labels)


@triton_sigmoid_rows.register_fake
def _(x, y, scale, bias, labels):
    return x.new_empty(x.shape[0], dtype=torch.float32)


@torch.library.custom_op("clipkern::triton_sigmoid_rows_bwd", mutates_args=())
def triton_sigmoid_rows_bwd(x: Tensor, y: Tensor, scale: Tensor, bias: Tensor, labels: Tensor,
                            g: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from .triton_ops import sigmoid_bwd

    return sigmoid_bwd(x, y, scale, bias, labels, g)


@triton_sigmoid_rows_bwd.register_fake
def _(x, y, scale, bias, labels, g):
    return torch.empty_like(x), torch.empty_like(y), scale.new_empty(()), bias.new_empty(())


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, g):
    x, y, scale, bias, labels = ctx.saved_tensors
    dx, dy, dscale, dbias = triton_sigmoid_rows_bwd(x, y, scale, bias, labels, g)
    return dx, dy, dscale.to(scale.dtype), dbias.to(bias.dtype), None


triton_sigmoid_rows.register_autograd(_backward, setup_context=_setup_context)


def sigmoid_loss(a: Tensor, c: Tensor, scale: Tensor, bias: Tensor | None, labels: Tensor,
                 backend: str) -> Tensor:
    """−Σ_ij log σ(z_ij L_ij) / B with L = scale·a cᵀ + bias and positives (i, labels[i])."""
    if backend == "reference":
        return reference.sigmoid_loss(a, c, scale, bias, labels)
    if backend == "cuda":
        raise _backend.no_cuda_twin("sigmoid")
    if backend != "triton":
        raise ValueError(f"no {backend!r} implementation of the sigmoid loss")
    b = torch.zeros((), device=a.device) if bias is None else bias.float()
    rows = triton_sigmoid_rows(a, c, scale.float(), b, labels)
    return rows.sum() / a.shape[0]
