"""Drop-in nn.Modules with open_clip 3.3's constructor and forward signatures.

    from clipkern import ClipLoss      # instead of: from open_clip.loss import ClipLoss

Every module also takes a keyword-only `backend` (default "auto"). With output_dict=True they return
only `*_loss` keys, as open_clip's training loop sums every value of the dict.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from . import functional as F
from ._backend import BACKENDS as _BACKENDS
from ._backend import resolve as _resolve_backend
from ._checks import as_scalar as _as_scalar
from ._checks import check_pair, check_same_batch
from . import losses_distributed as _dist_losses
from .distributed import _require_initialised, all_gather_with_grad, check_equal_batches, gather_features
from .distributed_contrastive import local_clip_loss as _local_clip_loss
from .ops.ranking import DECAYS as _RANK_DECAYS
from .ops.ranking import rankclip_terms as _rankclip_terms

SIGLIP_DIST_IMPLS = ("bidir", "shift", "reduce", "gather")


class _LabelCache:
    """open_clip's label caching (`cache_labels`, `prev_num_logits`, `labels` per device)."""

    def _init_cache(self, cache_labels: bool) -> None:
        self.cache_labels = cache_labels
        self.prev_num_logits = 0
        self.labels = {}

    def _labels(self, device, num_logits, offset=0) -> torch.Tensor:
        """arange(num_logits) + offset, cached per device when cache_labels (offsets are fixed per
        module: they depend only on rank and the local batch)."""
        if self.prev_num_logits != num_logits or device not in self.labels:
            labels = torch.arange(offset, offset + num_logits, device=device, dtype=torch.long)
            if self.cache_labels:
                self.labels[device] = labels
                self.prev_num_logits = num_logits
            return labels
        return self.labels[device]


class ClipLoss(_LabelCache, nn.Module):
    """Softmax contrastive (CLIP) loss, fused. Same arguments and results as open_clip's ClipLoss.

    world_size > 1 gathers features through torch.distributed (with autograd when
    gather_with_grad). local_loss computes this rank's rows against all columns in both directions,
    labels arange(B) + rank·B; otherwise every rank computes the global loss, as open_clip does.
    local_loss=True with gather_with_grad=True computes each logit once across ranks
    (clipkern/distributed_contrastive.py, docs/design.md §6). Every rank must pass the same batch size.
    """

    def __init__(self, local_loss=False, gather_with_grad=False, cache_labels=False, rank=0,
                 world_size=1, use_horovod=False, *, backend="auto"):
        super().__init__()
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.rank = rank
        self.world_size = world_size
        self.use_horovod = use_horovod
        self.backend = backend
        self._init_cache(cache_labels)

    def get_ground_truth(self, device, num_logits) -> torch.Tensor:
        """open_clip's ClipLoss.get_ground_truth: the positive column of each local row."""
        offset = num_logits * self.rank if self.world_size > 1 and self.local_loss else 0
        return self._labels(device, num_logits, offset)

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict=False):
        check_pair("image_features", image_features, "text_features", text_features)
        check_same_batch("image_features", image_features, "text_features", text_features)
        if self.world_size > 1 and self.local_loss and self.gather_with_grad:
            loss = self._local_loss_once(image_features, text_features, logit_scale, logit_bias)
        elif self.world_size > 1:
            all_image, all_text = gather_features(
                image_features, text_features, local_loss=self.local_loss,
                gather_with_grad=self.gather_with_grad, rank=self.rank, world_size=self.world_size,
                use_horovod=self.use_horovod)
            if self.local_loss:
                labels = self.get_ground_truth(image_features.device, image_features.shape[0])
                rows = ("features", "other_features")
                loss = (F._clip(image_features, all_text, logit_scale, logit_bias, labels, False, self.backend,
                                rows, trusted=True)
                        + F._clip(text_features, all_image, logit_scale, logit_bias, labels, False, self.backend,
                                  rows, trusted=True)) / 2
            else:  # the global loss: positives (i, i), built by the kernels (no label tensor, no check)
                loss = F._clip(all_image, all_text, logit_scale, logit_bias, None, True, self.backend,
                               ("image_features", "text_features"))
        else:
            loss = F._clip(image_features, text_features, logit_scale, logit_bias, None, True, self.backend,
                           ("image_features", "text_features"))
        return {"contrastive_loss": loss} if output_dict else loss

    def _local_loss_once(self, image_features, text_features, logit_scale, logit_bias):
        if self.use_horovod:
            raise ValueError("use_horovod=True is not supported by clipkern; launch with torchrun (torch.distributed)")
        _require_initialised(self.world_size)
        check_equal_batches("image_features", image_features, self.world_size)
        scale = _as_scalar("logit_scale", logit_scale, image_features)
        bias = _as_scalar("logit_bias", logit_bias, image_features, optional=True)
        backend = _resolve_backend(self.backend, image_features.device, image_features.dtype,
                                   family="contrastive", rows=image_features.shape[0])
        loss = _local_clip_loss(image_features, text_features, scale, self.world_size, backend)
        if bias is not None:  # cancels in every softmax; an exactly-zero gradient keeps DDP happy
            loss = loss + bias.to(loss.dtype).reshape(()) * 0.0
        return F._out(loss)


