"""training.evals: each evaluation on hand-made embeddings with a known answer (training.evaluate's
evaluate_model and CLI: tests/test_evaluate.py)."""
import math

import pytest
import torch
import torch.nn.functional as F

from training import evals


def one_hot_scores(order, n):
    """A query vector over an identity gallery of n images whose ranking is exactly `order` first."""
    v = torch.zeros(n, dtype=torch.float64)
    for r, j in enumerate(order):
        v[j] = n - r
    rest = [j for j in range(n) if j not in order]
    for r, j in enumerate(rest):
        v[j] = n - len(order) - r
    return v


# ---------------------------------------------------------------- zero-shot ---------------------------------

def test_zero_shot_identity_is_perfect():
    e = torch.eye(8) * torch.rand(8, 1).add(0.5)  # raw (unnormalised) rows
    out = evals.zero_shot(e, torch.eye(8), torch.arange(8))
    assert out["top1"] == 1.0 and out["top5"] == 1.0
    assert torch.equal(out["confusion"], torch.eye(8, dtype=torch.long))


def test_zero_shot_permutation_gives_fixed_point_share_and_confusion():
    perm = torch.tensor([0, 2, 1, 3, 5, 4])  # fixed points 0 and 3
    img = torch.eye(6)[perm]  # image n looks like class perm[n]
    out = evals.zero_shot(img, torch.eye(6), torch.arange(6))
    assert out["top1"] == pytest.approx(2 / 6)
    expected = torch.zeros(6, 6, dtype=torch.long)
    expected[torch.arange(6), perm] = 1
    assert torch.equal(out["confusion"], expected)


def test_zero_shot_top5_counts_rank_and_caps_at_C():
    C = 7
    ranks = [0, 2, 4, 5, 6]  # position of the true class in each image's score order
    img = torch.zeros(len(ranks), C)
    labels = torch.zeros(len(ranks), dtype=torch.long)
    for n, r in enumerate(ranks):
        order = torch.randperm(C)
        img[n, order] = torch.arange(C, 0, -1, dtype=torch.float32)
        labels[n] = order[r]
    out = evals.zero_shot(img, torch.eye(C), labels)
    assert out["top1"] == pytest.approx(1 / 5)
    assert out["top5"] == pytest.approx(3 / 5)  # ranks 0, 2, 4 are within the top 5
    small = evals.zero_shot(torch.randn(10, 4), torch.randn(3, 4), torch.randint(0, 3, (10,)))
    assert small["top5"] == 1.0  # top-min(5, C) with C = 3


def test_zero_shot_tie_goes_to_first_class():
    out = evals.zero_shot(torch.tensor([[1.0, 1.0, 0.0]]), torch.eye(3), torch.tensor([1]))
    assert out["top1"] == 0.0 and out["confusion"][1, 0] == 1


def test_zero_shot_bad_input_names_argument():
    with pytest.raises(ValueError, match="labels"):
        evals.zero_shot(torch.randn(4, 3), torch.randn(2, 3), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="class_text_emb"):
        evals.zero_shot(torch.randn(4, 3), torch.randn(2, 5), torch.tensor([0, 1, 1, 0]))
    with pytest.raises(TypeError, match="labels"):
        evals.zero_shot(torch.randn(4, 3), torch.randn(2, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="image_emb"):
        evals.zero_shot(torch.randn(3), torch.randn(2, 3), torch.tensor([0]))


# ---------------------------------------------------------------- retrieval ---------------------------------

def test_retrieval_identity_and_rotation_are_perfect():
    q, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))
    for img in (torch.eye(16), torch.eye(16, dtype=torch.float64) @ q):
        out = evals.retrieval(img, img.clone(), ks=(1, 5))
        assert out == {"i2t_R@1": 1.0, "i2t_R@5": 1.0, "t2i_R@1": 1.0, "t2i_R@5": 1.0}


