"""pytest-benchmark suite: fwd+bwd of each loss × provider, checked against the float64 reference.

    pytest benchmarks/test_bench_losses.py                      # CPU size: B=128, D=64, fp32
    pytest benchmarks/test_bench_losses.py -m gpu               # CUDA sizes: B=4096, 16384, D=768, bf16
    TRITON_INTERPRET=1 pytest benchmarks/test_bench_losses.py -q --benchmark-disable   # CI smoke test

Each test times one step `loss = fn(I, T, s, b); loss.backward()` (with a CUDA synchronize inside
the timed function) for one provider of benchmarks/common.py, then checks that step's loss and
gradients (features, logit_scale, logit_bias) against the torch reference run in float64: the
provider's error may be at most 2× the error of the torch reference in the same dtype plus a small
floor (docs/design.md §4). So a fast but wrong provider fails. A provider that cannot be built here
(inf-cl on a CPU, say), or a baseline whose run raises (torch.compile without a C compiler), is
skipped, and pytest's -ra summary names it with the reason. Under
TRITON_INTERPRET=1 the CPU clipkern case runs the Triton kernels interpreted: a correctness check,
not a timing.
"""
from __future__ import annotations

import pytest
import torch

from . import common as C

# (B, D, dtype, device, rounds when timing); the device is used only inside the test.
SIZES = [(128, 64, "fp32", "cpu", 10), (4096, 768, "bf16", "cuda", 20), (16384, 768, "bf16", "cuda", 10)]
BASELINES = ("torch.compile", "open_clip", "inf-cl")  # a failed run skips these; clipkern and torch must run
FLOOR = {"fp32": 1e-5, "bf16": 1e-2, "fp16": 1e-3}  # relative to the float64 value's magnitude


def _cases():
    for B, D, dt, dev, rounds in SIZES:
        for loss in C.BENCH_LOSSES:
            for prov in C.PROVIDERS[loss]:
                marks = [pytest.mark.gpu] if dev == "cuda" else []
                yield pytest.param(loss, prov, B, D, dt, dev, rounds, marks=marks, id=f"{loss}-{prov}-B{B}-D{D}-{dt}")


def _check(what, got, ref64, same_dtype, floor):
    """max|got − ref64| ≤ 2·max|same_dtype − ref64| + floor·max|ref64| (docs/design.md §4)."""
    ref64 = ref64.double()
    err = (got.double() - ref64).abs().max().item()
    torch_err = (same_dtype.double() - ref64).abs().max().item()
    bound = 2 * torch_err + floor * ref64.abs().max().item() + 1e-12
    assert err <= bound, f"{what}: error {err:.3e} vs float64 exceeds {bound:.3e} (torch in this dtype: {torch_err:.3e})"


@pytest.mark.parametrize("loss,provider,B,D,dtype,device,rounds", list(_cases()))
def test_fwd_bwd(benchmark, loss, provider, B, D, dtype, device, rounds):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    dev, dt = torch.device(device), C.DTYPES[dtype]
    try:
        p = C.build_provider(provider, loss, dev, dt, D)
    except C.ProviderUnavailable as exc:
        pytest.skip(f"{provider} unavailable: {exc}")
    inputs = C.make_inputs(loss, B, D, dt, dev, seed=B + D)
    benchmark.group = f"{loss}-B{B}-D{D}-{dtype}-{device}"
    benchmark.extra_info.update(provider=provider, backend=p.backend, note=p.note, B=B, N=B, D=D, dtype=dtype,
                                flops_fwd_bwd=C.useful_flops(loss, B, B, D))

    def run():
        out = C.step(p.fn, inputs)
        C.sync(dev)
        return out

    try:
        got = benchmark.pedantic(run, rounds=rounds, warmup_rounds=2, iterations=1)
    except Exception as exc:
        if provider not in BASELINES:
            raise
        pytest.skip(f"{provider} failed to run: {type(exc).__name__}: {exc}")
    got_grads = inputs.grads()

    ref = C.reference_fn(loss)
    ref_loss, ref_grads = C.loss_and_grads(ref, inputs.to(torch.float64))
    same_loss, same_grads = C.loss_and_grads(ref, inputs.to(dt))
    floor = FLOOR[dtype]
    _check("loss", got, ref_loss, same_loss, floor)
    names = ["d image_features", "d text_features", "d logit_scale", "d logit_bias"]
    for name, g, r, s in zip(names, got_grads, ref_grads, same_grads):
        assert g is not None, f"{provider} gave no gradient for {name[2:]}"
        assert torch.isfinite(g).all(), f"{name}: non-finite gradient"
        _check(name, g, r, s, floor)
