"""The softmax-contrastive loss across ranks with each logit computed once (docs/design.md §6).

W ranks; rank r holds b rows x_r (images) and b rows y_r (texts); B = W·b; the global logits are
S = s·X Yᵀ (B×B) with X, Y the rank-ordered concatenations, and J_r = [r·b, (r+1)·b) are rank r's
rows and its own columns. Rank r gathers Y (with autograd) and computes only its block S[J_r, :]:

    row_lse[i]  = lse_j S[i, j]                    i ∈ J_r            (complete on rank r)
    part_r[j]   = lse_{i ∈ J_r} S[i, j]            every column j     (this rank's partial)
    col_lse[j]  = lse_q part_q[j]                  j ∈ J_r            (after an all_to_all that sends
                                                                       part_r[J_q] to rank q)
    pos[i]      = s·<x_i, y_i>                     (the positive pairs are on the diagonal)

open_clip's local loss of rank r is ½[mean_i(row_lse[i] − pos[i]) + mean_j(col_lse[j] − pos[j])]: the
image→text CE over its rows and the text→image CE over its own texts, whose softmax runs down the
global column j. One fused lse op pass gives row_lse and part_r (both statistics in one pass over
the b×B block); its backward recomputes each logit once more (dS kernel) and forms dX, dY with two
GEMMs. The gradient of the gathered Y goes back to its owners by the all_gather's reduce-scatter,
the gradient of part_q by the reverse all_to_all, so each rank's feature gradients are exactly those
of open_clip's two-call local loss: Σ_r' loss_r' is the same function of all features.

Work per rank, fwd+bwd: 2bBD (forward) + 2bBD (recompute) + 4bBD (GEMMs) = 8bBD MMA FLOPs, 1.33× the
useful 6bBD (open_clip's local loss computes every logit on two ranks: 2× that). Communication per
rank: (W−1)·b·D features in (all_gather) and out (reduce-scatter of dY), plus (W−1)·b statistic
pairs (partial lse, scale moment; the moment only when the scale takes a gradient) each way twice
(all_to_all forward and backward): O(B) besides the features themselves.

logit_scale attribution (exact per rank). Rank r's logits of column j ∈ J_q enter rank q's
text→image CE, so open_clip gives their scale gradient to rank q's copy of s. Through the lse op it
would reach rank r's copy (only the mean over ranks would match). The op therefore also returns the
column moment e_r[j] = Σ_{i ∈ J_r} softmax_i(S[i, j])·raw[i, j] = ∂part_r[j]/∂s (from the Triton
forward pass itself; other backends compute it in a chunked torch pass, one more GEMM of the block),
and with z = s − s.detach() (value 0, derivative 1):

    sent_r[j]   = part_r[j] − z_r·e_r[j]          this rank's scale gets no gradient from its partials
    recv_q[r,j] = sent_r[j] + z_q·e_r[j]          the owner q's scale gets ∂part_r[j]/∂s, j ∈ J_q

Values are unchanged (z = 0), feature gradients too (e is a constant), and each rank's scale
gradient is exactly open_clip's per rank. e travels in the same all_to_all as the partials.
"""
from __future__ import annotations

import torch

from .distributed import all_gather_with_grad, all_to_all_with_grad
from .ops.base import accumulation_dtype


def _reference_lse(x, y, scale, moment: bool):
    """(row lse, column lse, column moment or None) of s·x yᵀ in plain torch (the b×N block is formed:
    the oracle)."""
    acc = torch.promote_types(x.dtype, torch.float32)
    raw = x.to(acc) @ y.to(acc).T
    logits = scale.to(acc) * raw
    col_lse = logits.logsumexp(dim=0)
    e = _moment(raw.detach(), scale.detach().to(acc), col_lse.detach()) if moment else None
    return logits.logsumexp(dim=1), col_lse, e


def _moment(raw, s, col_lse):
    """Σ_i exp(s·raw[i, j] − col_lse[j])·raw[i, j] over the rows of a block of raw."""
    return (torch.exp(s * raw - col_lse) * raw).sum(dim=0)


