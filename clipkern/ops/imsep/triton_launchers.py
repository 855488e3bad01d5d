"""Launchers for the IMSep kernels. They allocate their outputs and never write into inputs.

Per IMSep term fwd+bwd (one workspace chunk): forward = tile kernel + finish kernel + one sum;
backward = E kernel + one cuBLAS GEMM + one sum. No host synchronisation.
"""
import torch

from ..base import chunked_input_grads, contiguous_rows, new_output, tile_config
from .triton_kernels import _imsep_ds_kernel, _imsep_finish_kernel, _imsep_fwd_kernel

FINISH_BLOCK = 256


def _config(x):
    return tile_config(x.shape[0], x.shape[0], x.shape[1], x.device, x.dtype, dots_per_tile=2)


def imsep_loss_fwd(x, u_hat, diag, scale):
    """(loss, row_max, row_logsum, col_max, col_logsum): the mean IMSep loss of one modality and the
    row and column (max, log-sum) of its logits M (symmetric), all fp32."""
    x, u_hat = contiguous_rows(x), contiguous_rows(u_hat)
    (B, D), K = x.shape, u_hat.shape[1]
    cfg = _config(x)
    (row_splits, col_splits), rows_per, cols_per = cfg.split_grid(B, B)
    f32 = torch.float32
    row_m_part, row_l_part = new_output((col_splits, B), x, f32), new_output((col_splits, B), x, f32)
    col_m_part, col_l_part = new_output((row_splits, B), x, f32), new_output((row_splits, B), x, f32)
    _imsep_fwd_kernel[(row_splits, col_splits)](
        x, u_hat, diag, scale, row_m_part, row_l_part, col_m_part, col_l_part,
        B, D, K, x.stride(0), u_hat.stride(0), rows_per, cols_per, **cfg.kernel_args(x.dtype))
    stats = [new_output((B,), x, f32) for _ in range(4)]
    blocks = -(-B // FINISH_BLOCK)
    loss_part = new_output((blocks,), x, f32)
    _imsep_finish_kernel[(blocks,)](
        row_m_part, row_l_part, col_m_part, col_l_part, diag, scale, *stats, loss_part,
        B, row_splits, col_splits, BLOCK=FINISH_BLOCK)
    return (loss_part.sum(), *stats)


def imsep_loss_bwd(x, u_hat, diag, scale, row_m, row_logl, col_m, col_logl, g):
    """(dX, ∂L/∂diag, ∂L/∂scale) given the loss's upstream gradient g (0-d)."""
    x, u_hat = contiguous_rows(x), contiguous_rows(u_hat)
    (B, D), K = x.shape, u_hat.shape[1]
    cfg = _config(x)
    tile = cfg.ds.rows
    assert cfg.ds.cols == tile, "the E kernel finds the diagonal on square tiles"
    grid = cfg.ds_grid(B, B)
    dscale_part = new_output((grid[0] * grid[1],), x, torch.float32)
    ddiag = new_output((B,), x, torch.float32)
    # the forward's K step: R and W accumulate in the same order, so the recomputed logits equal the
    # forward's bit for bit (a different BLOCK_K costs ~10x the gradient error at s = 100, fp32)
    args = dict(cfg.kernel_args(x.dtype, ds=True), BLOCK_K=cfg.fwd.k)

    def fill_ds(ws, r0, r1):
        assert r0 % tile == 0  # workspace_rows gives tile-aligned chunks; the diagonal test needs them
        _imsep_ds_kernel[cfg.ds_grid(r1 - r0, B)](
            x, u_hat, diag, scale, g, row_m, row_logl, col_m, col_logl, ws, ddiag, dscale_part,
            r0, r1, B, D, K, x.stride(0), u_hat.stride(0), ws.stride(0), **args)

    dx, _ = chunked_input_grads(x, x, fill_ds, tile, symmetric_x=True)
    return dx, ddiag, dscale_part.sum()
