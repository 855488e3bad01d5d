r"""Fused softmax-contrastive kernels. No B×N buffer: tiles of S are recomputed from the features.

Notation (as in the code): X = own rows (B×D), Y = other rows (N×D), s = logit scale,
S = s · X Yᵀ, computed tile by tile with fp32 accumulation.

Forward (`_contrastive_fwd_kernel`), one pass over the tiles gives both statistics:
    row:    m_r[i] = max_j S[i, j],  l_r[i] = Σ_j exp(S[i, j] − m_r[i])     online along j
    column: m_c[j] = max_i S[i, j],  l_c[j] = Σ_i exp(S[i, j] − m_c[j])     online along i
    lse = m + log l. The pair (m, log l) is kept instead of the single fp32 lse: at s = 100 the
    lse is ~100 and its rounding (~4e-6) would otherwise become the relative error of every P.
The (row_splits × col_splits) grid splits both axes. A program keeps running row statistics in
registers for its row block and read-modify-writes the column statistics of its own row split
(no atomics, deterministic). The launcher merges the splits with a logsumexp over O(B + N) floats.

Backward (`_contrastive_bwd_kernel`). Given upstream gradients g_r = ∂L/∂lse_r, g_c = ∂L/∂lse_c:
    P_r = exp((S − m_r) − log l_r),  P_c = exp((S − m_c) − log l_c)
    dS  = g_r[:, None] · P_r + g_c[None, :] · P_c
    dX  = s · dS Y,   dY = s · dSᵀ X,   ds = Σ_ij dS ⊙ (X Yᵀ)
The expression is symmetric under (X, lse_r, g_r) ↔ (Y, lse_c, g_c), so one kernel computes dX
and, called with the roles swapped (TRANSPOSED), dY. The transposed call still forms each tile as
X·Yᵀ in the forward's operand order: a recomputed S that differs from the forward's in the last
bit would make P inconsistent with its statistics, which at s = 100 costs ~1e-5 relative error. Each program owns a row block and a BLOCK_D slice of the
output and walks all column blocks, recomputing S; ds is accumulated by the D-slice-0 programs of
the first call only (WITH_DSCALE).

The label terms (−S[i, y_i], ½ weights, means) are not in the kernels: see ops/base.
"""
import triton
import triton.language as tl

from ..base.triton_tiles import (col_stats_merge, load_block, row_stats_update, split_ranges, store_block,
                                 tile_dot)


@triton.jit
def _contrastive_fwd_kernel(
    x_ptr, y_ptr, scale_ptr, row_m_part_ptr, row_l_part_ptr, col_m_part_ptr, col_l_part_ptr,
    M, N, D, stride_x, stride_y, row_blocks_per_split, col_blocks_per_split,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    INTERPRETED: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    scale = tl.load(scale_ptr).to(tl.float32)
    rb_start, rb_end, cb_start, cb_end = split_ranges(M, N, row_blocks_per_split, col_blocks_per_split,
                                                      BLOCK_M, BLOCK_N)
    for rb in range(rb_start, rb_end):
        offs_m = rb * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        for cb in range(cb_start, cb_end):
            offs_n = cb * BLOCK_N + tl.arange(0, BLOCK_N)
            mask_n = offs_n < N
            s = scale * tile_dot(x_ptr, y_ptr, offs_m, offs_n, mask_m, mask_n, D, stride_x, stride_y,
                                 BLOCK_M, BLOCK_N, BLOCK_K, INTERPRETED, PRECISION)
            m_i, l_i = row_stats_update(m_i, l_i, s, mask_n)
            col_stats_merge(col_m_part_ptr + pid_r * N, col_l_part_ptr + pid_r * N, s, offs_n, mask_m, mask_n)
        tl.store(row_m_part_ptr + pid_c * M + offs_m, m_i, mask=mask_m)
        tl.store(row_l_part_ptr + pid_c * M + offs_m, l_i, mask=mask_m)


@triton.jit
def _contrastive_bwd_kernel(
    x_ptr, y_ptr, scale_ptr, m_x_ptr, logl_x_ptr, g_x_ptr, m_y_ptr, logl_y_ptr, g_y_ptr,
    dx_ptr, dscale_part_ptr,
    M, N, D, stride_x, stride_y, stride_dx,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    INTERPRETED: tl.constexpr, PRECISION: tl.constexpr, WITH_DSCALE: tl.constexpr, TRANSPOSED: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    scale = tl.load(scale_ptr).to(tl.float32)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    m_x = tl.load(m_x_ptr + offs_m, mask=mask_m, other=0.0)
    logl_x = tl.load(logl_x_ptr + offs_m, mask=mask_m, other=0.0)
    g_x = tl.load(g_x_ptr + offs_m, mask=mask_m, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    ds_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for cb in range(0, tl.cdiv(N, BLOCK_N)):
        offs_n = cb * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        if TRANSPOSED:  # same operand order as the forward, so S matches its statistics bit for bit
            raw = tl.trans(tile_dot(y_ptr, x_ptr, offs_n, offs_m, mask_n, mask_m, D, stride_y, stride_x,
                                    BLOCK_N, BLOCK_M, BLOCK_K, INTERPRETED, PRECISION))
        else:
            raw = tile_dot(x_ptr, y_ptr, offs_m, offs_n, mask_m, mask_n, D, stride_x, stride_y,
                           BLOCK_M, BLOCK_N, BLOCK_K, INTERPRETED, PRECISION)
        s = scale * raw
        m_y = tl.load(m_y_ptr + offs_n, mask=mask_n, other=0.0)
        logl_y = tl.load(logl_y_ptr + offs_n, mask=mask_n, other=0.0)
        g_y = tl.load(g_y_ptr + offs_n, mask=mask_n, other=0.0)
        p_x = tl.exp((s - m_x[:, None]) - logl_x[:, None])
        p_y = tl.exp((s - m_y[None, :]) - logl_y[None, :])
        ds = g_x[:, None] * p_x + g_y[None, :] * p_y
        ds = tl.where(mask_m[:, None] & mask_n[None, :], ds, 0.0)
        if WITH_DSCALE:
            ds_acc += tl.sum(ds * raw, axis=1)
        y_d = load_block(y_ptr, offs_n, offs_d, mask_n, mask_d, stride_y, INTERPRETED)
        acc = tl.dot(ds.to(y_d.dtype), y_d, acc, input_precision=PRECISION)
    store_block(dx_ptr, acc * scale, offs_m, offs_d, mask_m, mask_d, stride_dx)
    if WITH_DSCALE:
        if pid_d == 0:
            tl.store(dscale_part_ptr + pid_m, tl.sum(ds_acc, axis=0))
