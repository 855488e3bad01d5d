r"""Fused intra-modality separation (AlignCLIP IMSep) kernels. No B×B buffer in the forward; the
backward's E lives in a bounded row-chunk workspace.

Notation: X = this modality's features (B×D), Û = normalised semantic features (B×K, a constant),
s = scale, d[i] = X_i · Y_i (the cross-modal positive, fp32, computed by the caller), and per tile
    R = X Xᵀ,  W = 1 − Û Ûᵀ,  V = R ⊙ W off the diagonal,  V[i, i] = d[i],   M = s · V
(fp32 accumulation; V = R·W is one rounded fp32 product). M is symmetric.
    loss = (1/B) Σ_i [lse_i(M) − s·d[i]]
Every exponent of M is formed as fma(V, s, −m): one rounding, the same in the forward and the
backward (the compiler cannot contract s·V − m differently in the two). The backward launches its
E kernel with the forward's BLOCK_K, so R and W accumulate in the same order and the recomputed V
equals the forward's bit for bit: P is consistent with the forward's statistics (a different K step
costs ~10× the fp32 gradient error at s = 100). The max is that of the rounded products s·V (base.scaled_max).

Forward (`_imsep_fwd_kernel`): the (row_splits × col_splits) grid walks each program's rectangle of
tiles, both dot products per tile (2B²D + 2B²K FLOPs), the diagonal overridden by d, and keeps
online row statistics (max m, Σ exp) in registers and, from the same row exps (one exp per logit,
`col_stats_from_row_exps`; an exact per-element pass only for a tile where a column's sum would fall
below COL_SUM_FLOOR), column statistics in the partials of its row split (first visit stores, later
visits merge: no initialisation, no atomics, deterministic). Because M = Mᵀ both describe the same softmax.
`_imsep_finish_kernel` merges the split partials into (m, log l) per row and column and writes one
partial loss per program, Σ_i ((m_r − s·d) + log l_r)[i] / B (the launcher sums them).

Backward, given the upstream g of the loss (g_i = g/B for every row):
`_imsep_ds_kernel`, one program per (row tile, column tile) of a row chunk, recomputes R and W of
its tile once (2B²D + 2B²K FLOPs over the whole backward) and writes, in the feature dtype,
    P[i, j] = exp(fma(V, s, −m_r[i]) − log l_r[i]),   P[j, i] = exp(fma(V, s, −m_c[j]) − log l_c[j])
    E[i, j] = s · W[i, j] · (g_i P[i, j] + g_j P[j, i])   for i ≠ j,   0 on the diagonal
P[j, i] comes from the column statistics of the same tile orientation, so P is exactly consistent
with its statistics (M symmetric: column j's statistics are row j's). Each program also writes one
fp32 partial of ∂L/∂s (summed by the launcher):
    Σ_{i≠j} g_i P[i, j] V[i, j]  +  (tile holding the diagonal)  Σ_i g_i (P[i, i] − 1) d[i]
and the diagonal tile writes ∂L/∂d[i] = s · g_i · (P[i, i] − 1) (autograd carries it to X and Y).
Then dX = E X (X sits on both sides of R, hence both terms; E is symmetric) is one cuBLAS GEMM per
chunk (2B²D FLOPs; ops/base.chunked_input_grads). The workspace holds chunk × B elements of the
feature dtype, chunk rows a multiple of the E tile within the budget of ops/base.workspace_rows
(CLIPKERN_WORKSPACE_MB or its default); its row offsets are 64-bit. Whole loss: 6B²D + 4B²K FLOPs
(fwd 2B²(D+K), bwd 2B²(D+K) + 2B²D), 2 + 1 kernels and one GEMM per chunk.
Û is constant: no gradient.
"""
import triton
import triton.language as tl

from ..base.triton_tiles import (col_partials_store_or_merge, col_stats_from_row_exps, ds_tile, merge_splits,
                                 scaled_max, split_ranges, store_ds_tile, tile_dot)


