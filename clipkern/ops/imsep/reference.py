"""Intra-modality separation (AlignCLIP IMSep) in plain torch: the oracle and the CPU fallback.

For one modality with features X (B×D), the other modality Y (B×D) and semantic features U (B×K):
    Û = U / ‖U‖,   Dsem = 1 − Û Ûᵀ
    M[i, j] = (X_i · X_j) · Dsem[i, j]   for i ≠ j        (intra-modal negatives, scaled by how
    M[i, i] = X_i · Y_i                                     different the two captions are)
    loss = CE_rows(s · M) with target i for row i
The image side is X = V, Y = T; the text side X = T, Y = V. 16-bit features are computed in float32
(as the fused kernels accumulate); float64 stays float64.
"""
import torch
import torch.nn.functional as F


def imsep_single(x, y, semantic, scale) -> torch.Tensor:
    acc = torch.promote_types(x.dtype, torch.float32)
    x, y, scale = x.to(acc), y.to(acc), scale.to(acc)
    u = F.normalize(semantic.to(acc), dim=1)
    m = (x @ x.T) * (1 - u @ u.T)
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    m = torch.where(eye, (x * y).sum(dim=1).diag(), m)
    return F.cross_entropy(scale * m, torch.arange(x.shape[0], device=x.device))
