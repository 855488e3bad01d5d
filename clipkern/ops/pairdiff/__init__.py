"""Pairwise-difference (PC-CLIP) family: the all-pairs custom ops over the fused Triton kernels,
their autograd, and the dispatch for both forms. Math and the degenerate-pair rule: reference.py
and triton_kernels.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..._checks import register_no_double_backward
from .. import dispatch
from ..base import positive_logits
from ..contrastive import lse_op as contrastive_lse_op
from . import reference
from .reference import (PAIR_EPS, _masked_mean, accumulation, listed_differences, nondegenerate_pairs,
                        pair_sq_distances)


@torch.library.custom_op("clipkern::triton_pairdiff_lse", mutates_args=())
def triton_pairdiff_lse(a: Tensor, r: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """(max, logsum) per text p of L[p, i, j] = scale·(a[p, i] − a[p, j])·r[i, j] over all i ≠ j,
    lse = max + logsum, without the P×N² logits. Only logsum is differentiable: use max + logsum."""
    from .triton_launchers import pairdiff_fwd

    return pairdiff_fwd(a, r, scale)


@triton_pairdiff_lse.register_fake
def _(a, r, scale):
    return tuple(a.new_empty(a.shape[0], dtype=torch.float32) for _ in range(2))


@torch.library.custom_op("clipkern::triton_pairdiff_lse_bwd", mutates_args=())
def triton_pairdiff_lse_bwd(a: Tensor, r: Tensor, scale: Tensor, lse_max: Tensor, lse_logsum: Tensor,
                            g: Tensor) -> tuple[Tensor, Tensor]:
    from .triton_launchers import pairdiff_bwd

    return pairdiff_bwd(a, r, scale, lse_max, lse_logsum, g)


@triton_pairdiff_lse_bwd.register_fake
def _(a, r, scale, lse_max, lse_logsum, g):
    return a.new_empty(a.shape, dtype=torch.float32), r.new_empty(r.shape, dtype=torch.float32)


def pairdiff_setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(output[0])
    ctx.save_for_backward(*inputs, *output)


def pairdiff_backward(bwd_op):
    """The autograd backward of an all-pairs lse op (Triton's here, the csrc one in extension_ops.py):
    dA = s·u, dR = s·t, ds = Σ t ⊙ r from the bwd op's (u, t)."""
    def backward(ctx, _g_max, g):
        a, r, scale, lse_max, lse_logsum = ctx.saved_tensors
        g = torch.zeros_like(lse_logsum) if g is None else g
        u, t = bwd_op(a, r, scale, lse_max, lse_logsum, g)
        s = scale.to(u.dtype)
        return (s * u).to(a.dtype), (s * t).to(r.dtype), (t * r.to(t.dtype)).sum().to(scale.dtype)
    return backward


triton_pairdiff_lse.register_autograd(pairdiff_backward(triton_pairdiff_lse_bwd),
                                      setup_context=pairdiff_setup_context)
register_no_double_backward(triton_pairdiff_lse_bwd, "all-pairs difference statistics", "triton")


def pairdiff_lse_op(backend: str):
    """The all-pairs (max, logsum) op of a backend: the Triton custom op, or its csrc twin for
    backend="cuda" (imported, and the extension loaded, on first use)."""
    if backend == "cuda":
        from .extension_ops import cuda_pairdiff_lse

        return cuda_pairdiff_lse
    return triton_pairdiff_lse


def _listed_triton(text: Tensor, image: Tensor, pairs: Tensor, scale: Tensor, backend: str = "triton") -> Tensor:
    # Reuse, not a new kernel: the P listed differences δ (P×D) are one gather and a normalisation
    # in torch, after which Λ = s·Ê δᵀ is exactly the foundation's fused contrastive problem, whose
    # row and column statistics are both directions of this loss. A kernel that forms δ on the fly
    # would save only the P×D δ buffer; whether that pays can only be measured on a GPU (not done).
    # The per-row terms are needed (degenerate pairs leave the means), so the custom op is called
    # rather than contrastive_loss, which returns only the plain mean. δ and its degeneracy come from
    # the reference's own function, in the reference's dtype (fp32, fp64 for fp64 input).
    acc = accumulation(text)
    e = F.normalize(text.to(acc), dim=1)
    delta, valid = listed_differences(image.to(acc), pairs)
    e, delta, scale = e.to(text.dtype), delta.to(text.dtype), scale.to(acc)  # one scale: one rounding of ds
    row_max, row_logsum, col_max, col_logsum = contrastive_lse_op(backend)(e, delta, scale)
    pos = positive_logits(e, delta, torch.arange(e.shape[0], device=e.device), scale)
    text_side = row_max + row_logsum - pos
    pair_side = col_max + col_logsum - pos
    return (_masked_mean(text_side, valid) + _masked_mean(pair_side, valid)) / 2


class _PairSqDistances(torch.autograd.Function):
    """‖g_i − g_j‖² (N×N) from explicit differences (reference.pair_sq_distances: accurate for
    near-duplicates). Backward: d g_i = 2 Σ_j W̃_ij (g_i − g_j), W̃ = W + Wᵀ, as rowsum(W̃)·g − W̃·g,
    so no N×N×D buffer exists in either direction. That difference cancels for near-duplicates
    (W̃_ij ~ ‖g_i − g_j‖⁻³ is largest exactly there), so it is formed in float64 (one N×N×D fp64 GEMM:
    fast on a datacenter GPU or a CPU, slower on consumer GPUs); the fp32 form had ~1e-5 relative
    gradient error next to the explicit reference's ~1e-7. The backward stays differentiable."""

    @staticmethod
    def forward(ctx, g):
        ctx.save_for_backward(g)
        return pair_sq_distances(g)

    @staticmethod
    def backward(ctx, w):
        (g,) = ctx.saved_tensors
        g64, w64 = g.to(torch.float64), w.to(torch.float64)
        w64 = w64 + w64.T
        return (2 * (w64.sum(dim=1, keepdim=True) * g64 - w64 @ g64)).to(g.dtype)


def _all_pairs_triton(text: Tensor, image: Tensor, pairs: Tensor, scale: Tensor, backend: str = "triton") -> Tensor:
    acc = accumulation(text)  # fp32; fp64 for fp64 input (the C++ twin computes in it)
    e = F.normalize(text.to(acc), dim=1)
    g = F.normalize(image.to(acc), dim=1)
    a = e @ g.T  # A (P×N)
    sq = _PairSqDistances.apply(g)  # ‖Ĝ_i − Ĝ_j‖², exact for near-duplicates (not 2 − 2·G_ij)
    nondegenerate = nondegenerate_pairs(sq.detach())  # the reference's rule, on the same values
    r = torch.where(nondegenerate, sq.clamp_min(PAIR_EPS).rsqrt(), torch.zeros_like(sq))
    s = scale.to(acc)  # one scale for the ops and the positives: ds is summed in acc, rounded once
    lse_max, lse_logsum = pairdiff_lse_op(backend)(a, r, s)
    i, j = pairs[:, 0], pairs[:, 1]
    valid = nondegenerate[i, j]
    rows = torch.arange(e.shape[0], device=e.device)
    # the listed pairs' δ, explicit differences scaled with the same R as the candidates: the positive
    # logit s·Ê_q·δ_q of both directions (no cancellation in A[q, i] − A[q, j] for near-duplicates)
    delta = (g.index_select(0, i) - g.index_select(0, j)) * r[i, j][:, None]
    pos = positive_logits(delta, e, rows, s)
    text_side = lse_max + lse_logsum - pos
    # pair → text: the listed pairs' δ against all texts
    row_max, row_logsum, _, _ = contrastive_lse_op(backend)(delta, e, s)
    pair_side = row_max + row_logsum - pos
    return (_masked_mean(text_side, valid) + _masked_mean(pair_side, valid)) / 2


def reference_loss(text: Tensor, image: Tensor, pairs: Tensor, scale: Tensor, all_pairs: bool) -> Tensor:
    fn = reference.all_pairs_loss if all_pairs else reference.listed_pairs_loss
    return fn(text, image, pairs, scale)


def triton_loss(text: Tensor, image: Tensor, pairs: Tensor, scale: Tensor, all_pairs: bool) -> Tensor:
    return (_all_pairs_triton if all_pairs else _listed_triton)(text, image, pairs, scale, "triton")


def extension_loss(text: Tensor, image: Tensor, pairs: Tensor, scale: Tensor, all_pairs: bool) -> Tensor:
    return (_all_pairs_triton if all_pairs else _listed_triton)(text, image, pairs, scale, "cuda")


def pairwise_difference_loss(text: Tensor, image: Tensor, pairs: Tensor, scale: Tensor, all_pairs: bool,
                             backend: str) -> Tensor:
    """Mean PC-CLIP loss (docs/design.md §1.3), listed-pairs or all-pairs form. Inputs are validated by
    the caller; pairs is a long (P, 2) tensor with entries in [0, N). The backend's implementation
    comes from ops/dispatch.py (the fused paths share their glue; `cuda` swaps in the csrc ops)."""
    return dispatch.run("pairdiff", backend, text, image, pairs, scale, all_pairs)


dispatch.bind("pairdiff", globals())
