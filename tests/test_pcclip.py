"""PC-CLIP pairwise-difference losses, difference accuracy and comparative prompting (docs/design.md §1.3, §4)."""
import math

import pytest
import torch

import clipkern
import clipkern.functional as CF
from clipkern.ops.pairdiff import triton_pairdiff_lse
from clipkern.pcclip import comparative_class_embeddings, difference_accuracy
from helpers import check_against_reference, features

F32, F16 = torch.float32, torch.float16
GRADS = ["text_features", "image_features", "logit_scale"]


def distinct_pairs(P: int, N: int) -> torch.Tensor:
    """P random ordered pairs (i, j) with i ≠ j."""
    i = torch.randint(0, N, (P,))
    j = (i + torch.randint(1, N, (P,))) % N
    return torch.stack([i, j], dim=1)


def _explicit_oracle(text, image, pairs, s, all_pairs):
    """Independent of clipkern: Python loops over the pairs, one difference vector at a time, with
    the degenerate-pair rule spelled out (δ = 0 for i = j or ‖Ĝ_i − Ĝ_j‖² ≤ 1e-5; degenerate listed
    pairs leave both means; the (i, i) pairs are no all-pairs candidates)."""
    e = text / text.norm(dim=1, keepdim=True)
    g = image / image.norm(dim=1, keepdim=True)
    N, P = g.shape[0], e.shape[0]

    def delta(i, j):
        d = g[i] - g[j]
        return torch.zeros_like(d) if i == j or float(d @ d) <= 1e-5 else d / d.norm()

    listed = [(int(a), int(b)) for a, b in pairs]
    valid = [a != b and float((g[a] - g[b]) @ (g[a] - g[b])) > 1e-5 for a, b in listed]
    cands = [(i, j) for i in range(N) for j in range(N) if i != j] if all_pairs else listed
    cand_delta = torch.stack([delta(i, j) for i, j in cands])
    listed_delta = torch.stack([delta(a, b) for a, b in listed])
    total = 0.0
    for p in range(P):
        if valid[p]:
            total = total + (s * cand_delta @ e[p]).logsumexp(0) - s * e[p] @ listed_delta[p]
            total = total + (s * e @ listed_delta[p]).logsumexp(0) - s * e[p] @ listed_delta[p]
    return total / (2 * max(sum(valid), 1))


def _case_id(c):
    form, N, P, D, s, dt = c
    return f"{form}-N{N}-P{P}-D{D}-s{s}-{str(dt)[6:]}"


# N in {2, 3, 17, 64}, P in {1, 5, 100}, D in {16, 100}: every value appears in each form, fp32 and fp16
CASES = (
    [("all", N, P, D, s, F32) for N, P, D, s in
     [(2, 1, 16, 1.0), (3, 5, 100, 14.3), (17, 100, 16, 1.0), (64, 5, 100, 50.0), (64, 100, 16, 14.3),
      (17, 1, 100, 1.0)]]
    + [("all", N, P, D, s, F16) for N, P, D, s in [(3, 5, 16, 14.3), (17, 100, 100, 1.0), (64, 5, 16, 50.0)]]
    + [("listed", N, P, D, s, F32) for N, P, D, s in
       [(2, 1, 16, 1.0), (3, 5, 100, 14.3), (17, 100, 16, 1.0), (64, 5, 100, 50.0)]]
    + [("listed", N, P, D, s, F16) for N, P, D, s in [(17, 100, 100, 1.0), (64, 5, 16, 14.3), (2, 100, 16, 1.0)]]
)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_pairdiff_matches_float64_reference(case):
    form, N, P, D, scale, dtype = case
    inputs = dict(text_features=features(P, D, dtype), image_features=features(N, D, dtype),
                  pairs=distinct_pairs(P, N), logit_scale=torch.tensor(scale))

    def fn(backend, **kw):
        return CF.pairwise_difference_loss(**kw, all_pairs=form == "all", backend=backend)

    loss, grads = check_against_reference(fn, inputs, dtype, GRADS)
    if P > 1 or form == "all":  # a 1×1 listed problem has loss 0 and zero gradients by definition
        assert loss.abs() > 1e-3 and grads["image_features"].abs().max() > 0


