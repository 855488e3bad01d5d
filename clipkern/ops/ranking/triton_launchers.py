"""Launchers for the ListMLE kernels. They allocate their outputs and never write into inputs.

Size limits (a whole row is sorted on chip, so the row length N bounds every kernel; the two N
limits live in ops/ranking/__init__.py, which must import without triton):
- MATRIX_MAX_N (8192): the longest row the matrix kernels take (BLOCK_N = next power of two ≥ N).
  Longer rows go to the torch reference (see ops/ranking/__init__.py): a documented fallback, not a
  crash.
- FUSED_MAX_N (256): the longest row the from-features kernels take. They hold BLOCK_M = 16 rows ×
  BLOCK_N of scores, targets and int64 sort keys on chip, which is what bounds it (ptxas spills
  registers above 256 on sm_90a). Above it RankCLIP uses the matrix path.
- BWD_CHUNK_ELEMS: the fused backward writes dS for at most this many elements (a chunk of rows)
  before turning it into feature gradients with two matmuls, so its extra memory is bounded by
  4·BWD_CHUNK_ELEMS bytes plus the fp32 gradients, whatever B is.
"""
from dataclasses import dataclass

import torch
import triton

from ..._backend import interpreter_enabled
from ..base import contiguous_rows, new_output
from ..base.triton_tiles import dot_precision
from . import FUSED_MAX_N, MATRIX_MAX_N
from .triton_kernels import (_listmle_fused_bwd_kernel, _listmle_fused_fwd_kernel, _listmle_rows_bwd_kernel,
                             _listmle_rows_fwd_kernel)

BWD_CHUNK_ELEMS = 1 << 18


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


