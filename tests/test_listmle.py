"""ListMLE (docs/design.md §1.4): the Triton kernels against the float64 reference, the reference against an
independent brute-force oracle, ties, long rows (the row-chunked path), strided views, non-finite input,
bad input, opcheck."""
import functools
import math

import pytest
import torch

import clipkern.functional as CF
import clipkern.ops.ranking as ranking
from clipkern.ops.ranking import reference, triton_listmle_rows
from helpers import check_against_reference

F32, F16 = torch.float32, torch.float16


def brute_force_listmle(scores, targets, decay=None):
    """Row by row in Python floats: sorted(key=(−target, column)), then the suffix sums directly."""
    total = 0.0
    for q_row, t_row in zip(scores.tolist(), targets.tolist()):
        order = sorted(range(len(t_row)), key=lambda j: (-t_row[j], j))
        q = [q_row[j] for j in order]
        for k in range(len(q)):
            m = max(q[k:])
            lse = m + math.log(sum(math.exp(v - m) for v in q[k:]))
            w = 1.0 if decay is None else 1.0 / math.log2(k + 2)
            total += w * (lse - q[k])
    return total / len(scores)


def make_inputs(B, N, magnitude, ties, dtype):
    scores = (magnitude * (2 * torch.rand(B, N, dtype=torch.float64) - 1)).to(dtype)
    if ties:  # few distinct values: most of each row is tied
        targets = torch.randint(0, 3, (B, N)).to(dtype)
    else:
        targets = torch.randn(B, N, dtype=torch.float64).to(dtype)
    return dict(scores=scores, targets=targets)


def _case_id(c):
    B, N, mag, ties, decay, dtype = c
    return f"B{B}-N{N}-s{mag}-{'ties' if ties else 'distinct'}-{decay or 'nodecay'}-{str(dtype)[6:]}"


CASES = (
    [(4, N, 100.0, ties, None, F32) for N in (1, 2, 7, 100, 1000) for ties in (False, True)]
    + [(5, N, 14.3, True, "log", dt) for N in (7, 100) for dt in (F32, F16)]
    + [(3, 1000, 100.0, True, "log", F32), (3, 1000, 100.0, False, None, F16), (33, 100, 100.0, False, "log", F16),
       (1, 1, 1.0, False, None, F16), (70, 20, 1.0, False, None, F32)]
)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_listmle_matches_float64_reference(case):
    B, N, magnitude, ties, decay, dtype = case
    fn = functools.partial(CF.listmle_loss, decay=decay)
    check_against_reference(fn, make_inputs(B, N, magnitude, ties, dtype), dtype, ["scores"])


