"""Launchers for the contrastive kernels. They allocate their outputs and never write into inputs."""
import torch

from ..base import contiguous_rows, merge_stats, new_output, tile_config
from .triton_kernels import _contrastive_bwd_kernel, _contrastive_fwd_kernel


def contrastive_fwd(x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor):
    """Row and column (max, log-sum) of S = scale · x yᵀ, in one pass over the tiles (fp32):
    lse = max + logsum. Returns (row_max, row_logsum, col_max, col_logsum)."""
    x, y = contiguous_rows(x), contiguous_rows(y)
    (M, D), N = x.shape, y.shape[0]
    cfg = tile_config(M, N, D, x.device, x.dtype)
    grid, rows_per, cols_per = cfg.split_grid(M, N)
    row_m = new_output((grid[1], M), x, torch.float32)
    row_l = new_output((grid[1], M), x, torch.float32)
    col_m = torch.full((grid[0], N), float("-inf"), device=x.device, dtype=torch.float32)
    col_l = torch.zeros((grid[0], N), device=x.device, dtype=torch.float32)
    _contrastive_fwd_kernel[grid](
        x, y, scale, row_m, row_l, col_m, col_l,
        M, N, D, x.stride(0), y.stride(0), rows_per, cols_per, **cfg.kernel_args(x.dtype))
    return (*merge_stats(row_m, row_l), *merge_stats(col_m, col_l))


def _bwd_one_side(x, y, scale, stats_x, g_x, stats_y, g_y, transposed: bool):
    (M, D), N = x.shape, y.shape[0]
    cfg = tile_config(M, N, D, x.device, x.dtype)
    grid = cfg.slice_grid(M, D)
    dx = new_output(x.shape, x)
    dscale_part = new_output((grid[0],), x, torch.float32)
    _contrastive_bwd_kernel[grid](
        x, y, scale, *stats_x, g_x, *stats_y, g_y, dx, dscale_part,
        M, N, D, x.stride(0), y.stride(0), dx.stride(0),
        WITH_DSCALE=not transposed, TRANSPOSED=transposed, **cfg.kernel_args(x.dtype, backward=True))
    return dx, None if transposed else dscale_part.sum()


def contrastive_bwd(x, y, scale, row_m, row_logl, col_m, col_logl, g_row, g_col):
    """Gradients of L(row_lse, col_lse) given g_row = ∂L/∂row_lse, g_col = ∂L/∂col_lse."""
    x, y = contiguous_rows(x), contiguous_rows(y)
    g_row, g_col = g_row.float().contiguous(), g_col.float().contiguous()
    rows, cols = (row_m, row_logl), (col_m, col_logl)
    dx, dscale = _bwd_one_side(x, y, scale, rows, g_row, cols, g_col, transposed=False)
    dy, _ = _bwd_one_side(y, x, scale, cols, g_col, rows, g_row, transposed=True)
    return dx, dy, dscale
