"""Triton helpers shared by every family. Import only after deciding to use triton (the
interpreter reads TRITON_INTERPRET when the defining module is first imported).

Naming scheme in every kernel: `x_ptr` for the tiled-over "own" rows, `y_ptr` for the "other"
rows, `offs_*` for index vectors, `mask_*` for their bounds, `stride_*` for row strides (the last
dimension is contiguous; launchers make it so).
"""
import triton
import triton.language as tl


@triton.jit
def tile_dot(x_ptr, y_ptr, offs_x, offs_y, mask_x, mask_y, D, stride_x, stride_y,
             BLOCK_X: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_K: tl.constexpr,
             INTERPRETED: tl.constexpr, PRECISION: tl.constexpr):
    """acc[i, j] = <x[offs_x[i], :], y[offs_y[j], :]> over the full width D, fp32 accumulation.

    INTERPRETED converts each loaded block to fp32 right after the load (the CPU interpreter has no
    bf16); on the GPU 16-bit blocks go to the tensor cores as they are.
    """
    acc = tl.zeros((BLOCK_X, BLOCK_Y), dtype=tl.float32)
    offs_k = tl.arange(0, BLOCK_K)
    for k0 in range(0, D, BLOCK_K):
        kk = k0 + offs_k
        mask_k = kk < D
        x = tl.load(x_ptr + offs_x[:, None] * stride_x + kk[None, :],
                    mask=mask_x[:, None] & mask_k[None, :], other=0.0)
        y = tl.load(y_ptr + offs_y[:, None] * stride_y + kk[None, :],
                    mask=mask_y[:, None] & mask_k[None, :], other=0.0)
        if INTERPRETED:
            x = x.to(tl.float32)
            y = y.to(tl.float32)
        acc = tl.dot(x, tl.trans(y), acc, input_precision=PRECISION)
    return acc