def test_retrieval_permuted_one_hot_with_ties():
    # text n = e_perm[n]. A fixed point ranks first; otherwise one text scores 1 above it and the
    # N-2 others tie with it at 0, so the expected R@K is (K - 1) / (N - 1).
    N = 6
    perm = torch.tensor([0, 2, 1, 3, 5, 4])
    out = evals.retrieval(torch.eye(N), torch.eye(N)[perm], ks=(1, 5))
    assert out["i2t_R@1"] == pytest.approx(2 / 6)
    assert out["i2t_R@5"] == pytest.approx((2 + 4 * 4 / 5) / 6)
    assert out["t2i_R@1"] == pytest.approx(2 / 6) and out["t2i_R@5"] == pytest.approx(out["i2t_R@5"])


def test_retrieval_collapsed_model_scores_chance():
    e = torch.ones(10, 4)
    out = evals.retrieval(e, e, ks=(1, 5))
    assert out["i2t_R@1"] == pytest.approx(0.1) and out["t2i_R@5"] == pytest.approx(0.5)


def test_retrieval_random_matches_argsort_oracle():
    img, txt = torch.randn(300, 16, dtype=torch.float64), torch.randn(300, 16, dtype=torch.float64)
    out = evals.retrieval(img, txt, ks=(1, 5, 10))
    s = F.normalize(img, dim=1) @ F.normalize(txt, dim=1).T
    for name, m in (("i2t", s), ("t2i", s.T)):
        rank = (m.argsort(dim=1, descending=True) == torch.arange(300)[:, None]).nonzero()[:, 1]
        for k in (1, 5, 10):
            assert out[f"{name}_R@{k}"] == pytest.approx((rank < k).double().mean().item())


def test_retrieval_bad_input():
    with pytest.raises(ValueError, match="text_emb"):
        evals.retrieval(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="ks"):
        evals.retrieval(torch.randn(4, 3), torch.randn(4, 3), ks=(0,))
    with pytest.raises(ValueError, match="non-finite"):
        evals.retrieval(torch.full((4, 3), math.nan), torch.randn(4, 3))


# ---------------------------------------------------------------- difference classification -----------------

def test_difference_classification_known_count():
    g = torch.eye(4, dtype=torch.float64)
    pairs = torch.tensor([[0, 1], [1, 2], [2, 3], [0, 3], [3, 1], [2, 2]])
    right = [True, True, False, True, False, True]  # the last pair is degenerate: wrong regardless
    text = torch.stack([(g[i] - g[j]) * (1 if ok else -1) + 0.1 * g[(i + 2) % 4]
                        for (i, j), ok in zip(pairs.tolist(), right)])
    assert evals.difference_classification(g, pairs, text)["diff_acc"] == pytest.approx(3 / 6)
    # flipping every text flips every non-degenerate verdict
    assert evals.difference_classification(g, pairs, -text)["diff_acc"] == pytest.approx(2 / 6)


# ---------------------------------------------------------------- confused pairs / comparative prompting -----

def test_confused_pairs_from_known_confusion():
    m = torch.tensor([[5, 2, 0, 1],
                      [3, 4, 0, 0],
                      [0, 1, 6, 1],
                      [0, 0, 2, 3]])
    # symmetric off-diagonal sums: (0,1)=5, (2,3)=3, (0,3)=1, (1,2)=1
    assert evals.confused_pairs(m, k=2) == [(0, 1, 5), (2, 3, 3)]
    assert evals.confused_pairs(m, k=10) == [(0, 1, 5), (2, 3, 3), (0, 3, 1), (1, 2, 1)]
    assert evals.confused_pairs(torch.eye(3, dtype=torch.long) * 4, k=3) == []
    with pytest.raises(ValueError, match="confusion"):
        evals.confused_pairs(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="k must"):
        evals.confused_pairs(m, k=0)


def test_comparison_text_sources():
    assert evals.comparison_text("red circle", "blue circle") == "a red circle compared with a blue circle"
    assert evals.comparison_text("x", "y", "{a} vs {b}") == "x vs y"
    given = [{"a": "x", "b": "y", "text": "x is redder than y"}, ["y", "x", "y is bluer than x"]]
    assert evals.comparison_text("x", "y", given) == "x is redder than y"
    assert evals.comparison_text("y", "x", given) == "y is bluer than x"
    assert evals.comparison_text("x", "z", given) == "a x compared with a z"
    with pytest.raises(ValueError, match="comparisons"):
        evals.comparison_text("x", "y", ["bad entry"])


