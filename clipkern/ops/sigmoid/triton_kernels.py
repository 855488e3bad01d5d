r"""Fused sigmoid-contrastive (SigLIP) kernels. No M×N buffer in the forward; the backward's dS lives
in a bounded row-chunk workspace.

Notation: X = image rows (M×D), Y = text rows (N×D, N ≥ M allowed: extra texts are negatives only),
s = scale, b = bias (0 without one), y_i = labels (one positive column per image row; i by default),
raw = X Yᵀ (fp32 accumulation), L = fma(raw, s, b) — one rounding, computed by the one helper
`_logits_and_signs` in both kernels — z = +1 on (i, y_i), −1 elsewhere, t = z·L.

Forward (`_sigmoid_fwd_kernel`, the forward blocks and 2-D split of tile_config; 2·M·N·D FLOPs), per
image row i over the tiles of its column split:
    ℓ[i] = Σ_j softplus(−t_ij),   softplus(−t) = max(−t, 0) + log1p(exp(−|t|))
log1p(e) is log(u)·e/(u − 1) with u = 1 + e (e itself when u rounds to 1): u − 1 is exact, so the
rounding of u cancels and the result is within a few ulps for every e ≥ 0, where log(1 + e) loses
ulp(1)/e relative (6e-4 at e = 1e-4). A small loss (confident positives, easy negatives) thus keeps
its relative precision; 1 exp and 1 log per logit. (libdevice's log1p has no interpreter version.)
Each program writes its rows' partial sums already divided by M; the launcher adds them (one sum).

Backward, given the scalar upstream gradient g:
  dS kernel (`_sigmoid_ds_kernel`), one program per (row tile, column tile) of a row chunk, the S
  tile recomputed once with the forward's BLOCK_K (2·M·N·D FLOPs in all, 1 exp per logit):
    dL_ij = (g/M) · (σ(L_ij) − [z_ij = 1]) = −z_ij · σ(−t_ij) · g/M
    σ(−t) = e/(1 + e) for t > 0, 1/(1 + e) otherwise, e = exp(−|t|)     (no overflow, no cancellation)
    ws = s · dL (feature dtype, 64-bit row offsets),  ds_part = Σ_tile dL ⊙ raw,  db_part = Σ_tile dL
  (one fp32 slot per program, no atomics: dscale and dbias are one deterministic sum each).
  GEMMs (ops/base.chunked_input_grads): dX = ws·Y and dY = wsᵀ·X by cuBLAS, 4·M·N·D FLOPs.
  Workspace: rows are processed in chunks of `workspace_rows` rows (a multiple of the dS row tile),
  chunk × N feature-dtype elements within CLIPKERN_WORKSPACE_MB (default min(1 GiB, max(64 MiB,
  4× the feature bytes))); dY accumulates over the chunks.
Total: forward 2·M·N·D, backward 6·M·N·D FLOPs.
"""
import triton
import triton.language as tl

from ..base.triton_tiles import ds_tile, split_ranges, store_ds_tile, tile_dot


@triton.jit
def _log1p(e):
    """log(1 + e) for e ≥ 0, accurate to a few ulps (u − 1 is exact, so the rounding of u cancels)."""
    u = 1.0 + e
    d = u - 1.0
    return tl.where(d == 0.0, e, tl.log(u) * (e / tl.where(d == 0.0, 1.0, d)))


@triton.jit
def _logits_and_signs(raw, scale, bias, offs_m, offs_n, lab):
    """(L, z) of a tile: L = fma(raw, s, b), z = +1 at the positive (i, y_i), −1 elsewhere."""
    logits = tl.fma(raw, scale, bias)
    z = tl.where(offs_n[None, :] == lab[:, None], 1.0, -1.0)
    return logits, z


@triton.jit
def _sigmoid_fwd_kernel(
    x_ptr, y_ptr, scale_ptr, bias_ptr, labels_ptr, row_part_ptr,
    M, N, D, stride_x, stride_y, row_blocks_per_split, col_blocks_per_split, inv_m,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    INTERPRETED: tl.constexpr, PRECISION: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_LABELS: tl.constexpr,
):
    pid_c = tl.program_id(1)
    scale = tl.load(scale_ptr).to(tl.float32)
    bias = tl.load(bias_ptr).to(tl.float32) if HAS_BIAS else 0.0
    rb_start, rb_end, cb_start, cb_end = split_ranges(M, N, row_blocks_per_split, col_blocks_per_split,
                                                      BLOCK_M, BLOCK_N)
    for rb in range(rb_start, rb_end):
        offs_m = rb * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        lab = tl.load(labels_ptr + offs_m, mask=mask_m, other=-1) if HAS_LABELS else offs_m
        acc = tl.zeros((BLOCK_M,), tl.float32)
        for cb in range(cb_start, cb_end):
            offs_n = cb * BLOCK_N + tl.arange(0, BLOCK_N)
            mask_n = offs_n < N
            raw = tile_dot(x_ptr, y_ptr, offs_m, offs_n, mask_m, mask_n, D, stride_x, stride_y,
                           BLOCK_M, BLOCK_N, BLOCK_K, INTERPRETED, PRECISION)
            logits, z = _logits_and_signs(raw, scale, bias, offs_m, offs_n, lab)
            t = z * logits
            e = tl.exp(-tl.abs(t))
            sp = tl.maximum(-t, 0.0) + _log1p(e)
            acc += tl.sum(tl.where(mask_n[None, :], sp, 0.0), axis=1)
        tl.store(row_part_ptr + pid_c * M + offs_m, acc * inv_m, mask=mask_m)


@triton.jit
def _sigmoid_ds_kernel(
    x_ptr, y_ptr, scale_ptr, bias_ptr, labels_ptr, g_ptr, ds_ptr, dscale_part_ptr, dbias_part_ptr,
    row0, row_end, N, D, stride_x, stride_y, stride_ds, inv_m,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    INTERPRETED: tl.constexpr, PRECISION: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_LABELS: tl.constexpr,
):
    scale = tl.load(scale_ptr).to(tl.float32)
    bias = tl.load(bias_ptr).to(tl.float32) if HAS_BIAS else 0.0
    w = tl.load(g_ptr).to(tl.float32) * inv_m
    offs_m, offs_n, mask_m, mask_n = ds_tile(row0, row_end, N, BLOCK_M, BLOCK_N)
    raw = tile_dot(x_ptr, y_ptr, offs_m, offs_n, mask_m, mask_n, D, stride_x, stride_y,
                   BLOCK_M, BLOCK_N, BLOCK_K, INTERPRETED, PRECISION)
    lab = tl.load(labels_ptr + offs_m, mask=mask_m, other=-1) if HAS_LABELS else offs_m
    logits, z = _logits_and_signs(raw, scale, bias, offs_m, offs_n, lab)
    t = z * logits
    e = tl.exp(-tl.abs(t))
    dl = -z * w * tl.where(t > 0, e, 1.0) / (1.0 + e)
    dl = tl.where(mask_m[:, None] & mask_n[None, :], dl, 0.0)
    slot = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
    tl.store(dscale_part_ptr + slot, tl.sum(tl.sum(dl * raw, axis=1), axis=0))
    tl.store(dbias_part_ptr + slot, tl.sum(tl.sum(dl, axis=1), axis=0))
    store_ds_tile(ds_ptr, dl * scale, offs_m, offs_n, row0, mask_m[:, None] & mask_n[None, :], stride_ds)