@triton.jit
def split_ranges(M, N, row_blocks_per_split, col_blocks_per_split,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The row-block and column-block ranges of this program's rectangle in a split grid."""
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    rb_end = tl.minimum((pid_r + 1) * row_blocks_per_split, tl.cdiv(M, BLOCK_M))
    cb_end = tl.minimum((pid_c + 1) * col_blocks_per_split, tl.cdiv(N, BLOCK_N))
    return pid_r * row_blocks_per_split, rb_end, pid_c * col_blocks_per_split, cb_end


@triton.jit
def scaled_max(raw, scale, mask, axis: tl.constexpr):
    """max over `axis` of the rounded products scale·raw where `mask`, without forming them: rounding
    is monotone and odd, so it is |scale|·max(±raw) bit for bit (one fewer live tile of registers)."""
    signed = tl.where(scale >= 0, raw, -raw)
    return tl.max(tl.where(mask, signed, float("-inf")), axis=axis) * tl.abs(scale)


# A column partial Σ_i exp(S − t) whose terms are all below this (natural-log −40) may have lost terms
# to flush-to-zero (each lost term < 2^−126, ≤ 128 of them: relative error < 1e−18 above the floor);
# below it the tile's column statistics are recomputed with one exp per element of the column's own max.
COL_SUM_FLOOR = tl.constexpr(4.2e-18)


@triton.jit
def col_weights_from_row_exps(p, m_row, v, scale, mask_m, mask_n):
    """A tile's column statistics from the row-referenced exponentials p = exp(fma(v, scale, −m_row))
    that the row statistics already computed, and the weights behind them: (t_m, t_l, q) with
    q_ij = exp(S_ij − t_m[j]) over valid rows and t_l = Σ_i q_ij. With t = max over valid rows of
    m_row and w_i = exp(m_row[i] − t) ≤ 1, q = p·w and t_m = t: one column reference t per tile, and
    BLOCK_M exps replace BLOCK_M × BLOCK_N. If any valid column's sum falls below COL_SUM_FLOOR (its
    entries all far below t), the tile takes one exp per element of each column's own max instead."""
    t = tl.max(tl.where(mask_m, m_row, float("-inf")), axis=0)
    w = tl.where(mask_m, tl.exp(m_row - t), 0.0)
    q = p * w[:, None]
    t_l = tl.sum(q, axis=0)
    t_m = tl.zeros_like(t_l) + t
    if tl.min(tl.where(mask_n, t_l, 1.0), axis=0) < COL_SUM_FLOOR:
        t_m = scaled_max(v, scale, mask_m[:, None], 0)
        safe = tl.where(t_m == float("-inf"), 0.0, t_m)
        q = tl.where(mask_m[:, None], tl.exp(tl.fma(v, scale, -safe[None, :])), 0.0)
        t_l = tl.sum(q, axis=0)
    return t_m, t_l, q


@triton.jit
def col_stats_from_row_exps(p, m_row, v, scale, mask_m, mask_n):
    """(t_m, t_l) of `col_weights_from_row_exps`: one exp per logit in the forward."""
    t_m, t_l, _ = col_weights_from_row_exps(p, m_row, v, scale, mask_m, mask_n)
    return t_m, t_l


@triton.jit
def col_stats_with_moment(p, m_row, v, scale, mask_m, mask_n):
    """`col_stats_from_row_exps` plus the tile's column moment t_w = Σ_i q_ij·v_ij (the weights of t_l
    times the raw product v): after the merges, w / l is the mean of v down the column under the
    column softmax, ∂(col lse)/∂scale. No extra exp; one product and one column sum."""
    t_m, t_l, q = col_weights_from_row_exps(p, m_row, v, scale, mask_m, mask_n)
    return t_m, t_l, tl.sum(q * v, axis=0)


@triton.jit
def online_merge_factors(p_m, t_m):
    """(n_m, a, b) to merge two online-softmax partials with maxima p_m and t_m: n_m = max(p_m, t_m),
    and their sums (and anything weighted like them) merge as a·p + b·t."""
    n_m = tl.maximum(p_m, t_m)
    n_safe = tl.where(n_m == float("-inf"), 0.0, n_m)
    return n_m, tl.exp(p_m - n_safe), tl.exp(t_m - n_safe)


@triton.jit
def col_moment_store_or_merge(col_m_ptr, col_l_ptr, col_w_ptr, t_m, t_l, t_w, offs_n, mask_n, first):
    """`col_partials_store_or_merge` for (max, sum, moment): the moment rescales like the sum."""
    if first:
        tl.store(col_m_ptr + offs_n, t_m, mask=mask_n)
        tl.store(col_l_ptr + offs_n, t_l, mask=mask_n)
        tl.store(col_w_ptr + offs_n, t_w, mask=mask_n)
    else:
        p_m = tl.load(col_m_ptr + offs_n, mask=mask_n, other=float("-inf"))
        p_l = tl.load(col_l_ptr + offs_n, mask=mask_n, other=0.0)
        p_w = tl.load(col_w_ptr + offs_n, mask=mask_n, other=0.0)
        n_m, a, b = online_merge_factors(p_m, t_m)
        tl.store(col_m_ptr + offs_n, n_m, mask=mask_n)
        tl.store(col_l_ptr + offs_n, p_l * a + t_l * b, mask=mask_n)
        tl.store(col_w_ptr + offs_n, p_w * a + t_w * b, mask=mask_n)


@triton.jit
def merge_moment(m_part_ptr, l_part_ptr, w_part_ptr, m, offs, mask, length, splits, BLOCK: tl.constexpr):
    """Σ_k w_k·exp(m_k − m) / Σ_k l_k·exp(m_k − m) over `splits` partials, m their max (the one
    `merge_splits` returns): the column moment."""
    safe = tl.where(m == float("-inf"), 0.0, m)
    l = tl.zeros((BLOCK,), tl.float32)
    w = tl.zeros((BLOCK,), tl.float32)
    for k in range(splits):
        f = tl.exp(tl.load(m_part_ptr + k * length + offs, mask=mask, other=float("-inf")) - safe)
        l += tl.load(l_part_ptr + k * length + offs, mask=mask, other=0.0) * f
        w += tl.load(w_part_ptr + k * length + offs, mask=mask, other=0.0) * f
    return w / tl.where(mask, l, 1.0)


@triton.jit
def col_partials_store_or_merge(col_m_ptr, col_l_ptr, t_m, t_l, offs_n, mask_n, first):
    """Store a tile's column statistics (t_m, t_l) on the first visit, or merge them into the partials
    that this program owns (online-softmax merge; no initialisation, no atomics)."""
    if first:
        tl.store(col_m_ptr + offs_n, t_m, mask=mask_n)
        tl.store(col_l_ptr + offs_n, t_l, mask=mask_n)
    else:
        p_m = tl.load(col_m_ptr + offs_n, mask=mask_n, other=float("-inf"))
        p_l = tl.load(col_l_ptr + offs_n, mask=mask_n, other=0.0)
        n_m, a, b = online_merge_factors(p_m, t_m)
        tl.store(col_m_ptr + offs_n, n_m, mask=mask_n)
        tl.store(col_l_ptr + offs_n, p_l * a + t_l * b, mask=mask_n)


@triton.jit
def merge_splits(m_part_ptr, l_part_ptr, offs, mask, length, splits, BLOCK: tl.constexpr):
    """(max, log Σ) of `splits` partial online-softmax statistics per index."""
    m = tl.full((BLOCK,), float("-inf"), tl.float32)
    for k in range(splits):
        m = tl.maximum(m, tl.load(m_part_ptr + k * length + offs, mask=mask, other=float("-inf")))
    safe = tl.where(m == float("-inf"), 0.0, m)
    l = tl.zeros((BLOCK,), tl.float32)
    for k in range(splits):
        pm = tl.load(m_part_ptr + k * length + offs, mask=mask, other=float("-inf"))
        pl = tl.load(l_part_ptr + k * length + offs, mask=mask, other=0.0)
        l += pl * tl.exp(pm - safe)
    return m, tl.log(tl.where(mask, l, 1.0))


@triton.jit
def ds_tile(row0, row_end, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """This dS program's (row tile, column tile) of a row chunk [row0, row_end): (offs_m, offs_n,
    mask_m, mask_n) in absolute row and column indices."""
    offs_m = row0 + tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    return offs_m, offs_n, offs_m < row_end, offs_n < N


@triton.jit
def store_ds_tile(ds_ptr, vals, offs_m, offs_n, row0, mask, stride_ds):
    """Store a tile of dS into the chunk's workspace (rows relative to row0, 64-bit offsets: the
    workspace can exceed 2^31 elements), cast to its element type."""
    local = (offs_m - row0).to(tl.int64)
    tl.store(ds_ptr + local[:, None] * stride_ds + offs_n[None, :], vals.to(ds_ptr.dtype.element_ty), mask=mask)


def dot_precision(dtype, interpret: bool) -> str:
    """fp32 inputs use 3xTF32 on the GPU (fp32-level error, unlike plain TF32); 16-bit inputs use
    the tensor cores directly; the interpreter computes in IEEE fp32."""
    import torch

    if interpret:
        return "ieee"
    return "tf32x3" if dtype == torch.float32 else "tf32"
