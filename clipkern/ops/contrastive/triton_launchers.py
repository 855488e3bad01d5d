"""Launchers for the contrastive kernels. They allocate their outputs and never write into inputs.

Per fused CLIP loss fwd+bwd (one workspace chunk): forward = stats kernel + finish kernel + one sum;
backward = dS kernel + two cuBLAS GEMMs + one sum (+ a bincount with explicit labels).
"""
import torch

from ..base import check_int32_offsets, chunked_input_grads, contiguous_rows, new_output, tile_config
from .triton_kernels import _contrastive_ds_kernel, _contrastive_finish_kernel, _contrastive_fwd_kernel

FINISH_BLOCK = 256


def _forward(x, y, scale, labels, cols: bool, moment: bool = False):
    """The split grid, the row and column partials (row_m, row_l, col_m, col_l, col_w) and the
    positives of the fused forward; col_* are empty when cols is False, col_w unless moment."""
    (M, D), N = x.shape, y.shape[0]
    cfg = tile_config(M, N, D, x.device, x.dtype, col_moment=cols and moment)
    (row_splits, col_splits), rows_per, cols_per = cfg.split_grid(M, N)
    f32 = torch.float32
    has_labels = labels is not None
    row_m_part = new_output((col_splits, M), x, f32)
    row_l_part = new_output((col_splits, M), x, f32)
    col_m_part = new_output((row_splits, N) if cols else (0,), x, f32)
    col_l_part = new_output((row_splits, N) if cols else (0,), x, f32)
    col_w_part = new_output((row_splits, N) if cols and moment else (0,), x, f32)
    pos = new_output((M,), x, f32)
    lab = labels if has_labels else pos  # unused pointer when labels are implicit
    _contrastive_fwd_kernel[(row_splits, col_splits)](
        x, y, scale, lab, pos, row_m_part, row_l_part, col_m_part, col_l_part, col_w_part,
        M, N, D, x.stride(0), y.stride(0), rows_per, cols_per,
        COLS=cols, HAS_LABELS=has_labels, MOMENT=cols and moment, **cfg.kernel_args(x.dtype))
    return cfg, (row_splits, col_splits), (row_m_part, row_l_part, col_m_part, col_l_part), col_w_part, pos


def weights(M: int, symmetric: bool):
    """(w_row, w_col, w_pos): the loss's weights on Σ row lse, Σ count·col lse and Σ positives."""
    return (0.5 / M, 0.5 / M, 1.0 / M) if symmetric else (1.0 / M, 0.0, 1.0 / M)


