"""Shared benchmark helpers: inputs, providers, timing, peak memory and FLOP rates.

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
- achieved TFLOP/s: 6·B·N·D useful FLOPs for fwd+bwd (DESIGN.md §5), set beside the bf16 matmul
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
from typing import Callable

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


# -------------------------------------------------------------------------------------- providers
@dataclass
class Provider:
    name: str
    loss: str
    fn: Callable  # (image, text, logit_scale, logit_bias) -> 0-d loss
    backend: str = ""  # what actually runs, e.g. "triton", "reference", "eager"
    note: str = ""


def clipkern_backend(device: torch.device) -> str:
    """The backend the clipkern provider asks for: auto on CUDA; reference or interpreted triton on CPU."""
    if device.type == "cuda":
        return "auto"
    return "triton" if interpreter_enabled() else "reference"


def _clipkern(loss, device, dtype, D):
    import clipkern.functional as CF
    from clipkern import _backend

    asked = clipkern_backend(device)
    used = _backend.resolve(asked, device, dtype)  # raises with the reason if unavailable
    note = INTERPRETED_NOTE if used == "triton" and device.type == "cpu" else ""
    if loss == "imsep":
        def f(i, t, s, b, backend):
            return CF.imsep_loss(i, t, semantic_features(i.shape[0], i.device), s, backend=backend)
    else:
        f = CF.clip_loss if loss == "clip" else CF.siglip_loss
    return Provider("clipkern", loss, lambda i, t, s, b: f(i, t, s, b, backend=asked),
                    used + (" (interpreted)" if note else ""), note)


def cuda_backend(device: torch.device, dtype: torch.dtype) -> str:
    """'cuda' when the csrc extension's CUDA kernels can run here; ProviderUnavailable (or the
    backend's own BackendUnavailable / TypeError, which build_provider turns into one) says why not."""
    if device.type != "cuda":
        raise ProviderUnavailable("the csrc CUDA kernels need a CUDA device")
    from clipkern import _backend

    return _backend.resolve("cuda", device, dtype)


CUDA_LOSSES = ("clip",)  # the families with CUDA kernels among LOSSES/BENCH_LOSSES


def _cuda(loss, device, dtype, D):
    if loss not in CUDA_LOSSES:
        raise ProviderUnavailable(f"the CUDA extension has no kernel for the {loss} loss")
    import clipkern.functional as CF

    used = cuda_backend(device, dtype)
    return Provider("cuda", loss, lambda i, t, s, b: CF.clip_loss(i, t, s, b, backend=used), used)


def reference_fn(loss):
    """The plain torch reference (clipkern.ops.*.reference) as a provider fn, labels = arange(B).
    One code object per loss, so torch.compile's per-code graph cache is not shared between losses."""
    if loss == "clip":
        from clipkern.ops.contrastive.reference import contrastive_loss

        def clip_reference(i, t, s, b):
            return contrastive_loss(i, t, s, b, torch.arange(i.shape[0], device=i.device), True)

        return clip_reference
    if loss == "imsep":
        from clipkern.ops.imsep.reference import imsep_single

        def imsep_reference(i, t, s, b):
            return imsep_single(i, t, semantic_features(i.shape[0], i.device), s)

        return imsep_reference
    from clipkern.ops.sigmoid.reference import sigmoid_loss

    def siglip_reference(i, t, s, b):
        return sigmoid_loss(i, t, s, b, torch.arange(i.shape[0], device=i.device))

    return siglip_reference


def _torch(loss, device, dtype, D):
    return Provider("torch", loss, reference_fn(loss), "eager")


def _torch_compile(loss, device, dtype, D):
    # dynamic=False compiles one graph per B. Dynamo keeps at most `recompile_limit` (8) graphs per
    # code object and then silently runs eager: raise the limit so a long sweep stays compiled.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return Provider("torch.compile", loss, torch.compile(reference_fn(loss), dynamic=False), "inductor")


def _open_clip(loss, device, dtype, D):
    from open_clip.loss import ClipLoss, SigLipLoss

    if loss == "clip":
        mod = ClipLoss()
        return Provider("open_clip", loss, lambda i, t, s, b: mod(i, t, s), "eager")
    mod = SigLipLoss()
    return Provider("open_clip", loss, lambda i, t, s, b: mod(i, t, s, b), "eager")


def _inf_cl(loss, device, dtype, D):
    if loss != "clip":
        raise ProviderUnavailable("inf-cl has only the softmax (CLIP) loss")
    from inf_cl import cal_inf_loss  # signature: cal_inf_loss(q, k, labels=None, scale=None, head_dim=256)

    if device.type != "cuda":
        raise ProviderUnavailable("inf-cl's Triton launchers assert CUDA tensors (q.is_cuda)")
    head_dim = next((h for h in (256, 128, 64, 32, 16) if D % h == 0), None)
    if head_dim is None:
        raise ProviderUnavailable(f"inf-cl needs D divisible by a head_dim in 16..256, got D={D}")

    # cal_inf_loss(q, k) = mean_i [lse_j(q_i·k_j) − q_i·k_i], in fp32 (it casts its inputs). We scale q
    # ourselves: its `scale=` argument passes through a GradientGather whose backward calls
    # dist.all_reduce, which fails without a process group. The math is the same (it computes scale*q).
    def fn(i, t, s, b):
        return (cal_inf_loss(s * i, t, head_dim=head_dim) + cal_inf_loss(s * t, i, head_dim=head_dim)) / 2

    return Provider("inf-cl", loss, fn, f"triton, head_dim={head_dim}", "computes in fp32 (casts inputs)")


