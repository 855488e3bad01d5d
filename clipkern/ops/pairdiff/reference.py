r"""Pairwise-difference (PC-CLIP) losses in plain torch, built the long way: the oracle (run it in
float64) and the CPU fallback. docs/design.md §1.3.

Inputs: text features E (P×D), image features G (N×D), pairs (P×2): text p describes how image
pairs[p, 0] differs from image pairs[p, 1]. Ê, Ĝ are the L2-normalised rows.

    δ_ij = (Ĝ_i − Ĝ_j) / ‖Ĝ_i − Ĝ_j‖                (the difference vectors, built explicitly here)

Degenerate-pair rule (both forms, every backend). A pair (i, j) is degenerate when i = j or
‖Ĝ_i − Ĝ_j‖² ≤ PAIR_EPS (identical images: the difference has no direction). The distance always
comes from explicit differences of the normalised rows (never from 2 − 2·Ĝ_i·Ĝ_j, which cancels
for near-duplicates), in float32 (float64 for float64 input), by the same function on every backend
(`pair_sq_distances` for all pairs, `listed_differences` for the listed ones), so a pair is
degenerate on one backend exactly when it is on every other. Then
  - its difference vector is defined as δ_ij = 0: as a *candidate* it scores a constant logit 0
    against every text and passes no gradient to anything;
  - as a *positive* it is dropped: a listed pair q that is degenerate leaves both means (the text
    q → pair row and the pair q → text row); the means divide by the number of non-degenerate
    listed pairs, and a batch whose listed pairs are all degenerate has loss 0 (zero gradients);
  - in the all-pairs form the N pairs (i, i) are not candidates at all (the candidate set is the
    N(N−1) ordered pairs with i ≠ j); identical images i ≠ j stay as zero-logit candidates.
The loss is therefore always finite (the seed's code returned NaN and skipped the step).
16-bit features are normalised and scored in float32 (as the fused kernels accumulate).

A non-finite image that no listed pair uses does not enter the listed form at all (only the listed
rows are normalised): that loss stays finite and that image's gradient is exactly 0. The all-pairs form
scores every image as a candidate, so there a non-finite image makes the loss NaN.

Listed-pairs form (the paper's): Λ[p, q] = s · Ê_p · δ_{pairs[q]} (P×P),
    loss = ½ [Σ_p w_p (lse_q Λ[p, :] − Λ[p, p]) + Σ_q w_q (lse_p Λ[:, q] − Λ[q, q])] / max(Σ w, 1)
with w_q = 1 for a non-degenerate listed pair q, else 0.

All-pairs form: text p is scored against every ordered pair (i, j), i ≠ j:
    Λ[p, (i, j)] = s · Ê_p · δ_ij = s · (A[p, i] − A[p, j]) / ‖Ĝ_i − Ĝ_j‖,  A = ÊĜᵀ
  text → pair: CE over the N(N−1) candidate columns, positive pairs[p];
  pair → text: for each listed pair q, CE over the P texts, positive q (the listed form's columns);
  loss = ½ [Σ_p w_p CE_text(p) + Σ_q w_q CE_pair(q)] / max(Σ w, 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# ‖Ĝ_i − Ĝ_j‖² at or below this is "identical images" (‖Ĝ_i − Ĝ_j‖ ≤ ~3.2e-3): far below the distance
# of any two real, distinct CLIP image embeddings, and far above the round-off of the explicit
# difference of two fp32 unit rows.
PAIR_EPS = 1e-5


def accumulation(t: torch.Tensor) -> torch.dtype:
    """The dtype the loss is computed in: float32, or float64 for float64 input."""
    return torch.promote_types(t.dtype, torch.float32)


def pair_sq_distances(image_hat: torch.Tensor) -> torch.Tensor:
    """‖Ĝ_i − Ĝ_j‖² for all i, j (N×N, no gradient), summed from explicit differences without an
    N×N×D buffer (torch.cdist without its Gram-matrix shortcut): accurate for near-duplicates, where
    the difference of two close values is exact and 2 − 2·G_ij loses every digit."""
    with torch.no_grad():
        dist = torch.cdist(image_hat, image_hat, compute_mode="donot_use_mm_for_euclid_dist")
    return dist * dist


def nondegenerate_pairs(sq: torch.Tensor) -> torch.Tensor:
    """(N×N bool) i ≠ j and ‖Ĝ_i − Ĝ_j‖² > PAIR_EPS, from `pair_sq_distances`."""
    off_diag = ~torch.eye(sq.shape[0], dtype=torch.bool, device=sq.device)
    return off_diag & (sq > PAIR_EPS)


def difference_vectors(image_hat: torch.Tensor, pairs: torch.Tensor):
    """(δ for each listed pair (P×D, zero for degenerate pairs), valid (P,) bool)."""
    i, j = pairs[:, 0], pairs[:, 1]
    diff = image_hat.index_select(0, i) - image_hat.index_select(0, j)
    sq = (diff * diff).sum(dim=1)
    valid = (sq > PAIR_EPS) & (i != j)
    inv = torch.where(valid, sq.clamp_min(PAIR_EPS).rsqrt(), torch.zeros_like(sq))
    return diff * inv[:, None], valid


def listed_differences(image: torch.Tensor, pairs: torch.Tensor):
    """`difference_vectors` of the listed pairs from the raw image rows: only the 2P listed rows are
    normalised, so an image that no pair uses takes no part (its gradient is exactly 0, even if it
    is NaN)."""
    i, j = pairs[:, 0], pairs[:, 1]
    used = torch.cat([i, j])
    hat = F.normalize(image.index_select(0, used), dim=1)
    local = torch.arange(2 * i.shape[0], device=pairs.device).reshape(2, -1).T
    return difference_vectors(hat, local)


def _masked_mean(terms: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Σ_valid terms / max(#valid, 1); invalid terms (finite or not) contribute nothing."""
    total = torch.where(valid, terms, torch.zeros_like(terms)).sum()
    return total / valid.sum().clamp_min(1).to(terms.dtype)


def pair_side_terms(text_hat: torch.Tensor, delta: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CE_pair(q) = lse_p (s Ê_p·δ_q) − s Ê_q·δ_q for every listed pair q."""
    logits = scale * delta @ text_hat.T  # [q, p]
    return logits.logsumexp(dim=1) - logits.diagonal()


def listed_pairs_loss(text, image, pairs, scale) -> torch.Tensor:
    acc = accumulation(text)
    e, scale = F.normalize(text.to(acc), dim=1), scale.to(acc)
    delta, valid = listed_differences(image.to(acc), pairs)
    logits = scale * e @ delta.T  # Λ[p, q]
    text_side = logits.logsumexp(dim=1) - logits.diagonal()
    pair_side = logits.T.logsumexp(dim=1) - logits.diagonal()
    return (_masked_mean(text_side, valid) + _masked_mean(pair_side, valid)) / 2


def all_pairs_loss(text, image, pairs, scale) -> torch.Tensor:
    """Builds the N×N×D difference tensor and the P×N×N logits explicitly (small inputs only)."""
    acc = accumulation(text)
    e, g, scale = F.normalize(text.to(acc), dim=1), F.normalize(image.to(acc), dim=1), scale.to(acc)
    N = g.shape[0]
    diff = g[:, None, :] - g[None, :, :]  # [i, j, :] = Ĝ_i − Ĝ_j
    sq = (diff * diff).sum(dim=-1)
    off_diag = ~torch.eye(N, dtype=torch.bool, device=g.device)
    nondegenerate = nondegenerate_pairs(pair_sq_distances(g))  # the rule every backend applies
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
