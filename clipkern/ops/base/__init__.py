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

from ... import _extension
from ..._backend import BackendUnavailable, interpreter_enabled


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
class Blocks:
    """One kernel's blocks: square (rows = columns) tiles of `tile`, `k` wide slices of the
    reduction, `d` wide slices of the output (backward only), and the launch's warps/stages."""

    tile: int
    k: int
    d: int
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class TileConfig:
    """Blocks for the forward and backward kernels and the forward's 2-D split.

    GPU values: chosen so that ptxas reports no register spills for sm_90a (checked statically
    by compiling every kernel for sm_90a without a GPU; not yet timed on one). The CPU interpreter
    prefers few, large blocks (numpy does the work per block) and uses one block set for both.
    """

    fwd: Blocks
    bwd: Blocks
    row_splits: int
    col_splits: int

    @property
    def interpret(self) -> bool:
        return interpreter_enabled()

    def kernel_args(self, dtype: torch.dtype, *, backward: bool = False) -> dict:
        """The constexpr and launch arguments every family's kernels take."""
        from .triton_tiles import dot_precision

        b = self.bwd if backward else self.fwd
        args = dict(BLOCK_M=b.tile, BLOCK_N=b.tile, BLOCK_K=b.k, UPCAST=self.interpret,
                    PRECISION=dot_precision(dtype, self.interpret), num_warps=b.num_warps, num_stages=b.num_stages)
        if backward:
            args["BLOCK_D"] = b.d
        return args

    def split_grid(self, rows: int, cols: int):
        """Forward grid (row splits, column splits) with no empty split, and blocks per split."""
        row_blocks, col_blocks = math.ceil(rows / self.fwd.tile), math.ceil(cols / self.fwd.tile)
        rows_per = math.ceil(row_blocks / self.row_splits)
        cols_per = math.ceil(col_blocks / self.col_splits)
        return (math.ceil(row_blocks / rows_per), math.ceil(col_blocks / cols_per)), rows_per, cols_per

    def slice_grid(self, rows: int, width: int):
        """Backward grid: one program per (row block, BLOCK_D slice of the output)."""
        return math.ceil(rows / self.bwd.tile), math.ceil(width / self.bwd.d)


def contiguous_rows(t: torch.Tensor) -> torch.Tensor:
    """Kernels index rows by stride and assume a contiguous last dimension."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def _pow2(n: int, lo: int, hi: int) -> int:
    return min(hi, max(lo, 1 << max(n - 1, 0).bit_length()))


def tile_config(rows: int, cols: int, width: int, device: torch.device, dtype: torch.dtype = torch.bfloat16,
                *, dots_per_tile: int = 1) -> TileConfig:
    """Blocks and the forward's (row_splits × col_splits) split so that even B = 4096 fills the GPU.

    Each forward program walks a rectangle of tiles; column statistics merge per row split and row
    statistics per column split, so extra memory is (row_splits·cols + col_splits·rows) floats:
    O(B + N). The backward runs one program per (64-row block, D slice): B = 4096, D = 768 gives
    64 × 3 = 192 programs for 132 SMs. `dots_per_tile=2` (IMSep) takes smaller forward tiles.
    The choice depends only on (rows, cols) symmetrically and the width, so a transposed backward
    call tiles like the forward.
    """
    if interpreter_enabled() or device.type != "cuda":
        blocks = Blocks(64, _pow2(width, 16, 128), _pow2(width, 16, 256), 4, 1)
        # two splits per axis whenever possible, so the interpreter exercises both merges
        return TileConfig(blocks, blocks, min(2, math.ceil(rows / 64)), min(2, math.ceil(cols / 64)))
    wide = dtype == torch.float32  # 3xTF32 dots need more registers
    fwd = Blocks(64, 16 if wide else 32, 0, 4, 3) if wide or dots_per_tile > 1 else Blocks(128, 32, 0, 8, 3)
    bwd = Blocks(64, 16, _pow2(width, 16, 128), 8, 3) if wide else Blocks(64, 32, _pow2(width, 16, 256), 8, 3)
    sms = _sm_count(device)
    row_blocks, col_blocks = math.ceil(rows / fwd.tile), math.ceil(cols / fwd.tile)
    row_splits = min(row_blocks, 64)
    col_splits = max(1, min(col_blocks, math.ceil(2 * sms / row_splits), 64))
    return TileConfig(fwd, bwd, row_splits, col_splits)


# ---------------------------------------------------------------- the csrc extension's ops (backend="cuda")
def extension_ops():
    """torch.ops.clipkern with the csrc extension loaded (each family's cuda_ops.py imports it once);
    BackendUnavailable with the reason when it cannot be loaded."""
    if _extension.load() is None:
        raise BackendUnavailable(f"backend='cuda' is unavailable: {_extension.unavailable_reason()}")
    return torch.ops.clipkern


def accumulation_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype of the csrc ops' statistics: float64 for float64 inputs (CPU), float32 otherwise."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32
