"""Launchers for the contrastive kernels. They allocate their outputs and never write into inputs."""
import math

import torch
import triton

from ..base import new_output, tile_config
from ..base.triton_tiles import dot_precision
from .triton_kernels import _contrastive_bwd_kernel, _contrastive_fwd_kernel


def _contig(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _merge(m_part: torch.Tensor, l_part: torch.Tensor):
    """(splits, K) partial (max, sum) -> (max, log sum) per column of the partials."""
    m = m_part.amax(dim=0)
    safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return m, (l_part * (m_part - safe).exp()).sum(dim=0).log()


def contrastive_fwd(x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor):
    """Row and column (max, log-sum) of S = scale · x yᵀ, in one pass over the tiles (fp32):
    lse = max + logsum. Returns (row_max, row_logsum, col_max, col_logsum)."""
    x, y = _contig(x), _contig(y)
    M, D = x.shape
    N = y.shape[0]
    cfg = tile_config(M, N, D, x.device)
    row_blocks, col_blocks = triton.cdiv(M, cfg.block_m), triton.cdiv(N, cfg.block_n)
    rows_per = math.ceil(row_blocks / cfg.row_splits)
    cols_per = math.ceil(col_blocks / cfg.col_splits)
    grid = (math.ceil(row_blocks / rows_per), math.ceil(col_blocks / cols_per))
    row_m = new_output((grid[1], M), x, torch.float32)
    row_l = new_output((grid[1], M), x, torch.float32)
    col_m = torch.full((grid[0], N), float("-inf"), device=x.device, dtype=torch.float32)
    col_l = torch.zeros((grid[0], N), device=x.device, dtype=torch.float32)
    _contrastive_fwd_kernel[grid](
        x, y, scale, row_m, row_l, col_m, col_l,
        M, N, D, x.stride(0), y.stride(0), rows_per, cols_per,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        UPCAST=cfg.interpret, PRECISION=dot_precision(x.dtype, cfg.interpret),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return (*_merge(row_m, row_l), *_merge(col_m, col_l))


def _bwd_one_side(x, y, scale, stats_x, g_x, stats_y, g_y, transposed: bool):
    M, D = x.shape
    N = y.shape[0]
    cfg = tile_config(M, N, D, x.device)
    dx = new_output(x.shape, x)
    grid = (triton.cdiv(M, cfg.block_m), triton.cdiv(D, cfg.block_d))
    dscale_part = new_output((grid[0],), x, torch.float32)
    _contrastive_bwd_kernel[grid](
        x, y, scale, *stats_x, g_x, *stats_y, g_y, dx, dscale_part,
        M, N, D, x.stride(0), y.stride(0), dx.stride(0),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, BLOCK_D=cfg.block_d,
        UPCAST=cfg.interpret, PRECISION=dot_precision(x.dtype, cfg.interpret), WITH_DSCALE=not transposed, TRANSPOSED=transposed,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return dx, None if transposed else dscale_part.sum()


def contrastive_bwd(x, y, scale, row_m, row_logl, col_m, col_logl, g_row, g_col):
    """Gradients of L(row_lse, col_lse) given g_row = ∂L/∂row_lse, g_col = ∂L/∂col_lse."""
    x, y = _contig(x), _contig(y)
    g_row, g_col = g_row.float().contiguous(), g_col.float().contiguous()
    rows, cols = (row_m, row_logl), (col_m, col_logl)
    dx, dscale = _bwd_one_side(x, y, scale, rows, g_row, cols, g_col, False)
    dy, _ = _bwd_one_side(y, x, scale, cols, g_col, rows, g_row, True)
    return dx, dy, dscale
