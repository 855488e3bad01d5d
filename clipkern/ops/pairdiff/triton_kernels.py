r"""Fused all-pairs pairwise-difference (PC-CLIP) kernels: the text → pair log-sum-exp over every
ordered image pair and its backward. No P×N² buffer and no N²×D difference tensor.

Notation (the code's symbols): A = ÊĜᵀ (P×N, fp32), R (N×N, fp32) with
    R[i, j] = 1 / ‖Ĝ_i − Ĝ_j‖ for a non-degenerate pair i ≠ j, 0 for a degenerate one
(computed in torch: clipkern/ops/pairdiff/__init__.py, the distance from explicit differences, not
2 − 2·G_ij, which cancels for near-duplicates; torch autograd carries ∂L/∂R and ∂L/∂A back to the
features), s = scale, and per text p
    L[p, i, j] = s · (A[p, i] − A[p, j]) · R[i, j]       candidates: every i ≠ j
    lse[p]     = log Σ_{i≠j} exp(L[p, i, j])
(pairs (i, i) are excluded by the mask; degenerate pairs i ≠ j have R = 0, i.e. a logit-0 candidate:
see reference.py for the rule.)

Forward (`_pairdiff_fwd_kernel`): program (p block, i block) walks every j block, forms the
(BLOCK_M × BLOCK_N × BLOCK_K) logit tile and keeps an online (max, Σexp) per text; the partials of
the i blocks merge in torch (merge_stats). Extra memory: P × ⌈N / BLOCK_N⌉ floats.

Backward, given g[p] = ∂loss/∂lse[p] and π[p, i, j] = exp(L[p, i, j] − lse[p]) (0 off the mask):
    ∂L/∂A[p, k] = s·g[p] · (Σ_j R[k, j] π[p, k, j] − Σ_i R[i, k] π[p, i, k])
    T[i, j]     = Σ_p g[p] · π[p, i, j] · (A[p, i] − A[p, j])
    ∂L/∂R       = s · T,     ∂L/∂s = Σ_ij T[i, j] · R[i, j]          (both O(N²) torch ops)
`_pairdiff_bwd_a_kernel`: program (p block, k block) walks every j block; it recomputes both the
tile (p, k, j) and the transposed one (p, j, k) (the second loads R[j, k], so R need not be
symmetric) and writes U[p, k] = g[p]·(…) exclusively; the caller multiplies by s.
`_pairdiff_bwd_r_kernel`: program (i block, j block) walks every p block and writes T[i, j]
exclusively. Two kernels instead of atomics: deterministic, three exps per element in all.

The constexpr names are the shared launch arguments (tests/sm90_compile.py compiles every kernel
through them): BLOCK_M = texts per tile, BLOCK_N = rows i (or k) per tile, BLOCK_K = columns j per
tile. A and R are always fp32, so INTERPRETED and PRECISION (no tl.dot here) switch nothing.
"""
import triton
import triton.language as tl


@triton.jit
def _pairdiff_tile(a_ptr, r_ptr, scale, offs_p, offs_i, offs_j, mask_p, mask_i, mask_j, stride_a, stride_r):
    """(logits with −inf off the candidate mask, A[p, i] − A[p, j], the mask, R[i, j]) for one
    (p, i, j) tile."""
    a_i = tl.load(a_ptr + offs_p[:, None] * stride_a + offs_i[None, :],
                  mask=mask_p[:, None] & mask_i[None, :], other=0.0)
    a_j = tl.load(a_ptr + offs_p[:, None] * stride_a + offs_j[None, :],
                  mask=mask_p[:, None] & mask_j[None, :], other=0.0)
    r = tl.load(r_ptr + offs_i[:, None] * stride_r + offs_j[None, :],
                mask=mask_i[:, None] & mask_j[None, :], other=0.0)
    pair_ok = mask_i[:, None] & mask_j[None, :] & (offs_i[:, None] != offs_j[None, :])
    valid = mask_p[:, None, None] & pair_ok[None, :, :]
    diff = a_i[:, :, None] - a_j[:, None, :]
    logits = tl.where(valid, scale * diff * r[None, :, :], float("-inf"))
    return logits, diff, valid, r


