"""Paper-style evaluations on embeddings (PAPERS.md, docs/design.md §1.3), in plain torch.

Every function takes raw or L2-normalised embeddings (rows) and normalises them itself; work is done
in fp32 (fp64 for fp64 input) on the embeddings' device, in row chunks, so a few thousand rows are
cheap on a CPU. x̂ = x/‖x‖.

    zero_shot(image_emb, class_text_emb, labels)
        pred_n = argmax_c x̂_n·t̂_c (first index on ties); top1 = mean[pred_n = y_n];
        top5 = mean[y_n among the min(5, C) highest scores]; confusion[y, pred] counts (rows = true).
    retrieval(image_emb, text_emb, ks)      pair i ↔ i, both directions. For image i, g = #{j: s_ij > s_ii}
        and t = #{j ≠ i: s_ij = s_ii}; with ties broken uniformly at random the rank of text i is
        g + U{0..t}, so R@K counts min(1, max(0, (K − g)/(t + 1))): the exact expectation. Duplicate
        texts (or a collapsed model) then score chance, not 0 or 1.
    difference_classification(image_emb, pairs, diff_text_emb)
        pair (i, j) with text d correct iff cos(ê_d, normalise(Ĝ_i − Ĝ_j)) > 0 (clipkern.pcclip).
    comparative_prompting(image_emb, labels, class_text_emb, encode_text, class_names, k, alpha)
        the k most-confused class pairs {a, b} (largest confusion[a,b] + confusion[b,a], a ≠ b, count > 0,
        ties by (a, b)); one comparison text per ordered direction ("a {a} compared with a {b}" and the
        reverse, or texts given); t̃ = clipkern.pcclip.comparative_class_embeddings(t̂, ..., alpha);
        top-1 before/after over all images and over the confused subset (true class in a chosen pair).
    alignment(image_emb, text_emb)          mean_i x̂_i·t̂_i  and  ‖mean_i x̂_i − mean_i t̂_i‖.
    paraphrase_consistency(image_emb, caption_emb, paraphrase_emb, k)
        top_d / top'_d = the d images scoring highest for a caption / its paraphrase (stable order:
        ties by lower image index); AO@k = mean_{d=1..k} |top_d ∩ top'_d| / d,
        JS@k = |top_k ∩ top'_k| / |top_k ∪ top'_k|, both averaged over captions.

training/evaluate.py (evaluate_model and the `python -m training.evaluate` CLI) reads a world folder and
runs all of the above on a model's embeddings; this module imports nothing from training/.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from clipkern.pcclip import comparative_class_embeddings, difference_accuracy

__all__ = ["zero_shot", "retrieval", "difference_classification", "comparative_prompting", "alignment",
           "paraphrase_consistency", "confused_pairs", "comparison_text"]

_CHUNK = 1024  # query rows per similarity block
_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
DEFAULT_COMPARISON = "a {a} compared with a {b}"


# ---------------------------------------------------------------- input checks ------------------------------

def _emb(name: str, x, *, width: int | None = None, rows: int | None = None) -> torch.Tensor:
    """A non-empty 2-D floating tensor, returned row-normalised in fp32 (fp64 stays fp64)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {x.dtype}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if width is not None and x.shape[1] != width:
        raise ValueError(f"{name} has width {x.shape[1]}, expected {width} to match the other embeddings")
    if rows is not None and x.shape[0] != rows:
        raise ValueError(f"{name} has {x.shape[0]} rows, expected {rows} (row i pairs with row i)")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains non-finite values")
    return F.normalize(x.detach().to(torch.promote_types(x.dtype, torch.float32)), dim=1)


def _same_device(*named):
    dev = named[0][1].device
    for name, t in named[1:]:
        if t.device != dev:
            raise ValueError(f"{name} is on {t.device} but {named[0][0]} is on {dev}")


