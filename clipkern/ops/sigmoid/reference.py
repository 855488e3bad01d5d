"""Sigmoid contrastive loss (SigLIP) in plain torch: the oracle and the CPU fallback.

    L = s · A Cᵀ + b,   z[i, j] = +1 if j = y_i else −1
    loss = −Σ_ij log σ(z[i, j] · L[i, j]) / B          (open_clip 3.3 SigLipLoss, one rank)
16-bit inputs are computed in float32 (as the fused kernels accumulate), so no fp16 logit or sum
overflows; float64 stays float64.
"""
import torch
import torch.nn.functional as F


def sigmoid_loss(a, c, scale, bias, labels) -> torch.Tensor:
    acc = torch.promote_types(a.dtype, torch.float32)  # 16-bit inputs: fp32 logits and sums, as the kernels
    logits = scale.to(acc) * (a.to(acc) @ c.to(acc).T)
    if bias is not None:
        logits = logits + bias.to(acc)
    z = -torch.ones_like(logits)
    z[torch.arange(a.shape[0], device=a.device), labels] = 1.0
    return -F.logsigmoid(z * logits).sum() / a.shape[0]
