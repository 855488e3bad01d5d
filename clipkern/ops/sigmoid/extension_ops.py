"""torch.library glue for the csrc sigmoid (SigLIP) op (backend="cuda"): the fake implementation and
autograd of clipkern::sigmoid_fwd. Its C++ CPU implementation (csrc/cpu/sigmoid.cpp) returns, with
`with_grad`, the gradient of the loss itself next to the loss (one pass over the logits, 3 GEMMs in
all); the backward only scales that gradient by the upstream g, through a small op that refuses to
be differentiated (a second derivative would otherwise be silently zero). Importing this module loads
the extension and raises BackendUnavailable, with the reason, when it cannot be loaded.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..._checks import register_no_double_backward
from ..base import accumulation_dtype, extension_ops

_OPS = extension_ops()


@torch.library.register_fake("clipkern::sigmoid_fwd")
def _(x, y, scale, bias, labels, with_grad):
    acc = accumulation_dtype(x)
    loss = x.new_empty((), dtype=acc)
    if not with_grad:
        return loss, x.new_empty((0,), dtype=acc), x.new_empty((0,), dtype=acc), x.new_empty((0,), dtype=acc)
    return loss, x.new_empty(x.shape, dtype=acc), y.new_empty(y.shape, dtype=acc), x.new_empty((2,), dtype=acc)


@torch.library.custom_op("clipkern::ext_sigmoid_scale_grads", mutates_args=())
def ext_sigmoid_scale_grads(g: Tensor, dx: Tensor, dy: Tensor, dscale_dbias: Tensor, x: Tensor,
                            y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(g·dx in x's dtype, g·dy in y's dtype, g·[dscale, dbias]) from the gradient the forward saved. x and
    y are only read for their dtypes: as inputs they make autograd reach this op's no-double-backward
    formula when a gradient of the gradient is asked for."""
    g = g.to(dx.dtype)
    return (dx * g).to(x.dtype), (dy * g).to(y.dtype), dscale_dbias * g


@ext_sigmoid_scale_grads.register_fake
def _(g, dx, dy, dscale_dbias, x, y):
    return dx.new_empty(dx.shape, dtype=x.dtype), dy.new_empty(dy.shape, dtype=y.dtype), dscale_dbias.new_empty((2,))


register_no_double_backward(ext_sigmoid_scale_grads, "SigLIP loss", "cuda")


def _setup_context(ctx, inputs, output):
    x, y, scale, bias, _labels, with_grad = inputs
    _, dx, dy, dscale_dbias = output
    ctx.mark_non_differentiable(dx, dy, dscale_dbias)
    ctx.with_grad, ctx.has_bias = with_grad, bias is not None
    ctx.dtypes = (scale.dtype, None if bias is None else bias.dtype)
    ctx.save_for_backward(dx, dy, dscale_dbias, x, y)


def _backward(ctx, g, *_saved_grad_grads):
    if not ctx.with_grad:  # cuda_sigmoid_loss asks for gradients whenever autograd can reach the op
        raise RuntimeError("clipkern::sigmoid_fwd ran with with_grad=False, so it has no gradient to give")
    dx, dy, dscale_dbias, x, y = ctx.saved_tensors
    scale_dtype, bias_dtype = ctx.dtypes
    gx, gy, gsb = ext_sigmoid_scale_grads(g, dx, dy, dscale_dbias, x, y)
    return gx, gy, gsb[0].to(scale_dtype), gsb[1].to(bias_dtype) if ctx.has_bias else None, None, None


torch.library.register_autograd("clipkern::sigmoid_fwd", _backward, setup_context=_setup_context)


def cuda_sigmoid_loss(x: Tensor, y: Tensor, scale: Tensor, bias: Tensor | None, labels: Tensor | None) -> Tensor:
    """Mean SigLIP loss −Σ_ij log σ(z_ij (scale·x_i·y_j + bias)) / M by the csrc op (0-d, fp32; fp64 for
    fp64 features). The gradient is formed in the forward only when autograd can use it."""
    acc = accumulation_dtype(x)
    scale = scale.to(acc)
    bias = None if bias is None else bias.to(acc)
    with_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, y, scale, bias))
    return _OPS.sigmoid_fwd(x, y, scale, bias, labels, with_grad)[0]
