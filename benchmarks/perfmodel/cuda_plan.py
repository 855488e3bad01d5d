"""The Hopper kernels' launch plan for the performance model: the constants of csrc/cuda/hopper_plan.h
and Python mirrors of its functions (tests/test_hopper_compile.py checks them against the header
compiled on the host). Used by cuda_path.py (kernel work) and cuda_torch_ops.py (the torch ops)."""
from __future__ import annotations

import os
import re

from . import bound as bd

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CUDA_DIR = os.path.join(ROOT, "csrc", "cuda")
PLAN_HEADER = os.path.join(CUDA_DIR, "hopper_plan.h")


def plan_constants() -> dict:
    """{name: value} of the `constexpr int kName = value;` lines of hopper_plan.h."""
    with open(PLAN_HEADER) as f:
        return {name: int(v) for name, v in re.findall(r"constexpr int (k\w+) = (\d+);", f.read())}


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def forward_plan(M: int, N: int, sms: int = bd.SMS) -> dict:
    """clipkern_hopper::forward_plan."""
    k = plan_constants()
    row_blocks, col_blocks = cdiv(M, k["kTileRows"]), cdiv(N, k["kTileCols"])
    slots = k["kFwdCtasPerSm"] * max(1, sms)
    rs = min(row_blocks, k["kMaxSplits"], slots)
    cs = max(1, min(col_blocks, slots // rs, k["kMaxSplits"]))
    rb_per, cb_per = cdiv(row_blocks, rs), cdiv(col_blocks, cs)
    return dict(row_blocks=row_blocks, col_blocks=col_blocks, row_splits=cdiv(row_blocks, rb_per),
                col_splits=cdiv(col_blocks, cb_per), rb_per_split=rb_per, cb_per_split=cb_per)


def workspace_rows(M: int, N: int, D: int, elem_bytes: int, budget_mb: float = 0.0) -> int:
    """clipkern_hopper::workspace_rows (budget_mb > 0: CLIPKERN_WORKSPACE_MB)."""
    tile = plan_constants()["kTileRows"]
    if budget_mb > 0:
        budget = int(budget_mb * 1048576.0)
    else:
        budget = min(1024 << 20, max(64 << 20, 4 * (M + N) * D * elem_bytes))
    fit = budget // max(1, N * elem_bytes)
    return min(M, max(tile, fit // tile * tile))


def env_budget_mb() -> float:
    raw = os.environ.get("CLIPKERN_WORKSPACE_MB", "").strip()
    return float(raw) if raw else 0.0
