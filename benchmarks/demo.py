"""`make demo`: clipkern's drop-in losses beside open_clip's, fwd+bwd, on the same inputs.

    python -m benchmarks.demo

For the CLIP and SigLIP losses it runs open_clip's module and clipkern's drop-in module
(clipkern.ClipLoss / SigLipLoss, backend="auto") on the same fresh random L2-normalised features and
prints one row each:
- backend: what clipkern's `auto` resolved to on this device;
- time: median ms of one fwd+bwd step (gradients for features, logit_scale, logit_bias), after a
  warm-up; CUDA events on a GPU, perf_counter on the CPU (see benchmarks/common.py);
- peak: extra CUDA memory over fwd+bwd (MiB); not measured on CPU;
- |Δloss|, max|Δ∂feat| (both feature matrices), |Δ∂s| (logit_scale), |Δ∂b| (logit_bias, SigLIP)
  against open_clip on the same inputs. A '!' marks a difference above docs/design.md §4's tolerance
  (relative to open_clip's value: 1e-4 in fp32, 5e-2 in bf16, which also holds open_clip's own
  bf16 rounding).

Sizes: on a GPU, B = 16384 and 65536, D = 768, bf16 (open_clip may run out of memory at the larger
size; that is shown). On the CPU, B = 2048, D = 256, fp32, one thread, and clipkern's `auto` is its
plain-torch reference there. If TRITON_INTERPRET=1 was set before start, CPU runs add rows with
backend="triton" at B = 256, D = 64: the fused kernels, interpreted; correct, but their time means nothing.
"""
from __future__ import annotations

import sys

import torch

import clipkern
from clipkern import _backend

from . import common as C

TOL = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 5e-2}


def _modules(loss, backend):
    from open_clip.loss import ClipLoss, SigLipLoss

    if loss == "clip":
        oc, ck = ClipLoss(), clipkern.ClipLoss(backend=backend)
        return (lambda i, t, s, b: oc(i, t, s)), (lambda i, t, s, b: ck(i, t, s))
    oc, ck = SigLipLoss(), clipkern.SigLipLoss(backend=backend)
    return (lambda i, t, s, b: oc(i, t, s, b)), (lambda i, t, s, b: ck(i, t, s, b))


def _measure(fn, inputs, rep_ms):
    """(loss, grads, Timing, peak MiB or None), or the string 'OOM'."""
    try:
        loss, grads = C.loss_and_grads(fn, inputs)
        t = C.time_fwd_bwd(fn, inputs, warmup_ms=rep_ms / 4, rep_ms=rep_ms, min_reps=3, max_reps=50)
        return loss, grads, t, C.peak_extra_mib(fn, inputs)
    except Exception as exc:  # noqa: BLE001
        if not C.is_oom(exc):
            raise
    C.free_memory(inputs.image.device)
    return "OOM"


def _delta(xs, refs, tol):
    """max |x − ref| over the pairs, formatted, with '!' when above tol · max|ref|."""
    if any(x is None for x in xs + refs):
        return "-"
    d = max((x.double() - r.double()).abs().max().item() for x, r in zip(xs, refs))
    scale = max(max(r.double().abs().max().item() for r in refs), 1e-12)
    return f"{d:.1e}" + ("!" if d > tol * scale else "")


