"""One optimisation step of the finetuning loop, and its pieces: parameter groups, the lr schedule,
autocast, batch equalisation under DDP, the plain step and the gradient-cache step (see
training/finetune.py's docstring for the algorithm)."""
from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch
import torch.distributed as dist

from .recipes import Recipe


def param_groups(model, wd: float):
    """open_clip's split: no weight decay on gains, biases, embeddings-as-vectors and logit_scale."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": wd}]


def cosine_lr(step: int, base_lr: float, warmup: int, total: int) -> float:
    """open_clip's schedule: linear warmup over `warmup` steps, then cosine to 0 at `total`."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    e, es = step - warmup, max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(e, es) / es)) * base_lr


def autocast_ctx(precision: str, device: torch.device):
    if precision == "amp":
        return torch.autocast(device.type, dtype=torch.float16)
    if precision == "amp_bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to(batch, device):
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def equalise_batch(batch: dict, info, device) -> dict:
    """Cuts every rank's batch to the smallest rank's size. Unreadable images shrink a batch on one rank
    only, and the gathered losses (local_loss / gather_with_grad, and every distributed clipkern loss)
    need equal sizes on every rank. Per-sample entries (tensors and lists whose first dimension is the
    batch size) are truncated. A 'diffs' batch (PC-CLIP) counts its difference texts: its per-text
    entries (pairs, text tokens, index) are cut and its images kept (the remaining pairs still index
    them; the distributed loss gathers texts and difference vectors, one per pair)."""
    if not info.distributed or not torch.is_tensor(batch.get("image")):
        return batch
    key = "pairs" if "pairs" in batch else "image"
    n = batch[key].shape[0]
    t = torch.tensor([n], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    m = int(t.item())
    if m == n:
        return batch
    per_sample = {k for k, v in batch.items()
                  if (torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == n) or (isinstance(v, list) and len(v) == n)}
    if key == "pairs":
        per_sample.discard("image")  # the images are indexed by pairs, not one per text
        per_sample.discard("_bad_paths")
    return {k: (v[:m] if k in per_sample else v) for k, v in batch.items()}


def _input_dtype(model) -> torch.dtype:
    """The dtype images must have: the image stem's (its first conv), else the most common weight dtype
    (open_clip's pure bf16 keeps embeddings and scalars in fp32)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            return m.weight.dtype
    count: dict = {}
    for p in model.parameters():
        if p.is_floating_point():
            count[p.dtype] = count.get(p.dtype, 0) + p.numel()
    return max(count, key=count.get) if count else torch.float32


def plain_step(model, recipe: Recipe, batch, extra, autocast):
    """Forward through `model` (DDP or not) once per tower, loss, backward. Returns (total, terms)."""
    images, texts = recipe.inputs(batch)
    sizes = [t.shape[0] for t in texts]
    with autocast:
        out = model(images, torch.cat(texts))
        text_features = list(out["text_features"].split(sizes))
        kw = recipe.loss_kwargs(out["image_features"], text_features, out["logit_scale"], out.get("logit_bias"),
                                extra)
        terms = recipe.loss(**kw, output_dict=True)
        total = sum(terms.values())
    return total, terms


def _leaf(t: Optional[torch.Tensor], requires_grad: bool):
    if t is None:
        return None
    return t.detach().requires_grad_(requires_grad)


def grad_cache_step(model, recipe: Recipe, batch, extra, autocast, chunk: int, scale_loss=lambda x: x):
    """Gradient caching (see the module docstring). `model` is the unwrapped model. Calls backward
    itself (scaled by `scale_loss`); returns (total, terms) like plain_step."""
    images, texts = recipe.inputs(batch)
    sizes = [t.shape[0] for t in texts]
    text_all = torch.cat(texts)
    # (1) embeddings without a graph
    with torch.no_grad(), autocast:
        image_emb = (torch.cat([model.encode_image(c, normalize=True) for c in images.split(chunk)])
                     if images is not None else None)
        text_emb = torch.cat([model.encode_text(c, normalize=True) for c in text_all.split(chunk)])
    # (2) the loss on leaf embeddings, and its gradient with respect to them
    scale = model.logit_scale.exp()
    bias = getattr(model, "logit_bias", None)
    image_leaf, text_leaf = _leaf(image_emb, True), _leaf(text_emb, True)
    scale_leaf, bias_leaf = _leaf(scale, scale.requires_grad), _leaf(bias, bias is not None and bias.requires_grad)
    with autocast:
        kw = recipe.loss_kwargs(image_leaf, list(text_leaf.split(sizes)), scale_leaf, bias_leaf, extra)
        terms = recipe.loss(**kw, output_dict=True)
        total = sum(terms.values())
    scale_loss(total).backward()
    # (3) the towers again, chunk by chunk, with their graphs, fed the cached embedding gradients
    if image_leaf is not None and image_leaf.grad is not None:
        for c, g in zip(images.split(chunk), image_leaf.grad.split(chunk)):
            with autocast:
                emb = model.encode_image(c, normalize=True)
            if emb.requires_grad:
                emb.backward(g.to(emb.dtype))
    if text_leaf.grad is not None:
        for c, g in zip(text_all.split(chunk), text_leaf.grad.split(chunk)):
            with autocast:
                emb = model.encode_text(c, normalize=True)
            if emb.requires_grad:
                emb.backward(g.to(emb.dtype))
    if scale_leaf.requires_grad and scale_leaf.grad is not None:
        scale.backward(scale_leaf.grad)
    if bias_leaf is not None and bias_leaf.requires_grad and bias_leaf.grad is not None:
        bias.backward(bias_leaf.grad)
    return total.detach(), {k: v.detach() for k, v in terms.items()}


def average_gradients(model, world_size: int) -> None:
    for p in model.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad.div_(world_size)
