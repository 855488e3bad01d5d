"""The torch ops of the CUDA (csrc) path of the CLIP loss in the performance model: those the extension
issues around its kernels (hopper_dispatch.cuh, kernels.cu), those of the loss op pair
(csrc/composite/contrastive_loss.cpp), both listed as the C++ issues them, and whatever the public API
adds around the op, recorded on fake tensors. cuda_path.py adds them to the kernels' time."""
from __future__ import annotations

import torch

from . import count
from .cuda_plan import cdiv, env_budget_mb, plan_constants, workspace_rows


def extension_torch_ops(M: int, N: int, D: int, dtype: torch.dtype) -> list:
    """The torch ops the csrc contrastive_bwd issues around its dS kernel (kernels.cu, hopper_dispatch.cuh),
    called with pos_grad as the loss op pair calls it for labels None."""
    e = torch.tensor([], dtype=dtype).element_size()
    name = str(dtype)
    chunk = workspace_rows(M, N, D, e, env_budget_mb())
    ops, first = [count.TorchOp("mul", "op", "bwd", 0, 12, "torch.float32")], True  # s·pos_grad (kernels.cu)
    for r0 in range(0, M, chunk):
        rows = min(chunk, M - r0)
        # the positives: s·pos_grad added to the chunk's diagonal of the workspace (hopper_dispatch.cuh)
        ops.append(count.TorchOp("add_", "op", "bwd", 0, 2 * e * min(rows, N - r0), name))
        ops.append(count.TorchOp("mm", "gemm", "bwd", 2 * rows * N * D, e * (rows * N + N * D + rows * D), name))
        if chunk >= M:
            ops.append(count.TorchOp("mm", "gemm", "bwd", 2 * rows * N * D, e * (rows * N + M * D + N * D), name))
        else:  # fp32 accumulation of dY across chunks (the first writes it, the others read and write it)
            acc = 4 * N * D * (1 if first else 2)
            ops.append(count.TorchOp("mm" if first else "addmm", "gemm", "bwd", 2 * rows * N * D,
                                     e * (rows * N + rows * D) + acc, name))
        first = False
    if chunk < M:
        ops.append(count.TorchOp("_to_copy", "op", "bwd", 0, (4 + e) * N * D, name))
    tiles = cdiv(M, plan_constants()["kTileRows"]) * cdiv(N, plan_constants()["kTileCols"])
    ops.append(count.TorchOp("sum", "op", "bwd", 0, 4 * tiles + 4, "torch.float32"))
    return ops


def loss_op_torch_ops(M: int, N: int, D: int, dtype: torch.dtype) -> list:
    """The ATen ops of the csrc loss op pair around contrastive_fwd / contrastive_bwd, exactly as
    csrc/composite/contrastive_loss.cpp issues them for 16-bit CUDA features, labels None, symmetric,
    M == N (the ClipLoss default): the positives (one batched GEMM with an fp32 result and its sum), the
    loss (one stack + sum of the statistics, one fused multiply-add), the backward's weights, and the
    positives' scale term. The positives' feature gradient is folded into the dS workspace
    (extension_torch_ops), so no op here passes over the features except the forward's GEMM."""
    e = torch.tensor([], dtype=dtype).element_size()
    f = "torch.float32"
    tiny = lambda op, phase, n=1: count.TorchOp(op, "op", phase, 0, 4 * n, f)  # noqa: E731
    fwd = [count.TorchOp("bmm", "gemm", "fwd", 2 * M * D, e * 2 * M * D + 4 * M, f), tiny("sum", "fwd", M),
           count.TorchOp("stack", "op", "fwd", 0, 4 * 2 * (2 * M + 2 * M), f), tiny("sum", "fwd", 4 * M),
           tiny("mul", "fwd"), tiny("addcmul", "fwd")]
    bwd = [tiny("mul", "bwd"), tiny("clone", "bwd", 2 * M), tiny("mul", "bwd"), tiny("addcmul", "bwd")]
    return fwd + bwd


# ---------------------------------------------------------------- the public API's ops around the csrc op
class _ApiOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Records aten ops like count._TorchCounter; the csrc ops (namespace clipkern) are the kernels
    counted above, so they run (on fake tensors: their register_fake) without being recorded."""

    def __init__(self):
        super().__init__()
        self.ops, self.phase, self.custom = [], "fwd", []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "clipkern":
            self.custom.append(f"{self.phase}:{func.name()}")
            return func(*args, **kwargs)
        kind = count.classify(func, args)
        flops = count.gemm_flops(func.overloadpacket.__name__, args)[0] if kind == "gemm" else 0
        out = func(*args, **kwargs)
        leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        if kind == "op" and not leaves:
            kind = "free"
        if kind != "free":
            self.ops.append(count.TorchOp(func.overloadpacket.__name__, kind, self.phase, flops,
                                          count._tensor_bytes(args, kwargs, out), str(leaves[0].dtype) if leaves else ""))
        return out


def api_torch_ops(M: int, N: int, D: int, dtype: torch.dtype) -> tuple[list, list]:
    """(torch ops, csrc ops called) of one clip_loss(backend="cuda") forward + backward at full size,
    on fake tensors (no data, no compute). Needs the extension (its ops' schemas and fake kernels)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    import clipkern.functional as F

    with FakeTensorMode():
        a = torch.empty(M, D, dtype=dtype).requires_grad_(True)
        c = torch.empty(N, D, dtype=dtype).requires_grad_(True)
        scale = torch.empty((), dtype=torch.float32).requires_grad_(True)
        with _ApiOps() as rec:
            loss = F.clip_loss(a, c, scale, backend="cuda")
            rec.phase = "bwd"
            loss.backward()
    return rec.ops, rec.custom
