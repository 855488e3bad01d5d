r"""Fused ListMLE (Plackett–Luce) kernels: per-row sort, suffix log-sum-exp, closed-form backward.

Notation (as in the code): one row of scores q (they get the gradient) and targets t (they only
choose the order). π = argsort_desc(t), ties broken by the lower column index; q_k = q[π_k] for
sorted positions k = 0..N−1 (docs/design.md §1.4 counts k = 1..N).

Sort key (`_sort_by_target`). Each fp32 target becomes a signed 32-bit integer with the same order
(ord = bits for t ≥ 0, bits ^ 0x7FFFFFFF for t < 0; −0.0 is first made +0.0 so that it ties with
+0.0, as in torch.sort), negated for a descending order (~ord), and packed with the column index j:
    key = (~ord) << 32 | j        (int64)
One ascending sort of the keys gives the descending order and the stable tie-break together;
j = key & 0xFFFFFFFF. Padding columns get key = INT64_MAX and sort last, so sorted positions
k < N are exactly the real columns.

Sort and scans run on the row viewed as a hypercube [BLOCK_M, 2, ..., 2] (LOG_N = log2 BLOCK_N
axes of size 2): a bitonic network whose compare-and-swap is a min/max over one size-2 axis
(`_sort_rows`), and a log-sum-exp scan that exchanges block totals across one axis per level
(`_scan_lse`). The scan carries (m, l) pairs, lse = m + log l: m is a max of inputs (exact) and
the rounding stays in l ∈ [1, N]; a scan of fp32 log values would add ~ulp(100) per level at
s = 100, several times torch's sequential logcumsumexp error. Both use only reshape, where and
min/max/sum reductions, which the GPU compiler and the CPU interpreter both handle well (the
interpreter runs tl.sort's xor reduction and any custom-combine tl.associative_scan element by
element, orders of magnitude slower). GPU and CPU CI run the same code.

Forward (`_row_loss`), per row:
    lse_k = logsumexp(q_k, ..., q_{N−1}) = m_k + log l_k    suffix (max, sum) scan; every exp has a
                                             non-positive argument, so s = 100 cannot overflow
    ℓ = Σ_k w_k ((m_k − q_k) + log l_k)
    w_k = 1, or 1/log2(k + 2) with DECAY_LOG (= 1/log2(k + 1) with docs/design.md's 1-based k)
A non-finite target adds NaN to its row (0·t), as the reference does.

Backward (`_row_grad`), closed form, given g = ∂Loss/∂ℓ of the row:
    ∂ℓ/∂q_k = Σ_{m≤k} w_m exp(q_k − lse_m) − w_k = exp(q_k + logC_k) − w_k
    logC_k  = logcumsumexp_{m≤k} (log w_m − lse_m)          prefix (max, sum) scan
Because lse_m ≥ lse_k ≥ q_k for m ≤ k, the exponent is at most log Σ_{m≤k} w_m: nothing overflows,
and no product of probabilities is formed. The gradient goes back to column π_k (the scatter of a
permutation: every column is written exactly once).

Two ways to get a row:
- matrix kernels (`_listmle_rows_*`): scores and targets are B×N tensors read through arbitrary
  (row, column) strides, so a transposed view costs no copy; q in sorted order is a gather load of
  the row that was just read. One program owns BLOCK_M rows × the whole row (BLOCK_N ≥ N).
- fused kernels (`_listmle_fused_*`): scores = s·A Cᵀ and targets = s·A2 C2ᵀ are computed from the
  features (tile_dot, fp32 accumulation); BLOCK_M rows × the whole row stay on chip and q is put in
  sorted order with tl.gather. The forward writes only ℓ. The backward writes dS = ∂Loss/∂scores
  for one chunk of rows into a bounded buffer; the launcher turns it into dA = s·dS C,
  dC = s·dSᵀ A and ds = Σ dS ⊙ (A Cᵀ) with two matmuls.
All arithmetic is fp32: every load is converted right after it (the sort key needs 32-bit floats).
"""
import triton
import triton.language as tl

