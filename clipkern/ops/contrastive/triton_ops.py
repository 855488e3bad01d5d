"""Launchers for the contrastive kernels. They allocate their outputs and never write into inputs."""
import math

import torch
import triton

from ..base import merge_lse, tile_config
from ..base.triton_tiles import dot_precision
from .triton_kernels import _contrastive_bwd_kernel, _contrastive_fwd_kernel


def _contig(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def contrastive_fwd(x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor):
    """Row and column log-sum-exp of S = scale · x yᵀ, in one pass over the tiles. fp32 outputs."""
    x, y = _contig(x), _contig(y)
    M, D = x.shape
    N = y.shape[0]
    cfg = tile_config(M, N, D, x.device)
    row_blocks, col_blocks = triton.cdiv(M, cfg.block_m), triton.cdiv(N, cfg.block_n)
    rows_per = math.ceil(row_blocks / cfg.row_splits)
    cols_per = math.ceil(col_blocks / cfg.col_splits)
    grid = (math.ceil(row_blocks / rows_per), math.ceil(col_blocks / cols_per))
    row_part = torch.full((grid[1], M), float("nan"), device=x.device, dtype=torch.float32)
    col_m = torch.full((grid[0], N), float("-inf"), device=x.device, dtype=torch.float32)
    col_l = torch.zeros((grid[0], N), device=x.device, dtype=torch.float32)
    _contrastive_fwd_kernel[grid](
        x, y, scale, row_part, col_m, col_l,
        M, N, D, x.stride(0), y.stride(0), rows_per, cols_per,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        UPCAST=cfg.interpret, PRECISION=dot_precision(x.dtype, cfg.interpret),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return merge_lse(row_part), merge_lse(col_m + col_l.log())


def _bwd_one_side(x, y, scale, lse_x, g_x, lse_y, g_y, with_dscale: bool):
    M, D = x.shape
    N = y.shape[0]
    cfg = tile_config(M, N, D, x.device)
    dx = torch.empty_like(x)
    grid = (triton.cdiv(M, cfg.block_m), triton.cdiv(D, cfg.block_d))
    dscale_part = torch.full((grid[0],), float("nan"), device=x.device, dtype=torch.float32)
    _contrastive_bwd_kernel[grid](
        x, y, scale, lse_x, g_x, lse_y, g_y, dx, dscale_part,
        M, N, D, x.stride(0), y.stride(0), dx.stride(0),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, BLOCK_D=cfg.block_d,
        UPCAST=cfg.interpret, PRECISION=dot_precision(x.dtype, cfg.interpret), WITH_DSCALE=with_dscale,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return dx, dscale_part.sum() if with_dscale else None


def contrastive_bwd(x, y, scale, row_lse, col_lse, g_row, g_col):
    """Gradients of L(row_lse, col_lse) given g_row = ∂L/∂row_lse, g_col = ∂L/∂col_lse."""
    x, y = _contig(x), _contig(y)
    g_row, g_col = g_row.float().contiguous(), g_col.float().contiguous()
    dx, dscale = _bwd_one_side(x, y, scale, row_lse, g_row, col_lse, g_col, True)
    dy, _ = _bwd_one_side(y, x, scale, col_lse, g_col, row_lse, g_row, False)
    return dx, dy, dscale
