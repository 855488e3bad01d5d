"""Fused softmax-contrastive kernels against the float64 reference (docs/design.md §1.1, §4)."""
import pytest
import torch

import clipkern.functional as CF
from helpers import check_against_reference, features

F32, F16 = torch.float32, torch.float16


def _case_id(c):
    B, N, D, scale, bias, dtype = c
    return f"B{B}-N{N}-D{D}-s{scale}-{'bias' if bias is not None else 'nobias'}-{str(dtype)[6:]}"


CASES = (
    [(B, B, D, 14.3, -2.0, F32) for B in (1, 2, 7, 64, 257) for D in (16, 100, 512)]
    + [(64, 64, 100, s, b, dt) for s in (1.0, 100.0) for b in (None, 3.0) for dt in (F32, F16)]
    + [(B, B, D, 100.0, None, F16) for B in (7, 257) for D in (16, 512)]
    + [(7, 33, 16, 14.3, None, F32), (64, 257, 100, 100.0, 1.0, F32), (33, 130, 100, 14.3, None, F16)]
)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_clip_loss_matches_float64_reference(case):
    B, N, D, scale, bias, dtype = case
    inputs = dict(image_features=features(B, D, dtype), text_features=features(N, D, dtype),
                  logit_scale=torch.tensor(scale), logit_bias=None if bias is None else torch.tensor(bias))
    if N != B:  # rectangular: each row's positive is a distinct random column
        inputs["labels"] = torch.randperm(N)[:B]
    grads = ["image_features", "text_features", "logit_scale"] + (["logit_bias"] if bias is not None else [])
    check_against_reference(CF.clip_loss, inputs, dtype, grads)


@pytest.mark.parametrize("B,N,D", [(7, 7, 16), (40, 100, 33), (100, 40, 33)], ids=lambda v: str(v))
def test_rows_only_direction_matches_reference(B, N, D):
    inputs = dict(features=features(B, D), other_features=features(N, D), logit_scale=torch.tensor(30.0),
                  labels=torch.randint(0, N, (B,)))
    check_against_reference(CF.clip_loss_rows, inputs, F32, ["features", "other_features", "logit_scale"])


def test_unnormalised_features_and_repeated_labels():
    """Kernels must not assume unit vectors; several rows may share one positive column."""
    inputs = dict(image_features=3 * features(50, 24, normalise=False),
                  text_features=0.5 * features(70, 24, normalise=False),
                  logit_scale=torch.tensor(2.0), labels=torch.randint(0, 5, (50,)))
    check_against_reference(CF.clip_loss, inputs, F32, ["image_features", "text_features", "logit_scale"])


def test_logit_bias_gradient_is_exactly_zero():
    bias = torch.tensor(5.0, requires_grad=True)
    scale = torch.tensor(10.0, requires_grad=True)
    loss = CF.clip_loss(features(20, 16), features(20, 16), scale, bias, backend="triton")
    loss.backward()
    assert bias.grad is not None and bias.grad.item() == 0.0
    assert scale.grad.abs().item() > 0


def test_bias_does_not_change_the_loss():
    a, c = features(9, 16), features(9, 16)
    s = torch.tensor(20.0)
    base = CF.clip_loss(a, c, s, backend="triton")
    torch.testing.assert_close(CF.clip_loss(a, c, s, torch.tensor(-7.0), backend="triton"), base)


def test_large_scale_does_not_overflow():
    """s·x up to ±1000: the online max keeps every exp in range."""
    a, c = features(70, 16), features(70, 16)
    loss = CF.clip_loss(a, c, torch.tensor(1000.0), backend="triton")
    ref = CF.clip_loss(a.double(), c.double(), torch.tensor(1000.0, dtype=torch.float64), backend="reference")
    assert torch.isfinite(loss)
    assert abs(loss.item() - ref.item()) <= 1e-4 * (1 + abs(ref.item()))


def test_noncontiguous_and_strided_inputs():
    a = features(30, 64)[:, ::2]
    c = features(60, 32).T.contiguous().T[::2]
    inputs = dict(image_features=a, text_features=c, logit_scale=torch.tensor(14.3))
    check_against_reference(CF.clip_loss, inputs, F32, ["image_features", "text_features", "logit_scale"])