class SigLipLoss(_LabelCache, nn.Module):
    """Sigmoid contrastive (SigLIP) loss, fused. Same arguments and results as open_clip's SigLipLoss.

    With world_size > 1 the text features of every rank are gathered with autograd and this rank's
    images are scored against all of them (other ranks' texts are negatives). That is the loss and
    the gradient of each of open_clip's dist_impl choices ('bidir', 'shift', 'reduce', 'gather'),
    which differ only in how the texts travel; here they all travel by one all_gather.
    """

    def __init__(self, cache_labels=False, rank=0, world_size=1, dist_impl=None, *, backend="auto"):
        super().__init__()
        self.rank = rank
        self.world_size = world_size
        self.dist_impl = dist_impl or "bidir"
        if self.dist_impl not in SIGLIP_DIST_IMPLS:
            raise ValueError(f"dist_impl must be one of {SIGLIP_DIST_IMPLS} or None, got {dist_impl!r}")
        self.backend = backend
        self._init_cache(cache_labels)

    def forward(self, image_features, text_features, logit_scale, logit_bias, output_dict=False):
        check_pair("image_features", image_features, "text_features", text_features)
        check_same_batch("image_features", image_features, "text_features", text_features)
        rows, device = image_features.shape[0], image_features.device
        if self.world_size > 1:
            _require_initialised(self.world_size)
            check_equal_batches("image_features", image_features, self.world_size)
            all_text = all_gather_with_grad(text_features)
            labels = self._labels(device, rows, offset=rows * self.rank)
            loss = F._siglip(image_features, all_text, logit_scale, logit_bias, labels, self.backend, trusted=True)
        else:
            # positives (i, i): built by the kernels (no label tensor, no check)
            loss = F._siglip(image_features, text_features, logit_scale, logit_bias, None, self.backend)
        return {"contrastive_loss": loss} if output_dict else loss


class AlignClipLoss(nn.Module):
    """AlignCLIP's objective: alpha·(CE_rows(S) + CE_rows(Sᵀ)) + beta·IMSep (docs/design.md §1.5).

    Note the *sum* of the two CE directions (the seed code's choice): the first term is
    2·alpha·ClipLoss. forward(image_features, text_features, semantic_features, logit_scale,
    logit_bias=None, output_dict=False); output_dict gives {"contrastive_loss", "imsep_loss"}.

    world_size > 1 (docs/design.md §6): the contrastive term is ClipLoss(local_loss, gather_with_grad,
    …) across ranks; IMSep scores this rank's rows against the gathered features of every rank
    (semantic features gathered as constants). The mean over ranks of the loss is the single-process
    loss on the concatenated batch (with local_loss=True; with local_loss=False the contrastive term
    is already global on every rank). Use local_loss=True, gather_with_grad=True for exact gradients.
    """

    def __init__(self, alpha=1.0, beta=0.5, modalities=("image",), cache_labels=False, rank=0, world_size=1,
                 local_loss=False, gather_with_grad=False, *, backend="auto"):
        super().__init__()
        self.alpha, self.beta = float(alpha), float(beta)
        self.modalities = F._check_modalities(modalities)
        self.rank, self.world_size = rank, world_size
        self.clip = ClipLoss(local_loss, gather_with_grad, cache_labels, rank, world_size, backend=backend)
        self.backend = backend

    def _imsep(self, image_features, text_features, semantic_features, logit_scale):
        if self.world_size == 1:
            return F.imsep_loss(image_features, text_features, semantic_features, logit_scale,
                                modalities=self.modalities, backend=self.backend)
        check_pair("image_features", image_features, "text_features", text_features)
        check_same_batch("image_features", image_features, "semantic_features", semantic_features)
        _require_initialised(self.world_size)
        check_equal_batches("image_features", image_features, self.world_size)
        scale = _as_scalar("logit_scale", logit_scale, image_features)
        pairs = {"image": (image_features, text_features), "text": (text_features, image_features)}
        return F._out(sum(_dist_losses.imsep_rows(*pairs[m], semantic_features.detach(), scale, self.rank)
                          for m in self.modalities))

    def forward(self, image_features, text_features, semantic_features, logit_scale, logit_bias=None,
                output_dict=False):
        contrastive = 2 * self.alpha * self.clip(image_features, text_features, logit_scale, logit_bias)
        imsep = self.beta * self._imsep(image_features, text_features, semantic_features, logit_scale)
        if output_dict:
            return {"contrastive_loss": contrastive, "imsep_loss": imsep}
        return contrastive + imsep


