r"""Row-chunked ListMLE (Plackett–Luce) in torch: RankCLIP and long rows at any batch, bounded memory.

The Triton kernels sort a whole row on chip (N ≤ MATRIX_MAX_N = 8192, from features N ≤ 256). This
module has no row-length limit: it works on a chunk of R rows × all N columns at a time with torch
ops (cuBLAS GEMMs, torch.sort, torch.logcumsumexp), so nothing of size B×N is ever held.

Math, per row (0-based sorted positions k = 0..N−1, as in triton_kernels.py):
    π     = stable descending argsort of the targets row (ties: the lower column index first, as
            torch.sort(stable=True) and the kernels do); q_k = scores[π_k]
    Z_k   = logsumexp(q_k, ..., q_{N−1})                 the Plackett–Luce suffix log-sum-exp:
            one logcumsumexp over the row reversed (`_rows_loss`, `_rows_grad`)
    ℓ     = Σ_k w_k (Z_k − q_k),    w_k = 1, or 1/log2(k + 2) with decay="log"
    ∂ℓ/∂q_j = Σ_{k≤j} w_k exp(q_j − Z_k) − w_j = exp(q_j + logcumsumexp_{k≤j}(log w_k − Z_k)) − w_j
For k ≤ j the suffix Z_k contains q_j, so every exponent is ≤ log Σ_{k≤j} w_k: no overflow at any
logit scale, no product of probabilities. The gradient row goes back to column order by scattering
through π (a permutation: every column is written once). A non-finite target makes its row's ℓ NaN,
as in the reference.

RankCLIP from features (`rankclip_rows`, docs/design.md §1.4). For a chunk of rows R of the batch:
    L[R] = s·V[R] Tᵀ,  Lᵀ[R] = s·T[R] Vᵀ,  Gv[R] = s·V[R] Vᵀ,  Gt[R] = s·T[R] Tᵀ   (GEMMs)
    cross_r = ℓ(L[r] | order of Lᵀ[r]) + ℓ(Lᵀ[r] | order of L[r])
    inner_r = ℓ(Gv[r] | order of Gt[r]) + ℓ(Gt[r] | order of Gv[r])
Each pair's two tiles are each other's targets, so one pair of GEMMs serves two ListMLE terms. The
backward recomputes the chunk's tiles and sorts (nothing B×B is saved), forms dX for one term at a
time and turns it into feature gradients at once: for X = s·A[R] Cᵀ,
    dA[R] += s·dX C,    dC += s·dXᵀ A[R],    ds += Σ_R A[R] ⊙ (dX C).
Products, sorts and scans run in float32 (float64 for float64 features), like the reference.

Chunk choice and memory (`chunk_rows`, `peak_extra_bytes`): R = CHUNK_ELEMENTS // N rows (at least
1), so one R×N fp32 tile (a unit U) is 4·CHUNK_ELEMENTS bytes = 16 MiB (32 MiB for fp64). Live at
the peak, counted from the code: the pair's two tiles X, Y (2U); in `_rows_grad`/`_rows_loss`
torch.sort's outputs (fp32 values U + int64 indices 2U) and its workspace (≤ 4U assumed for the
CUDA segmented sort: copies of keys and indices); after the sort, indices (2U) + q (U) + two scan
temporaries (2U) + dX (U). So LIVE_TILES = 10 units bound the tiles whatever B is: 160 MiB in fp32.
On top come O(B·D) buffers: the fp32 feature gradients (2·B·D·4 bytes), and for 16-bit features
their fp32 copies (2·B·D·4) and the gradients cast back (2·B·D·2). At B = 32768, D = 768, bf16:
160 + 192 + 192 + 96 = 640 MiB (computed, not measured: `peak_extra_bytes`; the CPU test measures
the bound at B = 2048). The work is 16 GEMMs of 2·B²·D FLOPs (4 forward, 4 recomputed, 8 for the
gradients), 8 stable segmented sorts of B² (fp32 key, int64 index) pairs and ~10 elementwise/scan
passes per sort: on a GPU the sorts dominate.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..base import new_output
from .reference import position_weights

CHUNK_ELEMENTS = 1 << 22  # elements of one R×N tile; see the module docstring for the memory bound
LIVE_TILES = 10           # R×N tiles live at the peak, sort workspace included (module docstring)


def chunk_rows(rows: int, cols: int) -> int:
    """Rows per chunk: as many as fit CHUNK_ELEMENTS with rows of `cols` columns (at least 1)."""
    return max(1, min(rows, CHUNK_ELEMENTS // max(cols, 1)))


def peak_extra_bytes(batch: int, dim: int, feature_dtype: torch.dtype, rows_per_chunk: int | None = None) -> int:
    """Computed upper bound on the memory RankCLIP's row-chunked path (`rankclip_rows` + its
    backward, through rankclip_terms) allocates beyond its inputs: LIVE_TILES tiles of R×B, the
    fp32 feature gradients, and for 16-bit features their fp32 copies and the gradients cast back."""
    acc_bytes = torch.finfo(torch.promote_types(feature_dtype, torch.float32)).bits // 8
    feature_bytes = torch.finfo(feature_dtype).bits // 8
    rows = chunk_rows(batch, batch) if rows_per_chunk is None else min(rows_per_chunk, batch)
    tiles = LIVE_TILES * rows * batch * acc_bytes
    per_row_outputs = 4 * batch * acc_bytes  # cross_r, inner_r and their upstream gradients
    grads = 2 * batch * dim * acc_bytes
    if feature_bytes < acc_bytes:
        grads += 2 * batch * dim * acc_bytes + 2 * batch * dim * feature_bytes
    return tiles + per_row_outputs + grads


def _accumulation(t: Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


class _Weights:
    """w_k and log w_k for one row length (None, None without decay: w ≡ 1)."""

    def __init__(self, n: int, decay_log: bool, like: Tensor):
        self.w = position_weights(n, "log" if decay_log else None, like)
        self.log_w = None if self.w is None else self.w.log()
        self.w_reversed = None if self.w is None else self.w.flip(0)


def _sort_order(targets: Tensor) -> Tensor:
    """π per row: stable descending argsort (ties by the lower column index)."""
    return torch.sort(targets, dim=1, descending=True, stable=True).indices


def _rows_loss(scores: Tensor, targets: Tensor, weights: _Weights) -> Tensor:
    """ℓ_r = Σ_k w_k (Z_k − q_k) for every row of an R×N tile (shape (R,))."""
    q_reversed = scores.gather(1, _sort_order(targets)).flip(1)   # q_{N−1}, ..., q_0
    terms = q_reversed.logcumsumexp(1).sub_(q_reversed)           # column m: Z_k − q_k, k = N−1−m
    del q_reversed
    if weights.w_reversed is not None:
        terms.mul_(weights.w_reversed)
    loss = terms.sum(1)
    return loss.masked_fill_(~targets.isfinite().all(1), float("nan"))


def _rows_grad(scores: Tensor, targets: Tensor, weights: _Weights, g: Tensor) -> Tensor:
    """g_r·∂ℓ_r/∂scores for an R×N tile, in column order (the closed form of the module docstring)."""
    order = _sort_order(targets)
    q = scores.gather(1, order)
    minus_z = q.flip(1).logcumsumexp(1).flip(1).neg_()            # −Z_k in sorted order
    if weights.log_w is not None:
        minus_z.add_(weights.log_w)
    dq = minus_z.logcumsumexp(1)                                   # log Σ_{k≤j} w_k e^{−Z_k}
    del minus_z
    dq.add_(q).exp_()
    del q
    dq.sub_(1.0 if weights.w is None else weights.w).mul_(g[:, None])
    return torch.empty_like(dq).scatter_(1, order, dq)


# ------------------------------------------------------------------------- given score matrices
def listmle_rows(scores: Tensor, targets: Tensor, decay_log: bool, rows_per_chunk: int) -> Tensor:
    """ℓ_r of every row of B×N scores against the order of targets (acc dtype, shape (B,))."""
    B, N = scores.shape
    acc = _accumulation(scores)
    weights = _Weights(N, decay_log, scores.new_empty((), dtype=acc))
    loss = new_output((B,), scores, acc)
    for start in range(0, B, rows_per_chunk):
        rows = slice(start, min(B, start + rows_per_chunk))
        loss[rows] = _rows_loss(scores[rows].to(acc), targets[rows].to(acc), weights)
    return loss


def listmle_rows_bwd(scores: Tensor, targets: Tensor, g: Tensor, decay_log: bool, rows_per_chunk: int) -> Tensor:
    """∂(Σ_r g_r ℓ_r)/∂scores (scores' dtype; the one B×N tensor this path allocates)."""
    B, N = scores.shape
    acc = _accumulation(scores)
    weights = _Weights(N, decay_log, scores.new_empty((), dtype=acc))
    g = g.to(acc)
    dscores = new_output((B, N), scores)
    for start in range(0, B, rows_per_chunk):
        rows = slice(start, min(B, start + rows_per_chunk))
        dscores[rows] = _rows_grad(scores[rows].to(acc), targets[rows].to(acc), weights, g[rows])
    return dscores


# ---------------------------------------------------------------------------- RankCLIP, features
# (term, A, C, A2, C2) of the two ListMLE pairs, naming the features: X = s·A[R] Cᵀ is scored
# against the order of Y = s·A2[R] C2ᵀ, and Y against the order of X.
PAIRS = (("cross", "image", "text", "text", "image"), ("inner", "image", "image", "text", "text"))


def _check_features(image: Tensor, text: Tensor, scale: Tensor) -> None:
    if image.dim() != 2 or image.shape != text.shape:
        raise ValueError(f"image and text must be B×D of the same shape, got {tuple(image.shape)} and "
                         f"{tuple(text.shape)}")
    if image.dtype != text.dtype or scale.dtype != image.dtype or scale.dim() != 0:
        raise TypeError(f"image, text and a 0-d scale must share one dtype, got {image.dtype}, {text.dtype}, "
                        f"scale {scale.dtype} of shape {tuple(scale.shape)}")


def rankclip_rows(image: Tensor, text: Tensor, scale: Tensor, decay_log: bool,
                  rows_per_chunk: int) -> tuple[Tensor, Tensor]:
    """(cross_r, inner_r) per row r (shape (B,) each, the features' dtype, which is fp32 or fp64)."""
    _check_features(image, text, scale)
    B = image.shape[0]
    weights = _Weights(B, decay_log, scale)
    feats = {"image": image, "text": text}
    out = {name: new_output((B,), image) for name in ("cross", "inner")}
    for start in range(0, B, rows_per_chunk):
        rows = slice(start, min(B, start + rows_per_chunk))
        for name, *keys in PAIRS:
            a, c, a2, c2 = (feats[k] for k in keys)
            x = torch.mm(a[rows], c.T).mul_(scale)
            y = torch.mm(a2[rows], c2.T).mul_(scale)
            out[name][rows] = _rows_loss(x, y, weights)
            out[name][rows] += _rows_loss(y, x, weights)
    return out["cross"], out["inner"]


def rankclip_rows_bwd(image: Tensor, text: Tensor, scale: Tensor, g_cross: Tensor, g_inner: Tensor,
                      decay_log: bool, rows_per_chunk: int) -> tuple[Tensor, Tensor, Tensor]:
    """(d image, d text, d scale) of Σ_r g_cross[r]·cross_r + g_inner[r]·inner_r."""
    B = image.shape[0]
    weights = _Weights(B, decay_log, scale)
    feats = {"image": image, "text": text}
    grads = {"image": torch.zeros_like(image), "text": torch.zeros_like(text)}
    dscale = torch.zeros_like(scale)
    upstream = {"cross": g_cross.to(image.dtype), "inner": g_inner.to(image.dtype)}

    def add_feature_grads(dx, a_key, c_key, rows):
        """X = s·A[rows] Cᵀ: dA[rows] += s·dX C, dC += s·dXᵀ A[rows], ds += Σ A[rows] ⊙ (dX C)."""
        nonlocal dscale
        a_rows = feats[a_key][rows]
        dx_c = torch.mm(dx, feats[c_key])
        dscale = dscale + (a_rows * dx_c).sum()
        grads[a_key][rows] += dx_c.mul_(scale)
        grads[c_key].addmm_(dx.T, a_rows * scale)

    for start in range(0, B, rows_per_chunk):
        rows = slice(start, min(B, start + rows_per_chunk))
        for name, a_key, c_key, a2_key, c2_key in PAIRS:
            g = upstream[name][rows]
            x = torch.mm(feats[a_key][rows], feats[c_key].T).mul_(scale)
            y = torch.mm(feats[a2_key][rows], feats[c2_key].T).mul_(scale)
            add_feature_grads(_rows_grad(x, y, weights, g), a_key, c_key, rows)
            dy = _rows_grad(y, x, weights, g)
            del x, y
            add_feature_grads(dy, a2_key, c2_key, rows)
            del dy
    return grads["image"], grads["text"], dscale
