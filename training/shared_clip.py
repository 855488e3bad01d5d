"""SharedCLIP: AlignCLIP's shared-parameter encoder, with open_clip's model interface.

AlignCLIP (Eslami & de Melo, 2024, "Mitigate the Gap") replaces CLIP's two towers by one:

    image ─ ImageStem (patch conv, class token, pos. emb., ln_pre) ─┐
                                                                   ├─ transformer ─ pool ─ ln_final ─ @ proj
    text  ─ TextStem  (token emb., pos. emb.) ─── causal mask ──────┘

- Shared by both modalities: the transformer (open_clip's `Transformer`), the final LayerNorm and the
  projection `proj` (width × embed_dim).
- Per modality: the stems. The image stem is open_clip's ViT stem (patch conv, class token, learned
  positional embedding, ln_pre); the text stem is open_clip's (token embedding, positional embedding).
- Images attend without a mask and pool the class token (position 0). Text runs under a causal mask
  and pools the end-of-text token, found as `text.argmax(-1)` because EOT is the largest id of
  open_clip's tokenizer (open_clip's `pool_type="argmax"`). Under the causal mask the pooled feature
  depends only on the tokens up to and including EOT.
- Pooling happens before ln_final; LayerNorm is per token, so this equals open_clip's order (LN over
  every token, then pool) at a fraction of the cost.

The interface is open_clip's `CLIP`: `encode_image`, `encode_text`, `forward(image, text)` returning
`{"image_features", "text_features", "logit_scale"[, "logit_bias"]}` (normalised features,
`logit_scale` already exponentiated), so `loss(**model(image, text), output_dict=True)` works with
open_clip's and clipkern's losses unchanged. The attention blocks, LayerNorms and pooling helper are
open_clip's own (`open_clip.transformer`), imported, not re-implemented.

Build from a flat config, a `SharedCLIPConfig`, or an open_clip-style nested model config:

    model = build_shared_clip({"embed_dim": 512, "width": 768, "layers": 12, "heads": 12,
                               "image_size": 224, "patch_size": 16,
                               "context_length": 77, "vocab_size": 49408})
    model = build_shared_clip(json.load(open("ViT-B-16-shared.json")))   # {"embed_dim", "vision_cfg", "text_cfg"}
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from open_clip.transformer import LayerNorm, LayerNormFp32, QuickGELU, Transformer, text_global_pool
from torch import nn

__all__ = ["SharedCLIPConfig", "SharedCLIP", "build_shared_clip", "tiny_config"]

# open_clip's CLIPVisionCfg.head_width default: a nested config without head_width means width // 64 heads.
_OPEN_CLIP_HEAD_WIDTH = 64


def _pair(name: str, value) -> Tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair (height, width), got {value!r}")
        pair = tuple(value)
    else:
        pair = (value, value)
    for v in pair:
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return pair


@dataclass
class SharedCLIPConfig:
    """Shape of a SharedCLIP. The defaults are AlignCLIP's ViT-B/16 shared model (width 768 for both
    modalities). `heads` is the head count of the one shared transformer."""

    embed_dim: int = 512
    width: int = 768
    layers: int = 12
    heads: int = 12
    image_size: Union[int, Tuple[int, int]] = 224
    patch_size: Union[int, Tuple[int, int]] = 16
    context_length: int = 77
    vocab_size: int = 49408
    mlp_ratio: float = 4.0
    ls_init_value: Optional[float] = None   # LayerScale in the shared blocks (open_clip's option)
    quick_gelu: bool = False                # OpenAI's QuickGELU instead of nn.GELU
    no_ln_pre: bool = False                 # drop the image stem's pre-transformer LayerNorm
    no_causal_mask: bool = False            # bidirectional text attention (not AlignCLIP's setting)
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: Optional[float] = None  # set it to return "logit_bias" (SigLIP-style losses)

    def __post_init__(self):
        for name in ("embed_dim", "width", "layers", "heads", "context_length", "vocab_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")
        image, patch = _pair("image_size", self.image_size), _pair("patch_size", self.patch_size)
        if image[0] % patch[0] or image[1] % patch[1]:
            raise ValueError(f"image_size {self.image_size!r} must be divisible by patch_size {self.patch_size!r}")
        if not (isinstance(self.mlp_ratio, (int, float)) and self.mlp_ratio > 0):
            raise ValueError(f"mlp_ratio must be a positive number, got {self.mlp_ratio!r}")
        if int(self.width * self.mlp_ratio) <= 0:
            raise ValueError(f"mlp_ratio ({self.mlp_ratio}) × width ({self.width}) gives an empty MLP")
        if not math.isfinite(self.init_logit_scale):
            raise ValueError(f"init_logit_scale must be finite, got {self.init_logit_scale!r}")

    @property
    def grid_size(self) -> Tuple[int, int]:
        (ih, iw), (ph, pw) = _pair("image_size", self.image_size), _pair("patch_size", self.patch_size)
        return ih // ph, iw // pw

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> "SharedCLIPConfig":
        """A flat dict of this class's fields, or an open_clip model config
        (`{"embed_dim", "vision_cfg": {...}, "text_cfg": {...}}`) whose two towers agree on the
        shared transformer's shape (width, layers, heads, mlp_ratio, ls_init_value)."""
        if not isinstance(cfg, Mapping):
            raise ValueError(f"config must be a dict or SharedCLIPConfig, got {type(cfg).__name__}")
        if "vision_cfg" in cfg or "text_cfg" in cfg:
            return cls._from_open_clip(cfg)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - fields)
        if unknown:
            raise ValueError(f"unknown SharedCLIP config keys {unknown}; known: {sorted(fields)}")
        return cls(**cfg)

    @classmethod
    def _from_open_clip(cls, cfg: Mapping[str, Any]) -> "SharedCLIPConfig":
        top_known = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_scale",
                     "init_logit_bias", "custom_text"}   # custom_text only picks open_clip's class
        vision_known = {"image_size", "patch_size", "width", "layers", "head_width", "mlp_ratio",
                        "ls_init_value", "no_ln_pre"}
        text_known = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio",
                      "ls_init_value", "no_causal_mask"}
        for where, given, known in (("model config", cfg, top_known),
                                    ("vision_cfg", cfg.get("vision_cfg", {}), vision_known),
                                    ("text_cfg", cfg.get("text_cfg", {}), text_known)):
            unknown = sorted(set(given) - known)
            if unknown:
                raise ValueError(f"{where} keys {unknown} are not supported by SharedCLIP; "
                                 f"supported: {sorted(known)}")
        if "embed_dim" not in cfg:
            raise ValueError("embed_dim is missing from the model config")
        v, t = dict(cfg.get("vision_cfg", {})), dict(cfg.get("text_cfg", {}))
        # A field a tower leaves out takes open_clip's default for that tower (CLIPVisionCfg /
        # CLIPTextCfg), since that is what open_clip would build from this config.
        d = cls()
        v_width, t_width = v.get("width", 768), t.get("width", 512)
        v_layers, t_layers = v.get("layers", 12), t.get("layers", 12)
        if isinstance(v_layers, (tuple, list)):
            raise ValueError("vision_cfg.layers is a ResNet layout; SharedCLIP needs a ViT (an int)")
        if v_width != t_width:
            raise ValueError(f"width differs between towers (vision_cfg.width={v_width}, "
                             f"text_cfg.width={t_width}); SharedCLIP has one transformer")
        if v_layers != t_layers:
            raise ValueError(f"layers differs between towers (vision_cfg.layers={v_layers}, "
                             f"text_cfg.layers={t_layers}); SharedCLIP has one transformer")
        head_width = v.get("head_width", _OPEN_CLIP_HEAD_WIDTH)
        t_heads = t.get("heads", 8)
        v_heads = v_width // head_width if isinstance(head_width, int) and head_width > 0 else None
        if v_heads is None or v_width % head_width or v_heads != t_heads:
            raise ValueError(f"heads differs between towers (vision_cfg.width/head_width={v_width}/{head_width}, "
                             f"text_cfg.heads={t_heads}); SharedCLIP has one transformer")
        for name in ("mlp_ratio", "ls_init_value"):
            default = getattr(d, name)
            if v.get(name, default) != t.get(name, default):
                raise ValueError(f"{name} differs between towers (vision_cfg.{name}={v.get(name, default)}, "
                                 f"text_cfg.{name}={t.get(name, default)}); SharedCLIP has one transformer")
        flat = dict(embed_dim=cfg["embed_dim"], width=v_width, layers=v_layers, heads=t_heads,
                    image_size=v.get("image_size", 224), patch_size=v.get("patch_size", 16),
                    context_length=t.get("context_length", 77), vocab_size=t.get("vocab_size", 49408),
                    mlp_ratio=v.get("mlp_ratio", d.mlp_ratio), ls_init_value=v.get("ls_init_value"),
                    quick_gelu=cfg.get("quick_gelu", False), no_ln_pre=v.get("no_ln_pre", False),
                    no_causal_mask=t.get("no_causal_mask", False))
        for name in ("init_logit_scale", "init_logit_bias"):
            if name in cfg:
                flat[name] = cfg[name]
        return cls(**flat)

    def to_open_clip(self) -> dict:
        """The open_clip CLIP config with the same shapes (two towers of this transformer): handy for
        comparisons, `open_clip.model.CLIP(**cfg.to_open_clip())`."""
        return dict(
            embed_dim=self.embed_dim, quick_gelu=self.quick_gelu,
            init_logit_scale=self.init_logit_scale, init_logit_bias=self.init_logit_bias,
            vision_cfg=dict(image_size=self.image_size, patch_size=self.patch_size, width=self.width,
                            layers=self.layers, head_width=self.width // self.heads, mlp_ratio=self.mlp_ratio,
                            ls_init_value=self.ls_init_value, no_ln_pre=self.no_ln_pre),
            text_cfg=dict(context_length=self.context_length, vocab_size=self.vocab_size, width=self.width,
                          heads=self.heads, layers=self.layers, mlp_ratio=self.mlp_ratio,
                          ls_init_value=self.ls_init_value, no_causal_mask=self.no_causal_mask),
        )