def _labels(name: str, labels, rows: int, classes: int, device) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.dtype not in _INT_DTYPES:
        raise TypeError(f"{name} must be an integer tensor, got {labels.dtype}")
    if labels.shape != (rows,):
        raise ValueError(f"{name} must have shape ({rows},) (one class per image), got {tuple(labels.shape)}")
    if labels.device != device:
        raise ValueError(f"{name} is on {labels.device} but the embeddings are on {device}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= classes:
        raise ValueError(f"{name} must lie in [0, {classes}) (the number of classes), got values in [{lo}, {hi}]")
    return labels.long()


def _pos_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


def _common_dtype(*xs):
    dt = xs[0].dtype
    for x in xs[1:]:
        dt = torch.promote_types(dt, x.dtype)
    return [x.to(dt) for x in xs]


# ---------------------------------------------------------------- metrics -----------------------------------

def _predict(img: torch.Tensor, cls: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k class indices per image (N×k); column 0 is the argmax (first index on ties)."""
    out = []
    for s in range(0, img.shape[0], _CHUNK):
        scores = img[s:s + _CHUNK] @ cls.T
        top1 = scores.argmax(dim=1, keepdim=True)
        if k == 1:
            out.append(top1)
        else:
            rest = scores.scatter(1, top1, float("-inf")).topk(k - 1, dim=1).indices
            out.append(torch.cat([top1, rest], dim=1))
    return torch.cat(out)


def _classification_inputs(image_emb, class_text_emb, labels):
    """Checked (images, class prompts, labels, number of classes) of the zero-shot style evaluations."""
    img = _emb("image_emb", image_emb)
    cls = _emb("class_text_emb", class_text_emb, width=img.shape[1])
    _same_device(("image_emb", img), ("class_text_emb", cls))
    img, cls = _common_dtype(img, cls)
    C = cls.shape[0]
    y = _labels("labels", labels, img.shape[0], C, img.device)
    return img, cls, y, C


def zero_shot(image_emb, class_text_emb, labels) -> dict:
    """Zero-shot classification: {"top1", "top5" (top-min(5, C)), "confusion": LongTensor(C, C)}
    with confusion[true, predicted]."""
    img, cls, y, C = _classification_inputs(image_emb, class_text_emb, labels)
    top = _predict(img, cls, min(5, C))
    pred = top[:, 0]
    confusion = torch.bincount(y * C + pred, minlength=C * C).reshape(C, C).cpu()
    return {"top1": (pred == y).double().mean().item(),
            "top5": (top == y[:, None]).any(dim=1).double().mean().item(),
            "confusion": confusion}


def _recall_at(q: torch.Tensor, g: torch.Tensor, ks) -> list[float]:
    """Expected R@K (uniform random tie-breaking) of query i retrieving gallery item i."""
    hits = torch.zeros(len(ks), dtype=torch.float64)
    ks_t = torch.tensor(ks, dtype=torch.float64)
    for s in range(0, q.shape[0], _CHUNK):
        scores = q[s:s + _CHUNK] @ g.T
        idx = torch.arange(s, s + scores.shape[0], device=scores.device)
        own = scores.gather(1, idx[:, None])
        greater = (scores > own).sum(dim=1).double().cpu()
        ties = ((scores == own).sum(dim=1) - 1).double().cpu()
        frac = ((ks_t[None, :] - greater[:, None]) / (ties[:, None] + 1)).clamp(0, 1)
        hits += frac.sum(dim=0)
    return (hits / q.shape[0]).tolist()


def retrieval(image_emb, text_emb, ks: Sequence[int] = (1, 5)) -> dict:
    """Image↔text retrieval with pair i ↔ i: {"i2t_R@K", "t2i_R@K"} for each K in ks."""
    img = _emb("image_emb", image_emb)
    txt = _emb("text_emb", text_emb, width=img.shape[1], rows=img.shape[0])
    _same_device(("image_emb", img), ("text_emb", txt))
    img, txt = _common_dtype(img, txt)
    if isinstance(ks, int) or not ks:
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks!r}")
    ks = [_pos_int("ks", k) for k in ks]
    i2t, t2i = _recall_at(img, txt, ks), _recall_at(txt, img, ks)
    out = {f"i2t_R@{k}": v for k, v in zip(ks, i2t)}
    out.update({f"t2i_R@{k}": v for k, v in zip(ks, t2i)})
    return out


def difference_classification(image_emb, pairs, diff_text_emb) -> dict:
    """PC-CLIP attribute ranking: {"diff_acc"}, the share of pairs (i, j) whose text embedding has a
    positive cosine with normalise(Ĝ_i − Ĝ_j). Chance 0.5; a degenerate pair counts as wrong."""
    img = _emb("image_emb", image_emb)
    txt = _emb("diff_text_emb", diff_text_emb, width=img.shape[1])
    img, txt = _common_dtype(img, txt)
    return {"diff_acc": difference_accuracy(txt, img, pairs).item()}


def confused_pairs(confusion, k: int = 3) -> list[tuple[int, int, int]]:
    """The k most-confused unordered class pairs as (a, b, count), a < b, count = confusion[a, b] +
    confusion[b, a] > 0, largest first (ties by (a, b)). Fewer than k when fewer pairs are confused."""
    if not isinstance(confusion, torch.Tensor):
        raise TypeError(f"confusion must be a torch.Tensor, got {type(confusion).__name__}")
    if confusion.dim() != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square 2-D tensor, got shape {tuple(confusion.shape)}")
    _pos_int("k", k)
    m = confusion.detach().cpu().long()
    sym = torch.triu(m + m.T, diagonal=1)
    a, b = torch.nonzero(sym > 0, as_tuple=True)
    cand = sorted(zip(a.tolist(), b.tolist(), sym[a, b].tolist()), key=lambda t: (-t[2], t[0], t[1]))
    return cand[:k]


def comparison_text(a: str, b: str, comparisons=None) -> str:
    """The comparison text for "class a relative to class b". comparisons may be None (the default
    template), a template string with {a} and {b}, or a list of {"a", "b", "text"} dicts or
    (a, b, text) triples (meta.json's "comparisons"); a pair it lacks uses the default template."""
    if comparisons is None:
        return DEFAULT_COMPARISON.format(a=a, b=b)
    if isinstance(comparisons, str):
        return comparisons.format(a=a, b=b)
    for entry in comparisons:
        if isinstance(entry, dict):
            ea, eb, text = entry.get("a"), entry.get("b"), entry.get("text")
        elif isinstance(entry, (list, tuple)) and len(entry) == 3:
            ea, eb, text = entry
        else:
            raise ValueError(f"comparisons entries must be {{'a', 'b', 'text'}} dicts or (a, b, text) triples, "
                             f"got {entry!r}")
        if ea == a and eb == b and isinstance(text, str):
            return text
    return DEFAULT_COMPARISON.format(a=a, b=b)


def comparative_prompting(image_emb, labels, class_text_emb, encode_text: Callable[[list], torch.Tensor],
                          class_names: Sequence[str], k: int = 3, alpha: float = 0.9, *,
                          comparisons=None) -> dict:
    """PC-CLIP comparative prompting on the k most-confused class pairs (docs/design.md §1.3).

    Returns {"cp_all_before", "cp_all_after", "cp_confused_before", "cp_confused_after" (NaN when no
    pair is confused), "confused_pairs": [(name_a, name_b, count), ...]}. Each chosen pair {a, b}
    contributes two comparisons, (a, b, text(a vs b)) and (b, a, text(b vs a)), so both classes move.
    """
    img, cls, y, C = _classification_inputs(image_emb, class_text_emb, labels)
    if isinstance(class_names, str) or len(class_names) != C:
        raise ValueError(f"class_names must be a sequence of {C} names (one per class_text_emb row), "
                         f"got {class_names!r:.80}")
    if not callable(encode_text):
        raise TypeError(f"encode_text must be callable (list[str] -> Tensor), got {type(encode_text).__name__}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number, got {type(alpha).__name__}")

    before = zero_shot(img, cls, y)
    chosen = confused_pairs(before["confusion"], k)
    directed = [(a, b) for a, b, _ in chosen] + [(b, a) for a, b, _ in chosen]
    refined = cls
    if directed:
        texts = [comparison_text(class_names[a], class_names[b], comparisons) for a, b in directed]
        emb = encode_text(texts)
        emb = _emb("encode_text(texts)", torch.as_tensor(emb), width=cls.shape[1], rows=len(texts))
        emb = emb.to(device=cls.device, dtype=cls.dtype)
        index = torch.tensor(directed, dtype=torch.long, device=cls.device)
        refined = comparative_class_embeddings(cls, index, emb, alpha=float(alpha))
    pred_before = _predict(img, cls, 1)[:, 0]
    pred_after = _predict(img, refined, 1)[:, 0]
    subset = torch.zeros(C, dtype=torch.bool, device=y.device)
    for a, b, _ in chosen:
        subset[a] = subset[b] = True
    mask = subset[y]

    def acc(pred, m=None):
        ok = (pred == y) if m is None else (pred == y)[m]
        return ok.double().mean().item() if ok.numel() else float("nan")

    return {"cp_all_before": acc(pred_before), "cp_all_after": acc(pred_after),
            "cp_confused_before": acc(pred_before, mask), "cp_confused_after": acc(pred_after, mask),
            "confused_pairs": [(class_names[a], class_names[b], n) for a, b, n in chosen]}


def alignment(image_emb, text_emb) -> dict:
    """AlignCLIP's alignment score (mean cosine of paired rows) and modality gap (distance between the
    centroids of the normalised image and text embeddings)."""
    img = _emb("image_emb", image_emb)
    txt = _emb("text_emb", text_emb, width=img.shape[1], rows=img.shape[0])
    _same_device(("image_emb", img), ("text_emb", txt))
    img, txt = _common_dtype(img, txt)
    return {"alignment": (img * txt).sum(dim=1).mean().item(),
            "modality_gap": (img.mean(dim=0) - txt.mean(dim=0)).norm().item()}


def _top_images(q: torch.Tensor, gallery: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k best gallery rows per query, best first, ties by lower index."""
    scores = q @ gallery.T
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]


def paraphrase_consistency(image_emb, caption_emb, paraphrase_emb, k: int = 10) -> dict:
    """ParaCLIP's retrieval consistency: {"AO@k", "JS@k"} averaged over captions (k ≤ #images)."""
    img = _emb("image_emb", image_emb)
    cap = _emb("caption_emb", caption_emb, width=img.shape[1])
    par = _emb("paraphrase_emb", paraphrase_emb, width=img.shape[1], rows=cap.shape[0])
    _same_device(("image_emb", img), ("caption_emb", cap), ("paraphrase_emb", par))
    img, cap, par = _common_dtype(img, cap, par)
    _pos_int("k", k)
    if k > img.shape[0]:
        raise ValueError(f"k = {k} exceeds the number of images in image_emb ({img.shape[0]})")
    depth = torch.arange(1, k + 1, dtype=torch.float64)
    ao_sum = js_sum = 0.0
    for s in range(0, cap.shape[0], _CHUNK):
        a = _top_images(cap[s:s + _CHUNK], img, k).cpu()
        b = _top_images(par[s:s + _CHUNK], img, k).cpu()
        match = (a[:, :, None] == b[:, None, :]).to(torch.float64)  # match[r, p, q]: a_p == b_q
        inter = match.cumsum(1).cumsum(2).diagonal(dim1=1, dim2=2)  # |top_d ∩ top'_d| for d = 1..k
        ao_sum += (inter / depth).mean(dim=1).sum().item()
        js_sum += (inter[:, -1] / (2 * k - inter[:, -1])).sum().item()
    n = cap.shape[0]
    return {f"AO@{k}": ao_sum / n, f"JS@{k}": js_sum / n}

