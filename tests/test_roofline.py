"""The CPU performance model (benchmarks/perfmodel, benchmarks/roofline.py; rules in
benchmarks/ROOFLINE.md) and the goals of issue 11 it checks: executed/useful MMA FLOPs, host syncs,
launches and ops per call, spill-free wgmma kernels and the modelled roofline bound on an H100."""
import math
import os

import pytest
import torch

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") in ("", "0"),
                                reason="the model counts through the Triton interpreter (TRITON_INTERPRET=1)")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from benchmarks.perfmodel import compile as cc  # noqa: E402
from benchmarks.perfmodel import count, model, workloads  # noqa: E402


@triton.jit
def _toy_kernel(a_ptr, b_ptr, c_ptr, n_one, n_odd, n_even,
                M: tl.constexpr, N: tl.constexpr, K: tl.constexpr):
    pid = tl.program_id(0)
    rm, rn, rk = tl.arange(0, M), tl.arange(0, N), tl.arange(0, K)
    a = tl.load(a_ptr + rm[:, None] * K + rk[None, :])
    b = tl.load(b_ptr + rk[:, None] * N + rn[None, :])
    c = tl.exp(tl.dot(a, b, input_precision="ieee"))
    tl.store(c_ptr + pid * M * N + rm[:, None] * N + rn[None, :], c)


def test_counter_counts_a_known_dot_exp_and_torch_mm_exactly():
    M, N, K, programs = 32, 64, 16, 3
    a, b = torch.randn(M, K), torch.randn(K, N)
    c = torch.empty(programs * M * N + 1)
    with count.Recorder() as rec:
        _toy_kernel[(programs,)](a, b, c[1:], 1, 17, 32, M=M, N=N, K=K, num_warps=4, num_stages=2)
        torch.mm(torch.randn(7, 5), torch.randn(5, 3))
        torch.randn(4).sum().item()
    (launch,) = rec.launches
    assert launch.dot_flops == programs * 2 * M * N * K
    assert launch.dot_shapes == {(1, M, N, K): programs}
    assert launch.exps == programs * M * N
    assert launch.grid == (programs, 1, 1)
    t = rec.totals()
    assert t["gemm_flops"] == 2 * 7 * 3 * 5 and t["host_syncs"] == 1 and t["launches"] == 1
    # the JIT's specialization: c[1:] is 4 bytes off (no divisibility), 1 -> constexpr, 32 divisible, 17 not
    attrs = {tuple(p): v for p, v in launch.spec["attrs"]}
    consts = {tuple(p): v for p, v in launch.spec["constexprs"]}
    assert attrs[(0,)] == [["tt.divisibility", 16]] and attrs[(1,)] == [["tt.divisibility", 16]]
    assert attrs[(2,)] == [] and consts[(3,)] == 1 and attrs[(4,)] == [] and attrs[(5,)] == [["tt.divisibility", 16]]
    assert launch.spec["options"] == {"num_warps": 4, "num_stages": 2}


def _ratio(loss, batch=512, dim=768):
    rec = model.count_pass(loss, batch, dim, torch.bfloat16)
    t = rec.totals()
    return rec, (t["dot_flops"] + t["gemm_flops"]) / workloads.useful_flops(loss, batch, dim)["total"]


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_executed_over_useful_at_512(loss):
    _, ratio = _ratio(loss)
    assert ratio <= 1.40, f"{loss}: executed/useful MMA FLOPs = {ratio:.3f} (> 1.40)"


def test_imsep_recomputes_the_forward_at_most_once():
    B, D = 512, 768
    rec = model.count_pass("imsep", B, D, torch.bfloat16)
    t = rec.totals()
    useful = workloads.useful_flops("imsep", B, D)
    assert t["dot_flops"] + t["gemm_flops"] <= useful["total"] + useful["fwd"], t


def test_clip_bound_at_32768():
    """executed/useful = 4/3 (each S tile once in the backward), about one exp per logit in the forward
    (column sums from the row exps) and two in the backward, and issue 11's goal for the modelled
    bound, ≥ 0.5 of the bf16 matmul rate (the model gives 0.504; README, "Speed and memory")."""
    r = model.run("clip", 32768, 768, "bfloat16")
    assert round(r["executed_over_useful"], 2) <= 1.33, r["executed_over_useful"]
    assert r["exps_per_logit"]["fwd"] <= 1.1 and r["exps_per_logit"]["bwd"] <= 2.0, r["exps_per_logit"]
    assert r["bound"] is not None and r["bound"] >= 0.5, r["bound_detail"]


def _lse_moment_step(batch, dim, dtype):
    from clipkern.ops.contrastive import triton_contrastive_lse_moment

    def step():
        x = torch.randn(batch, dim, dtype=dtype, requires_grad=True)
        y = torch.randn(2 * batch, dim, dtype=dtype, requires_grad=True)
        row_m, row_l, col_m, col_l, _ = triton_contrastive_lse_moment(x, y, torch.tensor(10.0))
        return (row_m + row_l).sum() + (col_m + col_l).sum()
    return step


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_no_spills_and_wgmma(dtype):
    rows = []
    for loss in ("clip", "siglip", "imsep"):
        rec = model.structural_pass(loss, 4096, 768, model.DTYPES[dtype])
        rows += [(loss, key, r) for key, r in model.compile_launches(rec).items()]
    # the distributed loss's lse op with the column scale moment (its own forward tiles)
    rec = count.record_step(_lse_moment_step(4096, 768, model.DTYPES[dtype]), model.DTYPES[dtype], stub=True)
    rows += [("lse_moment", key, r) for key, r in model.compile_launches(rec).items()]
    bad = [(loss, key, r.get("error") or r["spills"]) for loss, key, r in rows if "error" in r or r["spills"]]
    assert not bad, bad
    if dtype != "float32":
        no_wgmma = [(loss, key, r["mma"]) for loss, key, r in rows
                    if r["sass"]["HGMMA"] + r["sass"]["HMMA"] and r["mma"] != "wgmma"]
        assert not no_wgmma, no_wgmma


@pytest.mark.parametrize("module", ["ClipLoss", "SigLipLoss"])
def test_module_step_has_no_host_sync(module):
    rec = count.record_step(workloads.make_module(module, 512, 768, torch.float32), torch.bfloat16)
    t = rec.totals()
    assert t["host_syncs"] == 0, [o.name for o in rec.torch_ops if o.kind == "sync"]
    if module == "ClipLoss":
        assert t["launches"] + t["torch_ops"] <= 15, [o.name for o in rec.torch_ops if o.kind != "free"]


def test_roofline_cli_writes_json(tmp_path):
    from benchmarks import roofline

    out = tmp_path / "r.json"
    assert roofline.main(["--loss", "clip", "--batch", "256", "--dim", "64", "--dtype", "bfloat16",
                          "--json", str(out), "--no-compile"]) == 0
    import json

    r = json.loads(out.read_text())
    for key in ("loss", "batch", "dim", "dtype", "executed_over_useful", "exps_per_logit", "launches", "torch_ops",
                "host_syncs", "kernels", "bound", "counted_at_batch"):
        assert key in r
    assert math.isclose(r["executed_over_useful"], 4 / 3, rel_tol=0.25)