from ..base.triton_tiles import tile_dot

_PAD_KEY = tl.constexpr(0x7FFFFFFFFFFFFFFF)  # INT64_MAX: padding columns sort after every real key


@triton.jit
def _merge_lse(m1, l1, m2, l2):
    """Merge two log-sum-exp partials kept as (max, sum): e^m1·l1 + e^m2·l2 = e^m·l."""
    m = tl.maximum(m1, m2)
    shift = tl.where(m == float("-inf"), 0.0, m)
    return m, l1 * tl.exp(m1 - shift) + l2 * tl.exp(m2 - shift)


@triton.jit
def _bit(n_dims: tl.constexpr, axis: tl.constexpr):
    """0 / 1 along one axis of a [BLOCK_M, 2, ..., 2] hypercube, shape [1, .., 2, .., 1]."""
    return tl.reshape(tl.arange(0, 2), [1] * axis + [2] + [1] * (n_dims - axis - 1))


@triton.jit
def _compare_swap(h, desc, n_dims: tl.constexpr, axis: tl.constexpr):
    """One bitonic compare-and-swap between the two halves of `axis`: (min, max) where desc is 0,
    (max, min) where desc is 1."""
    right = _bit(n_dims, axis)
    lo = tl.min(h, axis=axis, keep_dims=True)
    hi = tl.max(h, axis=axis, keep_dims=True)
    return tl.where(right != desc, hi, lo)


@triton.jit
def _sort_rows(x, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, LOG_N: tl.constexpr):
    """Ascending bitonic sort of every row of x (BLOCK_M × BLOCK_N, distinct values). The row is
    viewed as a hypercube [BLOCK_M, 2, ..., 2]: column bit b is axis LOG_N − b. A compare-and-swap
    across bit b takes the min and max over that size-2 axis; the ascending half gets (min, max),
    the descending half (max, min)."""
    n_dims: tl.constexpr = LOG_N + 1
    h = tl.reshape(x, [BLOCK_M] + [2] * LOG_N)
    for stage in tl.static_range(1, LOG_N + 1):
        # merge blocks of 2**stage columns: descending where column bit `stage` is 1 (all ascending last)
        if stage < LOG_N:
            desc = _bit(n_dims, LOG_N - stage)
        else:
            desc = tl.zeros([1] * n_dims, dtype=tl.int32)
        for j in tl.static_range(stage):
            h = _compare_swap(h, desc, n_dims, LOG_N - (stage - 1 - j))  # column bit stage-1-j
    return tl.reshape(h, [BLOCK_M, BLOCK_N])


@triton.jit
def _scan_level(h_m, h_l, t_m, t_l, n_dims: tl.constexpr, axis: tl.constexpr, REVERSE: tl.constexpr):
    """One level of `_scan_lse`: the two halves of `axis` exchange their block totals (t_m, t_l)."""
    right = _bit(n_dims, axis)
    left_m = tl.sum(tl.where(right == 0, t_m, 0.0), axis=axis, keep_dims=True)
    left_l = tl.sum(tl.where(right == 0, t_l, 0.0), axis=axis, keep_dims=True)
    right_m = tl.sum(tl.where(right == 1, t_m, 0.0), axis=axis, keep_dims=True)
    right_l = tl.sum(tl.where(right == 1, t_l, 0.0), axis=axis, keep_dims=True)
    if REVERSE:
        n_m, n_l = _merge_lse(h_m, h_l, right_m, right_l)
        take = right == 0
    else:
        n_m, n_l = _merge_lse(left_m, left_l, h_m, h_l)
        take = right == 1
    t_m, t_l = _merge_lse(left_m, left_l, right_m, right_l)
    return tl.where(take, n_m, h_m), tl.where(take, n_l, h_l), t_m, t_l


