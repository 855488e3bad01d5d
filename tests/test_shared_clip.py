"""SharedCLIP (AlignCLIP's shared-parameter encoder, training/shared_clip.py) on a tiny CPU config.

What is checked:
- parity with open_clip: an open_clip CLIP whose text tower is given the vision tower's transformer,
  final LayerNorm and projection is a shared model; SharedCLIP with the same weights must give the
  same image and text features (pooling, masks, LayerNorm placement, positional embeddings);
- the trunk is shared and the stems are not: perturbing a weight changes exactly the modalities
  that should see it, and autograd reaches exactly those parameters;
- the causal mask is applied to text (the EOT-pooled feature ignores tokens after EOT; a
  bidirectional control with the same weights does not) and not to images;
- the output dict goes through open_clip's and clipkern's losses (`loss(**out, output_dict=True)`);
- bad configs raise a ValueError naming the field.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

if importlib.util.find_spec("training") is None:  # `python -m pytest` has the repo root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import clipkern
from training.shared_clip import SharedCLIP, SharedCLIPConfig, build_shared_clip, tiny_config

CAPTIONS = ["a photo of a cat", "a dog", "two birds sitting on a wire", "an empty street at night"]
B = len(CAPTIONS)

IMAGE_ONLY = ["image_stem.conv1.weight", "image_stem.class_embedding", "image_stem.positional_embedding",
              "image_stem.ln_pre.weight"]
TEXT_ONLY = ["text_stem.token_embedding.weight", "text_stem.positional_embedding"]
SHARED = ["transformer.resblocks.0.attn.in_proj_weight", "transformer.resblocks.1.mlp.c_fc.weight",
          "ln_final.weight", "proj"]


@pytest.fixture(scope="module")
def tokens():
    cfg = tiny_config()
    tok = open_clip.get_tokenizer("ViT-B-32", context_length=cfg.context_length)  # bundled BPE, offline
    text = tok(CAPTIONS)
    assert text.shape == (B, cfg.context_length) and text.max() < cfg.vocab_size
    eot = text.argmax(-1)
    assert (text[torch.arange(B), eot] == 49407).all() and (eot < cfg.context_length - 4).all()
    return text


@pytest.fixture
def images():
    return torch.randn(B, 3, 32, 32)


@pytest.fixture
def model():
    return build_shared_clip(tiny_config()).eval()


def _param(model, name):
    return dict(model.named_parameters())[name]


def _shared_from_open_clip(clip: torch.nn.Module) -> SharedCLIP:
    """Ties an open_clip CLIP's text tower to its vision trunk and copies both into a SharedCLIP."""
    with torch.no_grad():
        clip.transformer.load_state_dict(clip.visual.transformer.state_dict())
        clip.ln_final.load_state_dict(clip.visual.ln_post.state_dict())
        clip.text_projection.copy_(clip.visual.proj)
    v = clip.visual
    state = {
        "image_stem.conv1.weight": v.conv1.weight, "image_stem.class_embedding": v.class_embedding,
        "image_stem.positional_embedding": v.positional_embedding,
        "image_stem.ln_pre.weight": v.ln_pre.weight, "image_stem.ln_pre.bias": v.ln_pre.bias,
        "text_stem.token_embedding.weight": clip.token_embedding.weight,
        "text_stem.positional_embedding": clip.positional_embedding,
        "ln_final.weight": v.ln_post.weight, "ln_final.bias": v.ln_post.bias, "proj": v.proj,
        "logit_scale": clip.logit_scale,
        **{f"transformer.{k}": t for k, t in v.transformer.state_dict().items()},
    }
    shared = SharedCLIP(tiny_config())
    shared.load_state_dict(state, strict=True)
    return shared.eval()