@pytest.mark.parametrize("decay", [None, "log"])
@pytest.mark.parametrize("N", [1, 2, 7, 30])
def test_reference_matches_brute_force(N, decay):
    """The torch reference itself: stable descending order, ties by column index, 1/log2(k+1)."""
    inputs = make_inputs(6, N, 30.0, True, torch.float64)
    got = reference.listmle_loss(inputs["scores"], inputs["targets"], decay).item()
    assert got == pytest.approx(brute_force_listmle(inputs["scores"], inputs["targets"], decay), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_ties_break_by_column_index(backend):
    """Tied targets keep the lower column first; −0.0 ties with +0.0. Order matters for ListMLE,
    so a wrong tie-break changes the loss."""
    targets = torch.tensor([[1.0, 2.0, 2.0, 1.0, 0.0, -0.0, 0.0],
                            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    scores = torch.tensor([[0.3, -1.2, 2.5, 0.7, -0.4, 1.9, 0.1],
                           [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]])
    order = [[1, 2, 0, 3, 4, 5, 6], list(range(7))]
    expected = 0.0
    for q_row, o in zip(scores.tolist(), order):
        q = [q_row[j] for j in o]
        expected += sum(math.log(sum(math.exp(v) for v in q[k:])) - q[k] for k in range(7))
    got = CF.listmle_loss(scores, targets, backend=backend).item()
    assert got == pytest.approx(expected / 2, rel=1e-6)
    # the reverse order (what an unstable or ascending-index tie-break could give) is different
    flipped = CF.listmle_loss(scores.flip(1), targets.flip(1), backend=backend).item()
    assert abs(flipped - got) > 1e-3


def test_targets_get_no_gradient_and_order_is_all_they_set():
    scores = (10 * torch.randn(5, 40)).requires_grad_()
    targets = torch.randn(5, 40, requires_grad=True)
    for backend in ("reference", "triton"):
        CF.listmle_loss(scores, targets, backend=backend).backward()
        assert targets.grad is None
    # a monotone map of the targets keeps the order, hence the loss
    a = CF.listmle_loss(scores, targets, backend="triton")
    b = CF.listmle_loss(scores, 3 * targets.detach() ** 3 + 1, backend="triton")
    torch.testing.assert_close(a, b)


def test_large_scores_do_not_overflow():
    """Scores of ±5000 (exp overflows fp32 at 88): the suffix log-sum-exp stays in log space."""
    inputs = make_inputs(4, 300, 5000.0, False, F32)
    loss = CF.listmle_loss(**inputs, backend="triton")
    ref = CF.listmle_loss(**{k: v.double() for k, v in inputs.items()}, backend="reference")
    assert torch.isfinite(loss)
    assert abs(loss.item() - ref.item()) <= 1e-5 * abs(ref.item())


@pytest.mark.parametrize("view", ["transposed-targets", "transposed-scores", "sliced"])
def test_strided_views_are_read_in_place(view):
    logits = 20 * torch.randn(48, 48)
    if view == "transposed-targets":
        inputs = dict(scores=logits, targets=logits.T)
    elif view == "transposed-scores":
        inputs = dict(scores=logits.T, targets=logits)
    else:
        inputs = dict(scores=logits[::2, 1::2], targets=torch.randn(48, 48)[::2, ::2])
    check_against_reference(functools.partial(CF.listmle_loss, decay="log"), inputs, F32, ["scores"])


def test_rows_longer_than_a_block_take_the_chunked_path(monkeypatch):
    """Above MATRIX_MAX_N the documented path is the row-chunked torch op (fp32); the kernel is not
    called. tests/test_ranking_large.py covers that path in depth."""
    monkeypatch.setattr(ranking, "MATRIX_MAX_N", 64)

    def no_kernel(*args, **kwargs):
        raise AssertionError("the matrix kernel must not run above MATRIX_MAX_N")

    monkeypatch.setattr(ranking, "triton_listmle_rows", no_kernel)
    inputs = make_inputs(3, 100, 30.0, True, F16)
    check_against_reference(CF.listmle_loss, inputs, F16, ["scores"])
    with pytest.raises(AssertionError, match="must not run"):
        CF.listmle_loss(**make_inputs(3, 64, 1.0, False, F32), backend="triton")


def test_launcher_refuses_rows_longer_than_the_limit():
    from clipkern.ops.ranking.triton_launchers import listmle_rows_fwd

    long = torch.zeros(1, ranking.MATRIX_MAX_N + 1)
    with pytest.raises(ValueError, match="MATRIX_MAX_N"):
        listmle_rows_fwd(long, long, False)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("where", ["scores-nan", "scores-inf", "targets-nan", "targets-inf"])
def test_non_finite_input_gives_non_finite_loss(backend, where):
    inputs = make_inputs(3, 9, 5.0, False, F32)
    name, kind = where.split("-")
    inputs[name][1, 4] = float(kind)
    assert not torch.isfinite(CF.listmle_loss(**inputs, backend=backend))


def test_output_is_0d_fp32_for_half_inputs():
    loss = CF.listmle_loss(**make_inputs(3, 10, 5.0, False, F16), backend="triton")
    assert loss.dim() == 0 and loss.dtype == torch.float32


@pytest.mark.parametrize("scores,targets,exc,words", [
    (torch.randn(5), torch.randn(5), ValueError, "scores must be 2-D"),
    (torch.randn(4, 5), torch.randn(4, 5, 1), ValueError, "targets must be 2-D"),
    (torch.randn(4, 5), torch.randn(4, 6), ValueError, r"targets has shape \(4, 6\) but scores has shape \(4, 5\)"),
    (torch.randn(4, 5), torch.randn(3, 5), ValueError, "targets has shape"),
    (torch.randn(0, 5), torch.randn(0, 5), ValueError, "scores is an empty batch"),
    (torch.randn(4, 0), torch.randn(4, 0), ValueError, "scores has empty rows"),
    (torch.randint(0, 3, (4, 5)), torch.randn(4, 5), TypeError, "scores must be a floating tensor"),
    (torch.randn(4, 5), torch.randn(4, 5, dtype=torch.float64), TypeError, "cast them to one dtype"),
    ([[1.0]], torch.randn(1, 1), TypeError, "scores must be a torch.Tensor"),
], ids=["rank1", "rank3", "width", "rows", "empty-batch", "empty-rows", "int", "dtypes", "list"])
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_bad_input_names_the_argument(backend, scores, targets, exc, words):
    with pytest.raises(exc, match=words):
        CF.listmle_loss(scores, targets, backend=backend)


def test_bad_decay_and_backend():
    s = torch.randn(2, 3)
    with pytest.raises(ValueError, match="decay must be None or 'log'"):
        CF.listmle_loss(s, s, decay="linear")
    with pytest.raises(ValueError, match="backend must be one of"):
        CF.listmle_loss(s, s, backend="tpu")


@pytest.mark.parametrize("dtype", [F32, F16], ids=["fp32", "fp16"])
def test_opcheck_listmle_rows(dtype):
    logits = (20 * torch.randn(9, 9)).to(dtype)
    scores = logits.detach().clone().requires_grad_()
    torch.library.opcheck(triton_listmle_rows, (scores, logits.T, True))
    torch.library.opcheck(triton_listmle_rows, (torch.randn(5, 37, dtype=dtype, requires_grad=True),
                                                torch.randint(0, 2, (5, 37)).to(dtype), False))
