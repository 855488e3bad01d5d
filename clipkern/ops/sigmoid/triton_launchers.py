"""Launchers for the sigmoid kernels. They allocate their outputs and never write into inputs.

Per SigLIP fwd+bwd (one workspace chunk): forward = one kernel + one sum; backward = dS kernel +
two cuBLAS GEMMs + two sums.
"""
import torch

from ..base import check_int32_offsets, chunked_input_grads, contiguous_rows, new_output, tile_config
from .triton_kernels import _sigmoid_ds_kernel, _sigmoid_fwd_kernel


def sigmoid_loss_fwd(x, y, scale, bias, labels):
    """−Σ_ij log σ(z_ij L_ij) / M (fp32 0-d) with L = scale·x yᵀ + bias (bias may be None) and
    positives (i, labels[i]) (labels None: (i, i))."""
    x, y = contiguous_rows(x), contiguous_rows(y)
    check_int32_offsets(image_features=x, text_features=y)
    (M, D), N = x.shape, y.shape[0]
    cfg = tile_config(M, N, D, x.device, x.dtype)
    (row_splits, col_splits), rows_per, cols_per = cfg.split_grid(M, N)
    row_part = new_output((col_splits, M), x, torch.float32)
    _sigmoid_fwd_kernel[(row_splits, col_splits)](
        x, y, scale, scale if bias is None else bias, x if labels is None else labels, row_part,
        M, N, D, x.stride(0), y.stride(0), rows_per, cols_per, 1.0 / M,
        HAS_BIAS=bias is not None, HAS_LABELS=labels is not None, **cfg.kernel_args(x.dtype))
    return row_part.sum()


def sigmoid_loss_bwd(x, y, scale, bias, labels, g):
    """(dX, dY, dscale, dbias) of the mean loss given its scalar upstream gradient g: each S tile
    recomputed once by the dS kernel, then two cuBLAS GEMMs."""
    x, y = contiguous_rows(x), contiguous_rows(y)
    (M, D), N = x.shape, y.shape[0]
    cfg = tile_config(M, N, D, x.device, x.dtype)
    tile = cfg.ds.tile
    grid_n = -(-N // tile)
    slots = -(-M // tile) * grid_n
    dscale_part = new_output((slots,), x, torch.float32)
    dbias_part = new_output((slots,), x, torch.float32)
    g = g.float().reshape(1)

    def fill_ds(ws, r0, r1):
        _sigmoid_ds_kernel[cfg.ds_grid(r1 - r0, N)](
            x, y, scale, scale if bias is None else bias, x if labels is None else labels, g, ws,
            dscale_part[(r0 // tile) * grid_n:], dbias_part[(r0 // tile) * grid_n:],
            r0, r1, N, D, x.stride(0), y.stride(0), ws.stride(0), 1.0 / M,
            HAS_BIAS=bias is not None, HAS_LABELS=labels is not None, **cfg.kernel_args(x.dtype, ds=True))

    dx, dy = chunked_input_grads(x, y, fill_ds, tile)
    return dx, dy, dscale_part.sum(), dbias_part.sum()
