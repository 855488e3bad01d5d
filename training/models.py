"""Model construction for the finetuning loop: any open_clip model, plus two tiny CPU-sized ones.

- `clipkern-tiny`: an open_clip CLIP config (image tower: open_clip's ModifiedResNet, layers (1,1,1,1),
  width 8, at 64 px, so the world's 32 px images are upsampled by the preprocess; text tower width 64,
  2 layers, 32 tokens, open_clip's 49408-token vocabulary), registered with
  `open_clip.add_model_config`, so every open_clip entry point (create_model_and_transforms,
  get_tokenizer) knows it.
- `clipkern-tiny-vit`: the two-tower CLIP of SharedCLIP's size (ViT 32 px / 8 px patches, width 64,
  2 layers, 2 heads; the same text tower): the equal-size control of AlignCLIP's architecture claim.
- `shared-tiny`: AlignCLIP's SharedCLIP (training/shared_clip.py) at `tiny_config()` size.

`create(name, pretrained=None, precision="fp32", **model_kwargs)` returns
`(model, preprocess_train, preprocess_val, tokenizer)`. `pretrained` is an open_clip tag (e.g.
"openai", needs the network unless open_clip's cache has it) or a local file: a clipkern checkpoint
(a dict with "model") or a plain state dict (open_clip's checkpoints included).
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Optional

import open_clip
import torch

from .shared_clip import SharedCLIP, SharedCLIPConfig, build_shared_clip, tiny_config

TINY_NAME = "clipkern-tiny"
TINY_VIT_NAME = "clipkern-tiny-vit"
SHARED_TINY_NAME = "shared-tiny"

TINY_CONFIG = {
    "embed_dim": 64,
    # ModifiedResNet downsamples 32×: at 32 px its last stage is 1×1 and it never learned shape (nor
    # did 2-layer ViTs with 8 or 4 px patches); at 64 px (2×2 last stage) it does. See training/README.md.
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_VIT_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": dict(TINY_CONFIG["text_cfg"]),
}
SHARED_TINY_CONFIG = dict(tiny_config(context_length=32).__dict__)

_registered = False


def register_tiny_models() -> None:
    """Registers `clipkern-tiny` and `clipkern-tiny-vit` with open_clip (idempotent)."""
    global _registered
    if _registered and {TINY_NAME, TINY_VIT_NAME} <= set(open_clip.list_models()):
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in ((TINY_NAME, TINY_CONFIG), (TINY_VIT_NAME, TINY_VIT_CONFIG)):
            with open(os.path.join(tmp, f"{name}.json"), "w") as f:
                json.dump(cfg, f)
        open_clip.add_model_config(tmp)
    _registered = True


def is_local_path(pretrained: Optional[str]) -> bool:
    return bool(pretrained) and (os.path.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin",
                                                                                   ".safetensors"))
                                 or os.path.exists(pretrained))


def _state_dict_from_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--pretrained: no such file {path!r}")
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]                                  # a clipkern checkpoint
    elif isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]                             # open_clip's training checkpoints
    if not isinstance(obj, dict):
        raise ValueError(f"--pretrained {path!r}: expected a state dict or a checkpoint dict, got {type(obj).__name__}")
    if obj and all(k.startswith("module.") for k in obj):    # saved from a DDP wrapper
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def complete_state_dict(model: torch.nn.Module, state: dict) -> dict:
    """`state` plus the BatchNorm `num_batches_tracked` counters it lacks: a run whose image tower was
    locked (open_clip's freeze_bn_stats: FrozenBatchNorm2d) saves none, and only training-mode BN uses them."""
    own = model.state_dict()
    extra = {k: own[k] for k in own if k.endswith("num_batches_tracked") and k not in state}
    return {**state, **extra} if extra else state


def _load_local(model: torch.nn.Module, path: str) -> None:
    state = complete_state_dict(model, _state_dict_from_file(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "logit_bias"]   # a CLIP checkpoint into a SigLIP model keeps its init bias
    if missing or unexpected:
        raise ValueError(f"--pretrained {path!r} does not fit the model: missing keys {missing[:8]}, "
                         f"unexpected keys {unexpected[:8]}")


def _shared_preprocess(cfg: SharedCLIPConfig):
    pre_train = open_clip.image_transform(cfg.image_size, is_train=True)
    pre_val = open_clip.image_transform(cfg.image_size, is_train=False)
    return pre_train, pre_val


def model_config(name: str, model: torch.nn.Module) -> Optional[dict]:
    """The config a checkpoint stores to rebuild `model` (SharedCLIP's; None for open_clip names)."""
    if isinstance(model, SharedCLIP):
        return dict(model.config.__dict__)
    return None


def create(name: str, pretrained: Optional[str] = None, precision: str = "fp32", *,
           model_cfg: Optional[dict] = None, device="cpu", **model_kwargs):
    """(model, preprocess_train, preprocess_val, tokenizer) for an open_clip name, `clipkern-tiny` or
    `shared-tiny`. model_kwargs go to the model constructor (e.g. init_logit_bias for SigLIP)."""
    if precision not in ("fp32", "amp", "amp_bf16", "bf16", "fp16", "pure_bf16", "pure_fp16"):
        raise ValueError(f"--precision: unknown precision {precision!r}")
    register_tiny_models()
    if name == SHARED_TINY_NAME or model_cfg is not None and name != TINY_NAME and name not in open_clip.list_models():
        cfg = dict(SHARED_TINY_CONFIG)
        if model_cfg is not None:
            cfg.update(model_cfg)
        cfg.update({k: v for k, v in model_kwargs.items() if k in ("init_logit_scale", "init_logit_bias")})
        model = build_shared_clip(cfg)
        if pretrained:
            if not is_local_path(pretrained):
                raise ValueError(f"--pretrained {pretrained!r}: {name} has no open_clip pretrained tags; "
                                 f"give a local checkpoint path")
            _load_local(model, pretrained)
        pre_train, pre_val = _shared_preprocess(model.config)
        tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=model.context_length)
    else:
        if name not in open_clip.list_models() and not name.startswith(("hf-hub:", "local-dir:")):
            raise ValueError(f"--model: unknown model {name!r}; use an open_clip name (open_clip.list_models()), "
                             f"{TINY_NAME!r} or {SHARED_TINY_NAME!r}")
        local = is_local_path(pretrained)
        tag = None if local else pretrained
        if tag:
            known = [t for m, t in open_clip.list_pretrained() if m == name]
            if tag not in known:
                raise ValueError(f"--pretrained {tag!r} is not an open_clip tag for {name!r} (known: {known}) "
                                 f"and not a file; give a local checkpoint path")
        try:
            model, pre_train, pre_val = open_clip.create_model_and_transforms(
                name, pretrained=tag, precision="fp32" if precision in ("amp", "amp_bf16") else precision,
                device=device, output_dict=True, **model_kwargs)
        except Exception as e:  # no network: open_clip raises while downloading
            if tag:
                raise RuntimeError(f"--pretrained {tag!r}: could not fetch the open_clip weights for {name!r} "
                                   f"({type(e).__name__}: {e}). This machine may be offline: download the "
                                   f"checkpoint elsewhere and pass its local path, e.g. --pretrained "
                                   f"/path/to/{name}-{tag}.pt") from e
            raise
        if local:
            _load_local(model, pretrained)
        tokenizer = open_clip.get_tokenizer(name)
    if name == SHARED_TINY_NAME or isinstance(model, SharedCLIP):
        if precision in ("bf16", "pure_bf16"):
            model = model.to(torch.bfloat16)
        elif precision in ("fp16", "pure_fp16"):
            model = model.to(torch.float16)
        model = model.to(device)
    return model, pre_train, pre_val, tokenizer
