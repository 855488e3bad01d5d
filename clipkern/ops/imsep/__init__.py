"""Intra-modality separation (AlignCLIP IMSep) family: custom ops over the fused Triton kernels,
autograd and dispatch. Math: see reference.py and triton_kernels.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ... import _backend

from . import reference


@torch.library.custom_op("clipkern::triton_imsep_lse", mutates_args=())
def triton_imsep_lse(x: Tensor, u_hat: Tensor, diag: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Row and column (max, log-sum) of the IMSep logits (M is symmetric, so both describe the same
    softmax; the backward needs both). Only row_logsum is differentiable: use row_max + row_logsum."""
    from .triton_ops import imsep_fwd

    return imsep_fwd(x, u_hat, diag, scale)


@triton_imsep_lse.register_fake
def _(x, u_hat, diag, scale):
    return tuple(x.new_empty(x.shape[0], dtype=torch.float32) for _ in range(4))


@torch.library.custom_op("clipkern::triton_imsep_lse_bwd", mutates_args=())
def triton_imsep_lse_bwd(x: Tensor, u_hat: Tensor, diag: Tensor, scale: Tensor, row_max: Tensor,
                         row_logsum: Tensor, col_max: Tensor, col_logsum: Tensor,
                         g: Tensor) -> tuple[Tensor, Tensor]:
    from .triton_ops import imsep_bwd

    return imsep_bwd(x, u_hat, diag, scale, row_max, row_logsum, col_max, col_logsum, g)


@triton_imsep_lse_bwd.register_fake
def _(x, u_hat, diag, scale, row_max, row_logsum, col_max, col_logsum, g):
    return torch.empty_like(x), scale.new_empty((), dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    row_max, _, col_max, col_logsum = output
    ctx.mark_non_differentiable(row_max, col_max, col_logsum)
    ctx.save_for_backward(*inputs, *output)


def _backward(ctx, _g_row_max, g, _g_col_max, _g_col_logsum):
    x, u_hat, diag, scale, row_max, row_logsum, col_max, col_logsum = ctx.saved_tensors
    g = torch.zeros_like(row_logsum) if g is None else g
    dx, dscale_off = triton_imsep_lse_bwd(x, u_hat, diag, scale, row_max, row_logsum, col_max, col_logsum, g)
    # the diagonal (cross-modal positive) entries: ∂lse_i/∂(s·d_i) = P[i, i]
    gp = g * ((scale * diag - row_max) - row_logsum).exp()
    return dx, None, scale * gp, (dscale_off + (gp * diag).sum()).to(scale.dtype)


triton_imsep_lse.register_autograd(_backward, setup_context=_setup_context)


def imsep_single(x: Tensor, y: Tensor, semantic: Tensor, scale: Tensor, backend: str) -> Tensor:
    """CE_rows(s·M) for one modality (x = its features, y = the other modality's)."""
    if backend == "reference":
        return reference.imsep_single(x, y, semantic, scale)
    if backend == "cuda":
        raise _backend.no_cuda_twin("imsep")
    if backend != "triton":
        raise ValueError(f"no {backend!r} implementation of the IMSep loss")
    u_hat = F.normalize(semantic.detach().float(), dim=1).to(x.dtype)
    diag = (x.float() * y.float()).sum(dim=1)
    s32 = scale.float()
    row_max, row_logsum, _, _ = triton_imsep_lse(x, u_hat, diag, s32)
    return (row_max + row_logsum - s32 * diag).mean()
