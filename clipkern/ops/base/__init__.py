"""What every loss family repeats, in plain torch: the label (positive-pair) terms, the exact-zero
bias gradient, split/merge of partial log-sum-exp statistics and the launch configuration.

The fused kernels of every family are *label-agnostic*: they compute dense, per-row or per-column
statistics over all B×N tiles (log-sum-exp, or sums of softplus). The positive pairs touch only B
entries, so their terms are computed here in O(B·D) torch ops and autograd adds their gradient.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from ..._backend import interpreter_enabled


def positive_logits(a: torch.Tensor, c: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """scale · <a_i, c_{labels_i}> for every row i, in fp32 (fp64 for fp64 input). O(B·D)."""
    acc = torch.promote_types(a.dtype, torch.float32)
    return scale.to(acc) * (a.to(acc) * c.index_select(0, labels).to(acc)).sum(dim=1)


def zero_grad_term(bias: torch.Tensor | None) -> torch.Tensor | float:
    """0·bias: keeps a cancelled bias in the graph so it receives an exactly-zero gradient (DDP
    never sees an unused parameter), and a non-finite bias still poisons the loss."""
    return 0.0 if bias is None else bias.float().reshape(()) * 0.0


def merge_stats(m_part: torch.Tensor, l_part: torch.Tensor):
    """(splits, K) partial online-softmax statistics (max, sum of exp(x − max)) -> (max, log sum)
    per column. Splits that saw nothing hold (−inf, 0) and drop out."""
    m = m_part.amax(dim=0)
    safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return m, (l_part * (m_part - safe).exp()).sum(dim=0).log()


def new_output(shape, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Output buffer for a kernel. With CLIPKERN_NAN_FILL=1 (the tests set it) it starts as NaN so
    that an element the kernel forgot to write shows up."""
    dtype = like.dtype if dtype is None else dtype
    if os.environ.get("CLIPKERN_NAN_FILL", "0") not in ("", "0"):
        return torch.full(shape, float("nan"), device=like.device, dtype=dtype)
    return torch.empty(shape, device=like.device, dtype=dtype)


@dataclass(frozen=True)
class TileConfig:
    """Block sizes and split counts for one launch. GPU values target H100-class parts; the CPU
    interpreter prefers few, large blocks (numpy does the work per block)."""

    block_m: int
    block_n: int
    block_k: int
    block_d: int
    num_warps: int
    num_stages: int
    row_splits: int
    col_splits: int

    @property
    def interpret(self) -> bool:
        return interpreter_enabled()

    def kernel_args(self, dtype: torch.dtype, *, with_block_d: bool = False) -> dict:
        """The constexpr and launch arguments every family's kernels take."""
        from .triton_tiles import dot_precision

        args = dict(BLOCK_M=self.block_m, BLOCK_N=self.block_n, BLOCK_K=self.block_k,
                    UPCAST=self.interpret, PRECISION=dot_precision(dtype, self.interpret),
                    num_warps=self.num_warps, num_stages=self.num_stages)
        if with_block_d:
            args["BLOCK_D"] = self.block_d
        return args

    def split_grid(self, rows: int, cols: int):
        """Forward grid (row splits, column splits) with no empty split, and blocks per split."""
        row_blocks, col_blocks = math.ceil(rows / self.block_m), math.ceil(cols / self.block_n)
        rows_per = math.ceil(row_blocks / self.row_splits)
        cols_per = math.ceil(col_blocks / self.col_splits)
        return (math.ceil(row_blocks / rows_per), math.ceil(col_blocks / cols_per)), rows_per, cols_per

    def slice_grid(self, rows: int, width: int):
        """Backward grid: one program per (row block, BLOCK_D slice of the output)."""
        return math.ceil(rows / self.block_m), math.ceil(width / self.block_d)


def contiguous_rows(t: torch.Tensor) -> torch.Tensor:
    """Kernels index rows by stride and assume a contiguous last dimension."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def tile_config(rows: int, cols: int, width: int, device: torch.device) -> TileConfig:
    """Choose blocks and a 2-D split of the rows×cols tile grid so that even B=4096 fills the GPU.

    The forward runs on a (row_splits × col_splits) grid: each program walks a rectangle of tiles.
    Column statistics are merged per row split and row statistics per column split, so the extra
    memory is (row_splits·cols + col_splits·rows) floats: O(B + N).
    """
    if interpreter_enabled() or device.type != "cuda":
        bk = min(128, max(16, 1 << max(width - 1, 0).bit_length()))
        bd = min(256, max(16, 1 << max(width - 1, 0).bit_length()))
        # two splits per axis whenever possible, so the interpreter exercises both merges
        return TileConfig(64, 64, bk, bd, 4, 1, min(2, math.ceil(rows / 64)), min(2, math.ceil(cols / 64)))
    bd = min(256, max(16, 1 << max(width - 1, 0).bit_length()))
    sms = _sm_count(device)
    # One block size for rows and columns, symmetric in (rows, cols): the backward's transposed call
    # must tile S exactly like the forward did. Smaller blocks when 128-row blocks × D slices would
    # leave SMs idle in the backward (e.g. B = 4096, D = 768: 32 × 3 = 96 < 132 programs).
    short = min(rows, cols)
    bm = 128 if math.ceil(short / 128) * math.ceil(width / bd) >= sms else 64
    bn, bk = bm, 64
    row_blocks, col_blocks = math.ceil(rows / bm), math.ceil(cols / bn)
    row_splits = min(row_blocks, 64)
    col_splits = max(1, min(col_blocks, math.ceil(2 * sms / row_splits), 64))
    return TileConfig(bm, bn, bk, bd, 8 if bm == 128 else 4, 2, row_splits, col_splits)
