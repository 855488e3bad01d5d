"""Functional losses. Each returns a 0-d fp32 tensor (fp64 for fp64 input: the oracle).

All take `backend="auto" | "reference" | "triton" | "cuda"`; see clipkern/_backend.py.
"""
from __future__ import annotations

import torch

from . import _backend
from ._checks import FLOAT_DTYPES as _FLOAT_DTYPES
from ._checks import (_is_compiling, as_scalar, check_dense, check_features, check_labels, check_pair,
                      check_same_batch)
from .ops.contrastive import contrastive_loss as _contrastive
from .ops.imsep import imsep_single as _imsep_single
from .ops.pairdiff import pairwise_difference_loss as _pairdiff
from .ops.ranking import DECAYS as _DECAYS
from .ops.ranking import listmle_loss as _listmle
from .ops.sigmoid import sigmoid_loss as _sigmoid

__all__ = ["clip_loss", "clip_loss_rows", "siglip_loss", "imsep_loss", "listmle_loss", "pairwise_difference_loss"]
IMSEP_MODALITIES = ("image", "text")


def _out(loss: torch.Tensor) -> torch.Tensor:
    return loss.to(torch.promote_types(loss.dtype, torch.float32))


def _prepare(a_name, a, c_name, c, logit_scale, logit_bias, labels, backend, family, trusted=False):
    """Checked (scale, bias, labels, backend). labels stays None for the default positives (i, i);
    `trusted` labels (built by a loss module) skip the range check."""
    check_pair(a_name, a, c_name, c)
    scale = as_scalar("logit_scale", logit_scale, a)
    bias = as_scalar("logit_bias", logit_bias, a, optional=True)
    rows, cols = a.shape[0], c.shape[0]
    if labels is None:
        if rows > cols:
            raise ValueError(
                f"labels is required when {a_name} has more rows ({rows}) than {c_name} ({cols}); "
                "by default row i's positive is column i")
    elif trusted:
        labels = labels.long()
    else:
        labels = check_labels("labels", labels, rows, cols, a.device)
    return scale, bias, labels, _backend.resolve(backend, a.device, a.dtype, family=family, rows=rows)


def _clip(a, c, logit_scale, logit_bias, labels, symmetric, backend, names, trusted=False):
    scale, bias, labels, be = _prepare(names[0], a, names[1], c, logit_scale, logit_bias, labels, backend,
                                       "contrastive", trusted)
    return _out(_contrastive(a, c, scale, bias, labels, symmetric, be))


def _siglip(a, c, logit_scale, logit_bias, labels, backend, trusted=False):
    scale, bias, labels, be = _prepare("image_features", a, "text_features", c, logit_scale, logit_bias, labels,
                                       backend, "sigmoid", trusted)
    return _out(_sigmoid(a, c, scale, bias, labels, be))


def clip_loss(image_features, text_features, logit_scale, logit_bias=None, *, labels=None,
              backend="auto") -> torch.Tensor:
    """Symmetric softmax contrastive (CLIP) loss, fused: O(B + N) extra memory.

    S = logit_scale · I Tᵀ (+ logit_bias); loss = ½ [row CE + column CE], where row i's positive is
    column labels[i] (default i) and the column direction takes, for each positive (i, labels[i]),
    the softmax down column labels[i] with target row i. With square inputs and default labels this
    equals open_clip's ClipLoss. logit_bias cancels in every softmax; it gets an exactly-zero
    gradient on the fused backends.
    """
    return _clip(image_features, text_features, logit_scale, logit_bias, labels, True, backend,
                 ("image_features", "text_features"))


def clip_loss_rows(features, other_features, logit_scale, logit_bias=None, *, labels=None,
                   backend="auto") -> torch.Tensor:
    """One direction of the contrastive loss: mean_i CE(S[i, :], labels[i]). open_clip's local
    loss is ½[clip_loss_rows(I_local, T_all) + clip_loss_rows(T_local, I_all)]."""
    return _clip(features, other_features, logit_scale, logit_bias, labels, False, backend,
                 ("features", "other_features"))


