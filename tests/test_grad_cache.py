"""Gradient caching (--grad-cache-chunk) gives the plain step's parameter gradients.

Plain: loss(towers(batch)) backward in one graph. Grad cache: embed without a graph, ∂loss/∂embeddings
on leaf tensors, then re-run the towers chunk by chunk with `emb.backward(cached_grad)`. The chain rule
makes them equal up to rounding when the towers are deterministic (the tiny models have no dropout).
Checked in fp64 on the reference backend (tight tolerance), for every recipe's loss call shape: CLIP,
SigLIP (logit_bias), AlignCLIP (extra semantic_features, SharedCLIP), PC-CLIP (pairs; N images ≠ P
texts) and ParaCLIP (three texts), with chunk sizes that do not divide the batch.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from training.finetune import grad_cache_step, plain_step
from training.models import create
from training.params import parse_args
from training.recipes import make_recipe

B = 7
# Gradient caching is exact for towers that treat each sample on its own. clipkern-tiny's ModifiedResNet
# has BatchNorm, whose training-mode statistics depend on the chunk (like dropout's RNG): the tests use
# the equal-size ViT (clipkern-tiny-vit) and SharedCLIP, which have neither.
VIT = ["--model", "clipkern-tiny-vit"]


def _batch(recipe, model, g):
    size = model.image_size if hasattr(model, "image_size") else model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    ctx = model.context_length

    def tokens(n):
        t = torch.randint(1, 1000, (n, ctx), generator=g)
        eot = torch.randint(3, ctx, (n,), generator=g)
        t[torch.arange(n), eot] = 49407                       # the end-of-text token (argmax pooling)
        t[torch.arange(ctx)[None, :] > eot[:, None]] = 0
        return t

    n_images = B + 2 if recipe.name == "pcclip" else B
    batch = {"image": torch.randn(n_images, 3, size, size, generator=g, dtype=torch.float64)}
    for k in recipe.text_keys:
        batch[k] = tokens(B)
    extra = {}
    if recipe.name == "pcclip":
        a = torch.randperm(n_images, generator=g)[:B]
        b = (a + 1 + torch.randint(0, n_images - 1, (B,), generator=g)) % n_images
        extra["pairs"] = torch.stack([a, b], 1)
    if recipe.name == "alignclip":
        extra["semantic_features"] = torch.nn.functional.normalize(torch.randn(B, 24, generator=g,
                                                                               dtype=torch.float64), dim=1)
    return batch, extra


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss,chunk,extra_flags", [
    ("clip", 3, []),
    ("clip", 1, ["--lock-image"]),
    ("siglip", 4, []),
    ("alignclip", 3, []),
    ("pcclip", 4, ["--no-lock-image"]),
    ("pcclip", 2, ["--all-pairs"]),
    ("paraclip", 5, []),
])
def test_grad_cache_equals_plain_step(loss, chunk, extra_flags):
    model_flags = [] if loss == "alignclip" else VIT
    args = parse_args(["--loss", loss, "--backend", "reference", "--epochs", "2", *model_flags, *extra_flags])
    recipe = make_recipe(args)
    torch.manual_seed(0)
    model = create(args.model, None, "fp32", **recipe.model_kwargs())[0].double()
    recipe.configure_model(model)
    g = torch.Generator().manual_seed(1)
    batch, extra = _batch(recipe, model, g)
    autocast = contextlib.nullcontext()

    model.zero_grad(set_to_none=True)
    total, terms = plain_step(model, recipe, batch, extra, autocast)
    total.backward()
    want = _grads(model)

    model.zero_grad(set_to_none=True)
    total_gc, terms_gc = grad_cache_step(model, recipe, batch, extra, autocast, chunk)
    got = _grads(model)

    assert torch.isfinite(total) and abs(total.item() - total_gc.item()) <= 1e-12 * max(1.0, abs(total.item()))
    assert terms.keys() == terms_gc.keys()
    assert want.keys() == got.keys(), f"parameters with a gradient differ: {sorted(want.keys() ^ got.keys())}"
    assert len(want) > 0
    nonzero = 0
    for name in want:
        w, a = want[name], got[name]
        err, mag = (w - a).abs().max().item(), w.abs().max().item()
        assert err <= 1e-10 * mag + 1e-13, f"{loss}: {name}: max abs error {err:.3e} (max |grad| {mag:.3e})"
        nonzero += mag > 0
    assert nonzero > len(want) // 2, "most gradients are zero: the comparison would be vacuous"
    if "logit_scale" in want:
        assert want["logit_scale"].abs().item() > 0
    frozen_image = args.lock_image
    visual = [n for n in want if n.startswith(("visual.", "image_stem."))]
    assert (len(visual) == 0) == frozen_image or loss == "alignclip"


def test_grad_cache_changes_nothing_when_chunk_covers_batch():
    """A chunk larger than the batch is one chunk: same gradients as well (the degenerate case)."""
    args = parse_args(["--loss", "clip", "--backend", "reference", *VIT])
    recipe = make_recipe(args)
    model = create(args.model)[0].double()
    g = torch.Generator().manual_seed(2)
    batch, extra = _batch(recipe, model, g)
    total, _ = plain_step(model, recipe, batch, extra, contextlib.nullcontext())
    total.backward()
    want = _grads(model)
    model.zero_grad(set_to_none=True)
    grad_cache_step(model, recipe, batch, extra, contextlib.nullcontext(), 1000)
    got = _grads(model)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-10, atol=1e-13)
