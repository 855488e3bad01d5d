"""List-wise ranking loss (ListMLE, Plackett–Luce) in plain torch: the oracle and the CPU fallback.

For each row r of scores/targets (B×N):
    π   = argsort_desc(targets[r]), stable: ties keep the lower column index first
    q_k = scores[r, π_k],  k = 1..N
    ℓ_r = Σ_k w_k [ logsumexp(q_k..q_N) − q_k ]        w_k = 1, or 1/log2(k+1) for decay="log"
    loss = mean_r ℓ_r

Targets only choose the order: they get no gradient. A non-finite target makes its row's loss NaN
(the `0·targets` term), so a broken target never hides behind a finite-looking loss.

RankCLIP (docs/design.md §1.4) is built from four such calls on s·V Tᵀ, its transpose and the Gram
matrices s·V Vᵀ, s·T Tᵀ: see `rankclip_terms`.
"""
from __future__ import annotations

import torch

DECAYS = (None, "log")


def position_weights(n: int, decay: str | None, like: torch.Tensor) -> torch.Tensor | None:
    """w_k for k = 1..n (None for w ≡ 1)."""
    if decay is None:
        return None
    k = torch.arange(1, n + 1, device=like.device, dtype=like.dtype)
    return 1.0 / torch.log2(k + 1.0)


def listmle_rows(scores: torch.Tensor, targets: torch.Tensor, decay: str | None = None) -> torch.Tensor:
    """ℓ_r for every row (shape (B,)), computed in float32 for 16-bit scores (as the kernels
    accumulate: no fp16 sum overflows), float64 for float64."""
    targets = targets.detach()
    order = torch.sort(targets, dim=1, descending=True, stable=True).indices
    q = scores.to(torch.promote_types(scores.dtype, torch.float32)).gather(1, order)
    suffix_lse = q.flip(1).logcumsumexp(dim=1).flip(1)
    terms = suffix_lse - q
    w = position_weights(q.shape[1], decay, q)
    if w is not None:
        terms = terms * w
    return terms.sum(dim=1) + (targets * 0).sum(dim=1).to(terms.dtype)


def listmle_loss(scores: torch.Tensor, targets: torch.Tensor, decay: str | None = None) -> torch.Tensor:
    return listmle_rows(scores, targets, decay).mean()


def rankclip_terms(image, text, scale, decay: str | None = None):
    """(R_cross, R_in) of docs/design.md §1.4 without the 1/32 factors:
    R_cross = listmle(L, Lᵀ) + listmle(Lᵀ, L),  L = s·V Tᵀ
    R_in    = listmle(s·V Vᵀ, s·T Tᵀ) + listmle(s·T Tᵀ, s·V Vᵀ)
    The products run in fp32 at least (fp64 for fp64 features)."""
    acc = torch.promote_types(image.dtype, torch.float32)
    v, t, s = image.to(acc), text.to(acc), scale.to(acc)
    logits = s * (v @ t.T)
    gram_v, gram_t = s * (v @ v.T), s * (t @ t.T)
    cross = listmle_loss(logits, logits.T, decay) + listmle_loss(logits.T, logits, decay)
    inner = listmle_loss(gram_v, gram_t, decay) + listmle_loss(gram_t, gram_v, decay)
    return cross, inner