class ParaClipLoss(nn.Module):
    """ParaCLIP's three symmetric CLIP losses with equal weights (docs/design.md §1.6):
    CLIP(image, para2) + CLIP(caption, para1) + CLIP(para1, para2), each on the fused kernel.

    Constructor arguments are ClipLoss's (distributed gathering included). output_dict gives
    {"image_para_loss", "caption_para_loss", "para_para_loss"}. Freezing the image tower is the
    training loop's job.
    """

    def __init__(self, local_loss=False, gather_with_grad=False, cache_labels=False, rank=0, world_size=1,
                 use_horovod=False, *, backend="auto"):
        super().__init__()
        self.clip = ClipLoss(local_loss, gather_with_grad, cache_labels, rank, world_size, use_horovod,
                             backend=backend)

    def forward(self, image_features, caption_features, para1_features, para2_features, logit_scale,
                output_dict=False):
        terms = {
            "image_para_loss": self.clip(image_features, para2_features, logit_scale),
            "caption_para_loss": self.clip(caption_features, para1_features, logit_scale),
            "para_para_loss": self.clip(para1_features, para2_features, logit_scale),
        }
        return terms if output_dict else sum(terms.values())


# ------------------------------------------------------------------------------------ RankCLIP


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_epoch(epoch) -> float:
    """RankClipLoss's epoch: a finite number (a NaN epoch would make the ramp weight, hence the loss, NaN)."""
    if not _is_number(epoch):
        raise TypeError(f"epoch must be a number (epochs count from 1), got {type(epoch).__name__}")
    if not math.isfinite(epoch):
        raise ValueError(f"epoch must be finite (epochs count from 1), got {epoch!r}")
    return epoch