def test_matches_open_clip_with_tied_towers(tokens, images):
    clip = open_clip.model.CLIP(**tiny_config().to_open_clip(), output_dict=True).eval()
    shared = _shared_from_open_clip(clip)
    with torch.no_grad():
        torch.testing.assert_close(shared.encode_image(images), clip.encode_image(images), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(shared.encode_text(tokens), clip.encode_text(tokens), rtol=1e-5, atol=1e-5)
        out_s, out_c = shared(images, tokens), clip(images, tokens)
    assert set(out_s) == set(out_c) == {"image_features", "text_features", "logit_scale"}
    for k in out_c:
        torch.testing.assert_close(out_s[k], out_c[k], rtol=1e-5, atol=1e-5)


def test_forward_backward_through_clipkern_clip_loss(model, tokens, images):
    model.train()
    out = model(image=images, text=tokens)
    assert out["image_features"].shape == out["text_features"].shape == (B, 32)
    torch.testing.assert_close(out["image_features"].norm(dim=-1), torch.ones(B))
    torch.testing.assert_close(out["text_features"].norm(dim=-1), torch.ones(B))
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07), rel=1e-6)

    losses = clipkern.ClipLoss()(**out, output_dict=True)
    assert set(losses) == {"contrastive_loss"}
    total = sum(losses.values())
    expected = open_clip.loss.ClipLoss()(**{k: v.detach() for k, v in out.items()})
    torch.testing.assert_close(total.detach(), expected, rtol=1e-5, atol=1e-6)
    total.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_forward_backward_through_clipkern_align_clip_loss(model, tokens, images):
    loss_cls = getattr(clipkern, "AlignClipLoss", None)
    if loss_cls is None:
        pytest.skip("clipkern.AlignClipLoss is not implemented yet")
    out = model(images, tokens)
    semantic = torch.nn.functional.normalize(torch.randn(B, 8), dim=-1)  # stands in for a sentence encoder
    losses = loss_cls()(**out, semantic_features=semantic, output_dict=True)
    assert losses and all(k.endswith("_loss") for k in losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    for name in SHARED + IMAGE_ONLY + TEXT_ONLY + ["logit_scale"]:
        g = _param(model, name).grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


def test_logit_bias_is_returned_when_configured(tokens, images):
    model = build_shared_clip(tiny_config(init_logit_bias=-10.0))
    out = model(images, tokens)
    assert set(out) == {"image_features", "text_features", "logit_scale", "logit_bias"}
    assert out["logit_bias"].item() == -10.0
    loss = sum(clipkern.SigLipLoss()(**out, output_dict=True).values())
    loss.backward()
    assert model.logit_bias.grad is not None and model.proj.grad is not None
    tup = SharedCLIP(tiny_config(), output_dict=False)(images, tokens)
    assert isinstance(tup, tuple) and len(tup) == 3


@pytest.mark.parametrize("name", SHARED + IMAGE_ONLY + TEXT_ONLY)
def test_a_weight_change_reaches_exactly_the_modalities_that_use_it(model, tokens, images, name):
    with torch.no_grad():
        img0, txt0 = model.encode_image(images), model.encode_text(tokens)
        p = _param(model, name)
        p.add_(0.5 * torch.randn_like(p) * (p.std() if p.numel() > 1 and p.std() > 0 else 1))
        img1, txt1 = model.encode_image(images), model.encode_text(tokens)
    image_moved = (img1 - img0).abs().max().item()
    text_moved = (txt1 - txt0).abs().max().item()
    if name in SHARED:
        assert image_moved > 1e-4 and text_moved > 1e-4, (image_moved, text_moved)
    elif name in IMAGE_ONLY:
        assert image_moved > 1e-4 and text_moved == 0.0, (image_moved, text_moved)
    else:
        assert text_moved > 1e-4 and image_moved == 0.0, (image_moved, text_moved)


def test_autograd_reaches_exactly_the_modalitys_parameters(model, tokens, images):
    names, params = zip(*model.named_parameters())
    g_img = torch.autograd.grad(model.encode_image(images).square().sum(), params, allow_unused=True)
    g_txt = torch.autograd.grad(model.encode_text(tokens).square().sum(), params, allow_unused=True)
    reached_img = {n for n, g in zip(names, g_img) if g is not None and g.abs().sum() > 0}
    reached_txt = {n for n, g in zip(names, g_txt) if g is not None and g.abs().sum() > 0}
    stem_img = {n for n in names if n.startswith("image_stem.")}
    stem_txt = {n for n in names if n.startswith("text_stem.")}
    trunk = {n for n in names if n.startswith(("transformer.", "ln_final.", "proj"))}
    assert stem_img and stem_txt and trunk
    assert reached_img == stem_img | trunk
    assert reached_txt == stem_txt | trunk
    # no storage shared between the stems and the trunk (no tied embeddings)
    ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}
    assert len(set(ptrs.values())) == len(ptrs)


def test_text_is_causally_masked(model, tokens):
    eot = tokens.argmax(-1)
    after = torch.arange(tokens.shape[1]) > eot[:, None]
    noisy = torch.where(after, torch.randint(1, 49406, tokens.shape), tokens)  # ids stay below EOT's
    assert (noisy != tokens).any() and torch.equal(noisy.argmax(-1), eot)
    before = tokens.clone()
    before[:, 1] = (before[:, 1] + 7) % 49000 + 1  # a change before EOT

    with torch.no_grad():
        ref = model.encode_text(tokens)
        torch.testing.assert_close(model.encode_text(noisy), ref, rtol=1e-5, atol=1e-5)
        short = int(eot.max()) + 1   # fewer than context_length tokens: same EOT features
        torch.testing.assert_close(model.encode_text(tokens[:, :short]), ref, rtol=1e-5, atol=1e-5)
        assert (model.encode_text(before) - ref).abs().max() > 1e-4

        # control: the same weights without the causal mask do see the tokens after EOT
        bidir = SharedCLIP(tiny_config(no_causal_mask=True)).eval()
        bidir.load_state_dict(model.state_dict())
        assert (bidir.encode_text(noisy) - bidir.encode_text(tokens)).abs().max() > 1e-4


