r"""Fused intra-modality separation (AlignCLIP IMSep) kernels. No B×B buffer.

Notation: X = this modality's features (B×D), Û = normalised semantic features (B×K), s = scale,
d[i] = X_i · Y_i (the cross-modal positive, computed by the caller), and per tile
    R = X Xᵀ,  W = 1 − Û Ûᵀ,   M = s · R ⊙ W off the diagonal,   M[i, i] = s · d[i]
M is symmetric. loss = mean_i [lse_i(M) − s·d[i]].

Forward (`_imsep_fwd_kernel`): one pass over the tiles, both dot products per tile, the diagonal
overridden, online row statistics (max, Σexp) and, from the same tile values, column statistics.
Because M = Mᵀ both describe the same softmax; the backward uses each where it matches the
orientation of the recomputed tile, so P is exactly consistent with its statistics.

Backward (`_imsep_bwd_kernel`), given g = ∂L/∂lse (one per row):
    P[i, j] = exp(M[i, j] − lse_row[i]),  P[j, i] = exp(M[i, j] − lse_col[j])      (M symmetric)
    E[i, j] = s · W[i, j] · (g_i P[i, j] + g_j P[j, i])      for i ≠ j, 0 on the diagonal
    dX = E X      (X sits on both sides of R, hence both terms)
    ds = Σ_{i≠j} g_i P[i, j] R[i, j] W[i, j]   (+ the diagonal part, added by the caller)
The diagonal's gradient ∂L/∂d[i] = s · g_i · P[i, i] and its ds share are O(B) torch ops.
Û is constant: no gradient.
"""
import triton
import triton.language as tl

from ..base.triton_tiles import (col_stats_merge, load_block, row_stats_update, split_ranges, store_block,
                                 tile_dot)


@triton.jit
def _imsep_tile(x_ptr, u_ptr, diag_ptr, scale, offs_m, offs_n, mask_m, mask_n, D, K, stride_x, stride_u,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                INTERPRETED: tl.constexpr, PRECISION: tl.constexpr):
    """Returns (M tile, R tile, W tile, off-diagonal-and-valid mask)."""
    raw = tile_dot(x_ptr, x_ptr, offs_m, offs_n, mask_m, mask_n, D, stride_x, stride_x,
                   BLOCK_M, BLOCK_N, BLOCK_K, INTERPRETED, PRECISION)
    w = 1.0 - tile_dot(u_ptr, u_ptr, offs_m, offs_n, mask_m, mask_n, K, stride_u, stride_u,
                       BLOCK_M, BLOCK_N, BLOCK_K, INTERPRETED, PRECISION)
    diag = tl.load(diag_ptr + offs_m, mask=mask_m, other=0.0)
    on_diag = offs_m[:, None] == offs_n[None, :]
    logits = scale * tl.where(on_diag, diag[:, None], raw * w)
    off = (offs_m[:, None] != offs_n[None, :]) & mask_m[:, None] & mask_n[None, :]
    return logits, raw, w, off


@triton.jit
def _imsep_fwd_kernel(
    x_ptr, u_ptr, diag_ptr, scale_ptr, row_m_part_ptr, row_l_part_ptr, col_m_part_ptr, col_l_part_ptr,
    B, D, K, stride_x, stride_u, row_blocks_per_split, col_blocks_per_split,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    INTERPRETED: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    scale = tl.load(scale_ptr).to(tl.float32)
    rb_start, rb_end, cb_start, cb_end = split_ranges(B, B, row_blocks_per_split, col_blocks_per_split,
                                                      BLOCK_M, BLOCK_N)
    for rb in range(rb_start, rb_end):
        offs_m = rb * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < B
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        for cb in range(cb_start, cb_end):
            offs_n = cb * BLOCK_N + tl.arange(0, BLOCK_N)
            mask_n = offs_n < B
            s, _, _, _ = _imsep_tile(x_ptr, u_ptr, diag_ptr, scale, offs_m, offs_n, mask_m, mask_n, D, K,
                                     stride_x, stride_u, BLOCK_M, BLOCK_N, BLOCK_K, INTERPRETED, PRECISION)
            m_i, l_i = row_stats_update(m_i, l_i, s, mask_n)
            col_stats_merge(col_m_part_ptr + pid_r * B, col_l_part_ptr + pid_r * B, s, offs_n, mask_m, mask_n)
        tl.store(row_m_part_ptr + pid_c * B + offs_m, m_i, mask=mask_m)
        tl.store(row_l_part_ptr + pid_c * B + offs_m, l_i, mask=mask_m)


@triton.jit
def _imsep_bwd_kernel(
    x_ptr, u_ptr, diag_ptr, scale_ptr, row_m_ptr, row_logl_ptr, col_m_ptr, col_logl_ptr, g_ptr,
    dx_ptr, dscale_part_ptr,
    B, D, K, stride_x, stride_u, stride_dx,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    INTERPRETED: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    scale = tl.load(scale_ptr).to(tl.float32)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < B
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    m_i = tl.load(row_m_ptr + offs_m, mask=mask_m, other=0.0)
    logl_i = tl.load(row_logl_ptr + offs_m, mask=mask_m, other=0.0)
    g_i = tl.load(g_ptr + offs_m, mask=mask_m, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    ds_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for cb in range(0, tl.cdiv(B, BLOCK_N)):
        offs_n = cb * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < B
        s, raw, w, off = _imsep_tile(x_ptr, u_ptr, diag_ptr, scale, offs_m, offs_n, mask_m, mask_n, D, K,
                                     stride_x, stride_u, BLOCK_M, BLOCK_N, BLOCK_K, INTERPRETED, PRECISION)
        m_j = tl.load(col_m_ptr + offs_n, mask=mask_n, other=0.0)
        logl_j = tl.load(col_logl_ptr + offs_n, mask=mask_n, other=0.0)
        g_j = tl.load(g_ptr + offs_n, mask=mask_n, other=0.0)
        gp_i = g_i[:, None] * tl.exp((s - m_i[:, None]) - logl_i[:, None])
        gp_j = g_j[None, :] * tl.exp((s - m_j[None, :]) - logl_j[None, :])
        e = tl.where(off, scale * w * (gp_i + gp_j), 0.0)
        if pid_d == 0:
            ds_acc += tl.sum(tl.where(off, gp_i * raw * w, 0.0), axis=1)
        x_d = load_block(x_ptr, offs_n, offs_d, mask_n, mask_d, stride_x, INTERPRETED)
        acc = tl.dot(e.to(x_d.dtype), x_d, acc, input_precision=PRECISION)
    store_block(dx_ptr, acc, offs_m, offs_d, mask_m, mask_d, stride_dx)
    if pid_d == 0:
        tl.store(dscale_part_ptr + pid_m, tl.sum(ds_acc, axis=0))
