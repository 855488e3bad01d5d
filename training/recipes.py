"""One small class per recipe: which data it reads, which towers it freezes, its loss, and how a batch
becomes the loss call.

The loop embeds `images` with the image tower and the token tensors of `texts` (concatenated, one
text-tower pass) with the text tower, then calls

    loss(**recipe.loss_kwargs(image_features, text_features_list, logit_scale, logit_bias, extra),
         output_dict=True)

and sums the returned terms. `extra` is what `recipe.prepare(batch)` returns (e.g. pairs, semantic
features), computed once per batch and shared by the plain and the grad-cache step.
"""
from __future__ import annotations

import math

import torch

import clipkern


class Recipe:
    name = "clip"
    data_kind = "csv"            # training.data kind: "csv", "diffs" or "paraphrases"
    text_keys = ("text",)        # token tensors of the batch, in the order of text_features_list

    def __init__(self, args, rank: int = 0, world_size: int = 1):
        self.args, self.rank, self.world_size = args, rank, world_size
        self.loss = self.build_loss()

    def clip_kwargs(self) -> dict:
        a = self.args
        return dict(local_loss=a.local_loss, gather_with_grad=a.gather_with_grad, cache_labels=True,
                    rank=self.rank, world_size=self.world_size, backend=a.backend)

    def build_loss(self) -> torch.nn.Module:
        return clipkern.ClipLoss(**self.clip_kwargs())

    def model_kwargs(self) -> dict:
        """Extra constructor arguments of the model (SigLIP's logit scale/bias init)."""
        return {}

    def configure_model(self, model) -> None:
        """Freezes towers per --lock-image / --lock-text (and whatever the recipe does not train). A
        locked image tower keeps its BatchNorm statistics too (open_clip's freeze_bn_stats)."""
        if self.args.lock_image:
            model.lock_image_tower(unlocked_groups=0, freeze_bn_stats=True)
        if self.args.lock_text:
            model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)

    def set_epoch(self, epoch: int) -> None:
        """Called at the start of every epoch (epoch counts from 0, as the loop's)."""

    def inputs(self, batch):
        return batch["image"], [batch[k] for k in self.text_keys]

    def prepare(self, batch, device) -> dict:
        return {}

    def loss_kwargs(self, image_features, text_features, logit_scale, logit_bias, extra) -> dict:
        kw = dict(image_features=image_features, text_features=text_features[0], logit_scale=logit_scale)
        if logit_bias is not None:
            kw["logit_bias"] = logit_bias
        return kw


class ClipRecipe(Recipe):
    name = "clip"


class SigLipRecipe(Recipe):
    name = "siglip"

    def build_loss(self):
        kw = self.clip_kwargs()
        return clipkern.SigLipLoss(cache_labels=True, rank=kw["rank"], world_size=kw["world_size"],
                                   backend=kw["backend"])

    def model_kwargs(self):
        return {"init_logit_scale": math.log(10), "init_logit_bias": -10.0}   # as open_clip's --siglip

    def loss_kwargs(self, image_features, text_features, logit_scale, logit_bias, extra):
        if logit_bias is None:
            raise ValueError("--loss siglip needs a model with a logit_bias (built with init_logit_bias)")
        return super().loss_kwargs(image_features, text_features, logit_scale, logit_bias, extra)


class RankClipRecipe(Recipe):
    """RankCLIP: CLIP + ranking consistency with the loss's epoch ramp (epochs count from 1 there).
    Under torchrun each process ranks its rows against the whole gathered batch (clipkern.RankClipLoss
    with rank/world_size: the mean over ranks is the single-process loss on the global batch)."""
    name = "rankclip"

    def build_loss(self):
        return clipkern.RankClipLoss(total_epochs=self.args.epochs, backend=self.args.backend,
                                     rank=self.rank, world_size=self.world_size)

    def set_epoch(self, epoch):
        self.loss.set_epoch(epoch + 1)


class AlignClipRecipe(Recipe):
    """AlignCLIP: CLIP + intra-modality separation scaled by caption dissimilarity from the sentence
    encoder (training/semantic.py, cached on disk). Under torchrun the contrastive term follows
    --local-loss/--gather-with-grad and IMSep scores each rank's rows against the gathered batch
    (clipkern.AlignClipLoss with rank/world_size)."""
    name = "alignclip"

    def __init__(self, args, rank=0, world_size=1, semantic=None):
        super().__init__(args, rank, world_size)
        self.semantic = semantic

    def build_loss(self):
        return clipkern.AlignClipLoss(**self.clip_kwargs())

    def prepare(self, batch, device):
        if self.semantic is None:
            raise RuntimeError("alignclip recipe has no semantic feature cache")
        return {"semantic_features": self.semantic(list(batch["caption"])).to(device)}

    def loss_kwargs(self, image_features, text_features, logit_scale, logit_bias, extra):
        kw = super().loss_kwargs(image_features, text_features, logit_scale, logit_bias, extra)
        kw["semantic_features"] = extra["semantic_features"].to(image_features.dtype)
        return kw


class PcClipRecipe(Recipe):
    """PC-CLIP: difference texts against normalised image-feature differences of listed pairs (or all
    ordered pairs with --all-pairs). Image tower frozen by default; the loss uses the paper's fixed
    scale 1, so logit_scale is frozen too (it would get no gradient). Under torchrun each rank's listed
    pairs are scored against the difference texts of every rank (clipkern.PairwiseDifferenceLoss with
    rank/world_size; --all-pairs is single-process only and says so)."""
    name = "pcclip"
    data_kind = "diffs"

    def build_loss(self):
        return clipkern.PairwiseDifferenceLoss(all_pairs=self.args.all_pairs, backend=self.args.backend,
                                               rank=self.rank, world_size=self.world_size)

    def configure_model(self, model):
        super().configure_model(model)
        model.logit_scale.requires_grad_(False)

    def prepare(self, batch, device):
        return {"pairs": batch["pairs"].to(device)}

    def loss_kwargs(self, image_features, text_features, logit_scale, logit_bias, extra):
        return dict(text_features=text_features[0], image_features=image_features, pairs=extra["pairs"])


class ParaClipRecipe(Recipe):
    """ParaCLIP: CLIP(image, para2) + CLIP(caption, para1) + CLIP(para1, para2); image tower frozen."""
    name = "paraclip"
    data_kind = "paraphrases"
    text_keys = ("text", "para1", "para2")

    def build_loss(self):
        return clipkern.ParaClipLoss(**self.clip_kwargs())

    def loss_kwargs(self, image_features, text_features, logit_scale, logit_bias, extra):
        caption, para1, para2 = text_features
        return dict(image_features=image_features, caption_features=caption, para1_features=para1,
                    para2_features=para2, logit_scale=logit_scale)


RECIPES = {r.name: r for r in (ClipRecipe, SigLipRecipe, RankClipRecipe, AlignClipRecipe, PcClipRecipe,
                               ParaClipRecipe)}


def make_recipe(args, rank: int = 0, world_size: int = 1, semantic=None) -> Recipe:
    if args.loss not in RECIPES:
        raise ValueError(f"--loss: unknown recipe {args.loss!r}; choose from {sorted(RECIPES)}")
    cls = RECIPES[args.loss]
    if cls is AlignClipRecipe:
        return cls(args, rank, world_size, semantic=semantic)
    return cls(args, rank, world_size)
