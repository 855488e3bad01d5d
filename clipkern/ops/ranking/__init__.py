"""List-wise ranking family (ListMLE / RankCLIP): torch.library custom ops over the Triton kernels,
their autograd, and the dispatch between backends. Math: see reference.py and triton_kernels.py.

Paths, and which one runs (backend="triton"):
- `listmle_loss(scores, targets)`: the matrix kernels for rows of N ≤ MATRIX_MAX_N (8192) columns.
  Longer rows fall back to the torch reference, computed in fp32 (it materialises its B×N
  temporaries); this is the documented long-row path.
- `rankclip_terms(image, text, scale)`: for B ≤ FUSED_MAX_N (256) the fused kernels compute each
  row's scores and targets from the features, so no B×B score matrix exists (the backward keeps
  dS in bounded row chunks). Above it, or with fused=False, the matrix path forms L = s·V Tᵀ and the
  two Gram matrices once (fp32) and runs the matrix kernels on them and on Lᵀ (a view, no copy).
Targets never get a gradient.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..._checks import register_no_double_backward
from .. import dispatch
from . import reference
from .reference import DECAYS

# Longest row (columns) each kernel holds on chip; see triton_launchers.ranking_blocks. Chosen for
# H100-class register files (int64 sort keys + fp32 values of whole rows, checked by compiling for
# sm_90a): the fused kernels compile without spills up to 256 columns, the matrix kernels up to
# 4096 and with some spills up to 8192.
MATRIX_MAX_N = 8192
FUSED_MAX_N = 256


# --------------------------------------------------------------------------------- matrix ops
@torch.library.custom_op("clipkern::triton_listmle_rows", mutates_args=())
def triton_listmle_rows(scores: Tensor, targets: Tensor, decay_log: bool) -> Tensor:
    """Per-row ListMLE ℓ_r (fp32, shape (B,)) of scores against the order of targets (B×N each,
    any strides). Ties in a target row break by column index. targets get no gradient."""
    from .triton_launchers import listmle_rows_fwd

    return listmle_rows_fwd(scores, targets, decay_log)


@triton_listmle_rows.register_fake
def _(scores, targets, decay_log):
    return scores.new_empty(scores.shape[0], dtype=torch.float32)


@torch.library.custom_op("clipkern::triton_listmle_rows_bwd", mutates_args=())
def triton_listmle_rows_bwd(scores: Tensor, targets: Tensor, g: Tensor, decay_log: bool) -> Tensor:
    from .triton_launchers import listmle_rows_bwd

    return listmle_rows_bwd(scores, targets, g, decay_log)


@triton_listmle_rows_bwd.register_fake
def _(scores, targets, g, decay_log):
    return scores.new_empty(scores.shape)


def rows_setup_context(ctx, inputs, output):
    scores, targets, decay_log = inputs
    ctx.decay_log = decay_log
    ctx.save_for_backward(scores, targets)


def rows_backward(bwd_op):
    """The autograd backward of a per-row ListMLE op (Triton's here, the csrc one in extension_ops.py)."""
    def backward(ctx, g):
        scores, targets = ctx.saved_tensors
        return bwd_op(scores, targets, g, ctx.decay_log), None, None
    return backward


triton_listmle_rows.register_autograd(rows_backward(triton_listmle_rows_bwd), setup_context=rows_setup_context)
register_no_double_backward(triton_listmle_rows_bwd, "ListMLE", "triton")


# ---------------------------------------------------------------------------------- fused ops
@torch.library.custom_op("clipkern::triton_listmle_features", mutates_args=())
def triton_listmle_features(a: Tensor, c: Tensor, a2: Tensor, c2: Tensor, scale: Tensor,
                            decay_log: bool) -> Tensor:
    """Per-row ListMLE ℓ_r (fp32, (B,)) of scores scale·a cᵀ against targets scale·a2 c2ᵀ, both
    computed inside the kernel (no B×N matrix). Gradients flow to a, c and scale, never to a2, c2."""
    from .triton_launchers import listmle_features_fwd

    return listmle_features_fwd(a, c, a2, c2, scale, decay_log)


@triton_listmle_features.register_fake
def _(a, c, a2, c2, scale, decay_log):
    return a.new_empty(a.shape[0], dtype=torch.float32)


@torch.library.custom_op("clipkern::triton_listmle_features_bwd", mutates_args=())
def triton_listmle_features_bwd(a: Tensor, c: Tensor, a2: Tensor, c2: Tensor, scale: Tensor, g: Tensor,
                                decay_log: bool) -> tuple[Tensor, Tensor, Tensor]:
    from .triton_launchers import listmle_features_bwd

    return listmle_features_bwd(a, c, a2, c2, scale, g, decay_log)


@triton_listmle_features_bwd.register_fake
def _(a, c, a2, c2, scale, g, decay_log):
    return a.new_empty(a.shape), c.new_empty(c.shape), scale.new_empty((), dtype=torch.float32)


def _features_setup_context(ctx, inputs, output):
    a, c, a2, c2, scale, decay_log = inputs
    ctx.decay_log = decay_log
    ctx.save_for_backward(a, c, a2, c2, scale)


def _features_backward(ctx, g):
    a, c, a2, c2, scale = ctx.saved_tensors
    da, dc, dscale = triton_listmle_features_bwd(a, c, a2, c2, scale, g, ctx.decay_log)
    return da, dc, None, None, dscale.to(scale.dtype), None


triton_listmle_features.register_autograd(_features_backward, setup_context=_features_setup_context)
register_no_double_backward(triton_listmle_features_bwd, "RankCLIP ListMLE (from features)", "triton")


# ----------------------------------------------------------------------------------- dispatch
def reference_loss(scores: Tensor, targets: Tensor, decay: str | None) -> Tensor:
    return reference.listmle_loss(scores, targets, decay)


def _long_rows(scores: Tensor, targets: Tensor, decay: str | None) -> Tensor:
    # Long rows: the whole row no longer fits one block. Documented fallback: the reference, in fp32,
    # with its B×N temporaries.
    return reference.listmle_loss(scores.float(), targets.float(), decay)


def triton_loss(scores: Tensor, targets: Tensor, decay: str | None) -> Tensor:
    if scores.shape[1] > MATRIX_MAX_N:
        return _long_rows(scores, targets, decay)
    return triton_listmle_rows(scores, targets.detach(), decay == "log").mean()


def extension_loss(scores: Tensor, targets: Tensor, decay: str | None) -> Tensor:
    # The CUDA kernel holds a row in one block's shared memory up to 8192 columns (csrc/cuda/listmle.cuh);
    # the C++ CPU implementation has no limit.
    if scores.device.type == "cuda" and scores.shape[1] > MATRIX_MAX_N:
        return _long_rows(scores, targets, decay)
    from .extension_ops import cuda_listmle_rows

    return cuda_listmle_rows(scores, targets.detach(), decay == "log").mean()


def listmle_loss(scores: Tensor, targets: Tensor, decay: str | None, backend: str) -> Tensor:
    """mean_r ListMLE(scores[r], order of targets[r]). Inputs are validated by the caller; the
    backend's implementation comes from ops/dispatch.py."""
    return dispatch.run("ranking", backend, scores, targets, decay)


def fused_applies(batch: int, backend: str) -> bool:
    return backend == "triton" and batch <= FUSED_MAX_N


def rankclip_terms(image: Tensor, text: Tensor, scale: Tensor, decay: str | None, backend: str,
                   fused: bool | None = None) -> tuple[Tensor, Tensor]:
    """(R_cross, R_in) of docs/design.md §1.4 before the 1/32 weights:
        R_cross = listmle(L, Lᵀ) + listmle(Lᵀ, L),                    L = s·V Tᵀ
        R_in    = listmle(s·V Vᵀ, s·T Tᵀ) + listmle(s·T Tᵀ, s·V Vᵀ)
    fused=None picks the from-features kernels when B ≤ FUSED_MAX_N on the triton backend;
    True demands them (an error says why they cannot run); False forces the matrix path."""
    batch = image.shape[0]
    if fused is None:
        fused = fused_applies(batch, backend)
    elif fused and not fused_applies(batch, backend):
        why = (f"backend {backend!r} has no fused kernel" if backend != "triton"
               else f"batch {batch} > FUSED_MAX_N = {FUSED_MAX_N}")
        raise ValueError(f"fused=True cannot run: {why}; use fused=None to fall back to the matrix path")
    if backend == "reference":
        return reference.rankclip_terms(image, text, scale, decay)
    if fused:
        s, log = scale.float(), decay == "log"

        def term(a, c, a2, c2):
            return triton_listmle_features(a, c, a2, c2, s, log).mean()

        cross = term(image, text, text, image) + term(text, image, image, text)
        inner = term(image, image, text, text) + term(text, text, image, image)
        return cross, inner
    # s scales a B×D operand, so autograd saves no B×B product for ds; fp32 (fp64) products
    acc = torch.promote_types(image.dtype, torch.float32)
    v, t, s = image.to(acc), text.to(acc), scale.to(acc)
    logits = (s * v) @ t.T
    gram_v, gram_t = (s * v) @ v.T, (s * t) @ t.T
    cross = listmle_loss(logits, logits.T, decay, backend) + listmle_loss(logits.T, logits, decay, backend)
    inner = listmle_loss(gram_v, gram_t, decay, backend) + listmle_loss(gram_t, gram_v, decay, backend)
    return cross, inner


__all__ = ["DECAYS", "FUSED_MAX_N", "MATRIX_MAX_N", "listmle_loss", "rankclip_terms", "triton_listmle_features",
           "triton_listmle_rows"]


dispatch.bind("ranking", globals())