@triton.jit
def _pairdiff_fwd_kernel(
    a_ptr, r_ptr, scale_ptr, m_part_ptr, l_part_ptr,
    P, N, stride_a, stride_r,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    INTERPRETED: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_i = tl.program_id(1)
    scale = tl.load(scale_ptr).to(tl.float32)
    offs_p = pid_p * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_p = offs_p < P
    offs_i = pid_i * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_i = offs_i < N
    m_p = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_p = tl.zeros((BLOCK_M,), tl.float32)
    for jb in range(0, tl.cdiv(N, BLOCK_K)):
        offs_j = jb * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_j = offs_j < N
        logits, _, _, _ = _pairdiff_tile(a_ptr, r_ptr, scale, offs_p, offs_i, offs_j, mask_p, mask_i, mask_j,
                                      stride_a, stride_r)
        m_new = tl.maximum(m_p, tl.max(tl.max(logits, axis=2), axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a tile with no candidate for p
        l_p = l_p * tl.exp(m_p - m_safe) + tl.sum(tl.sum(tl.exp(logits - m_safe[:, None, None]), axis=2), axis=1)
        m_p = m_new
    tl.store(m_part_ptr + pid_i * P + offs_p, m_p, mask=mask_p)
    tl.store(l_part_ptr + pid_i * P + offs_p, l_p, mask=mask_p)


@triton.jit
def _pairdiff_bwd_a_kernel(
    a_ptr, r_ptr, scale_ptr, m_ptr, logl_ptr, g_ptr, u_ptr,
    P, N, stride_a, stride_r, stride_u,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    INTERPRETED: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_k = tl.program_id(1)
    scale = tl.load(scale_ptr).to(tl.float32)
    offs_p = pid_p * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_p = offs_p < P
    offs_k = pid_k * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_k = offs_k < N
    m_p = tl.load(m_ptr + offs_p, mask=mask_p, other=0.0)
    logl_p = tl.load(logl_ptr + offs_p, mask=mask_p, other=0.0)
    g_p = tl.load(g_ptr + offs_p, mask=mask_p, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for jb in range(0, tl.cdiv(N, BLOCK_K)):
        offs_j = jb * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_j = offs_j < N
        # (p, k, j): k is the first image of the pair
        logits, diff, valid, r_kj = _pairdiff_tile(a_ptr, r_ptr, scale, offs_p, offs_k, offs_j, mask_p, mask_k,
                                                   mask_j, stride_a, stride_r)
        pi = tl.exp((logits - m_p[:, None, None]) - logl_p[:, None, None])
        acc += tl.sum(pi * r_kj[None, :, :], axis=2)
        # (p, j, k): k is the second image; L[p, j, k] = s·(A[p, j] − A[p, k])·R[j, k]
        r_jk = tl.load(r_ptr + offs_j[None, :] * stride_r + offs_k[:, None],
                       mask=mask_k[:, None] & mask_j[None, :], other=0.0)  # [k, j] = R[j, k]
        logits_t = tl.where(valid, -scale * diff * r_jk[None, :, :], float("-inf"))
        pi_t = tl.exp((logits_t - m_p[:, None, None]) - logl_p[:, None, None])
        acc -= tl.sum(pi_t * r_jk[None, :, :], axis=2)
    u = g_p[:, None] * acc
    tl.store(u_ptr + offs_p[:, None] * stride_u + offs_k[None, :], u, mask=mask_p[:, None] & mask_k[None, :])


@triton.jit
def _pairdiff_bwd_r_kernel(
    a_ptr, r_ptr, scale_ptr, m_ptr, logl_ptr, g_ptr, t_ptr,
    P, N, stride_a, stride_r, stride_t,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    INTERPRETED: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_i = tl.program_id(0)
    pid_j = tl.program_id(1)
    scale = tl.load(scale_ptr).to(tl.float32)
    offs_i = pid_i * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_i = offs_i < N
    offs_j = pid_j * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_j = offs_j < N
    acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    for pb in range(0, tl.cdiv(P, BLOCK_M)):
        offs_p = pb * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_p = offs_p < P
        m_p = tl.load(m_ptr + offs_p, mask=mask_p, other=0.0)
        logl_p = tl.load(logl_ptr + offs_p, mask=mask_p, other=0.0)
        g_p = tl.load(g_ptr + offs_p, mask=mask_p, other=0.0)
        logits, diff, _, _ = _pairdiff_tile(a_ptr, r_ptr, scale, offs_p, offs_i, offs_j, mask_p, mask_i, mask_j,
                                         stride_a, stride_r)
        pi = tl.exp((logits - m_p[:, None, None]) - logl_p[:, None, None])
        acc += tl.sum(g_p[:, None, None] * pi * diff, axis=0)
    tl.store(t_ptr + offs_i[:, None] * stride_t + offs_j[None, :], acc, mask=mask_i[:, None] & mask_j[None, :])
