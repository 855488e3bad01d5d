"""Launchers for the sigmoid kernels. They allocate their outputs and never write into inputs.

Per SigLIP fwd+bwd (one workspace chunk): forward = one kernel + one sum; backward = dS kernel +
two cuBLAS GEMMs + one sum (a further dY accumulation per extra chunk).
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
    """(dX, dY, [dscale, dbias]) of the mean loss given its scalar upstream gradient g (fp32 0-d): each
    S tile recomputed once by the dS kernel, then two cuBLAS GEMMs. dscale and dbias come as one fp32
    (2,) tensor, one sum over the per-program partials (row 0: Σ dL·raw, row 1: Σ dL); no host sync."""
    x, y = contiguous_rows(x), contiguous_rows(y)
    (M, D), N = x.shape, y.shape[0]
    cfg = tile_config(M, N, D, x.device, x.dtype)
    grid = cfg.ds_grid(M, N)
    parts = new_output((2, grid[0] * grid[1]), x, torch.float32)

    def fill_ds(ws, r0, r1):
        slot = cfg.ds_slot(r0, N)
        _sigmoid_ds_kernel[cfg.ds_grid(r1 - r0, N)](
            x, y, scale, scale if bias is None else bias, x if labels is None else labels, g, ws,
            parts[0, slot:], parts[1, slot:],
            r0, r1, N, D, x.stride(0), y.stride(0), ws.stride(0), 1.0 / M,
            HAS_BIAS=bias is not None, HAS_LABELS=labels is not None, **cfg.kernel_args(x.dtype, ds=True))

    dx, dy = chunked_input_grads(x, y, fill_ds, cfg.ds.rows)
    return dx, dy, parts.sum(dim=1)
