"""Multi-process CLIP benchmark: clipkern's ClipLoss(local_loss=True, gather_with_grad=True), which
computes each logit once across ranks, beside open_clip's ClipLoss with the same arguments (each
logit on two ranks), fwd+bwd, per rank.

    torchrun --nproc_per_node N -m benchmarks.run --distributed --out benchmarks/results \\
             [--batch-sizes 4096 16384 (per rank)] [--dim 768] [--dtype bf16] [--reps 20]

NCCL on CUDA (one GPU per rank: cuda:LOCAL_RANK), gloo on CPU (tiny sizes; the clipkern provider runs
the reference backend there, or the Triton interpreter with TRITON_INTERPRET=1). Per rank and local
batch b (global B = N·b): the median fwd+bwd time (fixed rep count, so every rank runs the same
collectives), peak extra memory (CUDA), and the bytes this rank sends through collectives in one
step, counted from the collectives actually called (ring algorithms: all_gather (W−1)·in,
reduce-scatter and all_to_all (W−1)/W·in, all_reduce 2(W−1)/W·in). Rank 0 writes
OUT/<gpu-slug or cpu>/clip_distributed.json (one row per rank × provider × b) and prints a table.

`per_rank_mma_flops` counts the executed MMA FLOPs of one rank's step under TRITON_INTERPRET=1 with
CLIPKERN_TARGET=sm90 (benchmarks/perfmodel/count.py), the collectives run uncounted.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from . import common as C

COLLECTIVE_NAMESPACES = ("_c10d_functional", "c10d", "_c10d_functional_autograd")


@contextlib.contextmanager
def collectives_uncounted():
    """Let collectives through benchmarks.perfmodel.count's torch counter untouched (it would run a
    custom op's CompositeExplicitAutograd kernel, which collectives do not have)."""
    from .perfmodel import count

    original = count._TorchCounter.__torch_dispatch__

    def dispatch(self, func, types, args=(), kwargs=None):
        if func.namespace in COLLECTIVE_NAMESPACES:
            return func(*args, **(kwargs or {}))
        return original(self, func, types, args, kwargs)

    count._TorchCounter.__torch_dispatch__ = dispatch
    try:
        yield
    finally:
        count._TorchCounter.__torch_dispatch__ = original


def per_rank_mma_flops(loss_fn, sim_dtype=torch.float32) -> int:
    """Executed MMA FLOPs (tl.dot in the interpreted kernels + torch GEMMs) of one fwd+bwd of
    `loss_fn()` on this rank, with the sm_90 launch configuration."""
    from .perfmodel.count import record_step

    with collectives_uncounted():
        totals = record_step(loss_fn, sim_dtype).totals()
    return totals["dot_flops"] + totals["gemm_flops"]


def _nbytes(t) -> int:
    return sum(x.numel() * x.element_size() for x in torch.utils._pytree.tree_leaves(t)
               if isinstance(x, torch.Tensor))


