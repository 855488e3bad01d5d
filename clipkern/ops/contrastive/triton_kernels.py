r"""Fused softmax-contrastive kernels. No B×N buffer in the forward; the backward's dS lives in a
bounded row-chunk workspace.

Notation (as in the code): X = own rows (M×D), Y = other rows (N×D), s = logit scale,
raw = X Yᵀ (fp32 accumulation), S = s·raw. Every kernel forms an exponent of S as
fma(raw, s, −m): one rounding, the same in the forward and the backward, so P in the backward is
consistent with the statistics of the forward bit for bit in the product (row direction; the
column direction reuses the row exps, see below).

Forward (`_contrastive_fwd_kernel`), one pass over the tiles gives both statistics:
    row:    m_r[i] = max_j S[i, j],  l_r[i] = Σ_j exp(S[i, j] − m_r[i])     online along j
    column: m_c[j] ≥ max_i S[i, j],  l_c[j] = Σ_i exp(S[i, j] − m_c[j])     online along i
    One exp per logit: a tile's column sums reuse the row exps p = exp(S − m_r) as Σ_i p_ij·exp(m_r[i] − t)
    with one reference t = max_i m_r per tile (its m_c partial is t), and fall back to exp(S − max_i S)
    per element for a tile where a column's sum would fall below COL_SUM_FLOOR (base/triton_tiles.py).
    positive: S[i, y_i], picked out of the tile that holds column y_i (no separate dot product).
    lse = m + log l; the pair (m, log l) is kept rather than one fp32 lse (at s = 100 the lse is ~100
    and its rounding would become the relative error of every P). COLS=False (rows-only loss)
    compiles the column statistics out. The (row_splits × col_splits) grid splits both axes; a program
    keeps running row statistics in registers and owns the column partials of its row split (the first
    visit stores, later visits merge: no initialisation, no atomics, deterministic).
    MOMENT=True (the lse op with moment, used by the distributed loss) also accumulates per column
    w_c[j] = Σ_i exp(S[i, j] − m_c[j])·raw[i, j] alongside l_c (same weights, no extra exp); the finish
    kernel writes e[j] = w_c / l_c = Σ_i P_c[i, j]·raw[i, j] = ∂(m_c + log l_c)[j]/∂scale.
    `_contrastive_finish_kernel` merges the split partials into (m, log l) per row and column and
    writes one partial loss per program (the launcher sums them):
        loss = w_r Σ_i (m_r − S[i,y_i] + log l_r)[i] + w_c Σ_j cnt_j (m_c + log l_c)[j] − w_c Σ_i S[i,y_i]
    with w_r = 1/(2M) (symmetric) or 1/M (rows only), w_c = 1/(2M), cnt_j = #{i: y_i = j}; without
    explicit labels (y_i = i) the column term is paired per index, (m_c − S[j,j] + log l_c)[j].

Backward (`_contrastive_ds_kernel`), one program per (row tile, column tile) of a row chunk, each
S tile recomputed exactly once (2·M·N·D MMA FLOPs, 2 exps per logit, 1 rows-only):
    P_r = exp(S − m_r − log l_r),   P_c = exp(S − m_c − log l_c)
    dS  = g_r[:, None] P_r + g_c[None, :] P_c − g_pos [j = y_i]
    ws  = s · dS   (stored in the feature dtype),   ds_part = Σ_tile dS ⊙ raw
with either upstream vectors g_r = ∂L/∂lse_r, g_c = ∂L/∂lse_c (the lse op; G_VECTOR) or the fused
loss's scalar g: g_r = g·w_r, g_c = g·w_c·cnt_j, g_pos = g/M. Then dX = ws·Y and dY = wsᵀ·X are two
cuBLAS GEMMs (4·M·N·D FLOPs; ops/base.chunked_input_grads). Workspace offsets are 64-bit.
"""
import triton
import triton.language as tl

from ..base.triton_tiles import (col_moment_store_or_merge, col_partials_store_or_merge, col_stats_from_row_exps,
                                 col_stats_with_moment, ds_tile, merge_moment, merge_splits, scaled_max,
                                 split_ranges, store_ds_tile, tile_dot)


