"""Softmax contrastive loss (CLIP / InfoNCE) in plain torch: the oracle and the CPU fallback.

    S = s · A Cᵀ (+ b)                           A: B×D rows, C: N×D columns
    row direction:    mean_i [ logsumexp_j S[i, j] − S[i, y_i] ]
    column direction: mean_i [ logsumexp_r S[r, y_i] − S[i, y_i] ]   (softmax down column y_i)
    symmetric loss  = ½ (row + column);  rows-only loss = row

With square inputs and y = arange(B) this is open_clip's ClipLoss: ½[CE(S, y) + CE(Sᵀ, y)].
The bias cancels inside every softmax. 16-bit features are computed in float32 (as the fused
kernels accumulate), so no fp16 logit or sum overflows; float64 stays float64.
"""
import torch
import torch.nn.functional as F


def contrastive_loss(a, c, scale, bias, labels, symmetric: bool) -> torch.Tensor:
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