class RankClipLoss(nn.Module):
    """RankCLIP: the CLIP loss plus list-wise ranking consistency (docs/design.md §1.4), fused.

        total = clip_weight·CLIP(L) + w(e)·(R_cross + R_in)/B                 L = s·V Tᵀ
        R_cross = cross_weight·[listmle(L, Lᵀ) + listmle(Lᵀ, L)]
        R_in    = in_weight·[listmle(s·V Vᵀ, s·T Tᵀ) + listmle(s·T Tᵀ, s·V Vᵀ)]
        w(e)    = clamp(ramp_slope·(e − 1)/(total_epochs − 1), 0, ramp_max)

    Defaults follow docs/design.md §1.4 (the paper's weights): cross_weight = in_weight = 1/32,
    ramp_slope = 3, ramp_max = 2, clip_weight = 1, the 1/B factor on (normalize_by_batch=True), and
    w_k = 1 inside ListMLE (decay=None); decay="log" switches on the paper's 1/log2(k+1) position
    discount. The ListMLE targets (the second argument of each call) get no gradient.

    Epochs count from 1: w(1) = 0, so the first epoch trains plain CLIP. Give the epoch either with
    `set_epoch(e)` once per epoch (open_clip's loop counts from 0: call `set_epoch(epoch + 1)`) or
    per call with `forward(..., epoch=e)`; it may be fractional (e.g. 1 + step/steps_per_epoch) to
    ramp per step. Without either, forward raises: a silent w = 0 would quietly train plain CLIP.

    `fused`: None (default) computes each ListMLE row's scores and targets inside the kernel from
    the features when B ≤ 256 (FUSED_MAX_N) on the triton backend, so no B×B matrix is formed;
    up to B = 4096 (MATRIX_PATH_MAX_B) the matrix path forms L and the Gram matrices once (fp32) and
    runs the ListMLE kernels on them (Lᵀ is read as a view); above that a row-chunked path forms a
    few rows of each at a time (ops/ranking/chunked.py; O(B·D) plus one chunk of memory). True
    demands the fused path (error if it cannot run), False forces a non-fused path.

    world_size > 1 (keyword-only rank, world_size; docs/design.md §6): the CLIP term is
    ClipLoss(local_loss=True, gather_with_grad=True) (each logit once) and the ranking terms rank this
    rank's rows of L, Lᵀ, s·VVᵀ and s·TTᵀ against the whole gathered batch (b×B blocks on the
    ListMLE kernels), divided by the global B: the mean over ranks of the loss is the single-process
    loss on the concatenated batch, and feature gradients sum over ranks (gather_with_grad's).

    forward(image_features, text_features, logit_scale, logit_bias=None, output_dict=False, *, epoch=None)
    returns the total, or {"contrastive_loss", "rank_cross_loss", "rank_in_loss"} (weights applied)
    whose sum is the total. logit_bias cancels in the CLIP softmax (zero gradient) and is not used
    by the ranking terms.
    """

    def __init__(self, total_epochs: int, *, cross_weight: float = 1 / 32, in_weight: float = 1 / 32,
                 ramp_slope: float = 3.0, ramp_max: float = 2.0, clip_weight: float = 1.0,
                 normalize_by_batch: bool = True, decay: str | None = None, fused: bool | None = None,
                 backend: str = "auto", rank: int = 0, world_size: int = 1):
        super().__init__()
        self.rank, self.world_size = rank, world_size
        self.clip = ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world_size,
                             backend=backend)
        if not isinstance(total_epochs, int) or isinstance(total_epochs, bool) or total_epochs < 2:
            raise ValueError(f"total_epochs must be an integer >= 2 (the ramp divides by total_epochs - 1), "
                             f"got {total_epochs!r}")
        for name, value in (("cross_weight", cross_weight), ("in_weight", in_weight), ("ramp_slope", ramp_slope),
                            ("ramp_max", ramp_max), ("clip_weight", clip_weight)):
            if not _is_number(value):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
        if decay not in _RANK_DECAYS:
            raise ValueError(f"decay must be None or 'log', got {decay!r}")
        if fused not in (None, True, False):
            raise ValueError(f"fused must be None, True or False, got {fused!r}")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        self.total_epochs = total_epochs
        self.cross_weight, self.in_weight = float(cross_weight), float(in_weight)
        self.ramp_slope, self.ramp_max = float(ramp_slope), float(ramp_max)
        self.clip_weight = float(clip_weight)
        self.normalize_by_batch = normalize_by_batch
        self.decay, self.fused, self.backend = decay, fused, backend
        self.epoch: float | None = None

    def set_epoch(self, epoch: float) -> None:
        """The current epoch (from 1) for the ramp; used when forward gets no `epoch`."""
        self.epoch = _check_epoch(epoch)

    def ramp_weight(self, epoch: float) -> float:
        """w(e) = clamp(ramp_slope·(e − 1)/(total_epochs − 1), 0, ramp_max)."""
        w = self.ramp_slope * (epoch - 1) / (self.total_epochs - 1)
        return min(max(w, 0.0), self.ramp_max)

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict=False, *,
                epoch=None):
        check_pair("image_features", image_features, "text_features", text_features)
        check_same_batch("image_features", image_features, "text_features", text_features)
        if epoch is None:
            epoch = self.epoch
            if epoch is None:
                raise ValueError("RankClipLoss needs the current epoch for its ramp: call set_epoch(e) or "
                                 "pass epoch=e (epochs count from 1)")
        else:
            epoch = _check_epoch(epoch)
        clip = self.clip_weight * self.clip(image_features, text_features, logit_scale, logit_bias)
        w = self.ramp_weight(epoch)
        if w == 0.0:  # the ranking terms are skipped, not multiplied by 0
            rank_cross = rank_in = torch.zeros_like(clip)
        else:
            scale = _as_scalar("logit_scale", logit_scale, image_features)
            backend = _resolve_backend(self.backend, image_features.device, image_features.dtype, family="ranking",
                                       rows=image_features.shape[0])
            if self.world_size > 1:
                cross, inner = _dist_losses.rank_terms_rows(image_features, text_features, scale, self.decay, backend)
            else:
                cross, inner = _rankclip_terms(image_features, text_features, scale, self.decay, backend, self.fused)
            batch = image_features.shape[0] * self.world_size  # the global batch
            factor = w / batch if self.normalize_by_batch else w
            rank_cross = (factor * self.cross_weight) * cross.to(clip.dtype)
            rank_in = (factor * self.in_weight) * inner.to(clip.dtype)
        if output_dict:
            return {"contrastive_loss": clip, "rank_cross_loss": rank_cross, "rank_in_loss": rank_in}
        return clip + rank_cross + rank_in


