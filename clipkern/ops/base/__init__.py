"""What every loss family repeats, in plain torch: the label (positive-pair) terms, the exact-zero
bias gradient, split/merge of partial log-sum-exp statistics and the launch configuration.

The fused kernels of every family are *label-agnostic*: they compute dense, per-row or per-column
statistics over all B×N tiles (log-sum-exp, or sums of softplus). The positive pairs touch only B
entries, so their terms are computed here in O(B·D) torch ops and autograd adds their gradient.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
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
    """One kernel's blocks: `rows` × `cols` tiles, `k`-wide steps through the reduction, and the
    launch's warps and pipeline stages."""

    rows: int
    cols: int
    k: int
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class TileConfig:
    """Blocks of the forward and the backward's dS kernel, and the forward's 2-D split.

    The dS kernel steps through D with the forward's BLOCK_K (its recomputed S then sums the products
    in the forward's order). GPU values come from the sm_90a compile (see tile_config); the CPU
    interpreter prefers few, large blocks (numpy does the work per block).
    """

    fwd: Blocks
    ds: Blocks
    row_splits: int
    col_splits: int

    @property
    def interpret(self) -> bool:
        return interpreter_enabled()

    def kernel_args(self, dtype: torch.dtype, *, ds: bool = False) -> dict:
        """The constexpr and launch arguments every family's kernels take (ds=True: the dS kernel)."""
        from .triton_tiles import dot_precision

        b = self.ds if ds else self.fwd
        return dict(BLOCK_M=b.rows, BLOCK_N=b.cols, BLOCK_K=b.k, INTERPRETED=self.interpret,
                    PRECISION=dot_precision(dtype, self.interpret), num_warps=b.num_warps, num_stages=b.num_stages)

    def ds_grid(self, rows: int, cols: int):
        """dS kernel grid for a chunk of `rows` rows: one program per (row tile, column tile)."""
        return math.ceil(rows / self.ds.rows), math.ceil(cols / self.ds.cols)

    def ds_slot(self, r0: int, cols: int) -> int:
        """Index of the first dS program of the chunk starting at row r0 (r0 a multiple of the row
        tile), in the row-major order of the whole matrix's dS grid: per-program partials of the
        chunks then fill one buffer of ds_grid(rows, cols) slots."""
        return (r0 // self.ds.rows) * self.ds_grid(1, cols)[1]

    def split_grid(self, rows: int, cols: int):
        """Forward grid (row splits, column splits) with no empty split, and blocks per split."""
        row_blocks, col_blocks = math.ceil(rows / self.fwd.rows), math.ceil(cols / self.fwd.cols)
        rows_per = math.ceil(row_blocks / self.row_splits)
        cols_per = math.ceil(col_blocks / self.col_splits)
        return (math.ceil(row_blocks / rows_per), math.ceil(col_blocks / cols_per)), rows_per, cols_per


INT32_MAX = 2**31 - 1


def check_int32_offsets(**tensors: torch.Tensor) -> None:
    """The kernels index feature rows with 32-bit offsets (the dS workspace uses 64-bit ones): refuse,
    naming the argument, a matrix whose last element lies beyond 2³¹ − 1 elements from its start."""
    for name, t in tensors.items():
        last = sum((n - 1) * st for n, st in zip(t.shape, t.stride())) if t.numel() else 0
        if last > INT32_MAX:
            raise ValueError(f"{name} spans {last + 1} elements (shape {tuple(t.shape)}); the Triton kernels "
                             f"index features with 32-bit offsets (< 2^31): split the batch")


def contiguous_rows(t: torch.Tensor) -> torch.Tensor:
    """Kernels index rows by stride and assume a contiguous last dimension."""
    return t if t.stride(-1) == 1 else t.contiguous()


SM90_SMS = 132  # an H100/H200 SXM
TARGETS = ("sm90",)


def simulated_target() -> str | None:
    """CLIPKERN_TARGET=sm90 under TRITON_INTERPRET=1: every launcher takes exactly the launch
    configuration (blocks, warps, stages, splits, backward chunk) that an sm_90 GPU with 132 SMs
    would get, so the GPU's work can be counted on a CPU (benchmarks/roofline.py). Ignored outside
    the interpreter (a real GPU always tiles for itself)."""
    target = os.environ.get("CLIPKERN_TARGET", "").strip().lower()
    if not target:
        return None
    if target not in TARGETS:
        raise ValueError(f"CLIPKERN_TARGET must be one of {TARGETS} (or unset), got {target!r}")
    return target if interpreter_enabled() else None


_CONFIG_DTYPE: list[torch.dtype] = []


@contextmanager
def config_dtype(dtype: torch.dtype):
    """For the performance model: tile as if the features were `dtype` (the interpreter has no
    bf16, so it counts bf16 launches on fp32 tensors)."""
    _CONFIG_DTYPE.append(dtype)
    try:
        yield
    finally:
        _CONFIG_DTYPE.pop()


def _sm_count(device: torch.device) -> int:
    if simulated_target() is not None:
        return SM90_SMS
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def gpu_launch(device: torch.device) -> bool:
    """Whether launches take the GPU configuration: CUDA tensors, or a simulated target."""
    return simulated_target() is not None or (device.type == "cuda" and not interpreter_enabled())


def _pow2(n: int, lo: int, hi: int) -> int:
    return min(hi, max(lo, 1 << max(n - 1, 0).bit_length()))


def tile_config(rows: int, cols: int, width: int, device: torch.device, dtype: torch.dtype = torch.bfloat16,
                *, dots_per_tile: int = 1, col_moment: bool = False) -> TileConfig:
    """Blocks and the forward's (row_splits × col_splits) split.

    Each forward program walks a rectangle of tiles; column statistics merge per row split and row
    statistics per column split, so extra memory is (row_splits·cols + col_splits·rows) floats:
    O(B + N). The split fills the GPU in one wave where it can: row_splits·col_splits ≤ the SMs ×
    the CTAs that fit per SM, each program as close to the same work as the block counts allow.
    `dots_per_tile=2` (IMSep) takes smaller tiles; so does `col_moment=True` (the forward that also
    accumulates the column scale moment for the distributed loss: 128×64 spills there).
    """
    if _CONFIG_DTYPE:
        dtype = _CONFIG_DTYPE[-1]
    if not gpu_launch(device):
        blocks = Blocks(64, 64, _pow2(width, 16, 128), 4, 1)
        # two splits per axis whenever possible, so the interpreter exercises both merges
        return TileConfig(blocks, blocks, min(2, math.ceil(rows / 64)), min(2, math.ceil(cols / 64)))
    # From the sm_90a compile with the JIT's specialization (python -m benchmarks.roofline): every
    # choice compiles to wgmma with cp.async staging and no spills. 16-bit: 128×64 tiles, BLOCK_K = 64,
    # one warpgroup (4 warps): the forward at 255 registers and 72 KB of shared memory (two CTAs per SM),
    # the dS kernel at 168 (three), so one CTA's softmax runs under another's MMAs (8 warps on 128×128
    # tiles fit one CTA per SM). fp32 (3xTF32, three MMAs per product): 64×64, BLOCK_K = 32.
    # Two dots per tile (IMSep): 64×64, BLOCK_K = 32 (16 for fp32: 32 spills). With the column moment:
    # 64×64, BLOCK_K = 64 for 16-bit (248 registers, 2 CTAs/SM; 128×64 spills 292 bytes at 4 warps and
    # needs 8 warps = 1 CTA/SM), the dS kernel's BLOCK_K unchanged.
    wide = dtype == torch.float32
    if col_moment and not wide:
        fwd = Blocks(64, 64, 64, 4, 3)
    elif dots_per_tile > 1:
        fwd = Blocks(64, 64, 16 if wide else 32, 4, 3)
    else:
        fwd = Blocks(64, 64, 32, 4, 3) if wide else Blocks(128, 64, 64, 4, 3)
    slots = 2 * _sm_count(device)  # every choice: 4 warps, ≤ 255 registers, ≤ 113 KB: two CTAs per SM
    row_blocks, col_blocks = math.ceil(rows / fwd.rows), math.ceil(cols / fwd.cols)
    row_splits = min(row_blocks, 64, slots)
    col_splits = max(1, min(col_blocks, slots // row_splits, 64))
    return TileConfig(fwd, fwd, row_splits, col_splits)


# ---------------------------------------------------------------- the csrc extension's ops (backend="cuda")
def extension_ops():
    """torch.ops.clipkern with the csrc extension loaded (each family's extension_ops.py imports it once);
    BackendUnavailable with the reason when it cannot be loaded."""
    if _extension.load() is None:
        raise BackendUnavailable(f"backend='cuda' is unavailable: {_extension.unavailable_reason()}")
    return torch.ops.clipkern


def accumulation_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype of the csrc ops' statistics: float64 for float64 inputs (CPU), float32 otherwise."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------- the backward's dS workspace
WORKSPACE_MB_CAP = 1024          # the default workspace never exceeds this …
WORKSPACE_FEATURE_MULTIPLE = 4   # … nor 4× the bytes of the two feature matrices (at least 64 MiB)
# pointer arguments that point at feature-dtype tensors (the performance model compiles them as the
# simulated dtype); every other pointer is fp32 statistics, int64 labels or a partial-sum buffer
FEATURE_PTRS = frozenset({"x_ptr", "y_ptr", "u_ptr", "dx_ptr", "ds_ptr"})


def workspace_bytes(rows: int, cols: int, width: int, elem_bytes: int) -> int:
    """The dS workspace budget: CLIPKERN_WORKSPACE_MB when set, else min(1 GiB, max(64 MiB, 4× the
    feature bytes (rows + cols)·width·elem)), so extra memory stays O(B·D)."""
    raw = os.environ.get("CLIPKERN_WORKSPACE_MB", "")
    if raw.strip():
        try:
            mb = float(raw)
        except ValueError:
            raise ValueError(f"CLIPKERN_WORKSPACE_MB must be a number of megabytes, got {raw!r}") from None
        if not mb > 0:
            raise ValueError(f"CLIPKERN_WORKSPACE_MB must be positive, got {raw!r}")
        return int(mb * 2**20)
    features = WORKSPACE_FEATURE_MULTIPLE * (rows + cols) * width * elem_bytes
    return min(WORKSPACE_MB_CAP * 2**20, max(64 * 2**20, features))


def workspace_rows(rows: int, cols: int, width: int, elem_bytes: int, tile: int) -> int:
    """Rows of dS per backward chunk: as many as fit in the workspace budget (workspace_bytes), a
    multiple of the dS kernel's row tile, at least one tile, at most all rows. One chunk makes
    dY = dSᵀ X one GEMM; each further chunk adds one read-modify-write of the N×D dY accumulator
    (≈ 8·N·D bytes against the chunk's 6·chunk·N·D FLOPs: at chunk ≥ 4096 rows under 5 % of the
    chunk's time on an H100 by the roofline's rates)."""
    fit = workspace_bytes(rows, cols, width, elem_bytes) // max(1, cols * elem_bytes)
    return min(rows, max(tile, fit // tile * tile))


_CUDA_GEMM_PATHS: list[bool] = []


@contextmanager
def cuda_gemm_paths():
    """For the performance model's structural pass (which records GEMMs without running them): take
    the CUDA tensors' GEMM calls (fp32 accumulation by addmm/mm with out_dtype) on CPU tensors."""
    _CUDA_GEMM_PATHS.append(True)
    try:
        yield
    finally:
        _CUDA_GEMM_PATHS.pop()


def _mixed_gemms(device: torch.device) -> bool:
    return device.type == "cuda" or bool(_CUDA_GEMM_PATHS)


def chunked_input_grads(x: torch.Tensor, y: torch.Tensor, fill_ds, tile: int, *, need_dy: bool = True,
                        symmetric_x: bool = False):
    """dX = dS·Y and dY = dSᵀ·X, where dS (rows × cols, already multiplied by the logit scale) is
    written chunk by chunk into a bounded workspace by `fill_ds(ws, r0, r1)` (a Triton kernel
    launch filling ws[: r1 − r0] with dS[r0:r1]). The two products are cuBLAS GEMMs (torch.mm).

    symmetric_x: y is x (IMSep: dX = E·X with E symmetric), so only dX is formed.
    dY accumulates in the feature dtype when there is one chunk (a single GEMM, rounded once), and
    in fp32 across several chunks for 16-bit features (addmm with out_dtype on CUDA).
    Returns (dX, dY or None)."""
    rows, cols = x.shape[0], y.shape[0]
    chunk = workspace_rows(rows, cols, x.shape[1], x.element_size(), tile)
    ws = new_output((chunk, cols), x)
    dx = new_output(x.shape, x)
    dy = None
    sixteen = x.dtype in (torch.float16, torch.bfloat16)
    for r0 in range(0, rows, chunk):
        r1 = min(rows, r0 + chunk)
        w = ws[: r1 - r0]
        fill_ds(w, r0, r1)
        torch.mm(w, y, out=dx[r0:r1])
        if not need_dy or symmetric_x:
            continue
        if chunk >= rows:
            dy = torch.mm(w.t(), x)
        elif dy is None:
            part = torch.mm(w.t(), x[r0:r1]) if not sixteen or not _mixed_gemms(x.device) else \
                torch.mm(w.t(), x[r0:r1], out_dtype=torch.float32)
            dy = part.float() if sixteen else part
        else:
            dy = _accumulate(dy, w.t(), x[r0:r1], sixteen)
    if dy is not None and dy.dtype != x.dtype:
        dy = dy.to(x.dtype)
    return dx, dy


def _accumulate(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, sixteen: bool) -> torch.Tensor:
    """acc + a·b; for 16-bit a, b the product is accumulated in fp32 (acc is fp32)."""
    if not sixteen:
        return acc.addmm_(a, b)
    if _mixed_gemms(acc.device):
        return torch.addmm(acc, a, b, out_dtype=torch.float32)
    return acc.add_(torch.mm(a, b).float())  # the interpreter's fp16: no mixed-dtype GEMM on the CPU
