"""PC-CLIP evaluation and prompting helpers (docs/design.md §1.3), in plain torch: O(P·D) and O(C·D) work,
no kernel needed. The loss itself is clipkern.functional.pairwise_difference_loss.

    difference_accuracy(text_features, image_features, pairs)
    comparative_class_embeddings(class_embeddings, comparisons, comparison_embeddings, alpha=0.9)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_features, check_pair
from .functional import _check_pairs
from .ops.pairdiff.reference import difference_vectors

__all__ = ["difference_accuracy", "comparative_class_embeddings"]


def difference_accuracy(text_features, image_features, pairs) -> torch.Tensor:
    """Difference classification (attribute ranking): the share of pairs p = (i, j) with
    cos(ê_p, normalise(Ĝ_i − Ĝ_j)) > 0, as a 0-d fp32 tensor in [0, 1]; chance is 0.5.

    Text p describes how image pairs[p, 0] differs from image pairs[p, 1]. A degenerate pair
    (i = j or identical images, the loss's rule) has no direction: its cosine is taken as 0, so it
    counts as wrong. Computed in fp32 (fp64 for fp64 input); no gradient.
    """
    check_pair("text_features", text_features, "image_features", image_features)
    pairs = _check_pairs(pairs, text_features.shape[0], image_features.shape[0], text_features.device)
    acc = torch.promote_types(text_features.dtype, torch.float32)
    with torch.no_grad():
        e = F.normalize(text_features.to(acc), dim=1)
        delta, _ = difference_vectors(F.normalize(image_features.to(acc), dim=1), pairs)
        cos = (e * delta).sum(dim=1)
        return (cos > 0).to(acc).mean()


def comparative_class_embeddings(class_embeddings, comparisons, comparison_embeddings, alpha=0.9) -> torch.Tensor:
    """Comparative prompting, exactly docs/design.md §1.3.

    class_embeddings t (C×D): one text embedding per class. comparisons (M×2, integer): row m is
    (a, b), "class a relative to class b", whose description's embedding is comparison_embeddings[m]
    (M×D; ê = its normalisation). For each comparison, t_a − ê_m is added to class b's accumulator;
    avg_c is the mean of class c's accumulated terms, and
        t̃_c = normalise(α·t_c + (1 − α)·avg_c)   for every class c that received a comparison,
        t̃_c = t_c                                  (unchanged) for the others.
    t is used as given (not normalised first). Returns a new C×D tensor in t's dtype;
    differentiable in t and the comparison embeddings. M = 0 returns a copy of t.
    """
    check_features("class_embeddings", class_embeddings)
    C, D = class_embeddings.shape
    if not isinstance(comparisons, torch.Tensor):
        raise TypeError(f"comparisons must be a torch.Tensor of class indices, got {type(comparisons).__name__}")
    if comparisons.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"comparisons must be an integer tensor of class indices, got {comparisons.dtype}")
    if comparisons.dim() != 2 or comparisons.shape[1] != 2:
        raise ValueError(f"comparisons must have shape (M, 2) (rows (a, b): class a relative to class b), "
                         f"got {tuple(comparisons.shape)}")
    if comparisons.device != class_embeddings.device:
        raise ValueError(f"comparisons is on {comparisons.device} but class_embeddings is on "
                         f"{class_embeddings.device}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number, got {type(alpha).__name__}")
    M = comparisons.shape[0]
    if M == 0:
        return class_embeddings.clone()
    check_pair("class_embeddings", class_embeddings, "comparison_embeddings", comparison_embeddings)
    if comparison_embeddings.shape[0] != M:
        raise ValueError(f"comparison_embeddings has {comparison_embeddings.shape[0]} rows but comparisons has "
                         f"{M}; row m embeds comparison m's text")
    lo, hi = int(comparisons.min()), int(comparisons.max())
    if lo < 0 or hi >= C:
        raise ValueError(f"comparisons must lie in [0, {C}) (the number of classes), got values in [{lo}, {hi}]")
    acc = torch.promote_types(class_embeddings.dtype, torch.float32)
    t = class_embeddings.to(acc)
    a, b = comparisons[:, 0].long(), comparisons[:, 1].long()
    terms = t.index_select(0, a) - F.normalize(comparison_embeddings.to(acc), dim=1)
    total = torch.zeros_like(t).index_add(0, b, terms)
    counts = torch.bincount(b, minlength=C).to(acc)
    avg = total / counts.clamp_min(1)[:, None]
    updated = F.normalize(alpha * t + (1 - alpha) * avg, dim=1)
    return torch.where((counts > 0)[:, None], updated, t).to(class_embeddings.dtype)
