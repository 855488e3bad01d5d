"""Launchers for the sigmoid kernels. They allocate their outputs and never write into inputs."""
import math

import torch
import triton

from ..base import new_output, tile_config
from ..base.triton_tiles import dot_precision
from .triton_kernels import _sigmoid_bwd_kernel, _sigmoid_fwd_kernel


def _contig(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def sigmoid_fwd(x, y, scale, bias, labels):
    """ℓ[i] = Σ_j softplus(−z_ij L_ij) for every row of x (fp32, shape (M,))."""
    x, y = _contig(x), _contig(y)
    M, D = x.shape
    N = y.shape[0]
    cfg = tile_config(M, N, D, x.device)
    col_blocks = triton.cdiv(N, cfg.block_n)
    cols_per = math.ceil(col_blocks / cfg.col_splits)
    grid = (triton.cdiv(M, cfg.block_m), math.ceil(col_blocks / cols_per))
    row_part = new_output((grid[1], M), x, torch.float32)
    _sigmoid_fwd_kernel[grid](
        x, y, scale, bias, labels, row_part,
        M, N, D, x.stride(0), y.stride(0), cols_per,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        UPCAST=cfg.interpret, PRECISION=dot_precision(x.dtype, cfg.interpret),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return row_part.sum(dim=0)


def _bwd_one_side(x, y, scale, bias, labels, g, labels_on_own: bool):
    M, D = x.shape
    N = y.shape[0]
    cfg = tile_config(M, N, D, x.device)
    dx = new_output(x.shape, x)
    grid = (triton.cdiv(M, cfg.block_m), triton.cdiv(D, cfg.block_d))
    dscale_part = new_output((grid[0],), x, torch.float32)
    dbias_part = new_output((grid[0],), x, torch.float32)
    _sigmoid_bwd_kernel[grid](
        x, y, scale, bias, labels, g, dx, dscale_part, dbias_part,
        M, N, D, x.stride(0), y.stride(0), dx.stride(0),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, BLOCK_D=cfg.block_d,
        UPCAST=cfg.interpret, PRECISION=dot_precision(x.dtype, cfg.interpret),
        LABELS_ON_OWN=labels_on_own, WITH_DSCALE=labels_on_own,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if labels_on_own:
        return dx, dscale_part.sum(), dbias_part.sum()
    return dx, None, None


def sigmoid_bwd(x, y, scale, bias, labels, g):
    x, y = _contig(x), _contig(y)
    g = g.float().contiguous()
    dx, dscale, dbias = _bwd_one_side(x, y, scale, bias, labels, g, True)
    dy, _, _ = _bwd_one_side(y, x, scale, bias, labels, g, False)
    return dx, dy, dscale, dbias
