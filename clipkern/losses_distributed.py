"""The papers' losses across ranks (docs/design.md §6): what rank r computes so that the mean over
ranks of its loss is the single-process loss on the concatenated global batch (B = W·b rows, rank r
holding rows J_r = [r·b, (r+1)·b)), and its feature gradients are ∂(Σ_r' loss_r')/∂x_r (features
gathered with autograd, as ClipLoss(local_loss=True, gather_with_grad=True)).

Each loss is a mean (or a weighted mean) over rows of per-row terms that read a whole row of a B-long
list, so rank r computes its own rows against the gathered columns:

    IMSep (AlignCLIP): row i ∈ J_r of CE_rows(s·M), M[i, j] = (X_i·X_j)(1 − Û_i·Û_j), M[i, i] = X_i·Y_i,
        against all gathered X (and the gathered, constant Û); loss_r = mean over its rows.
    RankCLIP ranking: rows J_r of L = s·V Tᵀ, Lᵀ, s·V Vᵀ and s·T Tᵀ (each b×B) and their ListMLE with
        the partner rows as targets; loss_r = mean over its rows (ListMLE's own mean), times w(e)/B
        with the *global* B.
    PC-CLIP listed pairs: δ_q is built where its images live; texts Ê and δ are rows and columns of
        one contrastive loss (distributed_contrastive.block_lse), the degenerate-pair weights w and
        their global count Σw (an all_reduce) give
        loss_r = W·½[Σ_{p∈J_r} w_p(row_lse_p − pos_p) + Σ_{q∈J_r} w_q(col_lse_q − pos_q)] / max(Σw, 1).

These three form b×B blocks in plain torch (the ranking terms on the ListMLE kernels), like
open_clip's local logits; fused distributed kernels for them are future work.
"""
from __future__ import annotations

import torch
import torch.nn.functional as nnF

from .distributed import all_gather_no_grad, all_gather_with_grad, all_reduce_sum
from .distributed_contrastive import block_lse, op_scale, row_dot


def _acc(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def imsep_rows(x_local, y_local, semantic_local, scale, rank: int) -> torch.Tensor:
    """AlignCLIP's IMSep for one modality: this rank's rows of the global CE_rows(s·M)."""
    acc = _acc(x_local)
    b = x_local.shape[0]
    x_all = all_gather_with_grad(x_local).to(acc)
    u_all = nnF.normalize(all_gather_no_grad(semantic_local).to(acc), dim=1)
    x, y = x_local.to(acc), y_local.to(acc)
    u = u_all[rank * b:(rank + 1) * b]
    m = (x @ x_all.T) * (1 - u @ u_all.T)
    own = torch.arange(b, device=x.device) + rank * b
    m = m.index_put((torch.arange(b, device=x.device), own), (x * y).sum(dim=1))
    return nnF.cross_entropy(scale.to(acc) * m, own)


def rank_terms_rows(image_local, text_local, scale, decay, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(R_cross, R_in) of RankCLIP (before the weights) over this rank's rows of the global lists."""
    from .functional import listmle_loss

    acc = _acc(image_local)
    s = scale.to(acc)
    v, t = image_local.to(acc), text_local.to(acc)
    v_all, t_all = all_gather_with_grad(image_local).to(acc), all_gather_with_grad(text_local).to(acc)
    logits, logits_t = (s * v) @ t_all.T, (s * t) @ v_all.T  # rows J_r of L and of Lᵀ
    gram_v, gram_t = (s * v) @ v_all.T, (s * t) @ t_all.T

    def listmle(scores, targets):
        return listmle_loss(scores, targets.detach(), decay=decay, backend=backend)

    cross = listmle(logits, logits_t) + listmle(logits_t, logits)
    inner = listmle(gram_v, gram_t) + listmle(gram_t, gram_v)
    return cross, inner


def listed_pairs_rows(text_local, image_local, pairs_local, scale, world_size: int, backend: str) -> torch.Tensor:
    """PC-CLIP's listed-pairs loss, this rank's share (mean over ranks = the global loss)."""
    from .ops.pairdiff.reference import listed_differences

    s = op_scale(scale, text_local, backend)
    acc = s.dtype
    delta, valid = listed_differences(image_local.to(acc), pairs_local)
    text_hat = nnF.normalize(text_local.to(acc), dim=1)
    row_lse, col_lse = block_lse(text_hat, all_gather_with_grad(delta), s, world_size, backend)
    pos = row_dot(text_hat, delta, s)
    terms = torch.where(valid, (row_lse + col_lse) / 2 - pos, torch.zeros_like(pos))
    count = all_reduce_sum(valid.sum().to(acc).reshape(1)).clamp_min(1)
    return world_size * terms.sum() / count[0]