@pytest.mark.parametrize("all_pairs", [False, True], ids=["listed", "all"])
def test_reference_equals_explicit_oracle(all_pairs):
    N, P, D = 9, 7, 16
    text, image = features(P, D, torch.float64, normalise=False), features(N, D, torch.float64, normalise=False)
    image[4] = 3 * image[1]  # identical after normalisation: a degenerate pair (1, 4)
    pairs = distinct_pairs(P, N)
    pairs[2] = torch.tensor([1, 4])
    pairs[5] = torch.tensor([6, 6])
    s = torch.tensor(7.0, dtype=torch.float64)
    got = CF.pairwise_difference_loss(text, image, pairs, s, all_pairs=all_pairs, backend="reference")
    torch.testing.assert_close(got, _explicit_oracle(text, image, pairs, s, all_pairs), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [F32, F16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("all_pairs", [False, True], ids=["listed", "all"])
def test_degenerate_pairs_identical_images(all_pairs, dtype):
    """Identical images (and i = j pairs) give a finite loss that follows the documented rule."""
    N, P, D = 12, 10, 16
    image = features(N, D, dtype)
    image[7] = image[3]
    image[9] = image[3]
    pairs = distinct_pairs(P, N)
    pairs[0] = torch.tensor([3, 7])
    pairs[4] = torch.tensor([9, 3])
    pairs[6] = torch.tensor([5, 5])
    pairs[8] = torch.tensor([7, 9])
    inputs = dict(text_features=features(P, D, dtype), image_features=image, pairs=pairs,
                  logit_scale=torch.tensor(10.0))

    def fn(backend, **kw):
        return CF.pairwise_difference_loss(**kw, all_pairs=all_pairs, backend=backend)

    loss, grads = check_against_reference(fn, inputs, dtype, GRADS)
    assert all(torch.isfinite(g).all() for g in grads.values())
    expected = _explicit_oracle(inputs["text_features"].double(), image.double(), pairs,
                                torch.tensor(10.0, dtype=torch.float64), all_pairs)
    assert abs(loss.item() - expected.item()) <= (1e-5 if dtype == F32 else 2e-2) * (1 + abs(expected.item()))


@pytest.mark.parametrize("all_pairs", [False, True], ids=["listed", "all"])
def test_all_pairs_degenerate_gives_zero(all_pairs):
    image = features(4, 16)
    image[1] = image[0]
    text = features(3, 16).requires_grad_()
    s = torch.tensor(5.0, requires_grad=True)
    pairs = torch.tensor([[0, 1], [2, 2], [1, 0]])
    loss = CF.pairwise_difference_loss(text, image, pairs, s, all_pairs=all_pairs, backend="triton")
    loss.backward()
    assert loss.item() == 0.0 and text.grad.abs().max() == 0 and s.grad.item() == 0


def test_triton_op_matches_dense_torch_for_a_general_r():
    """The op alone, with an R that is not symmetric (the kernel makes no symmetry assumption):
    lse and the gradients of A, R and the scale against dense torch autograd in fp64."""
    P, N = 21, 19
    a = torch.randn(P, N)
    r = torch.rand(N, N) * 3
    r[2, 5] = 0.0  # a degenerate pair: logit 0
    s = torch.tensor(2.5)
    g = torch.randn(P)
    leaves = [x.clone().requires_grad_() for x in (a, r, s)]
    m, logsum = triton_pairdiff_lse(*leaves)
    ((m + logsum) * g).sum().backward()
    a64, r64, s64 = (x.double().requires_grad_() for x in (a, r, s))
    logits = s64 * (a64[:, :, None] - a64[:, None, :]) * r64[None]
    logits = logits.masked_fill(torch.eye(N, dtype=torch.bool)[None], float("-inf"))
    lse = logits.reshape(P, -1).logsumexp(dim=1)
    (lse * g.double()).sum().backward()
    torch.testing.assert_close((m + logsum).double(), lse.detach(), rtol=1e-5, atol=1e-5)
    for got, want in zip(leaves, (a64, r64, s64)):
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=1e-4, atol=1e-5)


def test_opcheck_pairdiff():
    a = torch.randn(37, 18).requires_grad_()
    r = (torch.rand(18, 18) * 2).fill_diagonal_(0).requires_grad_()
    torch.library.opcheck(triton_pairdiff_lse, (a, r, torch.tensor(3.0, requires_grad=True)))


@pytest.mark.slow
def test_pairdiff_fullgraph_compile(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    loss = clipkern.PairwiseDifferenceLoss(all_pairs=True, backend="triton")
    t, g, pairs, s = features(9, 16), features(17, 16), distinct_pairs(9, 17), torch.tensor(10.0)

    def run(fn):  # loss and the gradients of text, image and scale
        leaves = [x.clone().requires_grad_() for x in (t, g, s)]
        out = fn(leaves[0], leaves[1], pairs, leaves[2])
        out.backward()
        return [out.detach()] + [x.grad for x in leaves]

    eager = run(loss)
    compiled = run(torch.compile(lambda *x: loss(*x), fullgraph=True))
    for got, want in zip(compiled, eager):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("all_pairs", [False, True], ids=["listed", "all"])
def test_module_output_dict_and_default_scale(all_pairs):
    t, g, pairs = features(6, 16), features(5, 16), distinct_pairs(6, 5)
    mod = clipkern.PairwiseDifferenceLoss(all_pairs=all_pairs, backend="triton")
    out = mod(t, g, pairs, output_dict=True)
    assert set(out) == {"difference_loss"}
    want = CF.pairwise_difference_loss(t, g, pairs, 1.0, all_pairs=all_pairs, backend="reference")
    torch.testing.assert_close(out["difference_loss"], want, rtol=1e-5, atol=1e-6)
    s = torch.tensor(4.0, requires_grad=True)
    mod(t, g, pairs, s).backward()
    assert s.grad is not None and s.grad != 0


def test_listed_and_all_pairs_differ_only_on_the_text_side():
    """N = 2: the only candidates are (0, 1) and (1, 0). With listed pairs (0, 1), (1, 0) both forms
    have the same candidate set, so they must agree exactly."""
    t, g = features(2, 16, torch.float64), features(2, 16, torch.float64)
    pairs = torch.tensor([[0, 1], [1, 0]])
    for be in ("reference", "triton"):
        x = t if be == "reference" else t.float()
        y = g if be == "reference" else g.float()
        listed = CF.pairwise_difference_loss(x, y, pairs, 3.0, backend=be)
        full = CF.pairwise_difference_loss(x, y, pairs, 3.0, all_pairs=True, backend=be)
        torch.testing.assert_close(listed, full, rtol=1e-5, atol=1e-6)


def test_bad_input_names_the_argument():
    t, g = features(4, 16), features(6, 16)
    ok = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 4]])
    with pytest.raises(TypeError, match="pairs must be an integer tensor"):
        CF.pairwise_difference_loss(t, g, ok.float())
    with pytest.raises(TypeError, match="pairs must be a torch.Tensor"):
        CF.pairwise_difference_loss(t, g, ok.tolist())
    with pytest.raises(ValueError, match=r"pairs must have shape \(P, 2\)"):
        CF.pairwise_difference_loss(t, g, torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"pairs must have shape \(P, 2\)"):
        CF.pairwise_difference_loss(t, g, torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="pairs is empty"):
        CF.pairwise_difference_loss(t, g, torch.zeros(0, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="pairs has 3 rows but text_features has 4"):
        CF.pairwise_difference_loss(t, g, ok[:3])
    with pytest.raises(ValueError, match=r"pairs must lie in \[0, 6\).*\[0, 6\]"):
        CF.pairwise_difference_loss(t, g, torch.tensor([[0, 1], [1, 2], [2, 6], [3, 4]]))
    with pytest.raises(ValueError, match=r"pairs must lie in \[0, 6\).*\[-1, 4\]"):
        CF.pairwise_difference_loss(t, g, torch.tensor([[0, 1], [1, -1], [2, 3], [3, 4]]), all_pairs=True)
    with pytest.raises(ValueError, match="image_features needs at least 2 rows"):
        CF.pairwise_difference_loss(t, g[:1], torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="image_features has feature width 8"):
        CF.pairwise_difference_loss(t, features(6, 8), ok)
    with pytest.raises(ValueError, match="text_features must be 2-D"):
        CF.pairwise_difference_loss(t[0], g, ok)


def test_nonfinite_input_gives_nonfinite_loss():
    t, g = features(4, 16), features(6, 16)
    g[2, 0] = float("nan")
    for all_pairs in (False, True):
        loss = CF.pairwise_difference_loss(t, g, torch.tensor([[0, 1], [1, 2], [2, 3], [3, 4]]),
                                           all_pairs=all_pairs, backend="triton")
        assert not torch.isfinite(loss)


# ------------------------------------------------------------------ hand-made pcclip helpers
def test_difference_accuracy_on_known_answer():
    image = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])  # image 2 = image 0 after normalising
    text = torch.tensor([[1.0, -1.0],   # pair (0, 1): direction (1, -1)/√2 -> cos > 0: right
                         [1.0, -1.0],   # pair (1, 0): direction (-1, 1)/√2 -> cos < 0: wrong
                         [0.1, -5.0],   # pair (0, 1): 0.1 + 5 > 0: right
                         [1.0, 1.0],    # pair (0, 1): cos exactly 0: not > 0, wrong
                         [1.0, 0.0]])   # pair (0, 2): degenerate (identical images): wrong
    pairs = torch.tensor([[0, 1], [1, 0], [0, 1], [0, 1], [0, 2]])
    acc = difference_accuracy(text, image, pairs)
    assert acc.dim() == 0 and acc.item() == pytest.approx(2 / 5)
    assert difference_accuracy(text[:1], image, pairs[:1]).item() == 1.0
    assert difference_accuracy(-text[:3], image, pairs[:3]).item() == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="pairs must lie in"):
        difference_accuracy(text, image, pairs + 1)