def _unit(deg):
    r = math.radians(deg)
    return torch.tensor([math.cos(r), math.sin(r), 0.0], dtype=torch.float64)


def test_comparative_prompting_fixes_the_confused_pair():
    # Images of classes 0, 1, 2 at 0°, 20° and on e3; prompts t0 at 12°, t1 at 30°, t2 = e3. The
    # class-1 image is nearer t0 (8° vs 10°): one confusion, pair (0, 1). The comparison "c0 vs c1"
    # embeds to -e2 and "c1 vs c0" to +e2, so with alpha = 0.5
    #   t̃1 = normalise(t1 + t0 + e2) ≈ 42.8°,  t̃0 = normalise(t0 + t1 − e2) ≈ −9.0°,
    # and both images of the pair are then classified right.
    e3 = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    img = torch.stack([_unit(0), _unit(20), e3])
    cls = torch.stack([_unit(12), _unit(30), e3])
    names = ["c0", "c1", "c2"]
    table = {"a c0 compared with a c1": -_unit(90), "a c1 compared with a c0": _unit(90)}
    calls = []

    def encode_text(texts):
        calls.append(list(texts))
        return torch.stack([table[t] for t in texts])

    out = evals.comparative_prompting(img, torch.arange(3), cls, encode_text, names, k=3, alpha=0.5)
    assert calls == [["a c0 compared with a c1", "a c1 compared with a c0"]]
    assert out["confused_pairs"] == [("c0", "c1", 1)]
    assert out["cp_all_before"] == pytest.approx(2 / 3) and out["cp_all_after"] == 1.0
    assert out["cp_confused_before"] == pytest.approx(1 / 2) and out["cp_confused_after"] == 1.0
    # alpha = 1 leaves the prompts unchanged
    same = evals.comparative_prompting(img, torch.arange(3), cls, encode_text, names, alpha=1.0)
    assert same["cp_all_after"] == same["cp_all_before"]


def test_comparative_prompting_matches_design_formula_on_random_data():
    torch.manual_seed(1)
    C, D, N = 6, 8, 120
    cls = torch.randn(C, D, dtype=torch.float64)
    labels = torch.randint(0, C, (N,))
    img = F.normalize(cls, dim=1)[labels] + 0.9 * torch.randn(N, D, dtype=torch.float64)
    bank = {}

    def encode_text(texts):
        return torch.stack([bank.setdefault(t, torch.randn(D, dtype=torch.float64)) for t in texts])

    out = evals.comparative_prompting(img, labels, cls, encode_text, [f"k{c}" for c in range(C)], k=2, alpha=0.8)
    zs = evals.zero_shot(img, cls, labels)
    pairs = evals.confused_pairs(zs["confusion"], k=2)
    assert [p[2] for p in out["confused_pairs"]] == [p[2] for p in pairs] and len(pairs) == 2
    t = F.normalize(cls, dim=1)
    acc = {c: [] for c in range(C)}
    for a, b, _ in pairs:
        for x, y in ((a, b), (b, a)):  # docs/design.md §1.3: t_x − ê(text "x vs y") goes to class y
            acc[y].append(t[x] - F.normalize(bank[f"a k{x} compared with a k{y}"], dim=0))
    refined = torch.stack([F.normalize(0.8 * t[c] + 0.2 * torch.stack(acc[c]).mean(0), dim=0) if acc[c] else t[c]
                           for c in range(C)])
    pred = (F.normalize(img, dim=1) @ refined.T).argmax(1)
    subset = torch.tensor([any(lab in p[:2] for p in pairs) for lab in labels.tolist()])
    assert out["cp_all_before"] == pytest.approx(zs["top1"])
    assert out["cp_all_after"] == pytest.approx((pred == labels).double().mean().item())
    assert out["cp_confused_after"] == pytest.approx((pred == labels)[subset].double().mean().item())


