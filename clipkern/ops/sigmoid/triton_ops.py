"""Launchers for the sigmoid kernels. They allocate their outputs and never write into inputs."""
import torch

from ..base import contiguous_rows, new_output, tile_config
from .triton_kernels import _sigmoid_bwd_kernel, _sigmoid_fwd_kernel


def sigmoid_fwd(x, y, scale, bias, labels):
    """ℓ[i] = Σ_j softplus(−z_ij L_ij) for every row of x (fp32, shape (M,))."""
    x, y = contiguous_rows(x), contiguous_rows(y)
    (M, D), N = x.shape, y.shape[0]
    cfg = tile_config(M, N, D, x.device, x.dtype)
    (row_splits, col_splits), rows_per, cols_per = cfg.split_grid(M, N)
    row_part = new_output((col_splits, M), x, torch.float32)
    _sigmoid_fwd_kernel[(row_splits, col_splits)](
        x, y, scale, bias, labels, row_part,
        M, N, D, x.stride(0), y.stride(0), rows_per, cols_per, **cfg.kernel_args(x.dtype))
    return row_part.sum(dim=0)


def _bwd_one_side(x, y, scale, bias, labels, g, labels_on_own: bool):
    (M, D), N = x.shape, y.shape[0]
    cfg = tile_config(M, N, D, x.device, x.dtype)
    grid = cfg.slice_grid(M, D)
    dx = new_output(x.shape, x)
    dscale_part = new_output((grid[0],), x, torch.float32)
    dbias_part = new_output((grid[0],), x, torch.float32)
    _sigmoid_bwd_kernel[grid](
        x, y, scale, bias, labels, g, dx, dscale_part, dbias_part,
        M, N, D, x.stride(0), y.stride(0), dx.stride(0),
        LABELS_ON_OWN=labels_on_own, WITH_DSCALE=labels_on_own, **cfg.kernel_args(x.dtype, backward=True))
    if labels_on_own:
        return dx, dscale_part.sum(), dbias_part.sum()
    return dx, None, None


def sigmoid_bwd(x, y, scale, bias, labels, g):
    x, y = contiguous_rows(x), contiguous_rows(y)
    g = g.float().contiguous()
    dx, dscale, dbias = _bwd_one_side(x, y, scale, bias, labels, g, True)
    dy, _, _ = _bwd_one_side(y, x, scale, bias, labels, g, False)
    return dx, dy, dscale, dbias