def test_output_is_0d_fp32_for_half_inputs():
    loss = CF.clip_loss(features(8, 16, F16), features(8, 16, F16), torch.tensor(10.0), backend="triton")
    assert loss.dim() == 0 and loss.dtype == torch.float32


def test_stats_match_logsumexp():
    """The forward's row and column statistics on their own, including the merge across splits."""
    from clipkern.ops.contrastive import triton_contrastive_lse

    a, c = features(130, 20), features(200, 20)
    s = torch.tensor(7.0)
    row_max, row_logsum, col_max, col_logsum = triton_contrastive_lse(a, c, s)
    row, col = row_max + row_logsum, col_max + col_logsum
    S = s.double() * a.double() @ c.double().T
    torch.testing.assert_close(row.double(), S.logsumexp(1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(col.double(), S.logsumexp(0), rtol=1e-6, atol=1e-6)


def test_offsets_beyond_int32_are_refused_by_name():
    """B·D ≥ 2³¹ would overflow the kernels' 32-bit row offsets: a clear error naming the argument.
    Checked on shapes and strides alone (nothing of that size is allocated)."""
    from clipkern.ops.base import check_int32_offsets

    check_int32_offsets(features=torch.zeros(1, 768).expand(2**22, 768))  # stride-0 rows: one row of memory

    class Huge:  # the shape and strides of a contiguous 2^22 × 768 matrix, without its memory
        shape = (2**22, 768)

        @staticmethod
        def stride():
            return (768, 1)

        @staticmethod
        def numel():
            return 2**22 * 768

    with pytest.raises(ValueError, match="features spans .* 32-bit offsets"):
        check_int32_offsets(features=Huge())
    check_int32_offsets(features=torch.zeros(2**21, 1).expand(2**21, 1023))  # (2^21 − 1)·1 + 1023 < 2^31


def _ds_matrix(x, y, scale, g_row, g_col):
    """The backward's dS workspace (s·dS) for one chunk, straight from the dS kernel."""
    from clipkern.ops.base import tile_config
    from clipkern.ops.contrastive.triton_kernels import _contrastive_ds_kernel
    from clipkern.ops.contrastive.triton_launchers import contrastive_fwd

    stats = contrastive_fwd(x, y, scale)
    (M, D), N = x.shape, y.shape[0]
    cfg = tile_config(M, N, D, x.device, x.dtype)
    ws = torch.full((M, N), float("nan"), device=x.device, dtype=x.dtype)
    part = torch.empty(cfg.ds_grid(M, N)[0] * cfg.ds_grid(M, N)[1], device=x.device)
    empty = torch.empty(0, dtype=torch.int32, device=x.device)
    _contrastive_ds_kernel[cfg.ds_grid(M, N)](
        x, y, scale, g_row, g_col, stats[0], empty, *stats, ws, part, 0, M, M, N, D, x.stride(0), y.stride(0),
        ws.stride(0), 0.0, 0.0, 0.0, COLS=True, G_VECTOR=True, HAS_LABELS=False, **cfg.kernel_args(x.dtype, ds=True))
    return ws


@pytest.mark.parametrize("device,target", [("cpu", ""), ("cpu", "sm90"), pytest.param("cuda", "", marks=pytest.mark.gpu)])
def test_backward_probabilities_match_forward_statistics(device, target, monkeypatch):
    """The recomputed S in the dS kernel must be rounded as in the forward: with g_row = 1 and
    g_col = 0 every row of dS/s is softmax_rows(S) and sums to 1; with g_col = 1, every column of
    softmax_cols(S) does. At s = 100 an FMA in one kernel and not the other shows here (~1e-5)."""
    monkeypatch.setenv("CLIPKERN_TARGET", target)  # sm90: the GPU's blocks, interpreted
    M, N, D = 200, 333, 96
    x, y = features(M, D, device=device), features(N, D, device=device)
    scale = torch.tensor(100.0, device=device)
    ones_r, zeros_r = torch.ones(M, device=device), torch.zeros(M, device=device)
    ones_c, zeros_c = torch.ones(N, device=device), torch.zeros(N, device=device)
    rows = _ds_matrix(x, y, scale, ones_r, zeros_c).double().sum(dim=1) / 100
    cols = _ds_matrix(x, y, scale, zeros_r, ones_c).double().sum(dim=0) / 100
    assert (rows - 1).abs().max().item() < 2e-6
    assert (cols - 1).abs().max().item() < 2e-6


@pytest.mark.parametrize("target", ["", "sm90"])
def test_columns_far_below_the_tile_take_the_exact_path(target, monkeypatch):
    """The forward's column sums reuse the row exps relative to one reference per tile (one exp per
    logit). Columns whose every entry is ~200 below the tile's row maxima would underflow there; the
    forward must detect it (COL_SUM_FLOOR, col_stats_from_row_exps) and take one exp per element for
    that tile. Half the rows' positives sit in such columns."""
    monkeypatch.setenv("CLIPKERN_TARGET", target)
    g = torch.Generator().manual_seed(3)
    B, D = 40, 8
    e1 = torch.zeros(D)
    e1[0] = 1.0
    sign = torch.where(torch.arange(B) < B // 2, 1.0, -1.0)[:, None]
    x = torch.nn.functional.normalize(e1 + 0.2 * torch.randn(B, D, generator=g), dim=1)
    y = torch.nn.functional.normalize(sign * e1 + 0.2 * torch.randn(B, D, generator=g), dim=1)
    inputs = dict(image_features=x, text_features=y, logit_scale=torch.tensor(100.0))
    check_against_reference(CF.clip_loss, inputs, F32, ["image_features", "text_features", "logit_scale"])


def _moment_f64(x, y, scale):
    raw = x.double() @ y.double().T
    return (torch.softmax(float(scale) * raw, dim=0) * raw).sum(dim=0)


@pytest.mark.parametrize("target", ["", "sm90"])
@pytest.mark.parametrize("case", ["random", "far-columns"])
def test_column_moment_matches_float64(target, case, monkeypatch):
    """The lse op with moment (the distributed loss's scale routing) returns e[j] = Σ_i P_c[i, j]·raw[i, j]
    = ∂col_lse[j]/∂scale from its forward pass: within 2× torch fp32's own error of float64, on odd
    shapes, several tiles and splits (sm90 blocks), and for columns that take the exact per-element path;
    the statistics are those of the plain lse op bit for bit."""
    from clipkern.ops.contrastive import triton_contrastive_lse, triton_contrastive_lse_moment

    monkeypatch.setenv("CLIPKERN_TARGET", target)
    g = torch.Generator().manual_seed(11)
    if case == "random":
        M, N, D, s = 300, 517, 40, 30.0
        x, y = features(M, D), features(N, D)
    else:  # half the columns sit ~200 below the tile's row maxima (COL_SUM_FLOOR)
        M, D, s = 70, 8, 100.0
        e1 = torch.zeros(D)
        e1[0] = 1.0
        sign = torch.where(torch.arange(M) < M // 2, 1.0, -1.0)[:, None]
        x = torch.nn.functional.normalize(e1 + 0.2 * torch.randn(M, D, generator=g), dim=1)
        y = torch.nn.functional.normalize(sign * e1 + 0.2 * torch.randn(M, D, generator=g), dim=1)
    scale = torch.tensor(s)
    *stats, e = triton_contrastive_lse_moment(x, y, scale)
    for a, b in zip(stats, triton_contrastive_lse(x, y, scale)):
        assert torch.equal(a, b)
    want = _moment_f64(x, y, scale)
    raw32 = x @ y.T
    torch_err = ((torch.softmax(s * raw32, dim=0) * raw32).sum(dim=0).double() - want).abs().max().item()
    err = (e.double() - want).abs().max().item()
    assert err <= 2 * torch_err + 1e-6, (err, torch_err)


def test_column_moment_of_the_torch_pass_matches_float64():
    """distributed_contrastive.column_moment (the reference and csrc backends' moment): chunked rows."""
    from clipkern.distributed_contrastive import column_moment

    x, y, scale = features(37, 16).double(), features(53, 16).double(), torch.tensor(20.0, dtype=torch.float64)
    col_lse = (scale * (x @ y.T)).logsumexp(dim=0)
    got = column_moment(x, y, scale, col_lse, rows_per_chunk=5)
    torch.testing.assert_close(got, _moment_f64(x, y, scale), rtol=1e-12, atol=1e-12)
