"""Shared benchmark helpers: inputs, providers, timing, peak memory and FLOP rates (the providers in
benchmarks/providers.py, the sweep loop, tables and FLOP rates in benchmarks/sweeps.py; all re-exported here).

What is measured, everywhere in benchmarks/:
- one step of the loss alone, forward + backward: `loss = fn(I, T, s, b); loss.backward()`, with
  gradients for both feature matrices, logit_scale and (SigLIP) logit_bias; `.grad` is reset to None
  before each step, so allocating the gradients is part of every step;
- time: median and 20/80 % quantiles in ms after a warm-up (the first, untimed call also pays for
  compilation and autotuning). CUDA: CUDA events around the step, then a synchronize, with the L2
  cache flushed before each step. CPU: time.perf_counter around the step;
- peak extra memory (CUDA only): torch.cuda.max_memory_allocated after reset_peak_memory_stats,
  minus what was allocated before the step (inputs are not counted, their gradients are). It is not
  measured on CPU and reported as None;
- achieved TFLOP/s: 6·B·N·D useful FLOPs for fwd+bwd (docs/design.md §5), set beside the bf16 matmul
  rate (B×D @ D×B) measured in the same run on the same GPU.

Providers (one callable `fn(image, text, logit_scale, logit_bias) -> 0-d loss` each):
  clipkern       clipkern.functional.clip_loss / siglip_loss: `auto` on CUDA (triton), on CPU the
                 reference backend, or triton when TRITON_INTERPRET=1 (interpreted: timing meaningless)
  cuda           clipkern.functional.clip_loss(backend="cuda"): the csrc CUDA extension's kernels
                 (CUDA device and a built extension only; otherwise skipped with the reason)
  torch          clipkern.ops.*.reference, eager
  torch.compile  torch.compile of that reference (dynamic=False: one graph per shape)
  open_clip      open_clip.loss.ClipLoss / SigLipLoss
  inf-cl         CLIP only: ½[cal_inf_loss(s·I, T) + cal_inf_loss(s·T, I)] (pip package inf-cl)
A provider that cannot be built raises ProviderUnavailable with the reason; callers report it.
"""
from __future__ import annotations

import datetime
import gc
import importlib.metadata
import json
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from clipkern._backend import interpreter_enabled  # noqa: F401  (re-exported for run.py/demo.py)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
LOSSES = ("clip", "siglip")  # the open_clip drop-ins (the demo compares these with open_clip)
BENCH_LOSSES = LOSSES + ("imsep",)  # every family the sweep and the pytest-benchmark suite cover
PROVIDERS = {
    "clip": ("clipkern", "cuda", "torch", "torch.compile", "open_clip", "inf-cl"),
    "siglip": ("clipkern", "torch", "torch.compile", "open_clip"),
    "imsep": ("clipkern", "torch", "torch.compile"),
}
# Initial values of open_clip's models: CLIP s = 1/0.07; SigLIP s = 10, b = -10. IMSep uses CLIP's.
INIT = {"clip": (1 / 0.07, None), "siglip": (10.0, -10.0), "imsep": (1 / 0.07, None)}
SEMANTIC_WIDTH = 384  # all-MiniLM-L6-v2, the sentence encoder AlignCLIP's recipe uses


@torch.compiler.disable
def semantic_features(rows: int, device) -> torch.Tensor:
    """IMSep's constant caption embeddings (B × 384): fixed random unit rows, cached per (B, device)."""
    key = (rows, str(device))
    if key not in _SEMANTIC:
        gen = torch.Generator(device=device).manual_seed(1234)
        u = torch.randn(rows, SEMANTIC_WIDTH, generator=gen, device=device)
        _SEMANTIC[key] = F.normalize(u, dim=-1)
    return _SEMANTIC[key]


_SEMANTIC: dict = {}
INTERPRETED_NOTE = "TRITON_INTERPRET=1: Triton kernels interpreted on CPU, the time is meaningless"


