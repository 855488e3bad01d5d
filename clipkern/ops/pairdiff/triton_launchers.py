"""Launchers for the all-pairs pairwise-difference kernels. They allocate their outputs and never
write into inputs. A and R are fp32 (the caller builds them), so one configuration serves every
feature dtype."""
import math

import torch

from ..base import contiguous_rows, merge_stats, new_output, tile_config
from ..base.triton_tiles import dot_precision
from .triton_kernels import _pairdiff_bwd_a_kernel, _pairdiff_bwd_r_kernel, _pairdiff_fwd_kernel

# (BLOCK_M texts, BLOCK_N rows i, BLOCK_K columns j) per kernel on the GPU. The tiles are 3-D and
# elementwise (no tl.dot), so they stay small: 16·16·16 fp32 = 32 registers per thread per live
# tile at 4 warps. tests/sm90_compile.py compiles exactly these (zero spills required); ptxas
# reports 168 / 203 / 156 registers for fwd / bwd_a / bwd_r at 4 warps (a 16·16·32 forward hit
# the 255 cap). Not timed on a GPU yet: the block shapes are a static choice, not a tuned one.
GPU_BLOCKS = {"fwd": (16, 16, 16), "bwd_a": (16, 16, 16), "bwd_r": (16, 16, 16)}
# The interpreter: 16 everywhere, so that N = 17 or 64 already spans several blocks on every axis.
INTERPRET_BLOCKS = (16, 16, 16)


def launch_args(which: str, P: int, N: int, device: torch.device) -> dict:
    """Constexprs and launch options of one kernel. Warps and stages are the shared fp32 forward
    choice (tile_config), which is also what tests/sm90_compile.py compiles with for fp32."""
    cfg = tile_config(P, N, N, device, torch.float32)
    bm, bn, bk = INTERPRET_BLOCKS if cfg.interpret else GPU_BLOCKS[which]
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, INTERPRETED=cfg.interpret,
                PRECISION=dot_precision(torch.float32, cfg.interpret),
                num_warps=cfg.fwd.num_warps, num_stages=cfg.fwd.num_stages)


def pairdiff_fwd(a: torch.Tensor, r: torch.Tensor, scale: torch.Tensor):
    """(max, log Σexp) per text of L[p, i, j] = s·(A[p, i] − A[p, j])·R[i, j] over i ≠ j: two (P,)
    fp32 vectors, lse = max + logsum."""
    a, r = contiguous_rows(a), contiguous_rows(r)
    P, N = a.shape
    args = launch_args("fwd", P, N, a.device)
    grid = (math.ceil(P / args["BLOCK_M"]), math.ceil(N / args["BLOCK_N"]))
    m_part = new_output((grid[1], P), a, torch.float32)
    l_part = new_output((grid[1], P), a, torch.float32)
    _pairdiff_fwd_kernel[grid](a, r, scale, m_part, l_part, P, N, a.stride(0), r.stride(0), **args)
    return merge_stats(m_part, l_part)


def pairdiff_bwd(a, r, scale, lse_max, lse_logsum, g):
    """(U, T): U[p, k] = g[p]·∂lse[p]/∂A[p, k] / s and T[i, j] = Σ_p g[p]·∂lse[p]/∂R[i, j] / s."""
    a, r = contiguous_rows(a), contiguous_rows(r)
    P, N = a.shape
    g = g.float().contiguous()
    args = launch_args("bwd_a", P, N, a.device)
    u = new_output((P, N), a, torch.float32)
    grid = (math.ceil(P / args["BLOCK_M"]), math.ceil(N / args["BLOCK_N"]))
    _pairdiff_bwd_a_kernel[grid](a, r, scale, lse_max, lse_logsum, g, u, P, N, a.stride(0), r.stride(0),
                                 u.stride(0), **args)
    args = launch_args("bwd_r", P, N, a.device)
    t = new_output((N, N), a, torch.float32)
    grid = (math.ceil(N / args["BLOCK_N"]), math.ceil(N / args["BLOCK_K"]))
    _pairdiff_bwd_r_kernel[grid](a, r, scale, lse_max, lse_logsum, g, t, P, N, a.stride(0), r.stride(0),
                                 t.stride(0), **args)
    return u, t
