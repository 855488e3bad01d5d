r"""Fused sigmoid-contrastive (SigLIP) kernels. No B×N buffer.

Notation: X = own rows (M×D), Y = other rows (N×D), s = scale, b = bias, y = labels (one positive
column per row of the *image* side), L = s · X Yᵀ + b, z = +1 on (i, y_i), −1 elsewhere.

Forward (`_sigmoid_fwd_kernel`), per row i, over the tiles of its column split:
    ℓ[i] = Σ_j softplus(−z_ij · L_ij),  softplus(t) = max(t, 0) + log(1 + exp(−|t|))
Splits along N are summed by the launcher (O(B · splits) floats).

Backward (`_sigmoid_bwd_kernel`), given g = ∂Loss/∂ℓ (one value per image row i):
    dL_ij = g_i · (σ(L_ij) − [z_ij = 1]) = −z_ij · σ(−z_ij L_ij) · g_i
    dX = s · dL Y,  dY = s · dLᵀ X,  ds = Σ dL ⊙ (X Yᵀ),  db = Σ dL
The kernel owns a block of rows of one side; LABELS_ON_OWN says whether the labels and g belong
to the owned rows (dX call) or to the other side (dY call, tiles are then Lᵀ). The positive term
is evaluated inside the tile, so −log σ(+L) is never formed as a difference of large numbers.
"""
import triton
import triton.language as tl

from ..base.triton_tiles import load_block, split_ranges, store_block, tile_dot


@triton.jit
def _sigmoid_tile(raw, scale, bias, offs_x, offs_y, lab_x, lab_y, LABELS_ON_OWN: tl.constexpr):
    """Returns (L, z) for a tile; lab_* are the label vectors of the side that carries them."""
    logits = scale * raw + bias
    if LABELS_ON_OWN:
        pos = lab_x[:, None] == offs_y[None, :]
    else:
        pos = offs_x[:, None] == lab_y[None, :]
    z = tl.where(pos, 1.0, -1.0)
    return logits, z


@triton.jit
def _sigmoid_fwd_kernel(
    x_ptr, y_ptr, scale_ptr, bias_ptr, labels_ptr, row_part_ptr,
    M, N, D, stride_x, stride_y, row_blocks_per_split, col_blocks_per_split,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    INTERPRETED: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_c = tl.program_id(1)
    scale = tl.load(scale_ptr).to(tl.float32)
    bias = tl.load(bias_ptr).to(tl.float32)
    rb_start, rb_end, cb_start, cb_end = split_ranges(M, N, row_blocks_per_split, col_blocks_per_split,
                                                      BLOCK_M, BLOCK_N)
    for rb in range(rb_start, rb_end):
        offs_m = rb * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        lab = tl.load(labels_ptr + offs_m, mask=mask_m, other=-1)
        acc = tl.zeros((BLOCK_M,), tl.float32)
        for cb in range(cb_start, cb_end):
            offs_n = cb * BLOCK_N + tl.arange(0, BLOCK_N)
            mask_n = offs_n < N
            raw = tile_dot(x_ptr, y_ptr, offs_m, offs_n, mask_m, mask_n, D, stride_x, stride_y,
                           BLOCK_M, BLOCK_N, BLOCK_K, INTERPRETED, PRECISION)
            logits, z = _sigmoid_tile(raw, scale, bias, offs_m, offs_n, lab, lab, True)
            t = -z * logits
            sp = tl.maximum(t, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(t)))
            acc += tl.sum(tl.where(mask_n[None, :], sp, 0.0), axis=1)
        tl.store(row_part_ptr + pid_c * M + offs_m, acc, mask=mask_m)


@triton.jit
def _sigmoid_bwd_kernel(
    x_ptr, y_ptr, scale_ptr, bias_ptr, labels_ptr, g_ptr, dx_ptr, dscale_part_ptr, dbias_part_ptr,
    M, N, D, stride_x, stride_y, stride_dx,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    INTERPRETED: tl.constexpr, PRECISION: tl.constexpr, LABELS_ON_OWN: tl.constexpr,
    WITH_DSCALE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    scale = tl.load(scale_ptr).to(tl.float32)
    bias = tl.load(bias_ptr).to(tl.float32)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    if LABELS_ON_OWN:
        lab_x = tl.load(labels_ptr + offs_m, mask=mask_m, other=-1)
        g_x = tl.load(g_ptr + offs_m, mask=mask_m, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    ds_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for cb in range(0, tl.cdiv(N, BLOCK_N)):
        offs_n = cb * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        raw = tile_dot(x_ptr, y_ptr, offs_m, offs_n, mask_m, mask_n, D, stride_x, stride_y,
                       BLOCK_M, BLOCK_N, BLOCK_K, INTERPRETED, PRECISION)
        if LABELS_ON_OWN:
            logits, z = _sigmoid_tile(raw, scale, bias, offs_m, offs_n, lab_x, lab_x, True)
            g = g_x[:, None]
        else:
            lab_y = tl.load(labels_ptr + offs_n, mask=mask_n, other=-1)
            g_y = tl.load(g_ptr + offs_n, mask=mask_n, other=0.0)
            logits, z = _sigmoid_tile(raw, scale, bias, offs_m, offs_n, lab_y, lab_y, False)
            g = g_y[None, :]
        t = z * logits
        e = tl.exp(-tl.abs(t))  # σ(−t) without overflow: e/(1+e) for t > 0, 1/(1+e) otherwise
        dl = -z * g * tl.where(t > 0, e, 1.0) / (1.0 + e)
        dl = tl.where(mask_m[:, None] & mask_n[None, :], dl, 0.0)
        if WITH_DSCALE:
            ds_acc += tl.sum(dl * raw, axis=1)
            db_acc += tl.sum(dl, axis=1)
        y_d = load_block(y_ptr, offs_n, offs_d, mask_n, mask_d, stride_y, INTERPRETED)
        acc = tl.dot(dl.to(y_d.dtype), y_d, acc, input_precision=PRECISION)
    store_block(dx_ptr, acc * scale, offs_m, offs_d, mask_m, mask_d, stride_dx)
    if WITH_DSCALE:
        if pid_d == 0:
            tl.store(dscale_part_ptr + pid_m, tl.sum(ds_acc, axis=0))
            tl.store(dbias_part_ptr + pid_m, tl.sum(db_acc, axis=0))