@triton.jit
def _imsep_products(x_ptr, u_ptr, offs_m, offs_n, mask_m, mask_n, D, K, stride_x, stride_u,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    INTERPRETED: tl.constexpr, PRECISION: tl.constexpr):
    """(V = R ⊙ W, W) of a tile, off-diagonal values everywhere (the caller overrides the diagonal)."""
    r = tile_dot(x_ptr, x_ptr, offs_m, offs_n, mask_m, mask_n, D, stride_x, stride_x,
                 BLOCK_M, BLOCK_N, BLOCK_K, INTERPRETED, PRECISION)
    w = 1.0 - tile_dot(u_ptr, u_ptr, offs_m, offs_n, mask_m, mask_n, K, stride_u, stride_u,
                       BLOCK_M, BLOCK_N, BLOCK_K, INTERPRETED, PRECISION)
    return r * w, w


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
        d_m = tl.load(diag_ptr + offs_m, mask=mask_m, other=0.0)
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        for cb in range(cb_start, cb_end):
            offs_n = cb * BLOCK_N + tl.arange(0, BLOCK_N)
            mask_n = offs_n < B
            v, _ = _imsep_products(x_ptr, u_ptr, offs_m, offs_n, mask_m, mask_n, D, K, stride_x, stride_u,
                                   BLOCK_M, BLOCK_N, BLOCK_K, INTERPRETED, PRECISION)
            v = tl.where(offs_m[:, None] == offs_n[None, :], d_m[:, None], v)
            m_new = tl.maximum(m_i, scaled_max(v, scale, mask_n[None, :], 1))
            p = tl.exp(tl.fma(v, scale, -m_new[:, None]))
            l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.where(mask_n[None, :], p, 0.0), axis=1)
            m_i = m_new
            t_m, t_l = col_stats_from_row_exps(p, m_new, v, scale, mask_m, mask_n)  # one exp per logit
            col_partials_store_or_merge(col_m_part_ptr + pid_r * B, col_l_part_ptr + pid_r * B, t_m, t_l, offs_n,
                                        mask_n, rb == rb_start)
        tl.store(row_m_part_ptr + pid_c * B + offs_m, m_i, mask=mask_m)
        tl.store(row_l_part_ptr + pid_c * B + offs_m, l_i, mask=mask_m)


@triton.jit
def _imsep_finish_kernel(
    row_m_part_ptr, row_l_part_ptr, col_m_part_ptr, col_l_part_ptr, diag_ptr, scale_ptr,
    row_m_ptr, row_logl_ptr, col_m_ptr, col_logl_ptr, loss_part_ptr,
    B, row_splits, col_splits,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < B
    scale = tl.load(scale_ptr).to(tl.float32)
    m_r, logl_r = merge_splits(row_m_part_ptr, row_l_part_ptr, offs, mask, B, col_splits, BLOCK)
    m_c, logl_c = merge_splits(col_m_part_ptr, col_l_part_ptr, offs, mask, B, row_splits, BLOCK)
    tl.store(row_m_ptr + offs, m_r, mask=mask)
    tl.store(row_logl_ptr + offs, logl_r, mask=mask)
    tl.store(col_m_ptr + offs, m_c, mask=mask)
    tl.store(col_logl_ptr + offs, logl_c, mask=mask)
    d = tl.load(diag_ptr + offs, mask=mask, other=0.0)
    pos = d * scale
    tl.store(loss_part_ptr + pid, tl.sum(tl.where(mask, (m_r - pos) + logl_r, 0.0), axis=0) / B)


@triton.jit
def _imsep_ds_kernel(
    x_ptr, u_ptr, diag_ptr, scale_ptr, g_ptr, row_m_ptr, row_logl_ptr, col_m_ptr, col_logl_ptr,
    ds_ptr, ddiag_ptr, dscale_part_ptr,
    row0, row_end, B, D, K, stride_x, stride_u, stride_ds,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    INTERPRETED: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    scale = tl.load(scale_ptr).to(tl.float32)
    g = tl.load(g_ptr).to(tl.float32) / B  # g_i: the loss is a mean over the rows
    tile_row = row0 + pid_m * BLOCK_M
    offs_m, offs_n, mask_m, mask_n = ds_tile(row0, row_end, B, BLOCK_M, BLOCK_N)
    v, w = _imsep_products(x_ptr, u_ptr, offs_m, offs_n, mask_m, mask_n, D, K, stride_x, stride_u,
                           BLOCK_M, BLOCK_N, BLOCK_K, INTERPRETED, PRECISION)
    m_r = tl.load(row_m_ptr + offs_m, mask=mask_m, other=0.0)
    logl_r = tl.load(row_logl_ptr + offs_m, mask=mask_m, other=0.0)
    m_c = tl.load(col_m_ptr + offs_n, mask=mask_n, other=0.0)
    logl_c = tl.load(col_logl_ptr + offs_n, mask=mask_n, other=0.0)
    gp_r = g * tl.exp(tl.fma(v, scale, -m_r[:, None]) - logl_r[:, None])
    gp_c = g * tl.exp(tl.fma(v, scale, -m_c[None, :]) - logl_c[None, :])
    valid = mask_m[:, None] & mask_n[None, :]
    off = (offs_m[:, None] != offs_n[None, :]) & valid
    part = tl.sum(tl.sum(tl.where(off, gp_r * v, 0.0), axis=1), axis=0)
    e = tl.where(off, (scale * w) * (gp_r + gp_c), 0.0)
    store_ds_tile(ds_ptr, e, offs_m, offs_n, row0, valid, stride_ds)
    if tile_row == pid_n * BLOCK_N:  # the tile holding these rows' diagonal (chunks are tile-aligned)
        d = tl.load(diag_ptr + offs_m, mask=mask_m, other=0.0)
        gp_d = g * (tl.exp(tl.fma(d, scale, -m_r) - logl_r) - 1.0)
        tl.store(ddiag_ptr + offs_m, scale * gp_d, mask=mask_m)
        part += tl.sum(tl.where(mask_m, gp_d * d, 0.0), axis=0)
    tl.store(dscale_part_ptr + (row0 // BLOCK_M + pid_m) * tl.num_programs(1) + pid_n, part)