def test_comparative_prompting_without_confusion_reports_nan_subset():
    out = evals.comparative_prompting(torch.eye(3), torch.arange(3), torch.eye(3),
                                      lambda t: pytest.fail("no comparison should be embedded"), ["a", "b", "c"])
    assert out["cp_all_before"] == out["cp_all_after"] == 1.0
    assert math.isnan(out["cp_confused_before"]) and out["confused_pairs"] == []


def test_comparative_prompting_bad_input():
    with pytest.raises(ValueError, match="class_names"):
        evals.comparative_prompting(torch.eye(3), torch.arange(3), torch.eye(3), lambda t: None, ["a", "b"])
    with pytest.raises(ValueError, match="encode_text"):
        evals.comparative_prompting(torch.eye(3)[[1, 0, 2]], torch.arange(3), torch.eye(3),
                                    lambda t: torch.randn(1, 3), ["a", "b", "c"])


# ---------------------------------------------------------------- alignment / gap ---------------------------

def test_alignment_identical_and_orthogonal():
    x = torch.randn(50, 16)
    out = evals.alignment(x, 3 * x)  # raw rows: scale does not matter
    assert out["alignment"] == pytest.approx(1.0) and out["modality_gap"] == pytest.approx(0.0, abs=1e-6)
    out = evals.alignment(torch.eye(4)[:2], torch.eye(4)[2:])
    # centroids (.5, .5, 0, 0) and (0, 0, .5, .5)
    assert out["alignment"] == 0.0 and out["modality_gap"] == pytest.approx(1.0)


def test_alignment_of_shifted_set_is_the_shift():
    # images on a circle in the xy-plane, texts the same circle scaled by c and shifted by s along z
    # (c² + s² = 1): every pair has cosine c; the centroids differ by exactly (0, 0, s).
    n, s = 12, 0.6
    c = math.sqrt(1 - s * s)
    th = torch.arange(n, dtype=torch.float64) * 2 * math.pi / n
    img = torch.stack([th.cos(), th.sin(), torch.zeros(n)], 1)
    txt = torch.stack([c * th.cos(), c * th.sin(), torch.full((n,), s, dtype=torch.float64)], 1)
    out = evals.alignment(img, txt)
    assert out["alignment"] == pytest.approx(c) and out["modality_gap"] == pytest.approx(s)


# ---------------------------------------------------------------- paraphrase consistency -------------------

def test_paraphrase_consistency_identical_disjoint_and_partial():
    n = 24
    gallery = torch.eye(n, dtype=torch.float64)
    first = one_hot_scores(list(range(10)), n)
    same = evals.paraphrase_consistency(gallery, first[None], first[None].clone())
    assert same == {"AO@10": 1.0, "JS@10": 1.0}
    other = one_hot_scores(list(range(10, 20)), n)
    assert evals.paraphrase_consistency(gallery, first[None], other[None]) == {"AO@10": 0.0, "JS@10": 0.0}
    # k = 3: [0, 1, 2] vs [1, 0, 3]: overlaps 0, 2, 2 → AO = (0 + 1 + 2/3)/3, JS = 2 / 4
    cap, par = one_hot_scores([0, 1, 2], n), one_hot_scores([1, 0, 3], n)
    out = evals.paraphrase_consistency(gallery, cap[None], par[None], k=3)
    assert out["AO@3"] == pytest.approx(5 / 9) and out["JS@3"] == pytest.approx(0.5)
    # k = 10: [0..9] vs [0..8, 10]: overlaps d for d ≤ 9, then 9 → AO = 9.9 / 10, JS = 9 / 11;
    # averaged with an identical caption/paraphrase pair
    par = one_hot_scores(list(range(9)) + [10], n)
    out = evals.paraphrase_consistency(gallery, torch.stack([first, first]), torch.stack([par, first]))
    assert out["AO@10"] == pytest.approx((0.99 + 1) / 2) and out["JS@10"] == pytest.approx((9 / 11 + 1) / 2)


def test_paraphrase_consistency_bad_input():
    with pytest.raises(ValueError, match="k = 10 exceeds"):
        evals.paraphrase_consistency(torch.randn(5, 4), torch.randn(2, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="paraphrase_emb"):
        evals.paraphrase_consistency(torch.randn(20, 4), torch.randn(2, 4), torch.randn(3, 4))