def column_moment(x, y, scale, col_lse, rows_per_chunk: int | None = None):
    """e[j] = Σ_i exp(S[i, j] − col_lse[j])·raw[i, j] with S = scale·raw, raw = x yᵀ, one row chunk of
    the block at a time (O(chunk·N) memory; one GEMM of the block in all). No gradient."""
    with torch.no_grad():
        acc = torch.promote_types(x.dtype, torch.float32)
        s, lse = scale.detach().to(acc), col_lse.detach().to(acc)
        yt = y.detach().to(acc).T
        step = rows_per_chunk or max(1, (64 << 20) // (4 * max(1, y.shape[0])))
        e = torch.zeros(y.shape[0], dtype=acc, device=y.device)
        for r0 in range(0, x.shape[0], step):
            raw = x.detach()[r0:r0 + step].to(acc) @ yt
            e += _moment(raw, s, lse)
        return e


def _fused_lse(x, y, scale, backend, moment: bool):
    from .ops.contrastive import lse_moment_op, lse_op

    op = lse_moment_op(backend) if moment else None
    if op is not None:
        row_max, row_logsum, col_max, col_logsum, e = op(x, y, scale)
        return row_max + row_logsum, col_max + col_logsum, e
    row_max, row_logsum, col_max, col_logsum = lse_op(backend)(x, y, scale)
    col_lse = col_max + col_logsum
    return row_max + row_logsum, col_lse, column_moment(x, y, scale, col_lse) if moment else None


def op_scale(scale: torch.Tensor, features: torch.Tensor, backend: str) -> torch.Tensor:
    """The logit scale in the dtype each backend's op computes in (the positives use the same one)."""
    if backend == "cuda":
        return scale.to(accumulation_dtype(features))
    if backend == "triton":
        return scale.float()
    return scale.to(torch.promote_types(features.dtype, torch.float32))


def block_lse(x_local: torch.Tensor, y_all: torch.Tensor, scale: torch.Tensor, world_size: int,
              backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(row_lse of this rank's rows, global col_lse of this rank's own columns) of S = scale·X Yᵀ, from
    this rank's rows x_local (b×D) against all columns y_all (W·b×D, gathered with autograd)."""
    route = scale.requires_grad and torch.is_grad_enabled()  # the scale gradient goes to column owners
    if backend == "reference":
        row_lse, part, e = _reference_lse(x_local, y_all, scale, route)
    else:
        row_lse, part, e = _fused_lse(x_local, y_all, scale, backend, route)
    if not route:
        # part[J_q] goes to rank q; this rank receives (W, b): every rank's partial over its own columns
        return row_lse, all_to_all_with_grad(part).reshape(world_size, -1).logsumexp(dim=0)
    z = scale - scale.detach()
    e = e.to(part.dtype)
    recv = all_to_all_with_grad(torch.stack([part - z * e, e], dim=1)).reshape(world_size, -1, 2)
    partials = recv[..., 0] + z * recv[..., 1].detach()
    return row_lse, partials.logsumexp(dim=0)


def row_dot(x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """scale·<x_i, y_i> per row, in the scale's dtype (O(b·D), no GEMM)."""
    acc = scale.dtype
    return scale * (x.to(acc) * y.to(acc)).sum(dim=1)


def local_clip_loss(image_local: torch.Tensor, text_local: torch.Tensor, scale: torch.Tensor, world_size: int,
                    backend: str) -> torch.Tensor:
    """open_clip's ClipLoss(local_loss=True, gather_with_grad=True) value on this rank, each logit
    computed once across ranks (see the module docstring). Inputs are validated by the caller."""
    s = op_scale(scale, image_local, backend)
    text_all = all_gather_with_grad(text_local)
    row_lse, col_lse = block_lse(image_local, text_all, s, world_size, backend)
    pos = row_dot(image_local, text_local, s)
    return ((row_lse + col_lse) / 2 - pos).mean()