@triton.jit
def _contrastive_fwd_kernel(
    x_ptr, y_ptr, scale_ptr, labels_ptr, pos_ptr, row_m_part_ptr, row_l_part_ptr, col_m_part_ptr, col_l_part_ptr,
    col_w_part_ptr, M, N, D, stride_x, stride_y, row_blocks_per_split, col_blocks_per_split,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    INTERPRETED: tl.constexpr, PRECISION: tl.constexpr, COLS: tl.constexpr, HAS_LABELS: tl.constexpr,
    MOMENT: tl.constexpr = False,
):
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    scale = tl.load(scale_ptr).to(tl.float32)
    rb_start, rb_end, cb_start, cb_end = split_ranges(M, N, row_blocks_per_split, col_blocks_per_split,
                                                      BLOCK_M, BLOCK_N)
    for rb in range(rb_start, rb_end):
        offs_m = rb * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        if HAS_LABELS:
            lab = tl.load(labels_ptr + offs_m, mask=mask_m, other=-1)
        else:
            lab = offs_m
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        for cb in range(cb_start, cb_end):
            offs_n = cb * BLOCK_N + tl.arange(0, BLOCK_N)
            mask_n = offs_n < N
            raw = tile_dot(x_ptr, y_ptr, offs_m, offs_n, mask_m, mask_n, D, stride_x, stride_y,
                           BLOCK_M, BLOCK_N, BLOCK_K, INTERPRETED, PRECISION)
            # row statistics: max of the rounded s·raw, exponents as fma(raw, s, −m)
            m_new = tl.maximum(m_i, scaled_max(raw, scale, mask_n[None, :], 1))
            p = tl.exp(tl.fma(raw, scale, -m_new[:, None]))
            l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.where(mask_n[None, :], p, 0.0), axis=1)
            m_i = m_new
            if COLS and MOMENT:  # also Σ_i exp(S − m_c)·raw per column (the distributed scale routing)
                t_m, t_l, t_w = col_stats_with_moment(p, m_new, raw, scale, mask_m, mask_n)
                col_moment_store_or_merge(col_m_part_ptr + pid_r * N, col_l_part_ptr + pid_r * N,
                                          col_w_part_ptr + pid_r * N, t_m, t_l, t_w, offs_n, mask_n, rb == rb_start)
            elif COLS:  # from the row exps p: one exp per logit in the forward (see col_stats_from_row_exps)
                t_m, t_l = col_stats_from_row_exps(p, m_new, raw, scale, mask_m, mask_n)
                col_partials_store_or_merge(col_m_part_ptr + pid_r * N, col_l_part_ptr + pid_r * N, t_m, t_l,
                                            offs_n, mask_n, rb == rb_start)
            # the positive S[i, y_i] lives in exactly one column tile
            hit = offs_n[None, :] == lab[:, None]
            in_tile = mask_m & (lab >= cb * BLOCK_N) & (lab < cb * BLOCK_N + BLOCK_N)
            tl.store(pos_ptr + offs_m, tl.sum(tl.where(hit, raw, 0.0), axis=1) * scale, mask=in_tile)
        tl.store(row_m_part_ptr + pid_c * M + offs_m, m_i, mask=mask_m)
        tl.store(row_l_part_ptr + pid_c * M + offs_m, l_i, mask=mask_m)


