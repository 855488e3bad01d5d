"""Launchers for the IMSep kernels. They allocate their outputs and never write into inputs."""
import torch

from ..base import contiguous_rows, merge_stats, new_output, tile_config
from .triton_kernels import _imsep_bwd_kernel, _imsep_fwd_kernel


def imsep_fwd(x, u_hat, diag, scale):
    """Row and column (max, log-sum) of the IMSep logits M (symmetric): four (B,) fp32 vectors."""
    x, u_hat = contiguous_rows(x), contiguous_rows(u_hat)
    (B, D), K = x.shape, u_hat.shape[1]
    cfg = tile_config(B, B, D, x.device, x.dtype, dots_per_tile=2)
    grid, rows_per, cols_per = cfg.split_grid(B, B)
    row_m = new_output((grid[1], B), x, torch.float32)
    row_l = new_output((grid[1], B), x, torch.float32)
    col_m = torch.full((grid[0], B), float("-inf"), device=x.device, dtype=torch.float32)
    col_l = torch.zeros((grid[0], B), device=x.device, dtype=torch.float32)
    _imsep_fwd_kernel[grid](
        x, u_hat, diag, scale, row_m, row_l, col_m, col_l,
        B, D, K, x.stride(0), u_hat.stride(0), rows_per, cols_per, **cfg.kernel_args(x.dtype))
    return (*merge_stats(row_m, row_l), *merge_stats(col_m, col_l))


def imsep_bwd(x, u_hat, diag, scale, row_m, row_logl, col_m, col_logl, g):
    """(dX, off-diagonal part of dscale) given g = ∂L/∂lse_row."""
    x, u_hat = contiguous_rows(x), contiguous_rows(u_hat)
    (B, D), K = x.shape, u_hat.shape[1]
    cfg = tile_config(B, B, D, x.device, x.dtype, dots_per_tile=2)
    grid = cfg.slice_grid(B, D)
    dx = new_output(x.shape, x)
    dscale_part = new_output((grid[0],), x, torch.float32)
    _imsep_bwd_kernel[grid](
        x, u_hat, diag, scale, row_m, row_logl, col_m, col_logl, g.float().contiguous(), dx, dscale_part,
        B, D, K, x.stride(0), u_hat.stride(0), dx.stride(0), **cfg.kernel_args(x.dtype, backward=True))
    return dx, dscale_part.sum()