def tiny_config(**overrides) -> SharedCLIPConfig:
    """A CPU-test-sized SharedCLIP (width 64, 2 layers, 2 heads, 32 px images in 8 px patches,
    16 tokens) with open_clip's tokenizer vocabulary, so real tokenizer output fits."""
    base = dict(embed_dim=32, width=64, layers=2, heads=2, image_size=32, patch_size=8,
                context_length=16, vocab_size=49408)
    base.update(overrides)
    return SharedCLIPConfig(**base)


def _as_config(cfg) -> SharedCLIPConfig:
    if isinstance(cfg, SharedCLIPConfig):
        return cfg
    return SharedCLIPConfig.from_dict(cfg)


class ImageStem(nn.Module):
    """Image-only input embedding, as open_clip's ViT: non-overlapping patch conv, class token,
    learned positional embedding, then ln_pre. Returns [B, 1 + grid_h·grid_w, width]."""

    def __init__(self, cfg: SharedCLIPConfig, norm_layer):
        super().__init__()
        self.image_size = _pair("image_size", cfg.image_size)
        self.patch_size = _pair("patch_size", cfg.patch_size)
        self.grid_size = cfg.grid_size
        scale = cfg.width ** -0.5
        self.conv1 = nn.Conv2d(3, cfg.width, kernel_size=self.patch_size, stride=self.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(cfg.width))
        self.positional_embedding = nn.Parameter(
            scale * torch.randn(self.grid_size[0] * self.grid_size[1] + 1, cfg.width))
        self.ln_pre = nn.Identity() if cfg.no_ln_pre else norm_layer(cfg.width)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() != 4 or image.shape[1] != 3 or tuple(image.shape[2:]) != self.image_size:
            raise ValueError(f"image must have shape [B, 3, {self.image_size[0]}, {self.image_size[1]}], "
                             f"got {list(image.shape)}")
        x = self.conv1(image).flatten(2).transpose(1, 2)                 # [B, grid², width]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)


