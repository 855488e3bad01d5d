"""Sigmoid contrastive loss (SigLIP) in plain torch: the CPU fallback and the float64 oracle.

    L = s · A Cᵀ + b,   z[i, j] = +1 if j = y_i else −1
    loss = −Σ_ij log σ(z[i, j] · L[i, j]) / B          (open_clip 3.3 SigLipLoss, one rank)
16-bit inputs are computed in float32 (as the fused kernels accumulate), so no fp16 logit or sum
overflows; float64 stays float64.

Two implementations of the same formula:
- `plain_sigmoid_loss`: L whole, torch autograd. The simplest statement of the loss (the oracle
  tests can name, the "torch" benchmark provider), at B×N memory several times over.
- `sigmoid_loss` (backend="reference"): L one row chunk at a time (`chunk_rows`), never whole.
  Backward (checkpoint style, a custom autograd.Function): each chunk's L is recomputed once,
  dL = −z·σ(−z·L)·g/B, dA = s·dL C, dC += s·dLᵀ A, ds = Σ dL ⊙ A Cᵀ, db = Σ dL. Extra memory: a few
  chunk × N tiles plus O((B + N)·D). A gradient of the gradient (create_graph=True) is computed
  through plain_sigmoid_loss, so it stays exact.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..contrastive.reference import chunk_rows


def plain_sigmoid_loss(a, c, scale, bias, labels) -> torch.Tensor:
    acc = torch.promote_types(a.dtype, torch.float32)  # 16-bit inputs: fp32 logits and sums, as the kernels
    logits = scale.to(acc) * (a.to(acc) @ c.to(acc).T)
    if bias is not None:
        logits = logits + bias.to(acc)
    z = -torch.ones_like(logits)
    z[torch.arange(a.shape[0], device=a.device), labels] = 1.0
    return -F.logsigmoid(z * logits).sum() / a.shape[0]


def _signed_logits(raw, s, b, labels, r0):
    """(t = z·L, z) of one row chunk: L = s·raw + b, z = +1 at the chunk rows' positives, −1 elsewhere."""
    z = torch.full_like(raw, -1.0)
    z[torch.arange(raw.shape[0], device=raw.device), labels[r0:r0 + raw.shape[0]]] = 1.0
    return (raw * s).add_(b).mul_(z), z


class _ChunkedSigmoid(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, c, scale, bias, labels):
        acc = torch.promote_types(a.dtype, torch.float32)
        x, y, s = a.to(acc), c.to(acc), scale.to(acc)
        b = torch.zeros((), dtype=acc, device=x.device) if bias is None else bias.to(acc)
        rows = x.shape[0]
        total = torch.zeros((), dtype=acc, device=x.device)
        step = chunk_rows(y.shape[0])
        for r0 in range(0, rows, step):
            t, _ = _signed_logits(x[r0:r0 + step] @ y.T, s, b, labels, r0)
            total -= F.logsigmoid(t).sum()
        ctx.save_for_backward(a, c, scale, bias, labels)
        return total / rows

    @staticmethod
    def backward(ctx, g):
        a, c, scale, bias, labels = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the plain formula instead (exact)
            wanted = [t is not None and t.requires_grad for t in (a, c, scale, bias)]
            inputs = [t for t, w in zip((a, c, scale, bias), wanted) if w]
            grads = iter(torch.autograd.grad(plain_sigmoid_loss(a, c, scale, bias, labels), inputs, g,
                                             create_graph=True))
            return (*(next(grads) if w else None for w in wanted), None)
        acc = torch.promote_types(a.dtype, torch.float32)
        x, y, s = a.to(acc), c.to(acc), scale.to(acc)
        b = torch.zeros((), dtype=acc, device=x.device) if bias is None else bias.to(acc)
        rows = x.shape[0]
        w = g.to(acc) / rows
        dx, dy = torch.empty_like(x), torch.zeros_like(y)
        dscale, dbias = torch.zeros((), dtype=acc, device=x.device), torch.zeros((), dtype=acc, device=x.device)
        step = chunk_rows(y.shape[0])
        for r0 in range(0, rows, step):
            xb = x[r0:r0 + step]
            raw = xb @ y.T
            t, z = _signed_logits(raw, s, b, labels, r0)
            dl = z.neg_().mul_(torch.sigmoid(t.neg_())).mul_(w)  # −z·σ(−t)·g/B
            dscale += (dl * raw).sum()
            dbias += dl.sum()
            dx[r0:r0 + step] = dl @ y
            dy.addmm_(dl.T, xb)
        return ((dx * s).to(a.dtype), (dy * s).to(c.dtype), dscale.to(scale.dtype),
                None if bias is None else dbias.to(bias.dtype), None)


def sigmoid_loss(a, c, scale, bias, labels) -> torch.Tensor:
    """The loss of the module docstring, L formed one row chunk at a time (backend="reference")."""
    return _ChunkedSigmoid.apply(a, c, scale, bias, labels)