_FACTORIES = {"clipkern": _clipkern, "cuda": _cuda, "torch": _torch, "torch.compile": _torch_compile,
              "open_clip": _open_clip, "inf-cl": _inf_cl}


def build_provider(name: str, loss: str, device: torch.device, dtype: torch.dtype, D: int) -> Provider:
    """Build one provider, or raise ProviderUnavailable with the reason (import errors included)."""
    try:
        return _FACTORIES[name](loss, device, dtype, D)
    except ProviderUnavailable:
        raise
    except Exception as exc:  # ImportError, BackendUnavailable, ...
        raise ProviderUnavailable(f"{type(exc).__name__}: {exc}") from exc


def build_each(names, build: Callable[[str], Provider]):
    """(providers, skipped): `build(name)` for each name; skipped is a list of (name, reason) for the
    ones that raised ProviderUnavailable. Nothing is dropped silently."""
    providers, skipped = [], []
    for name in names:
        try:
            providers.append(build(name))
        except ProviderUnavailable as exc:
            skipped.append((name, str(exc)))
    return providers, skipped


def build_providers(loss, device, dtype, D, names=None):
    """(providers, skipped) for one loss of PROVIDERS; see build_each."""
    def build(name):
        if name not in PROVIDERS[loss]:
            raise ProviderUnavailable(f"no {name} provider for the {loss} loss")
        return build_provider(name, loss, device, dtype, D)

    return build_each(names or PROVIDERS[loss], build)


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


# ------------------------------------------------------------------------------------------ sweeps
METRICS = ("time_ms", "peak_mem_mib")  # the rows of one provider at one size


def sweep(providers, sizes, make_inputs, make_row, *, label: str, device: torch.device, time_kw, skipped=(),
          also=(), note_fn=None, time_vals=None, value_dtype=torch.float64,
          first_failure_skips=False) -> list[dict]:
    """The measuring loop every benchmark script shares: result rows for each provider at each size.

    providers   built Providers; `skipped`: (name, reason) of those that could not be built, one
                "skipped" row each (size and metric None), first
    sizes       every provider runs at each, in this order; `also`: extra (size, [providers]) steps
                after them (run.py's --huge)
    make_inputs (size) -> Inputs, made once per size and shared by the providers of that size
    make_row    (name, backend, size, metric, status, note="", **vals) -> dict: the script's row
    label       the progress line's prefix on stderr: a format string with {size} and {name}
    time_kw     time_fwd_bwd's keyword arguments, or a function of the size that gives them
    note_fn     (provider, size) -> the note of its ok rows; default provider.note
    time_vals   (size, Timing) -> extra values for the time_ms row
    value_dtype the dtype the step's loss is read in (loss_value)

    Per provider and size: one step (loss_value), time_fwd_bwd, peak_extra_mib -> a time_ms and a
    peak_mem_mib row. An exception there is recorded, never swallowed: status "OOM" or "error" and
    the first line of its message, in a row for each metric, and the provider is not run at larger
    sizes. With first_failure_skips, a provider whose very first run fails gets one "skipped" row
    (size None) instead: it never ran here, so that is not a result at this size.
    """
    rows = [make_row(name, None, None, None, "skipped", why) for name, why in skipped]
    done, ran = set(), set()  # providers stopped by an OOM / error; providers that ran at least once
    for size, provs in [(size, providers) for size in sizes] + list(also):
        provs = [p for p in provs if p.name not in done]
        if not provs:
            continue
        inputs = make_inputs(size)
        for p in provs:
            print(label.format(size=size, name=p.name), end=" ", file=sys.stderr, flush=True)
            try:
                value = step(p.fn, inputs).to(value_dtype).item()
                t = time_fwd_bwd(p.fn, inputs, **(time_kw(size) if callable(time_kw) else time_kw))
                mem = peak_extra_mib(p.fn, inputs)
            except Exception as exc:  # noqa: BLE001 - recorded, never swallowed
                why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
                status = "OOM" if is_oom(exc) else (
                    "skipped" if first_failure_skips and p.name not in ran else "error")
                print(status, why, file=sys.stderr)
                if status == "skipped":
                    rows.append(make_row(p.name, p.backend, None, None, "skipped", why))
                else:
                    rows += [make_row(p.name, p.backend, size, m, status, why) for m in METRICS]
                done.add(p.name)
            if p.name in done:  # free outside the except block: its traceback holds tensors
                free_memory(device)
                continue
            ran.add(p.name)
            print(f"{t.median:10.3f} ms", file=sys.stderr)
            note = p.note if note_fn is None else note_fn(p, size)
            rows.append(make_row(p.name, p.backend, size, "time_ms", "ok", note, median=t.median, q20=t.q20,
                                 q80=t.q80, reps=t.reps, loss_value=value,
                                 **(time_vals(size, t) if time_vals else {})))
            rows.append(make_row(p.name, p.backend, size, "peak_mem_mib",
                                 "ok" if mem is not None else "not measured",
                                 note if mem is not None else "not measured on CPU", median=mem, q20=mem, q80=mem))
        del inputs
        free_memory(device)
    return rows