def test_images_attend_without_a_mask(model, images):
    # with a causal mask the class token (position 0) would see no patch at all
    changed = images.clone()
    changed[:, :, -8:, -8:] += 1.0   # only the last patch
    with torch.no_grad():
        assert (model.encode_image(changed) - model.encode_image(images)).abs().max() > 1e-4


def test_fewer_parameters_than_open_clip_by_exactly_one_trunk():
    cfg = tiny_config()
    clip = open_clip.model.CLIP(**cfg.to_open_clip())
    shared = SharedCLIP(cfg)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    text_trunk = count(clip.transformer) + count(clip.ln_final) + clip.text_projection.numel()
    assert count(shared) == count(clip) - text_trunk
    assert count(shared) < count(clip)


def test_grad_checkpointing_gives_the_same_gradients(tokens, images):
    a = build_shared_clip(tiny_config())
    b = build_shared_clip(tiny_config())
    b.load_state_dict(a.state_dict())
    b.set_grad_checkpointing(True)
    assert b.transformer.grad_checkpointing and not a.transformer.grad_checkpointing
    for m in (a, b):
        out = m(images, tokens)
        (out["image_features"] @ out["text_features"].T).sum().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_lock_towers_freeze_only_their_stems():
    model = build_shared_clip(tiny_config())
    model.lock_image_tower()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if n.startswith("image_stem.")}
    model.lock_text_tower()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if n.startswith(("image_stem.", "text_stem."))}


def test_open_clip_style_nested_config_round_trips():
    cfg = tiny_config()
    nested = cfg.to_open_clip()
    assert SharedCLIPConfig.from_dict(nested) == cfg
    assert SharedCLIPConfig.from_dict(nested | {"custom_text": True}) == cfg
    assert SharedCLIPConfig.from_dict(dataclasses.asdict(cfg)) == cfg
    model = SharedCLIP.from_config(nested)
    assert model.transformer.layers == 2 and model.proj.shape == (64, 32)


TINY = dict(embed_dim=32, width=64, layers=2, heads=2, image_size=32, patch_size=8, context_length=16,
            vocab_size=49408)


@pytest.mark.parametrize("override, field", [
    (dict(heads=3), r"width \(64\) must be divisible by heads \(3\)"),
    (dict(image_size=30), r"image_size 30 must be divisible by patch_size 8"),
    (dict(image_size=(32, 30)), r"image_size \(32, 30\) must be divisible by patch_size"),
    (dict(layers=0), r"^layers must be a positive int"),
    (dict(embed_dim=32.0), r"^embed_dim must be a positive int"),
    (dict(mlp_ratio=0), r"^mlp_ratio"),
    (dict(widht=64), r"widht"),
], ids=["heads", "image_size", "image_size-pair", "layers", "embed_dim", "mlp_ratio", "unknown-key"])
def test_bad_flat_config_names_the_field(override, field):
    with pytest.raises(ValueError, match=field):
        build_shared_clip({**TINY, **override})


@pytest.mark.parametrize("edit, field", [
    (lambda c: c["text_cfg"].update(width=32), r"^width differs between towers"),
    (lambda c: c["vision_cfg"].update(layers=3), r"^layers differs between towers"),
    (lambda c: c["vision_cfg"].update(head_width=16), r"^heads differs between towers"),
    (lambda c: c["text_cfg"].update(mlp_ratio=2.0), r"^mlp_ratio differs between towers"),
    (lambda c: c["text_cfg"].update(hf_model_name="bert"), r"hf_model_name"),
    (lambda c: c.pop("embed_dim"), r"^embed_dim is missing"),
], ids=["width", "layers", "heads", "mlp_ratio", "unsupported-key", "embed_dim"])
def test_bad_open_clip_config_names_the_field(edit, field):
    nested = tiny_config().to_open_clip()
    edit(nested)
    with pytest.raises(ValueError, match=field):
        SharedCLIPConfig.from_dict(nested)


def test_bad_inputs_name_the_argument(model, tokens):
    with pytest.raises(ValueError, match=r"^image must have shape \[B, 3, 32, 32\]"):
        model.encode_image(torch.randn(2, 3, 24, 24))
    with pytest.raises(ValueError, match=r"^text has 17 tokens, more than context_length \(16\)"):
        model.encode_text(torch.zeros(2, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^text must be a \[B, L\] tensor of token ids"):
        model.encode_text(tokens.float())