@triton.jit
def _scan_lse(x, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, LOG_N: tl.constexpr, REVERSE: tl.constexpr):
    """Inclusive log-sum-exp scan of every row of x, prefix or (REVERSE) suffix, as (m, l) with
    lse = m + log l. m is a max of inputs, so it is exact; all rounding stays in l ∈ [1, N], which
    is far more accurate at |x| ~ 100 than a scan of fp32 log values. LOG_N levels on the hypercube
    [BLOCK_M, 2, ..., 2]: at level b, blocks of 2**b columns that differ in column bit b exchange
    their totals (a size-2 sum of a where() selects one side exactly)."""
    n_dims: tl.constexpr = LOG_N + 1
    h_m = tl.reshape(x, [BLOCK_M] + [2] * LOG_N)
    h_l = tl.where(h_m == float("-inf"), 0.0, 1.0)
    t_m = h_m
    t_l = h_l
    for level in tl.static_range(LOG_N):
        h_m, h_l, t_m, t_l = _scan_level(h_m, h_l, t_m, t_l, n_dims, LOG_N - level, REVERSE)  # column bit `level`
    return tl.reshape(h_m, [BLOCK_M, BLOCK_N]), tl.reshape(h_l, [BLOCK_M, BLOCK_N])


@triton.jit
def _sort_by_target(t, offs_n, mask_n, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, LOG_N: tl.constexpr):
    """Column index at each sorted position of every row of t (fp32, BLOCK_M × BLOCK_N):
    descending target, ties by ascending column index. Positions ≥ N hold 0 (callers mask them)."""
    t = tl.where(t == 0.0, 0.0, t)  # −0.0 ties with +0.0
    bits = t.to(tl.int32, bitcast=True)
    ordered = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    key = ((~ordered).to(tl.int64) << 32) | offs_n[None, :].to(tl.int64)
    key = tl.where(mask_n[None, :], key, _PAD_KEY)
    key = _sort_rows(key, BLOCK_M, BLOCK_N, LOG_N)
    idx = (key & 0xFFFFFFFF).to(tl.int32)
    return tl.where(mask_n[None, :], idx, 0)


@triton.jit
def _log_weights(offs_n, DECAY_LOG: tl.constexpr):
    """(w_k, log w_k) for sorted positions k = offs_n (0-based)."""
    if DECAY_LOG:
        l2 = tl.log2(offs_n.to(tl.float32) + 2.0)
        w = 1.0 / l2
        log_w = -tl.log(l2)
    else:
        w = tl.full(offs_n.shape, 1.0, tl.float32)
        log_w = tl.zeros(offs_n.shape, tl.float32)
    return w, log_w


@triton.jit
def _suffix_lse(q, valid, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, LOG_N: tl.constexpr):
    """(q, m, log l) with lse_k = m_k + log l_k, all 0 outside `valid`."""
    m, l = _scan_lse(tl.where(valid, q, float("-inf")), BLOCK_M, BLOCK_N, LOG_N, True)
    return tl.where(valid, q, 0.0), tl.where(valid, m, 0.0), tl.where(valid, tl.log(tl.where(valid, l, 1.0)), 0.0)


@triton.jit
def _row_loss(q, valid, offs_n, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, LOG_N: tl.constexpr,
              DECAY_LOG: tl.constexpr):
    """ℓ per row for q in sorted order (BLOCK_M × BLOCK_N); invalid entries contribute nothing.
    lse_k − q_k is formed as (m_k − q_k) + log l_k: a difference of two inputs plus a small term."""
    q, m, log_l = _suffix_lse(q, valid, BLOCK_M, BLOCK_N, LOG_N)
    w, _ = _log_weights(offs_n, DECAY_LOG)
    return tl.sum(w[None, :] * ((m - q) + log_l), axis=1)