class CommCounter(TorchDispatchMode):
    """Bytes this rank sends through collectives while active (ring-algorithm volumes)."""

    def __init__(self, world_size: int):
        super().__init__()
        self.world_size, self.sent, self.calls = world_size, 0, 0
        self.by_op: dict[str, int] = {}  # op name -> bytes sent

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace in COLLECTIVE_NAMESPACES:
            name = func.overloadpacket.__name__
            sent = self._volume(name, args)
            if sent is not None:
                self.sent += sent
                self.calls += 1
                self.by_op[name] = self.by_op.get(name, 0) + sent
        return func(*args, **kwargs)

    # op name -> (index of the argument that holds what this rank contributes, ring factor × (W−1)/W
    # as a (numerator, denominator-is-W) pair): all_gather sends its input W−1 times, reduce-scatter,
    # all_to_all and scatter (W−1)/W of it, all_reduce twice that. Functional ops take the input
    # first; the c10d in-place ops take (outputs, inputs).
    VOLUMES = {"all_gather_into_tensor": (0, "gather"), "reduce_scatter_tensor": (0, "split"),
               "all_to_all_single": (0, "split"), "all_reduce": (0, "reduce"),
               "allgather_": (1, "gather"), "_allgather_base_": (1, "gather"), "reduce_scatter_": (1, "split"),
               "_reduce_scatter_base_": (1, "split"), "alltoall_": (1, "split"), "alltoall_base_": (1, "split"),
               "scatter_": (1, "split"), "allreduce_": (0, "reduce")}
    NOT_TRAFFIC = ("wait_tensor", "_wrap_tensor_autograd", "barrier")

    def _volume(self, name: str, args) -> int | None:
        """Bytes sent by this rank, or None for an op that moves no data of its own."""
        if name in self.NOT_TRAFFIC:
            return None
        if name not in self.VOLUMES:
            raise NotImplementedError(f"CommCounter does not know the collective {name!r}")
        index, kind = self.VOLUMES[name]
        W, n = self.world_size, _nbytes(args[index])
        return {"gather": (W - 1) * n, "split": (W - 1) * n // W, "reduce": 2 * (W - 1) * n // W}[kind]


def _providers(rank: int, world_size: int, device):
    import clipkern
    from .providers import clipkern_backend

    kw = dict(local_loss=True, gather_with_grad=True, rank=rank, world_size=world_size)
    out = {"clipkern": clipkern.ClipLoss(**kw, backend=clipkern_backend(device))}
    try:
        from open_clip.loss import ClipLoss as OpenClipLoss

        out["open_clip"] = OpenClipLoss(**kw)
    except ImportError:
        pass
    return {name: (lambda m: lambda i, t, s, b: m(i, t, s, b))(m) for name, m in out.items()}


def _time_ms(fn, inputs, reps: int, warmup: int) -> list[float]:
    cuda = inputs.image.device.type == "cuda"
    times = []
    for k in range(warmup + reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            C.step(fn, inputs)
            end.record()
            torch.cuda.synchronize()
            ms = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            C.step(fn, inputs)
            ms = (time.perf_counter() - t0) * 1e3
        if k >= warmup:
            times.append(ms)
    return times


def measure(rank: int, world_size: int, device, sizes, D: int, dtype_name: str, reps: int, warmup: int) -> list[dict]:
    """This rank's rows. Every rank runs the same steps in the same order (collectives match)."""
    dtype = C.DTYPES[dtype_name]
    rows = []
    for b in sizes:
        for name, fn in _providers(rank, world_size, device).items():
            inputs = C.make_inputs("clip", b, D, dtype, device, seed=1000 * b + rank)
            with CommCounter(world_size) as comm:
                loss = C.step(fn, inputs)
            times = torch.tensor(_time_ms(fn, inputs, reps, warmup), dtype=torch.float64)
            q = torch.quantile(times, torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64)).tolist()
            rows.append(dict(provider=name, loss="clip local_loss+gather_with_grad", rank=rank, world_size=world_size,
                             B_local=b, B_global=b * world_size, D=D, dtype=dtype_name, median_ms=q[0], q20_ms=q[1],
                             q80_ms=q[2], reps=reps, peak_mem_mib=C.peak_extra_mib(fn, inputs),
                             comm_bytes_sent=comm.sent, collectives=comm.calls, comm_by_op=comm.by_op,
                             loss_value=float(loss)))
    return rows


def table(rows) -> str:
    lines = [f"{'B_local':>8} {'B_global':>9} {'rank':>4}  {'provider':<10} {'median ms [q20-q80]':<28} "
             f"{'peak MiB':>9} {'sent MiB':>9} {'colls':>5}  {'loss':>10}"]
    for r in sorted(rows, key=lambda r: (r["B_local"], r["provider"], r["rank"])):
        pk = "n/a" if r["peak_mem_mib"] is None else f"{r['peak_mem_mib']:.1f}"
        lines.append(f"{r['B_local']:>8} {r['B_global']:>9} {r['rank']:>4}  {r['provider']:<10} "
                     f"{r['median_ms']:.3f} [{r['q20_ms']:.3f}-{r['q80_ms']:.3f}]".ljust(66)
                     + f"{pk:>9} {r['comm_bytes_sent'] / 2**20:>9.3f} {r['collectives']:>5}  {r['loss_value']:>10.5f}")
    return "\n".join(lines)


def main(args) -> int:
    """The --distributed mode of benchmarks.run (args: its parsed flags); run under torchrun."""
    import torch.distributed as dist

    if "RANK" not in os.environ:
        sys.exit("--distributed runs under torchrun: torchrun --nproc_per_node N -m benchmarks.run --distributed ...")
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(args.cpu_threads)
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        sizes = sorted(args.batch_sizes or ([1024, 4096, 16384] if cuda else [16, 32]))
        D = args.dim or (768 if cuda else 32)
        dtype = args.dtype or ("bf16" if cuda else "fp32")
        reps = args.reps or (20 if cuda else 3)
        rows = measure(rank, world_size, device, sizes, D, dtype, reps, warmup=2 if cuda else 1)
        gathered = [None] * world_size
        dist.all_gather_object(gathered, rows)
        if rank == 0:
            env = C.environment(device)
            flat = [dict(r, **env) for part in gathered for r in part]
            out = Path(args.out) / C.device_slug(device)
            out.mkdir(parents=True, exist_ok=True)
            path = out / "clip_distributed.json"
            path.write_text(json.dumps(flat, indent=1) + "\n")
            print(f"wrote {path}", file=sys.stderr)
            print(f"== ClipLoss(local_loss=True, gather_with_grad=True), fwd+bwd per rank, world_size={world_size}, "
                  f"D={D}, {dtype}, {env['device']}\n{table(flat)}")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0
