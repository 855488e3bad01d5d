"""Shared test helpers: fresh random inputs and the "at most 2× torch's error" rule (docs/design.md §4)."""
from __future__ import annotations

import torch

# Absolute floor added to 2×(torch's error), relative to the magnitude of the fp64 value.
FLOOR = {torch.float32: 1e-6, torch.float16: 2e-4, torch.bfloat16: 2e-3}


def features(rows: int, dim: int, dtype=torch.float32, device="cpu", normalise=True) -> torch.Tensor:
    x = torch.randn(rows, dim, dtype=torch.float64, device=device)
    if normalise:
        x = x / x.norm(dim=1, keepdim=True)
    return x.to(dtype)


def run_with_grads(fn, inputs: dict, upstream: float):
    """Calls fn(**inputs) on fresh leaf copies; returns (loss, {name: grad}) in float64."""
    leaves = {k: (v.detach().clone().requires_grad_(v.is_floating_point()) if isinstance(v, torch.Tensor) else v)
              for k, v in inputs.items()}
    loss = fn(**leaves)
    (loss * upstream).backward()
    grads = {k: v.grad.double() for k, v in leaves.items()
             if isinstance(v, torch.Tensor) and v.grad is not None}
    return loss.detach().double(), grads


def to64(inputs: dict) -> dict:
    return {k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
            for k, v in inputs.items()}


def err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return (x.double() - ref).abs().max().item()


def assert_within_2x_torch(name, kernel, torch_same_precision, ref64, dtype):
    """|kernel − fp64| ≤ 2·|torch − fp64| + floor·(1 + max|fp64|), and all finite."""
    assert torch.isfinite(kernel).all(), f"{name}: non-finite values in the kernel result"
    e_k, e_t = err(kernel, ref64), err(torch_same_precision, ref64)
    bound = 2 * e_t + FLOOR[dtype] * (1 + ref64.abs().max().item())
    assert e_k <= bound, f"{name}: kernel error {e_k:.3e} > bound {bound:.3e} (torch error {e_t:.3e})"


def check_against_reference(fn, inputs: dict, dtype, grad_names, reference_backend="reference",
                            kernel_backend="triton"):
    """Runs fn(backend=...) three ways: kernel in `dtype`, torch reference in `dtype`, reference in fp64,
    with the same random upstream gradient, and applies the 2× rule to the loss and every gradient."""
    upstream = float(torch.empty(()).uniform_(0.5, 2.0)) * (1 if torch.rand(()) < 0.5 else -1)
    loss_k, g_k = run_with_grads(lambda **kw: fn(**kw, backend=kernel_backend), inputs, upstream)
    loss_t, g_t = run_with_grads(lambda **kw: fn(**kw, backend=reference_backend), inputs, upstream)
    loss_r, g_r = run_with_grads(lambda **kw: fn(**kw, backend=reference_backend), to64(inputs), upstream)
    assert_within_2x_torch("loss", loss_k, loss_t, loss_r, dtype)
    for name in grad_names:
        assert name in g_k, f"kernel path gave no gradient for {name}"
        assert_within_2x_torch(f"d{name}", g_k[name], g_t[name], g_r[name], dtype)
    return loss_k, g_k


def assert_compile_matches_eager(step, inputs) -> None:
    """`torch.compile(step, fullgraph=True)` gives eager's value and input gradients (each run on its
    own fresh leaf copies of `inputs`)."""
    eager_in = [t.detach().clone().requires_grad_() for t in inputs]
    comp_in = [t.detach().clone().requires_grad_() for t in inputs]
    eager = step(*eager_in)
    compiled = torch.compile(step, fullgraph=True)(*comp_in)
    torch.testing.assert_close(compiled, eager)
    eager.backward()
    compiled.backward()
    for e, k in zip(eager_in, comp_in):
        torch.testing.assert_close(k.grad, e.grad)
