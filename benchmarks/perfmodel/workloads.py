"""The losses the model runs, through the public API (backend="triton"), and their useful FLOPs.

Useful FLOPs (one forward + backward; B rows, N columns, D features; 2 FLOPs per multiply-add):
  clip, siglip: 6·B·N·D   S = X Yᵀ (2BND), dX = dS·Y (2BND), dY = dSᵀ·X (2BND).
  imsep:        per modality 2·B²·D + 2·B²·K + 2·B²·D   the forward's two B×B dots (X Xᵀ and Û Ûᵀ) and
                the one gradient product dX = E·X (E symmetric; Û is a constant: no gradient).
  pairdiff:     the paper's listed form (all_pairs=False): B texts against the B listed pairs'
                differences δ (B×D, O(B·D) to form), a symmetric CE over a B×B logit matrix:
                6·B²·D, as CLIP. (all_pairs=True is not modelled.)
  listmle:      B rows of N = --dim scores; no matrix product at all: 0 useful MMA FLOPs, so
                executed/useful and the matmul-rate bound are undefined (null); its work is the
                B·N exps (one per score in the forward's suffix log-sum-exp, one in the backward).
Logits: B·N (clip, siglip, pairdiff: N = B; imsep: B·B; listmle: B·N with N = --dim).
"""
from __future__ import annotations

import torch

LOSSES = ("clip", "siglip", "imsep", "pairdiff", "listmle")


def shape(loss: str, batch: int, dim: int) -> dict:
    """rows, cols (the logit matrix), feature width and semantic width (imsep)."""
    if loss == "listmle":
        return dict(rows=batch, cols=dim, dim=dim, k=0)
    return dict(rows=batch, cols=batch, dim=dim, k=dim if loss == "imsep" else 0)


def useful_flops(loss: str, batch: int, dim: int, *, modalities: int = 1) -> dict:
    s = shape(loss, batch, dim)
    B, N, D, K = s["rows"], s["cols"], s["dim"], s["k"]
    if loss in ("clip", "siglip", "pairdiff"):
        return dict(fwd=2 * B * N * D, bwd=4 * B * N * D, total=6 * B * N * D)
    if loss == "imsep":
        fwd = modalities * (2 * B * B * D + 2 * B * B * K)
        bwd = modalities * 2 * B * B * D
        return dict(fwd=fwd, bwd=bwd, total=fwd + bwd)
    return dict(fwd=0, bwd=0, total=0)


def _unit(rows, dim, dtype, gen, grad=True):
    x = torch.nn.functional.normalize(torch.randn(rows, dim, generator=gen), dim=1).to(dtype)
    return x.requires_grad_(grad)


def make(loss: str, batch: int, dim: int, dtype: torch.dtype, *, seed: int = 0):
    """A closure running one forward of `loss` (returns the scalar loss) on fresh CPU inputs."""
    import clipkern.functional as F

    gen = torch.Generator().manual_seed(seed)
    B, D = batch, dim
    scale = torch.tensor(14.3, requires_grad=True)
    if loss == "clip":
        a, c = _unit(B, D, dtype, gen), _unit(B, D, dtype, gen)
        return lambda: F.clip_loss(a, c, scale, backend="triton")
    if loss == "siglip":
        a, c = _unit(B, D, dtype, gen), _unit(B, D, dtype, gen)
        bias = torch.tensor(-10.0, requires_grad=True)
        return lambda: F.siglip_loss(a, c, scale, bias, backend="triton")
    if loss == "imsep":
        a, c, u = _unit(B, D, dtype, gen), _unit(B, D, dtype, gen), _unit(B, D, dtype, gen, grad=False)
        return lambda: F.imsep_loss(a, c, u, scale, backend="triton")
    if loss == "pairdiff":
        t, g = _unit(B, D, dtype, gen), _unit(B, D, dtype, gen)
        i = torch.arange(B)
        pairs = torch.stack([i, (i + 1 + torch.randint(0, B - 1, (B,), generator=gen)) % B], dim=1)
        return lambda: F.pairwise_difference_loss(t, g, pairs, scale, backend="triton")
    if loss == "listmle":
        scores = torch.randn(B, D, generator=gen).to(dtype).requires_grad_(True)
        targets = torch.randn(B, D, generator=gen).to(dtype)
        return lambda: F.listmle_loss(scores, targets, backend="triton")
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def make_module(name: str, batch: int, dim: int, dtype: torch.dtype, *, seed: int = 0):
    """One open_clip-style module step: clipkern.ClipLoss() or clipkern.SigLipLoss() (backend triton)."""
    import clipkern

    gen = torch.Generator().manual_seed(seed)
    a, c = _unit(batch, dim, dtype, gen), _unit(batch, dim, dtype, gen)
    scale = torch.tensor(14.3, requires_grad=True)
    if name == "ClipLoss":
        mod = clipkern.ClipLoss(backend="triton")
        return lambda: mod(a, c, scale)
    mod = clipkern.SigLipLoss(backend="triton")
    bias = torch.tensor(-10.0, requires_grad=True)
    return lambda: mod(a, c, scale, bias)