# ------------------------------------------------------------------- pairwise difference (PC-CLIP)
class PairwiseDifferenceLoss(nn.Module):
    """PC-CLIP's pairwise-difference loss (docs/design.md §1.3) as a Module.

    forward(text_features, image_features, pairs, logit_scale=None, output_dict=False): text p
    describes how image pairs[p, 0] differs from image pairs[p, 1]. logit_scale=None uses the
    constructor's `logit_scale` (default 1.0, the paper's fixed temperature); a tensor (e.g. the
    model's) is used as given and receives a gradient. all_pairs=True scores every text against all
    N(N−1) ordered image pairs on the fused kernel. output_dict gives {"difference_loss": …}.
    Freezing the image tower (the paper's recipe) is the training loop's job: the loss passes
    gradients to both feature matrices.

    world_size > 1 (keyword-only rank, world_size; docs/design.md §6), listed form only: each rank's
    pairs index its own images; the global batch is the concatenation of every rank's texts and
    pairs, each text scored against every rank's difference vectors and each difference vector
    against every rank's texts (each logit once). The mean over ranks of the loss is the
    single-process loss on the concatenated batch (pairs offset to the concatenated images);
    feature gradients sum over ranks. all_pairs=True with world_size > 1 is refused: its candidate
    set (every ordered pair of the global images) is not split by rank.
    """

    def __init__(self, logit_scale=1.0, all_pairs=False, *, backend="auto", rank=0, world_size=1):
        super().__init__()
        self.logit_scale, self.all_pairs, self.backend = float(logit_scale), bool(all_pairs), backend
        if world_size > 1 and self.all_pairs:
            raise ValueError(f"all_pairs=True runs on one process only (world_size={world_size}); use the listed "
                             "form (all_pairs=False) across ranks")
        self.rank, self.world_size = rank, world_size

    def forward(self, text_features, image_features, pairs, logit_scale=None, output_dict=False):
        scale = self.logit_scale if logit_scale is None else logit_scale
        if self.world_size > 1:
            loss = self._distributed(text_features, image_features, pairs, scale)
            return {"difference_loss": loss} if output_dict else loss
        loss = F.pairwise_difference_loss(text_features, image_features, pairs, scale, all_pairs=self.all_pairs,
                                          backend=self.backend)
        return {"difference_loss": loss} if output_dict else loss

    def _distributed(self, text_features, image_features, pairs, logit_scale):
        check_pair("text_features", text_features, "image_features", image_features)
        pairs = F._check_pairs(pairs, text_features.shape[0], image_features.shape[0], text_features.device)
        _require_initialised(self.world_size)
        check_equal_batches("text_features", text_features, self.world_size)
        scale = _as_scalar("logit_scale", logit_scale, text_features)
        backend = _resolve_backend(self.backend, text_features.device, text_features.dtype, family="contrastive",
                                   rows=text_features.shape[0])
        return F._out(_dist_losses.listed_pairs_rows(text_features, image_features, pairs, scale, self.world_size,
                                                     backend))