@dataclass(frozen=True)
class RankBlocks:
    """One launch: block_m rows × the whole row (block_n ≥ N columns) per program, block_k wide
    slices of the feature width (fused kernels only)."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int

    def kernel_args(self, dtype: torch.dtype, *, fused: bool) -> dict:
        interpret = interpreter_enabled()
        args = dict(BLOCK_M=self.block_m, BLOCK_N=self.block_n, LOG_N=self.block_n.bit_length() - 1,
                    num_warps=self.num_warps)
        if fused:
            args.update(BLOCK_K=self.block_k, INTERPRETED=interpret, PRECISION=dot_precision(dtype, interpret))
        return args


def ranking_blocks(rows: int, cols: int, width: int, device: torch.device, dtype: torch.dtype,
                   fused: bool) -> RankBlocks:
    """GPU: about 8 row elements per thread (num_warps = block_m·block_n / 256, 4..16), which ptxas
    compiles for sm_90a without register spills up to N = 4096 (matrix kernels, one row per program
    from N = 2048) and N = 256 (fused kernels: 16 rows, tl.dot needs ≥ 16; 16-wide K slices for
    fp32, whose 3xTF32 dots need more registers). Matrix rows of 4097..8192 columns compile with
    some spills (~0.5-1 KB per thread). Checked by compiling for sm_90a without a GPU (the test in
    tests/test_rankclip.py covers matrix N = 1024 and fused N = 256; 4096 and 8192 were checked by
    hand); not yet timed on a GPU. The interpreter prefers few, large blocks (numpy works per block)."""
    bn = max(16, _pow2(cols))
    if interpreter_enabled() or device.type != "cuda":
        min_m = 16 if fused else 1
        bm = min(max(min_m, 8192 // bn), 64, max(min_m, _pow2(rows)))
        return RankBlocks(bm, bn, min(64, max(16, _pow2(width))), 4)
    bm = 16 if fused else max(1, min(16, 2048 // bn))
    bk = 16 if dtype == torch.float32 else 32
    return RankBlocks(bm, bn, bk, min(16, max(4, bm * bn // 256)))


# ----------------------------------------------------------------------------------- matrix path
def _int32_columns(targets: torch.Tensor) -> torch.Tensor:
    """The kernels form column offsets of targets in int32 (row offsets and the scores gather are
    int64): copy the rare view whose column stride would overflow that."""
    return targets if abs(targets.stride(1)) * targets.shape[1] < 2**31 else targets.contiguous()


def listmle_rows_fwd(scores: torch.Tensor, targets: torch.Tensor, decay_log: bool) -> torch.Tensor:
    """ℓ_r for every row (fp32, shape (B,)). Any strides: a transposed view is read in place."""
    M, N = scores.shape
    if N > MATRIX_MAX_N:
        raise ValueError(f"rows of {N} > MATRIX_MAX_N = {MATRIX_MAX_N} columns do not fit the ListMLE kernel")
    cfg = ranking_blocks(M, N, 0, scores.device, scores.dtype, fused=False)
    targets = _int32_columns(targets)
    loss = new_output((M,), scores, torch.float32)
    _listmle_rows_fwd_kernel[(triton.cdiv(M, cfg.block_m),)](
        scores, targets, loss, M, N, *scores.stride(), *targets.stride(),
        DECAY_LOG=decay_log, **cfg.kernel_args(scores.dtype, fused=False))
    return loss


def listmle_rows_bwd(scores: torch.Tensor, targets: torch.Tensor, g: torch.Tensor, decay_log: bool) -> torch.Tensor:
    """∂Loss/∂scores (contiguous, scores' dtype) given g = ∂Loss/∂ℓ_r."""
    M, N = scores.shape
    cfg = ranking_blocks(M, N, 0, scores.device, scores.dtype, fused=False)
    targets = _int32_columns(targets)
    dscores = new_output((M, N), scores)
    _listmle_rows_bwd_kernel[(triton.cdiv(M, cfg.block_m),)](
        scores, targets, g.float().contiguous(), dscores, M, N, *scores.stride(), *targets.stride(),
        dscores.stride(0), DECAY_LOG=decay_log, **cfg.kernel_args(scores.dtype, fused=False))
    return dscores


# ------------------------------------------------------------------------------------ fused path
def listmle_features_fwd(a, c, a2, c2, scale, decay_log: bool) -> torch.Tensor:
    """ℓ_r of scores scale·a cᵀ against targets scale·a2 c2ᵀ, computed from the features (fp32, (B,))."""
    a, c, a2, c2 = (contiguous_rows(x) for x in (a, c, a2, c2))
    (M, D), N = a.shape, c.shape[0]
    if a2.shape != a.shape or c2.shape != c.shape or c.shape[1] != D:
        raise ValueError(f"scores come from a {tuple(a.shape)} @ c {tuple(c.shape)}ᵀ and targets from a2 "
                         f"{tuple(a2.shape)} @ c2 {tuple(c2.shape)}ᵀ: a2 must match a and c2 must match c")
    if N > FUSED_MAX_N:
        raise ValueError(f"rows of {N} > FUSED_MAX_N = {FUSED_MAX_N} columns do not fit the fused ListMLE kernel")
    cfg = ranking_blocks(M, N, D, a.device, a.dtype, fused=True)
    loss = new_output((M,), a, torch.float32)
    _listmle_fused_fwd_kernel[(triton.cdiv(M, cfg.block_m),)](
        a, c, a2, c2, scale, loss, M, N, D, a.stride(0), c.stride(0), a2.stride(0), c2.stride(0),
        DECAY_LOG=decay_log, **cfg.kernel_args(a.dtype, fused=True))
    return loss


def listmle_features_bwd(a, c, a2, c2, scale, g, decay_log: bool):
    """(da, dc, dscale) of Σ_r g_r ℓ_r. dS is formed one chunk of rows at a time (≤ BWD_CHUNK_ELEMS
    elements), then dA = s·dS C, dC = s·dSᵀ A, ds = Σ_r a_r·(dS C)_r by matmuls in fp32."""
    a, c, a2, c2 = (contiguous_rows(x) for x in (a, c, a2, c2))
    (M, D), N = a.shape, c.shape[0]
    cfg = ranking_blocks(M, N, D, a.device, a.dtype, fused=True)
    g = g.float().contiguous()
    a32, c32 = a.float(), c.float()
    chunk = min(M, max(cfg.block_m, BWD_CHUNK_ELEMS // cfg.block_n // cfg.block_m * cfg.block_m))
    ds_buf = new_output((chunk, N), a, torch.float32)
    da = new_output((M, D), a, torch.float32)
    dc = torch.zeros((N, D), device=a.device, dtype=torch.float32)
    dscale = torch.zeros((), device=a.device, dtype=torch.float32)
    for start in range(0, M, chunk):
        rows = min(chunk, M - start)
        _listmle_fused_bwd_kernel[(triton.cdiv(rows, cfg.block_m),)](
            a, c, a2, c2, scale, g, ds_buf, start, start + rows, N, D,
            a.stride(0), c.stride(0), a2.stride(0), c2.stride(0), ds_buf.stride(0),
            DECAY_LOG=decay_log, **cfg.kernel_args(a.dtype, fused=True))
        ds = ds_buf[:rows]
        part = ds @ c32
        da[start:start + rows] = part
        dscale += (a32[start:start + rows] * part).sum()
        dc.addmm_(ds.T, a32[start:start + rows])
    s = scale.float()
    return (s * da).to(a.dtype), (s * dc).to(c.dtype), dscale