def clip_loss_fwd(x, y, scale, labels, symmetric: bool, moment: bool = False):
    """Fused mean contrastive loss of S = scale · x yᵀ with positives (i, labels[i]) (labels None:
    (i, i)); symmetric adds the column direction. Returns (loss, row_m, row_logl, col_m, col_logl,
    counts) — the statistics and label counts the backward needs — and, with moment (symmetric
    only), the column moment e = Σ_i P_c[i, j]·raw[i, j] as a seventh output."""
    x, y = contiguous_rows(x), contiguous_rows(y)
    check_int32_offsets(features=x, other_features=y)
    M, N = x.shape[0], y.shape[0]
    counts = (torch.bincount(labels, minlength=N).to(torch.int32) if symmetric and labels is not None
              else x.new_empty((0,), dtype=torch.int32))
    cfg, (row_splits, col_splits), parts, col_w_part, pos = _forward(x, y, scale, labels, symmetric, moment)
    f32 = torch.float32
    row_m, row_logl = new_output((M,), x, f32), new_output((M,), x, f32)
    col_m = new_output((N,) if symmetric else (0,), x, f32)
    col_logl = new_output((N,) if symmetric else (0,), x, f32)
    blocks = -(-max(M, N if symmetric else M) // FINISH_BLOCK)
    loss_part = new_output((blocks,), x, f32)
    col_moment = new_output((N,) if symmetric and moment else (0,), x, f32)
    w_row, w_col, _ = weights(M, symmetric)
    _contrastive_finish_kernel[(blocks,)](
        *parts, pos, counts, row_m, row_logl, col_m, col_logl, loss_part, col_w_part, col_moment,
        M, N, row_splits, col_splits, w_row, w_col,
        BLOCK=FINISH_BLOCK, COLS=symmetric, HAS_LABELS=labels is not None, MOMENT=symmetric and moment)
    out = (loss_part.sum(), row_m, row_logl, col_m, col_logl, counts)
    return out + (col_moment,) if moment else out


def contrastive_fwd(x, y, scale):
    """Row and column (max, log-sum) of S = scale · x yᵀ, in one pass over the tiles (fp32):
    lse = max + logsum. Returns (row_max, row_logsum, col_max, col_logsum)."""
    _, row_m, row_logl, col_m, col_logl, _ = clip_loss_fwd(x, y, scale, None, True)
    return row_m, row_logl, col_m, col_logl


def contrastive_fwd_moment(x, y, scale):
    """`contrastive_fwd` plus the column moment e[j] = Σ_i P_c[i, j]·(x yᵀ)[i, j] = ∂ col_lse[j]/∂scale
    from the same pass (no extra exp, no extra MMA)."""
    _, row_m, row_logl, col_m, col_logl, _, col_moment = clip_loss_fwd(x, y, scale, None, True, moment=True)
    return row_m, row_logl, col_m, col_logl, col_moment


def _ds_backward(x, y, scale, stats, g_row, g_col, labels, counts, cols: bool, g_vector: bool, weights3):
    """dX, dY, dscale through the dS kernel (each S tile recomputed once) and two cuBLAS GEMMs."""
    x, y = contiguous_rows(x), contiguous_rows(y)
    (M, D), N = x.shape, y.shape[0]
    cfg = tile_config(M, N, D, x.device, x.dtype)
    grid = cfg.ds_grid(M, N)
    dscale_part = new_output((grid[0] * grid[1],), x, torch.float32)
    row_m, row_logl, col_m, col_logl = stats
    has_labels = labels is not None
    lab = labels if has_labels else row_m
    w_row, w_col, w_pos = weights3

    def fill_ds(ws, r0, r1):
        grid = cfg.ds_grid(r1 - r0, N)
        _contrastive_ds_kernel[grid](
            x, y, scale, g_row, g_col, lab, counts, row_m, row_logl, col_m, col_logl, ws,
            dscale_part[cfg.ds_slot(r0, N):],
            r0, r1, M, N, D, x.stride(0), y.stride(0), ws.stride(0), w_row, w_col, w_pos,
            COLS=cols, G_VECTOR=g_vector, HAS_LABELS=has_labels, **cfg.kernel_args(x.dtype, ds=True))

    dx, dy = chunked_input_grads(x, y, fill_ds, cfg.ds.rows)
    return dx, dy, dscale_part.sum()


def clip_loss_bwd(x, y, scale, labels, row_m, row_logl, col_m, col_logl, counts, g, symmetric: bool):
    """Gradients of the fused loss given the scalar upstream gradient g (a 0-d fp32 tensor)."""
    g = g.float().reshape(1)
    return _ds_backward(x, y, scale, (row_m, row_logl, col_m, col_logl), g, g, labels, counts, symmetric,
                        False, weights(x.shape[0], symmetric))


def contrastive_bwd(x, y, scale, row_m, row_logl, col_m, col_logl, g_row, g_col):
    """Gradients of L(row_lse, col_lse) given g_row = ∂L/∂row_lse, g_col = ∂L/∂col_lse."""
    g_row, g_col = g_row.float().contiguous(), g_col.float().contiguous()
    empty = x.new_empty((0,), dtype=torch.int32)
    return _ds_backward(x, y, scale, (row_m, row_logl, col_m, col_logl), g_row, g_col, None, empty, True,
                        True, (0.0, 0.0, 0.0))