class ProviderUnavailable(RuntimeError):
    """This provider cannot run here; the message says why."""


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------- inputs
@dataclass
class Inputs:
    """Leaf tensors that need gradients: image (B×D), text (N×D), logit_scale, logit_bias (or None)."""

    image: torch.Tensor
    text: torch.Tensor
    logit_scale: torch.Tensor
    logit_bias: torch.Tensor | None

    def args(self):
        return self.image, self.text, self.logit_scale, self.logit_bias

    def leaves(self) -> list[torch.Tensor]:
        return [t for t in self.args() if t is not None]

    def zero_grad(self) -> None:
        for t in self.leaves():
            t.grad = None

    def grads(self) -> list[torch.Tensor | None]:
        return [t.grad for t in self.leaves()]

    def to(self, dtype: torch.dtype) -> "Inputs":
        """A detached copy in another dtype (features only; scale and bias stay fp32, or fp64)."""
        sdt = torch.float64 if dtype == torch.float64 else torch.float32
        conv = lambda t, dt: None if t is None else t.detach().to(dt).requires_grad_()  # noqa: E731
        return Inputs(conv(self.image, dtype), conv(self.text, dtype), conv(self.logit_scale, sdt),
                      conv(self.logit_bias, sdt))


def make_inputs(loss: str, B: int, D: int, dtype: torch.dtype, device, N: int | None = None,
                seed: int = 0) -> Inputs:
    """Fresh random L2-normalised features (never zeros), and open_clip's initial scale/bias."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def feats(rows):
        x = torch.randn(rows, D, generator=gen, device=device, dtype=torch.float32)
        return F.normalize(x, dim=-1).to(dtype).requires_grad_()

    scale, bias = INIT[loss]
    sdt = torch.float64 if dtype == torch.float64 else torch.float32
    return Inputs(feats(B), feats(B if N is None else N),
                  torch.tensor(scale, device=device, dtype=sdt, requires_grad=True),
                  None if bias is None else torch.tensor(bias, device=device, dtype=sdt, requires_grad=True))


# ------------------------------------------------------------------------------- running, timing
def step(fn, inputs: Inputs) -> torch.Tensor:
    """One fwd+bwd step; returns the detached loss."""
    inputs.zero_grad()
    loss = fn(*inputs.args())
    loss.backward()
    return loss.detach()


def loss_and_grads(fn, inputs: Inputs):
    """(loss, [grad of each leaf]) of one step, for accuracy checks."""
    loss = step(fn, inputs)
    return loss, [None if g is None else g.detach().clone() for g in inputs.grads()]


@dataclass
class Timing:
    median: float
    q20: float
    q80: float
    reps: int


def time_fwd_bwd(fn, inputs: Inputs, warmup_ms: float = 100.0, rep_ms: float = 500.0,
                 min_reps: int = 5, max_reps: int = 200) -> Timing:
    """Median and 20/80 % quantiles (ms) of `step(fn, inputs)`; see the module docstring."""
    device = inputs.image.device
    cuda = device.type == "cuda"
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device=device) if cuda else None

    def once() -> float:
        if cuda:
            flush.zero_()  # evict the L2 cache, outside the timed window
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step(fn, inputs)
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        step(fn, inputs)
        return (time.perf_counter() - t0) * 1e3

    est = once()  # the first call: compile / autotune; not counted
    spent, n_warm = 0.0, 0
    while n_warm < 1 or (spent < warmup_ms and n_warm < max_reps):
        est = once()
        spent += est
        n_warm += 1
    reps = int(min(max_reps, max(min_reps, rep_ms / max(est, 1e-3))))
    q = torch.tensor([once() for _ in range(reps)], dtype=torch.float64)
    med, q20, q80 = torch.quantile(q, torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64)).tolist()
    return Timing(med, q20, q80, reps)


def peak_extra_mib(fn, inputs: Inputs) -> float | None:
    """Peak CUDA memory of one step above what was allocated before it (MiB); None on CPU."""
    device = inputs.image.device
    if device.type != "cuda":
        return None
    inputs.zero_grad()
    gc.collect()
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step(fn, inputs)
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------ environment
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    n = torch.get_num_threads()
    return f"cpu ({platform.processor() or platform.machine()}, {n} thread{'s' if n > 1 else ''})"


def device_slug(device: torch.device) -> str:
    """Folder name for results: the GPU name in kebab-case ('nvidia-h100-80gb-hbm3'), or 'cpu'."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def environment(device: torch.device) -> dict:
    """Versions, device and date, copied into every result row."""
    try:
        import clipkern

        ck = clipkern.__version__
    except Exception as exc:  # noqa: BLE001 - the clipkern provider reports the details
        ck = f"import failed: {type(exc).__name__}"
    return {
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _version("triton"),
        "open_clip": _version("open_clip_torch"),
        "inf_cl": _version("inf-cl"),
        "clipkern": ck,
        "triton_interpret": interpreter_enabled(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------- per-family scripts
def add_script_args(parser, providers) -> None:
    """The command-line flags every per-family script shares (sizes are the script's own)."""
    parser.add_argument("--out", required=True, help="results folder; the file goes to OUT/<gpu-slug>/")
    parser.add_argument("--dim", type=int, help="D; default 768 on CUDA, 64 on CPU")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--providers", nargs="+", default=list(providers), help=f"subset of {tuple(providers)}")
    parser.add_argument("--rep-ms", type=float, default=None, help="time budget per measurement (ms)")
    parser.add_argument("--cpu-threads", type=int, default=1, help="torch threads on CPU (default 1)")


def table_footer(rows, times: dict, mems: dict) -> list[str]:
    """The closing lines of a per-family table: skipped providers, the interpreter note, CPU memory."""
    lines = [f"skipped {r['provider']}: {r['note']}" for r in rows if r["status"] == "skipped"]
    if any(INTERPRETED_NOTE in r["note"] for r in times.values()):
        lines.append(f"* {INTERPRETED_NOTE}")
    if any(r["status"] == "not measured" for r in mems.values()):
        lines.append("peak memory: not measured on CPU (CUDA only)")
    return lines


def script_settings(device: torch.device, dim, dtype, rep_ms, cpu_threads):
    """Defaults shared by the per-family scripts: (D, dtype name, rep_ms). GPU: D=768, bf16, 500 ms a
    measurement; CPU: D=64, fp32, 100 ms, and `cpu_threads` torch threads."""
    cuda = device.type == "cuda"
    if not cuda:
        torch.set_num_threads(cpu_threads)
    return dim or (768 if cuda else 64), dtype or ("bf16" if cuda else "fp32"), rep_ms or (500.0 if cuda else 100.0)


def print_header(env: dict) -> None:
    print(f"device: {env['device']} | torch {env['torch']} | triton {env['triton']} | clipkern {env['clipkern']} "
          f"| TRITON_INTERPRET={int(env['triton_interpret'])}", file=sys.stderr)


def run_script(args, sizes, gpu_sizes, cpu_sizes, run, table, filename: str, title: str) -> int:
    """A per-family script's main once its flags are parsed (add_script_args): the device and defaults
    (sizes: the given ones, else gpu_sizes on CUDA, cpu_sizes on CPU), the header,
    `run(sizes, D, dtype name, device, env, provider names, rep_ms) -> rows`, the rows as JSON to
    OUT/<gpu-slug or cpu>/filename, then "== title" ({D}, {dtype}, {device} filled in) and `table(rows)`."""
    device = pick_device()
    sizes = sorted(sizes or (gpu_sizes if device.type == "cuda" else cpu_sizes))
    D, dtype, rep_ms = script_settings(device, args.dim, args.dtype, args.rep_ms, args.cpu_threads)
    env = environment(device)
    print_header(env)
    rows = run(sizes, D, dtype, device, env, args.providers, rep_ms)
    write_json(args.out, device, filename, rows)
    print(f"== {title.format(D=D, dtype=dtype, device=env['device'])}\n{table(rows)}")
    return 0


def write_json(out_root, device: torch.device, filename: str, rows) -> Path:
    """Writes rows as JSON to OUT/<gpu-slug or cpu>/filename and says where."""
    out = Path(out_root) / device_slug(device)
    out.mkdir(parents=True, exist_ok=True)
    path = out / filename
    path.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return path


# The providers and the sweeps live in their own files; they import the helpers above, so they are
# imported last. Scripts keep using `from . import common as C` and `C.<name>`.
from .providers import (CUDA_LOSSES, Provider, build_each, build_provider, build_providers,  # noqa: E402,F401
                        clipkern_backend, cuda_backend, reference_fn)
from .sweeps import (METRICS, loss_tflops, matmul_tflops, ratio_table, rel_diff_vs_torch, sweep,  # noqa: E402,F401
                     useful_flops)
