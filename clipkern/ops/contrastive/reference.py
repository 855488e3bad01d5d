"""Softmax contrastive loss (CLIP / InfoNCE) in plain torch: the CPU fallback and the float64 oracle.

    S = s · A Cᵀ (+ b)                           A: B×D rows, C: N×D columns
    row direction:    mean_i [ logsumexp_j S[i, j] − S[i, y_i] ]
    column direction: mean_i [ logsumexp_r S[r, y_i] − S[i, y_i] ]   (softmax down column y_i)
    symmetric loss  = ½ (row + column);  rows-only loss = row

With square inputs and y = arange(B) this is open_clip's ClipLoss: ½[CE(S, y) + CE(Sᵀ, y)].
The bias cancels inside every softmax. 16-bit features are computed in float32 (as the fused
kernels accumulate), so no fp16 logit or sum overflows; float64 stays float64.

Two implementations of the same formula:
- `plain_contrastive_loss`: S whole, torch autograd. The simplest statement of the loss (the oracle
  tests can name, the "torch" benchmark provider), at B×N memory several times over.
- `contrastive_loss` (backend="reference"): S one row chunk at a time (`chunk_rows`), never whole.
  Forward: each chunk's row logsumexp is final; the column statistics are merged over chunks as
  (max, Σexp) pairs. Backward (checkpoint style, a custom autograd.Function): each chunk's S is
  recomputed once, dS = w_r·P_r + P_c·diag(w_c·cnt) − w_pos·Y (docs/design.md §1.1), and
  dA = s·dS C, dC += s·dSᵀ A, ds = Σ dS ⊙ A Cᵀ. Extra memory: a few chunk × N tiles plus O((B + N)·D),
  far below open_clip's (two B×N logits and their softmaxes). A gradient of the gradient
  (create_graph=True) is computed through plain_contrastive_loss, so it stays exact.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# elements of one S chunk (8 MiB in fp32): rows per chunk = max(1, CHUNK_ELEMENTS // N)
CHUNK_ELEMENTS = 1 << 21


def chunk_rows(cols: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(cols, 1))


def plain_contrastive_loss(a, c, scale, bias, labels, symmetric: bool) -> torch.Tensor:
    acc = torch.promote_types(a.dtype, torch.float32)
    logits = scale.to(acc) * (a.to(acc) @ c.to(acc).T)
    if bias is not None:
        logits = logits + bias.to(acc)
    row = F.cross_entropy(logits, labels)
    if not symmetric:
        return row
    idx = torch.arange(a.shape[0], device=a.device)
    col = (logits.logsumexp(dim=0).index_select(0, labels) - logits[idx, labels]).mean()
    return (row + col) / 2


def _merge(run_max, run_sum, block_max, block_sum):
    """(max, Σexp(· − max)) of two partials; an all −inf side contributes nothing (no NaN)."""
    new_max = torch.maximum(run_max, block_max)
    safe = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
    return new_max, run_sum * (run_max - safe).exp() + block_sum * (block_max - safe).exp()


class _ChunkedContrastive(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, c, scale, labels, symmetric):
        acc = torch.promote_types(a.dtype, torch.float32)
        x, y, s = a.to(acc), c.to(acc), scale.to(acc)
        rows, cols = x.shape[0], y.shape[0]
        row_lse = x.new_empty(rows)
        col_max = x.new_full((cols,), float("-inf"))
        col_sum = x.new_zeros(cols)
        pos = x.new_empty(rows)  # S[i, y_i], picked out of the tiles (the same rounding as the statistics)
        step = chunk_rows(cols)
        for r0 in range(0, rows, step):
            tile = (x[r0:r0 + step] @ y.T).mul_(s)
            row_lse[r0:r0 + step] = tile.logsumexp(dim=1)
            pos[r0:r0 + step] = tile.gather(1, labels[r0:r0 + step, None]).squeeze(1)
            block_max = tile.amax(dim=0)
            safe = torch.where(torch.isfinite(block_max), block_max, torch.zeros_like(block_max))
            col_max, col_sum = _merge(col_max, col_sum, block_max, tile.sub_(safe).exp_().sum(dim=0))
        col_lse = col_max + col_sum.log()
        loss = (row_lse - pos).mean()
        if symmetric:
            loss = (loss + (col_lse.index_select(0, labels) - pos).mean()) / 2
        ctx.symmetric = symmetric
        ctx.save_for_backward(a, c, scale, labels, row_lse, col_lse)
        return loss

    @staticmethod
    def backward(ctx, g):
        a, c, scale, labels, row_lse, col_lse = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the plain formula instead (exact)
            inputs = [t for t in (a, c, scale) if t.requires_grad]
            grads = iter(torch.autograd.grad(plain_contrastive_loss(a, c, scale, None, labels, ctx.symmetric),
                                             inputs, g, create_graph=True))
            return (*(next(grads) if t.requires_grad else None for t in (a, c, scale)), None, None)
        acc = row_lse.dtype
        x, y, s, g = a.to(acc), c.to(acc), scale.to(acc), g.to(acc)
        rows, cols = x.shape[0], y.shape[0]
        half = 0.5 if ctx.symmetric else 1.0
        w_row = g * half / rows  # weight of each row's softmax
        w_pos = g / rows  # the positive logit appears once per direction, each with weight half
        # column j's softmax enters the loss once per positive that points at it
        w_col = (g * half / rows) * torch.bincount(labels, minlength=cols).to(acc) if ctx.symmetric else None
        dx, dy, dscale = torch.empty_like(x), torch.zeros_like(y), torch.zeros((), dtype=acc, device=x.device)
        step = chunk_rows(cols)
        for r0 in range(0, rows, step):
            xb = x[r0:r0 + step]
            raw = xb @ y.T
            ds = (raw * s).sub_(row_lse[r0:r0 + step, None]).exp_().mul_(w_row)
            if w_col is not None:
                ds.add_((raw * s).sub_(col_lse[None, :]).exp_().mul_(w_col))
            chunk = torch.arange(ds.shape[0], device=ds.device)
            ds.index_put_((chunk, labels[r0:r0 + step]), -w_pos, accumulate=True)  # the positives' −w_pos·Y
            dscale += (ds * raw).sum()
            dx[r0:r0 + step] = ds @ y
            dy.addmm_(ds.T, xb)
        return (dx * s).to(a.dtype), (dy * s).to(c.dtype), dscale.to(scale.dtype), None, None


def contrastive_loss(a, c, scale, bias, labels, symmetric: bool) -> torch.Tensor:
    """The loss of the module docstring, S formed one row chunk at a time (backend="reference")."""
    loss = _ChunkedContrastive.apply(a, c, scale, labels, symmetric)
    # the bias cancels: it gets an exactly-zero gradient, and a non-finite bias still shows in the loss
    return loss if bias is None else loss + bias.to(loss.dtype).reshape(()) * 0