class TextStem(nn.Module):
    """Text-only input embedding, as open_clip's text tower: token embedding + positional embedding.
    Returns [B, L, width] for L ≤ context_length tokens."""

    def __init__(self, cfg: SharedCLIPConfig):
        super().__init__()
        self.context_length = cfg.context_length
        self.vocab_size = cfg.vocab_size
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)

    def forward(self, text: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if text.dim() != 2 or text.dtype == torch.bool or text.is_floating_point() or text.is_complex():
            raise ValueError(f"text must be a [B, L] tensor of token ids, got {text.dtype} {list(text.shape)}")
        if text.shape[1] > self.context_length:
            raise ValueError(f"text has {text.shape[1]} tokens, more than context_length ({self.context_length})")
        x = self.token_embedding(text).to(dtype)
        return x + self.positional_embedding[: text.shape[1]].to(dtype)


class SharedCLIP(nn.Module):
    """AlignCLIP's shared-parameter encoder with open_clip's CLIP interface (see the module docstring).

    Args:
        cfg: a SharedCLIPConfig, a flat dict of its fields, or an open_clip nested model config.
        cast_dtype: as open_clip's `cast_dtype`; fp16/bf16 select fp32-computing LayerNorms.
        output_dict: forward returns open_clip's dict (default, what the training loop uses); False
            returns open_clip's tuple `(image_features, text_features, logit_scale[, logit_bias])`.
    """

    def __init__(self, cfg, *, cast_dtype: Optional[torch.dtype] = None, output_dict: bool = True):
        super().__init__()
        cfg = _as_config(cfg)
        self.config = cfg
        self.output_dict = output_dict
        self.embed_dim = cfg.embed_dim
        self.context_length = cfg.context_length
        self.vocab_size = cfg.vocab_size
        self.image_size = _pair("image_size", cfg.image_size)
        norm_layer = LayerNormFp32 if cast_dtype in (torch.float16, torch.bfloat16) else LayerNorm
        act_layer = QuickGELU if cfg.quick_gelu else nn.GELU

        # per modality
        self.image_stem = ImageStem(cfg, norm_layer)
        self.text_stem = TextStem(cfg)
        # shared by both modalities
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio,
                                       ls_init_value=cfg.ls_init_value, act_layer=act_layer,
                                       norm_layer=norm_layer)
        self.ln_final = norm_layer(cfg.width)
        self.proj = nn.Parameter(torch.empty(cfg.width, cfg.embed_dim))

        if cfg.no_causal_mask:
            self.attn_mask = None
        else:
            mask = torch.full((cfg.context_length, cfg.context_length), float("-inf")).triu_(1)
            self.register_buffer("attn_mask", mask, persistent=False)

        self.logit_scale = nn.Parameter(torch.ones([]) * cfg.init_logit_scale)
        self.logit_bias = (nn.Parameter(torch.ones([]) * cfg.init_logit_bias)
                           if cfg.init_logit_bias is not None else None)
        self._init_shared()

    def _init_shared(self):
        # open_clip's text-tower initialisation (the one CLIP tower that defines one).
        width, layers = self.transformer.width, self.transformer.layers
        proj_std, attn_std, fc_std = width ** -0.5 * (2 * layers) ** -0.5, width ** -0.5, (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.proj, std=width ** -0.5)

    @classmethod
    def from_config(cls, cfg, **kwargs) -> "SharedCLIP":
        return cls(cfg, **kwargs)

    # -- shared trunk -------------------------------------------------------------------------------
    def _head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.ln_final(pooled) @ self.proj

    # -- open_clip interface ------------------------------------------------------------------------
    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.transformer(self.image_stem(image))           # no mask: every token sees every patch
        features = self._head(x[:, 0])                          # class token
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.text_stem(text, self.transformer.get_cast_dtype())
        seq = text.shape[1]
        mask = None if self.attn_mask is None else self.attn_mask[:seq, :seq]
        x = self.transformer(x, attn_mask=mask)
        features = self._head(text_global_pool(x, text, pool_type="argmax"))   # the EOT token
        return F.normalize(features, dim=-1) if normalize else features

    def get_logits(self, image: torch.Tensor, text: torch.Tensor):
        image_features = self.encode_image(image, normalize=True)
        text_features = self.encode_text(text, normalize=True)
        image_logits = self.logit_scale.exp() * image_features @ text_features.T
        if self.logit_bias is not None:
            image_logits = image_logits + self.logit_bias
        return image_logits, image_logits.T

    def forward(self, image: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None):
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        if self.output_dict:
            out = {"image_features": image_features, "text_features": text_features,
                   "logit_scale": self.logit_scale.exp()}
            if self.logit_bias is not None:
                out["logit_bias"] = self.logit_bias
            return out
        if self.logit_bias is not None:
            return image_features, text_features, self.logit_scale.exp(), self.logit_bias
        return image_features, text_features, self.logit_scale.exp()

    # -- training-loop hooks (open_clip's names) ----------------------------------------------------
    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False):
        """Freezes the image-only parameters (the image stem). The transformer, ln_final and proj are
        also the text tower, so they stay trainable; use `requires_grad_(False)` on them to freeze
        the shared trunk too. The image-only part is one group: unlocked_groups ≥ 1 leaves it
        trainable. freeze_bn_stats is accepted for open_clip compatibility (there is no BatchNorm)."""
        if unlocked_groups < 1:
            self.image_stem.requires_grad_(False)

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True):
        """Freezes the text-only parameters (the text stem); the shared trunk stays trainable, as in
        lock_image_tower. unlocked_layers ≥ 1 leaves the stem trainable."""
        if not freeze_layer_norm:
            raise ValueError("freeze_layer_norm=False is not supported (as in open_clip)")
        if unlocked_layers < 1:
            self.text_stem.requires_grad_(False)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.transformer.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self):
        return {"image_stem.positional_embedding", "image_stem.class_embedding", "text_stem.positional_embedding"}


def build_shared_clip(cfg, **kwargs) -> SharedCLIP:
    """`SharedCLIP(cfg, **kwargs)`; cfg is a SharedCLIPConfig, a flat dict or an open_clip model config."""
    return SharedCLIP(cfg, **kwargs)