def siglip_loss(image_features, text_features, logit_scale, logit_bias, *, labels=None,
                backend="auto") -> torch.Tensor:
    """Sigmoid contrastive (SigLIP) loss, fused: −Σ_ij log σ(z_ij (s·I_i·T_j + b)) / B.

    z_ij = +1 for j = labels[i] (default i) and −1 otherwise; with labels=None and more text rows
    than image rows the extra columns are negatives only (open_clip's multi-rank SigLIP).
    logit_bias may be None (no bias).
    """
    return _siglip(image_features, text_features, logit_scale, logit_bias, labels, backend)


def _check_modalities(modalities) -> tuple[str, ...]:
    if not isinstance(modalities, (str, tuple, list)):
        raise TypeError(f"modalities must be a string or a tuple/list of strings from {IMSEP_MODALITIES}, "
                        f"got {type(modalities).__name__} ({modalities!r})")
    names = (modalities,) if isinstance(modalities, str) else tuple(modalities)
    unknown = [m for m in names if m not in IMSEP_MODALITIES]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(f"modalities must be a non-empty subset of {IMSEP_MODALITIES} without repeats, "
                         f"got {modalities!r}")
    return names


def imsep_loss(image_features, text_features, semantic_features, logit_scale, *, modalities=("image",),
               backend="auto") -> torch.Tensor:
    """AlignCLIP's intra-modality separation loss, fused (no B×B buffer).

    For each modality X in `modalities` (the other one is Y): M[i, j] = (X_i·X_j)·(1 − Û_i·Û_j) for
    i ≠ j, M[i, i] = X_i·Y_i, loss_X = CE_rows(logit_scale·M). Returns the sum over the modalities:
    ("image",) is the paper's default, ("image", "text") what the seed's README runs.
    semantic_features (B×K, e.g. a frozen sentence encoder's caption embeddings; normalised here)
    are constants: any gradient request on them is ignored.
    """
    check_pair("image_features", image_features, "text_features", text_features)
    check_same_batch("image_features", image_features, "text_features", text_features)
    check_features("semantic_features", semantic_features)
    check_same_batch("image_features", image_features, "semantic_features", semantic_features)
    if semantic_features.device != image_features.device:
        raise ValueError(f"semantic_features is on {semantic_features.device} but the features are on "
                         f"{image_features.device}")
    names = _check_modalities(modalities)
    scale = as_scalar("logit_scale", logit_scale, image_features)
    be = _backend.resolve(backend, image_features.device, image_features.dtype, family="imsep",
                          rows=image_features.shape[0])
    semantic = semantic_features.detach()
    pairs = {"image": (image_features, text_features), "text": (text_features, image_features)}
    return _out(sum(_imsep_single(*pairs[m], semantic, scale, be) for m in names))


# ------------------------------------------------------------------------ list-wise ranking (ListMLE)