def rel_diff_vs_torch(rows, size_key: str, exclude=()) -> list[dict]:
    """Sets each row's rel_diff_vs_torch = |loss_value − torch's| / |torch's|, against the torch
    provider's loss at the same size (rows[size_key]); not for the providers in `exclude`."""
    naive = {r[size_key]: r["loss_value"] for r in rows if r["provider"] == "torch" and r["loss_value"] is not None}
    for r in rows:
        if r["loss_value"] is not None and r[size_key] in naive and r["provider"] not in exclude:
            r["rel_diff_vs_torch"] = abs(r["loss_value"] - naive[r[size_key]]) / max(abs(naive[r[size_key]]), 1e-30)
    return rows


def ratio_table(rows, size_key: str, size_header: str, show_note: bool = False) -> str:
    """A per-family script's table: one line per provider × size, with the speed and peak-memory
    ratios against the torch provider and rel_diff_vs_torch; show_note appends the ok rows' notes
    (less the interpreter note, which is the star)."""
    times = {(r["provider"], r[size_key]): r for r in rows if r["metric"] == "time_ms"}
    mems = {(r["provider"], r[size_key]): r for r in rows if r["metric"] == "peak_mem_mib"}
    lines = [f"{size_header:>6}  {'provider':<16} {'backend':<22} {'median ms [q20-q80]':<26} {'x torch':>8} "
             f"{'peak MiB':>9} {'/ torch':>8}  {'rel.diff':>8}  status"]
    for (name, n), r in sorted(times.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if r["status"] != "ok":
            lines.append(f"{n:>6}  {name:<16} {str(r['backend']):<22} {'-':<26} {'-':>8} {'-':>9} {'-':>8}  "
                         f"{'-':>8}  {r['status']}: {r['note'][:60]}")
            continue
        m, bt, bm = mems.get((name, n), {}), times.get(("torch", n), {}), mems.get(("torch", n), {})
        tm = f"{r['median']:.3f} [{r['q20']:.3f}-{r['q80']:.3f}]"
        speed = f"{bt['median'] / r['median']:.2f}" if bt.get("median") else "-"
        pk = "n/a" if m.get("median") is None else f"{m['median']:.1f}"
        ratio = f"{bm['median'] / m['median']:.2f}" if bm.get("median") and m.get("median") else "-"
        diff = "-" if r["rel_diff_vs_torch"] is None else f"{r['rel_diff_vs_torch']:.1e}"
        star = " *" if INTERPRETED_NOTE in r["note"] else ""
        note = f" {r['note'].replace(INTERPRETED_NOTE, '').strip('; ')}" if show_note else ""
        lines.append(f"{n:>6}  {name:<16} {str(r['backend']):<22} {tm:<26} {speed:>8} {pk:>9} {ratio:>8}  "
                     f"{diff:>8}  ok{star}{note}")
    return "\n".join(lines + table_footer(rows, times, mems))


def useful_flops(loss: str, B: int, N: int, D: int) -> float:
    """Useful fwd+bwd FLOPs. CLIP/SigLIP: 6·B·N·D (S, dI, dT; DESIGN.md §5). IMSep (B = N): the
    Gram X Xᵀ and the semantic Gram Û Ûᵀ in the forward, and dX = E·X in the backward."""
    if loss == "imsep":
        return 2.0 * B * B * (2 * D + SEMANTIC_WIDTH)
    return 6.0 * B * N * D


def loss_tflops(loss: str, B: int, N: int, D: int, ms: float) -> float:
    """Achieved rate: useful_flops / time."""
    return useful_flops(loss, B, N, D) / (ms * 1e-3) / 1e12


def matmul_tflops(B: int, D: int, device: torch.device, cap: int = 32768) -> tuple[float | None, int | None]:
    """(TFLOP/s, n) of a bf16 n×D @ D×n matmul, n = min(B, cap), on CUDA; (None, None) on CPU."""
    if device.type != "cuda":
        return None, None
    n = min(B, cap)
    a = torch.randn(n, D, device=device, dtype=torch.bfloat16)
    b = torch.randn(D, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        torch.matmul(a, b)
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.matmul(a, b)
        end.record()
        torch.cuda.synchronize(device)
        times.append(start.elapsed_time(end))
    ms = sorted(times)[len(times) // 2]
    del a, b
    free_memory(device)
    return 2.0 * n * n * D / (ms * 1e-3) / 1e12, n


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