def test_comparative_class_embeddings_on_known_answer():
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.0, -1.0]])
    # class 0 relative to class 1 with text embedding (0, 2) -> ê = (0, 1): adds (1, 0) − (0, 1) to class 1
    # class 2 relative to class 1 with text embedding (−3, 0) -> ê = (−1, 0): adds (1.6, 0.8) to class 1
    comparisons = torch.tensor([[0, 1], [2, 1]])
    comp_emb = torch.tensor([[0.0, 2.0], [-3.0, 0.0]])
    # avg_1 = ((1, −1) + (1.6, 0.8)) / 2 = (1.3, −0.1)
    out = comparative_class_embeddings(t, comparisons, comp_emb, alpha=0.5)
    mixed = torch.tensor([0.65, 0.45])  # 0.5·(0, 1) + 0.5·(1.3, −0.1)
    torch.testing.assert_close(out[1], mixed / math.sqrt(0.65 ** 2 + 0.45 ** 2))
    torch.testing.assert_close(out[[0, 2, 3]], t[[0, 2, 3]])  # no comparison: unchanged
    default = comparative_class_embeddings(t, comparisons, comp_emb)  # α = 0.9
    mixed = torch.tensor([0.13, 0.89])  # 0.9·(0, 1) + 0.1·(1.3, −0.1)
    torch.testing.assert_close(default[1], mixed / mixed.norm())
    # class 3 relative to class 0 with ê = (1, 0): avg_0 = (0, −1) − (1, 0) = (−1, −1)
    out = comparative_class_embeddings(t, torch.tensor([[3, 0]]), torch.tensor([[5.0, 0.0]]), alpha=0.5)
    torch.testing.assert_close(out[0], torch.tensor([0.0, -1.0]))  # normalise(0.5·(1, 0) + 0.5·(−1, −1))
    torch.testing.assert_close(out[1:], t[1:])
    empty = comparative_class_embeddings(t, torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2))
    torch.testing.assert_close(empty, t)
    with pytest.raises(ValueError, match="comparisons must lie in"):
        comparative_class_embeddings(t, torch.tensor([[0, 4]]), comp_emb[:1])
    with pytest.raises(TypeError, match="comparisons must be an integer tensor"):
        comparative_class_embeddings(t, comparisons.float(), comp_emb)
    with pytest.raises(ValueError, match="comparison_embeddings has 1 rows but comparisons has 2"):
        comparative_class_embeddings(t, comparisons, comp_emb[:1])