def _check_ranking_pair(scores, targets) -> None:
    for name, x in (("scores", scores), ("targets", targets)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        check_dense(name, x)
        if x.dim() != 2:
            raise ValueError(f"{name} must be 2-D (rows, list length), got shape {tuple(x.shape)}")
        if x.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must be a floating tensor (fp16/bf16/fp32/fp64), got {x.dtype}")
    if scores.shape != targets.shape:
        raise ValueError(f"targets has shape {tuple(targets.shape)} but scores has shape {tuple(scores.shape)}; "
                         "they must match (one target per score)")
    if scores.shape[0] == 0:
        raise ValueError(f"scores is an empty batch (shape {tuple(scores.shape)})")
    if scores.shape[1] == 0:
        raise ValueError(f"scores has empty rows (list length 0, shape {tuple(scores.shape)})")
    if scores.device != targets.device:
        raise ValueError(f"scores is on {scores.device} but targets is on {targets.device}")
    if scores.dtype != targets.dtype:
        raise TypeError(f"scores is {scores.dtype} but targets is {targets.dtype}; cast them to one dtype")


def listmle_loss(scores, targets, *, decay=None, backend="auto") -> torch.Tensor:
    """List-wise (Plackett–Luce) ranking loss, ListMLE, averaged over rows (docs/design.md §1.4).

    For each row r: π = the columns in descending order of targets[r], ties broken by the lower
    column index (a stable sort); q_k = scores[r, π_k];
    ℓ_r = Σ_k w_k [logsumexp(q_k, ..., q_N) − q_k], with w_k = 1, or 1/log2(k + 1) for decay="log"
    (RankCLIP's position discount). Returns mean_r ℓ_r. targets only set the order: they get no
    gradient. A non-finite target makes the loss NaN.

    The triton backend sorts and scans each row on chip, with a closed-form backward and no B×N
    temporaries besides the gradient itself; scores and targets may be strided views (e.g. a
    transpose), read in place. Rows longer than 8192 columns (MATRIX_MAX_N) fall back to the torch
    reference computed in fp32.
    """
    _check_ranking_pair(scores, targets)
    if decay not in _DECAYS:
        raise ValueError(f"decay must be None or 'log', got {decay!r}")
    be = _backend.resolve(backend, scores.device, scores.dtype, family="ranking", rows=scores.shape[0])
    return _out(_listmle(scores, targets, decay, be))


# ------------------------------------------------------------------- pairwise difference (PC-CLIP)

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _check_pairs(pairs, rows: int, images: int, device: torch.device) -> torch.Tensor:
    """pairs: an integer (P, 2) tensor, P = rows ≥ 1, entries in [0, images). Returns it as long."""
    if not isinstance(pairs, torch.Tensor):
        raise TypeError(f"pairs must be a torch.Tensor of image indices, got {type(pairs).__name__}")
    check_dense("pairs", pairs)
    if pairs.dtype not in _INT_DTYPES:
        raise TypeError(f"pairs must be an integer tensor of image indices, got {pairs.dtype}")
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must have shape (P, 2) (one (i, j) image pair per text), got {tuple(pairs.shape)}")
    if pairs.shape[0] == 0:
        raise ValueError("pairs is empty (P = 0): at least one (i, j) pair is needed")
    if pairs.shape[0] != rows:
        raise ValueError(f"pairs has {pairs.shape[0]} rows but text_features has {rows}; "
                         "text p describes pair p")
    if pairs.device != device:
        raise ValueError(f"pairs is on {pairs.device} but the features are on {device}")
    if not _is_compiling():
        lo, hi = int(pairs.min()), int(pairs.max())
        if lo < 0 or hi >= images:
            raise ValueError(f"pairs must lie in [0, {images}) (the number of image rows), "
                             f"got values in [{lo}, {hi}]")
    return pairs.long()


def pairwise_difference_loss(text_features, image_features, pairs, logit_scale=1.0, *, all_pairs=False,
                             backend="auto") -> torch.Tensor:
    """PC-CLIP's pairwise-difference loss (docs/design.md §1.3). Text p describes how image pairs[p, 0]
    differs from image pairs[p, 1]; δ_ij = normalise(Ĝ_i − Ĝ_j).

    all_pairs=False (the paper's form): a P×P symmetric CE between Ê and the listed pairs' δ, on
    the fused contrastive kernel. all_pairs=True: each text is scored against all N(N−1) ordered
    image pairs, s·(A[p, i] − A[p, j])/‖Ĝ_i − Ĝ_j‖ with A = ÊĜᵀ, by a fused kernel (no P×N² logits,
    no N²×D differences; the distances come from explicit differences, accurate for near-duplicate
    images); the pair → text direction is the listed form's. Degenerate pairs (i = j, or identical
    images: ‖Ĝ_i − Ĝ_j‖² ≤ 1e-5, decided by one rule on every backend) have δ = 0: they are dropped
    as positives (the means run over the non-degenerate listed pairs; 0 if there is none) and
    score a constant 0 as candidates, so the loss stays finite. logit_scale defaults to the
    paper's fixed 1. Gradients reach both feature matrices and logit_scale.

    Non-finite input: the listed form reads only the listed pairs' images, so a NaN/inf image that
    no pair uses leaves that loss finite (it does not depend on the image; its gradient is exactly 0); a
    non-finite used image, text or logit_scale makes the loss NaN. The all-pairs form scores every
    image, so any non-finite image makes it NaN.
    """
    check_pair("text_features", text_features, "image_features", image_features)
    if image_features.shape[0] < 2:
        raise ValueError(f"image_features needs at least 2 rows to form a pair, got shape "
                         f"{tuple(image_features.shape)}")
    pairs = _check_pairs(pairs, text_features.shape[0], image_features.shape[0], text_features.device)
    scale = as_scalar("logit_scale", logit_scale, text_features)
    be = _backend.resolve(backend, text_features.device, text_features.dtype, family="pairdiff",
                          rows=text_features.shape[0])
    return _out(_pairdiff(text_features, image_features, pairs, scale, bool(all_pairs), be))