@triton.jit
def _row_grad(q, valid, offs_n, g, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, LOG_N: tl.constexpr,
              DECAY_LOG: tl.constexpr):
    """g · ∂ℓ/∂q_k in sorted order (0 outside `valid`): exp(q_k + logC_k) − w_k with
    logC_k = M_k + log L_k from a prefix (max, sum) scan of log w_m − lse_m."""
    q, m, log_l = _suffix_lse(q, valid, BLOCK_M, BLOCK_N, LOG_N)
    w, log_w = _log_weights(offs_n, DECAY_LOG)
    x = tl.where(valid, (log_w[None, :] - log_l) - m, float("-inf"))
    c_m, c_l = _scan_lse(x, BLOCK_M, BLOCK_N, LOG_N, False)
    c_m = tl.where(valid, c_m, 0.0)
    log_c_l = tl.log(tl.where(valid, c_l, 1.0))
    dq = g[:, None] * (tl.exp((q + c_m) + log_c_l) - w[None, :])
    return tl.where(valid, dq, 0.0)


@triton.jit
def _poison(t, valid):
    """0 per row, NaN where a target is non-finite."""
    return tl.sum(tl.where(valid, t * 0.0, 0.0), axis=1)


# ------------------------------------------------------------------------------- matrix kernels
@triton.jit
def _load_sorted_rows(scores_ptr, targets_ptr, offs_m, offs_n, mask, mask_n,
                      stride_sm, stride_sn, stride_tm, stride_tn,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, LOG_N: tl.constexpr):
    """(targets, column index per sorted position, scores in sorted order), fp32."""
    t = tl.load(targets_ptr + offs_m[:, None] * stride_tm + offs_n[None, :] * stride_tn, mask=mask, other=0.0)
    t = t.to(tl.float32)
    idx = _sort_by_target(t, offs_n, mask_n, BLOCK_M, BLOCK_N, LOG_N)
    q = tl.load(scores_ptr + offs_m[:, None] * stride_sm + idx.to(tl.int64) * stride_sn, mask=mask, other=0.0)
    return t, idx, q.to(tl.float32)


@triton.jit
def _listmle_rows_fwd_kernel(
    scores_ptr, targets_ptr, loss_ptr,
    M, N, stride_sm, stride_sn, stride_tm, stride_tn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, LOG_N: tl.constexpr, DECAY_LOG: tl.constexpr,
):
    offs_m = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    mask = mask_m[:, None] & mask_n[None, :]
    t, idx, q = _load_sorted_rows(scores_ptr, targets_ptr, offs_m, offs_n, mask, mask_n,
                                  stride_sm, stride_sn, stride_tm, stride_tn, BLOCK_M, BLOCK_N, LOG_N)
    loss = _row_loss(q, mask, offs_n, BLOCK_M, BLOCK_N, LOG_N, DECAY_LOG) + _poison(t, mask)
    tl.store(loss_ptr + offs_m, loss, mask=mask_m)


@triton.jit
def _listmle_rows_bwd_kernel(
    scores_ptr, targets_ptr, g_ptr, dscores_ptr,
    M, N, stride_sm, stride_sn, stride_tm, stride_tn, stride_dm,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, LOG_N: tl.constexpr, DECAY_LOG: tl.constexpr,
):
    offs_m = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    mask = mask_m[:, None] & mask_n[None, :]
    _, idx, q = _load_sorted_rows(scores_ptr, targets_ptr, offs_m, offs_n, mask, mask_n,
                                  stride_sm, stride_sn, stride_tm, stride_tn, BLOCK_M, BLOCK_N, LOG_N)
    g = tl.load(g_ptr + offs_m, mask=mask_m, other=0.0).to(tl.float32)
    dq = _row_grad(q, mask, offs_n, g, BLOCK_M, BLOCK_N, LOG_N, DECAY_LOG)
    tl.store(dscores_ptr + offs_m[:, None] * stride_dm + idx, dq.to(dscores_ptr.dtype.element_ty), mask=mask)