def compare(loss, B, D, dtype, device, backend, rep_ms):
    """Rows for open_clip and clipkern on the same inputs."""
    inputs = C.make_inputs(loss, B, D, dtype, device, seed=B + len(loss))
    oc_fn, ck_fn = _modules(loss, backend)
    used = _backend.resolve(backend, device, dtype)
    interpreted = used == "triton" and C.interpreter_enabled()
    rows, base = [], None
    for name, fn, be in (("open_clip", oc_fn, "eager"), ("clipkern", ck_fn, used + ("*" if interpreted else ""))):
        print(f"  {loss:<6} {name:<9} B={B} ...", file=sys.stderr, flush=True)
        res = _measure(fn, inputs, rep_ms)
        row = [loss, name, be, f"{B}", f"{D}", str(dtype).replace("torch.", "")]
        if res == "OOM":
            rows.append(row + ["OOM", "-", "-", "-", "-", "-"])
            continue
        l, g, t, mem = res
        row += [f"{t.median:.3f}", "n/a on CPU" if mem is None else f"{mem:.0f}"]
        if name == "open_clip":
            base = (l, g)
            row += ["baseline", "", "", ""]
        elif base is None:
            row += ["n/a (open_clip OOM)", "", "", ""]
        else:
            tol, (ol, og) = TOL.get(dtype, 1e-4), base
            row += [_delta([l], [ol], tol), _delta(g[:2], og[:2], tol), _delta(g[2:3], og[2:3], tol),
                    _delta(g[3:], og[3:], tol) if len(g) > 3 else "-"]
        rows.append(row)
    del inputs
    C.free_memory(device)
    return rows


def _print_table(rows):
    head = ["loss", "impl", "backend", "B", "D", "dtype", "time ms", "peak MiB", "|Δloss|", "max|Δ∂feat|",
            "|Δ∂s|", "|Δ∂b|"]
    w = [max(len(str(r[k])) for r in rows + [head]) for k in range(len(head))]
    line = lambda r: "  ".join(str(c).ljust(w[k]) if k < 3 else str(c).rjust(w[k]) for k, c in enumerate(r))  # noqa: E731
    print(line(head))
    print("  ".join("-" * x for x in w))
    for r in rows:
        print(line(r))


def main() -> int:
    device = C.pick_device()
    small = device.type == "cpu" or C.interpreter_enabled()
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny sizes; 2 OpenMP threads on a 2-vCPU VM stalled every step
    env = C.environment(device)
    print("clipkern demo: CLIP / SigLIP loss, clipkern drop-in vs open_clip, fwd+bwd on the same inputs")
    print(f"device: {env['device']} | torch {env['torch']} (CUDA {env['cuda']}) | triton {env['triton']} | "
          f"open_clip {env['open_clip']} | clipkern {env['clipkern']} | TRITON_INTERPRET={int(env['triton_interpret'])}")
    sys.stdout.flush()
    try:
        import open_clip  # noqa: F401
    except ImportError as exc:
        sys.exit(f"the demo compares with open_clip, which failed to import ({exc}); pip install open_clip_torch")
    if device.type == "cuda" and C.interpreter_enabled():
        print("note: TRITON_INTERPRET=1 is set, so Triton kernels run interpreted even on the GPU; small sizes only")

    if small:
        plan = [(2048, 256, torch.float32, "auto", 400.0)]
        if C.interpreter_enabled():
            plan.append((256, 64, torch.float32, "triton", 300.0))
    else:
        plan = [(16384, 768, torch.bfloat16, "auto", 500.0), (65536, 768, torch.bfloat16, "auto", 1000.0)]
    rows = []
    for loss in C.LOSSES:
        for B, D, dtype, backend, rep_ms in plan:
            rows += compare(loss, B, D, dtype, device, backend, rep_ms)
    print()
    _print_table(rows)
    print()
    if any(r[2].endswith("*") for r in rows):
        print(f"* {C.INTERPRETED_NOTE}; the Δ columns are what these rows are for.")
    if device.type == "cpu":
        print("peak memory is measured on CUDA only (CPU memory beside open_clip: python -m benchmarks.run "
              "--cpu-compare). On a CPU clipkern's auto backend runs the extension's C++ op where the family "
              "has one (CLIP, SigLIP), else the plain-torch reference.")
        if not C.interpreter_enabled():
            print("To run the fused Triton kernels on this CPU (interpreted: slow, time meaningless): "
                  "TRITON_INTERPRET=1 python -m benchmarks.demo")
    if any(r[5] == "bfloat16" for r in rows):
        print("bf16: open_clip computes its logits in bf16, clipkern accumulates in fp32; Δ includes both roundings.")
    print("'!' = above docs/design.md §4 tolerance relative to open_clip. Full sweep: python -m benchmarks.run --out DIR")
    return 0


if __name__ == "__main__":
    sys.exit(main())
