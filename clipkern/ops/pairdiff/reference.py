r"""Pairwise-difference (PC-CLIP) losses in plain torch, built the long way: the oracle (run it in
float64) and the CPU fallback. docs/design.md §1.3.

Inputs: text features E (P×D), image features G (N×D), pairs (P×2): text p describes how image
pairs[p, 0] differs from image pairs[p, 1]. Ê, Ĝ are the L2-normalised rows.

    δ_ij = (Ĝ_i − Ĝ_j) / ‖Ĝ_i − Ĝ_j‖                (the difference vectors, built explicitly here)

Degenerate-pair rule (both forms, every backend). A pair (i, j) is degenerate when i = j or
‖Ĝ_i − Ĝ_j‖² ≤ PAIR_EPS (identical images: the difference has no direction). Then
  - its difference vector is defined as δ_ij = 0: as a *candidate* it scores a constant logit 0
    against every text and passes no gradient to anything;
  - as a *positive* it is dropped: a listed pair q that is degenerate leaves both means (the text
    q → pair row and the pair q → text row); the means divide by the number of non-degenerate
    listed pairs, and a batch whose listed pairs are all degenerate has loss 0 (zero gradients);
  - in the all-pairs form the N pairs (i, i) are not candidates at all (the candidate set is the
    N(N−1) ordered pairs with i ≠ j); identical images i ≠ j stay as zero-logit candidates.
The loss is therefore always finite (the seed's code returned NaN and skipped the step).

Listed-pairs form (the paper's): Λ[p, q] = s · Ê_p · δ_{pairs[q]} (P×P),
    loss = ½ [Σ_p w_p (lse_q Λ[p, :] − Λ[p, p]) + Σ_q w_q (lse_p Λ[:, q] − Λ[q, q])] / max(Σ w, 1)
with w_q = 1 for a non-degenerate listed pair q, else 0.

All-pairs form: text p is scored against every ordered pair (i, j), i ≠ j:
    Λ[p, (i, j)] = s · Ê_p · δ_ij = s · (A[p, i] − A[p, j]) / sqrt(2 − 2·G_ij),  A = ÊĜᵀ, G = ĜĜᵀ
  text → pair: CE over the N(N−1) candidate columns, positive pairs[p];
  pair → text: for each listed pair q, CE over the P texts, positive q (the listed form's columns);
  loss = ½ [Σ_p w_p CE_text(p) + Σ_q w_q CE_pair(q)] / max(Σ w, 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# ‖Ĝ_i − Ĝ_j‖² at or below this is "identical images" (‖Ĝ_i − Ĝ_j‖ ≤ ~3.2e-3). It sits well above
# fp32 round-off of 2 − 2·G_ij for identical unit rows (~1e-7) and far below the distance of any two
# real, distinct CLIP image embeddings.
PAIR_EPS = 1e-5


def difference_vectors(image_hat: torch.Tensor, pairs: torch.Tensor):
    """(δ for each listed pair (P×D, zero for degenerate pairs), valid (P,) bool)."""
    i, j = pairs[:, 0], pairs[:, 1]
    diff = image_hat.index_select(0, i) - image_hat.index_select(0, j)
    sq = (diff * diff).sum(dim=1)
    valid = (sq > PAIR_EPS) & (i != j)
    inv = torch.where(valid, sq.clamp_min(PAIR_EPS).rsqrt(), torch.zeros_like(sq))
    return diff * inv[:, None], valid


def _masked_mean(terms: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Σ_valid terms / max(#valid, 1); invalid terms (finite or not) contribute nothing."""
    total = torch.where(valid, terms, torch.zeros_like(terms)).sum()
    return total / valid.sum().clamp_min(1).to(terms.dtype)


def pair_side_terms(text_hat: torch.Tensor, delta: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CE_pair(q) = lse_p (s Ê_p·δ_q) − s Ê_q·δ_q for every listed pair q."""
    logits = scale * delta @ text_hat.T  # [q, p]
    return logits.logsumexp(dim=1) - logits.diagonal()


def listed_pairs_loss(text, image, pairs, scale) -> torch.Tensor:
    e, g = F.normalize(text, dim=1), F.normalize(image, dim=1)
    delta, valid = difference_vectors(g, pairs)
    logits = scale * e @ delta.T  # Λ[p, q]
    text_side = logits.logsumexp(dim=1) - logits.diagonal()
    pair_side = logits.T.logsumexp(dim=1) - logits.diagonal()
    return (_masked_mean(text_side, valid) + _masked_mean(pair_side, valid)) / 2


def all_pairs_loss(text, image, pairs, scale) -> torch.Tensor:
    """Builds the N×N×D difference tensor and the P×N×N logits explicitly (small inputs only)."""
    e, g = F.normalize(text, dim=1), F.normalize(image, dim=1)
    N = g.shape[0]
    diff = g[:, None, :] - g[None, :, :]  # [i, j, :] = Ĝ_i − Ĝ_j
    sq = (diff * diff).sum(dim=-1)
    off_diag = ~torch.eye(N, dtype=torch.bool, device=g.device)
    nondegenerate = off_diag & (sq > PAIR_EPS)
    inv = torch.where(nondegenerate, sq.clamp_min(PAIR_EPS).rsqrt(), torch.zeros_like(sq))
    delta_all = diff * inv[..., None]  # δ_ij, zero for degenerate pairs
    logits = scale * torch.einsum("pd,ijd->pij", e, delta_all)
    logits = logits.masked_fill(~off_diag, float("-inf"))  # (i, i) is not a candidate
    P = e.shape[0]
    rows = torch.arange(P, device=e.device)
    i, j = pairs[:, 0], pairs[:, 1]
    valid = nondegenerate[i, j]
    pos = torch.where(valid, logits[rows, i, j], torch.zeros_like(valid, dtype=logits.dtype))  # no −inf
    text_side = logits.reshape(P, N * N).logsumexp(dim=1) - pos
    pair_side = pair_side_terms(e, delta_all[i, j], scale)
    return (_masked_mean(text_side, valid) + _masked_mean(pair_side, valid)) / 2