# -------------------------------------------------------------------------------- fused kernels
@triton.jit
def _fused_sorted_rows(a_ptr, c_ptr, a2_ptr, c2_ptr, scale, offs_m, offs_n, mask_m, mask_n, D,
                       stride_a, stride_c, stride_a2, stride_c2,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, LOG_N: tl.constexpr,
                       INTERPRETED: tl.constexpr, PRECISION: tl.constexpr):
    """(targets, column index per sorted position, scores in sorted order) of rows offs_m, with
    targets = scale·A2 C2ᵀ and scores = scale·A Cᵀ computed here."""
    t = scale * tile_dot(a2_ptr, c2_ptr, offs_m, offs_n, mask_m, mask_n, D, stride_a2, stride_c2,
                         BLOCK_M, BLOCK_N, BLOCK_K, INTERPRETED, PRECISION)
    idx = _sort_by_target(t, offs_n, mask_n, BLOCK_M, BLOCK_N, LOG_N)
    s = scale * tile_dot(a_ptr, c_ptr, offs_m, offs_n, mask_m, mask_n, D, stride_a, stride_c,
                         BLOCK_M, BLOCK_N, BLOCK_K, INTERPRETED, PRECISION)
    return t, idx, tl.gather(s, idx, 1)


@triton.jit
def _listmle_fused_fwd_kernel(
    a_ptr, c_ptr, a2_ptr, c2_ptr, scale_ptr, loss_ptr,
    M, N, D, stride_a, stride_c, stride_a2, stride_c2,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, LOG_N: tl.constexpr,
    INTERPRETED: tl.constexpr, PRECISION: tl.constexpr, DECAY_LOG: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    mask = mask_m[:, None] & mask_n[None, :]
    scale = tl.load(scale_ptr).to(tl.float32)
    t, idx, q = _fused_sorted_rows(a_ptr, c_ptr, a2_ptr, c2_ptr, scale, offs_m, offs_n, mask_m, mask_n, D,
                                   stride_a, stride_c, stride_a2, stride_c2,
                                   BLOCK_M, BLOCK_N, BLOCK_K, LOG_N, INTERPRETED, PRECISION)
    loss = _row_loss(q, mask, offs_n, BLOCK_M, BLOCK_N, LOG_N, DECAY_LOG) + _poison(t, mask)
    tl.store(loss_ptr + offs_m, loss, mask=mask_m)


@triton.jit
def _listmle_fused_bwd_kernel(
    a_ptr, c_ptr, a2_ptr, c2_ptr, scale_ptr, g_ptr, dscores_ptr,
    row_start, row_end, N, D, stride_a, stride_c, stride_a2, stride_c2, stride_dm,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, LOG_N: tl.constexpr,
    INTERPRETED: tl.constexpr, PRECISION: tl.constexpr, DECAY_LOG: tl.constexpr,
):
    """dS rows [row_start, row_end) into dscores (row 0 of dscores = row_start), fp32."""
    offs_m = row_start + tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    mask_m = offs_m < row_end
    mask_n = offs_n < N
    mask = mask_m[:, None] & mask_n[None, :]
    scale = tl.load(scale_ptr).to(tl.float32)
    _, idx, q = _fused_sorted_rows(a_ptr, c_ptr, a2_ptr, c2_ptr, scale, offs_m, offs_n, mask_m, mask_n, D,
                                   stride_a, stride_c, stride_a2, stride_c2,
                                   BLOCK_M, BLOCK_N, BLOCK_K, LOG_N, INTERPRETED, PRECISION)
    g = tl.load(g_ptr + offs_m, mask=mask_m, other=0.0).to(tl.float32)
    dq = _row_grad(q, mask, offs_n, g, BLOCK_M, BLOCK_N, LOG_N, DECAY_LOG)
    local = (offs_m - row_start).to(tl.int64)
    tl.store(dscores_ptr + local[:, None] * stride_dm + idx, dq, mask=mask)
