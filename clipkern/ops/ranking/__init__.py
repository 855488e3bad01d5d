"""List-wise ranking family (ListMLE / RankCLIP): torch.library custom ops over the Triton kernels,
their autograd, and the dispatch between backends. Math: see reference.py and triton_kernels.py.

Paths, and which one runs (backend="triton"):
- `listmle_loss(scores, targets)`: the matrix kernels for rows of N ≤ MATRIX_MAX_N (8192) columns.
  Longer rows (also on the CUDA extension's GPU kernels) take the row-chunked torch path of
  chunked.py: fp32, R×N tiles, no B×N temporary besides the gradient itself.
- `rankclip_terms(image, text, scale)`, fused=None:
  B ≤ FUSED_MAX_N (256), triton: the fused kernels compute each row's scores and targets from the
      features, so no B×B score matrix exists (the backward keeps dS in bounded row chunks);
  B ≤ MATRIX_PATH_MAX_B (4096): the matrix path forms L = s·V Tᵀ and the two Gram matrices once
      (fp32) and runs the backend's ListMLE on them and on Lᵀ (a view, no copy); the reference
      backend runs reference.rankclip_terms;
  above, on every backend: the row-chunked path (chunked.py), which recomputes R rows of the four
      products from the features by GEMMs, sorts and scans them in torch and frees them, forward and
      backward: O(B·D + R·B) memory, ≤ 640 MiB computed at B = 32768, D = 768, bf16 (chunked.py).
  fused=True demands the fused kernels, fused=False the matrix path at any B, chunk_rows=R the
  row-chunked path with R rows per chunk.
Targets never get a gradient.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..._checks import register_no_double_backward
from .. import dispatch
from . import chunked, reference
from .reference import DECAYS

# Longest row (columns) each kernel holds on chip; see triton_launchers.ranking_blocks. Chosen for
# H100-class register files (int64 sort keys + fp32 values of whole rows, checked by compiling for
# sm_90a): the fused kernels compile without spills up to 256 columns, the matrix kernels up to
# 4096 and with some spills up to 8192.
MATRIX_MAX_N = 8192
FUSED_MAX_N = 256
# Largest batch for which rankclip_terms (fused=None) forms the three B×B matrices. The matrix path
# holds them for the backward plus up to three B×B gradients: ≈ 6·4·B² bytes, 384 MiB at B = 4096,
# 1.5 GiB at 8192. Above it the row-chunked path keeps memory O(B·D + CHUNK_ELEMENTS).
MATRIX_PATH_MAX_B = 4096


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


# -------------------------------------------------------------------------------- chunked ops
@torch.library.custom_op("clipkern::listmle_rows_chunked", mutates_args=())
def listmle_rows_chunked(scores: Tensor, targets: Tensor, decay_log: bool, rows_per_chunk: int) -> Tensor:
    """Per-row ListMLE ℓ_r ((B,), fp32; fp64 for fp64) of rows of any length, rows_per_chunk rows
    at a time in torch (chunked.py). targets get no gradient."""
    return chunked.listmle_rows(scores, targets, decay_log, rows_per_chunk)


@listmle_rows_chunked.register_fake
def _(scores, targets, decay_log, rows_per_chunk):
    return scores.new_empty(scores.shape[0], dtype=torch.promote_types(scores.dtype, torch.float32))


@torch.library.custom_op("clipkern::listmle_rows_chunked_bwd", mutates_args=())
def listmle_rows_chunked_bwd(scores: Tensor, targets: Tensor, g: Tensor, decay_log: bool,
                             rows_per_chunk: int) -> Tensor:
    return chunked.listmle_rows_bwd(scores, targets, g, decay_log, rows_per_chunk)


@listmle_rows_chunked_bwd.register_fake
def _(scores, targets, g, decay_log, rows_per_chunk):
    return scores.new_empty(scores.shape)


def _chunked_rows_setup(ctx, inputs, output):
    scores, targets, ctx.decay_log, ctx.rows_per_chunk = inputs
    ctx.save_for_backward(scores, targets)


def _chunked_rows_backward(ctx, g):
    scores, targets = ctx.saved_tensors
    return listmle_rows_chunked_bwd(scores, targets, g, ctx.decay_log, ctx.rows_per_chunk), None, None, None


listmle_rows_chunked.register_autograd(_chunked_rows_backward, setup_context=_chunked_rows_setup)
register_no_double_backward(listmle_rows_chunked_bwd, "row-chunked ListMLE (rows > MATRIX_MAX_N)", "triton/cuda")


@torch.library.custom_op("clipkern::rankclip_rows_chunked", mutates_args=())
def rankclip_rows_chunked(image: Tensor, text: Tensor, scale: Tensor, decay_log: bool,
                          rows_per_chunk: int) -> tuple[Tensor, Tensor]:
    """Per-row RankCLIP terms (cross_r, inner_r), (B,) each, from fp32 (or fp64) features: R_cross
    = mean(cross_r), R_in = mean(inner_r). No B×B matrix: rows_per_chunk rows at a time (chunked.py).
    Gradients flow to image, text and scale through the scores, never through the targets."""
    return chunked.rankclip_rows(image, text, scale, decay_log, rows_per_chunk)


@rankclip_rows_chunked.register_fake
def _(image, text, scale, decay_log, rows_per_chunk):
    return image.new_empty(image.shape[0]), image.new_empty(image.shape[0])


@torch.library.custom_op("clipkern::rankclip_rows_chunked_bwd", mutates_args=())
def rankclip_rows_chunked_bwd(image: Tensor, text: Tensor, scale: Tensor, g_cross: Tensor, g_inner: Tensor,
                              decay_log: bool, rows_per_chunk: int) -> tuple[Tensor, Tensor, Tensor]:
    return chunked.rankclip_rows_bwd(image, text, scale, g_cross, g_inner, decay_log, rows_per_chunk)


@rankclip_rows_chunked_bwd.register_fake
def _(image, text, scale, g_cross, g_inner, decay_log, rows_per_chunk):
    return image.new_empty(image.shape), text.new_empty(text.shape), scale.new_empty(())


def _rankclip_chunked_setup(ctx, inputs, output):
    image, text, scale, ctx.decay_log, ctx.rows_per_chunk = inputs
    ctx.save_for_backward(image, text, scale)


def _rankclip_chunked_backward(ctx, g_cross, g_inner):
    image, text, scale = ctx.saved_tensors
    grads = rankclip_rows_chunked_bwd(image, text, scale, g_cross, g_inner, ctx.decay_log, ctx.rows_per_chunk)
    return *grads, None, None


rankclip_rows_chunked.register_autograd(_rankclip_chunked_backward, setup_context=_rankclip_chunked_setup)
register_no_double_backward(rankclip_rows_chunked_bwd, "row-chunked RankCLIP ListMLE (B > MATRIX_PATH_MAX_B; "
                            "fused=False keeps the matrix path)", "any")


# ----------------------------------------------------------------------------------- dispatch
def reference_loss(scores: Tensor, targets: Tensor, decay: str | None) -> Tensor:
    return reference.listmle_loss(scores, targets, decay)


def _long_rows(scores: Tensor, targets: Tensor, decay: str | None) -> Tensor:
    # Long rows: the whole row no longer fits one block. The row-chunked torch path (fp32 at least).
    rows = chunked.chunk_rows(*scores.shape)
    return listmle_rows_chunked(scores, targets.detach(), decay == "log", rows).mean()


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


def _check_chunk_rows(chunk_rows, fused) -> None:
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive int (rows per chunk) or None, got {chunk_rows!r}")
    if fused is not None:
        raise ValueError(f"chunk_rows={chunk_rows} asks for the row-chunked path; it cannot be combined with "
                         f"fused={fused!r} (use fused=None)")


def rankclip_terms(image: Tensor, text: Tensor, scale: Tensor, decay: str | None, backend: str,
                   fused: bool | None = None, chunk_rows: int | None = None) -> tuple[Tensor, Tensor]:
    """(R_cross, R_in) of docs/design.md §1.4 before the 1/32 weights:
        R_cross = listmle(L, Lᵀ) + listmle(Lᵀ, L),                    L = s·V Tᵀ
        R_in    = listmle(s·V Vᵀ, s·T Tᵀ) + listmle(s·T Tᵀ, s·V Vᵀ)
    fused=None picks the from-features kernels when B ≤ FUSED_MAX_N on the triton backend, the
    matrix path up to MATRIX_PATH_MAX_B and the row-chunked path above (every backend); True
    demands the fused kernels (an error says why they cannot run); False forces the matrix path.
    chunk_rows (with fused=None) forces the row-chunked path with that many rows per chunk."""
    batch = image.shape[0]
    if chunk_rows is not None:
        _check_chunk_rows(chunk_rows, fused)
    elif fused is None and batch > MATRIX_PATH_MAX_B:
        chunk_rows = chunked.chunk_rows(batch, batch)
    if chunk_rows is not None:
        return _chunked_terms(image, text, scale, decay, chunk_rows)
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


def _chunked_terms(image: Tensor, text: Tensor, scale: Tensor, decay: str | None,
                   chunk_rows: int) -> tuple[Tensor, Tensor]:
    """The row-chunked path: products, sorts and scans in fp32 (fp64 for fp64 features); the
    16-bit features are copied to fp32 once (2·B·D·4 bytes)."""
    acc = torch.promote_types(image.dtype, torch.float32)
    s = scale.to(acc).reshape(())
    cross, inner = rankclip_rows_chunked(image.to(acc), text.to(acc), s, decay == "log", chunk_rows)
    return cross.mean(), inner.mean()


__all__ = ["DECAYS", "FUSED_MAX_N", "MATRIX_MAX_N", "MATRIX_PATH_MAX_B", "listmle_loss", "listmle_rows_chunked",
           "rankclip_rows_chunked", "rankclip_terms", "triton_listmle_features", "triton_listmle_rows"]


dispatch.bind("ranking", globals())