@triton.jit
def _contrastive_finish_kernel(
    row_m_part_ptr, row_l_part_ptr, col_m_part_ptr, col_l_part_ptr, pos_ptr, count_ptr,
    row_m_ptr, row_logl_ptr, col_m_ptr, col_logl_ptr, loss_part_ptr, col_w_part_ptr, col_moment_ptr,
    M, N, row_splits, col_splits, w_row, w_col,
    BLOCK: tl.constexpr,
    COLS: tl.constexpr, HAS_LABELS: tl.constexpr, MOMENT: tl.constexpr = False,
):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    rows = offs < M
    m_r, logl_r = merge_splits(row_m_part_ptr, row_l_part_ptr, offs, rows, M, col_splits, BLOCK)
    tl.store(row_m_ptr + offs, m_r, mask=rows)
    tl.store(row_logl_ptr + offs, logl_r, mask=rows)
    pos = tl.load(pos_ptr + offs, mask=rows, other=0.0)
    total = tl.sum(tl.where(rows, w_row * ((m_r - pos) + logl_r), 0.0), axis=0)
    if COLS:
        cols = offs < N
        m_c, logl_c = merge_splits(col_m_part_ptr, col_l_part_ptr, offs, cols, N, row_splits, BLOCK)
        tl.store(col_m_ptr + offs, m_c, mask=cols)
        tl.store(col_logl_ptr + offs, logl_c, mask=cols)
        if MOMENT:
            tl.store(col_moment_ptr + offs, merge_moment(col_m_part_ptr, col_l_part_ptr, col_w_part_ptr, m_c, offs,
                                                         cols, N, row_splits, BLOCK), mask=cols)
        if HAS_LABELS:
            cnt = tl.load(count_ptr + offs, mask=cols, other=0).to(tl.float32)
            col_term = cnt * tl.where(cnt > 0, m_c + logl_c, 0.0)
            total += tl.sum(w_col * col_term, axis=0) - tl.sum(tl.where(rows, w_col * pos, 0.0), axis=0)
        else:  # y_i = i: column i pairs with row i
            total += tl.sum(tl.where(rows & cols, w_col * ((m_c - pos) + logl_c), 0.0), axis=0)
    tl.store(loss_part_ptr + pid, total)


@triton.jit
def _contrastive_ds_kernel(
    x_ptr, y_ptr, scale_ptr, g_row_ptr, g_col_ptr, labels_ptr, count_ptr,
    row_m_ptr, row_logl_ptr, col_m_ptr, col_logl_ptr, ds_ptr, dscale_part_ptr,
    row0, row_end, M, N, D, stride_x, stride_y, stride_ds, w_row, w_col, w_pos,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    INTERPRETED: tl.constexpr, PRECISION: tl.constexpr,
    COLS: tl.constexpr, G_VECTOR: tl.constexpr, HAS_LABELS: tl.constexpr,
):
    scale = tl.load(scale_ptr).to(tl.float32)
    offs_m, offs_n, mask_m, mask_n = ds_tile(row0, row_end, N, BLOCK_M, BLOCK_N)
    raw = tile_dot(x_ptr, y_ptr, offs_m, offs_n, mask_m, mask_n, D, stride_x, stride_y,
                   BLOCK_M, BLOCK_N, BLOCK_K, INTERPRETED, PRECISION)
    m_r = tl.load(row_m_ptr + offs_m, mask=mask_m, other=0.0)
    logl_r = tl.load(row_logl_ptr + offs_m, mask=mask_m, other=0.0)
    if G_VECTOR:
        g_r = tl.load(g_row_ptr + offs_m, mask=mask_m, other=0.0)
    else:
        g = tl.load(g_row_ptr).to(tl.float32)
        g_r = tl.where(mask_m, g * w_row, 0.0)
    ds = g_r[:, None] * tl.exp(tl.fma(raw, scale, -m_r[:, None]) - logl_r[:, None])
    if COLS:
        m_c = tl.load(col_m_ptr + offs_n, mask=mask_n, other=0.0)
        logl_c = tl.load(col_logl_ptr + offs_n, mask=mask_n, other=0.0)
        if G_VECTOR:
            g_c = tl.load(g_col_ptr + offs_n, mask=mask_n, other=0.0)
        elif HAS_LABELS:
            g_c = g * w_col * tl.load(count_ptr + offs_n, mask=mask_n, other=0).to(tl.float32)
        else:
            g_c = tl.where(offs_n < M, g * w_col, 0.0)
        ds += g_c[None, :] * tl.exp(tl.fma(raw, scale, -m_c[None, :]) - logl_c[None, :])
    if not G_VECTOR:
        if HAS_LABELS:
            lab = tl.load(labels_ptr + offs_m, mask=mask_m, other=-1)
        else:
            lab = offs_m
        ds -= tl.where(offs_n[None, :] == lab[:, None], g * w_pos, 0.0)
    ds = tl.where(mask_m[:, None] & mask_n[None, :], ds, 0.0)
    tl.store(dscale_part_ptr + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1), tl.sum(tl.sum(ds * raw, axis=1), axis=0))
    store_ds_tile(ds_ptr, ds * scale, offs_m, offs_n, row0, mask_m[:, None] & mask_n[None, :], stride_ds)
