"""Feature gathering across ranks, with open_clip's semantics. Nothing here touches
torch.distributed unless world_size > 1."""
from __future__ import annotations

import torch


def _require_initialised(world_size: int) -> None:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"world_size={world_size} but torch.distributed is not initialised; call "
            "torch.distributed.init_process_group first (torchrun does this with open_clip's training loop)")


def all_gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's tensor along dim 0; the backward sends each rank its gradient."""
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(t), dim=0)


def all_gather_no_grad(t: torch.Tensor, world_size: int) -> list[torch.Tensor]:
    import torch.distributed as dist

    out = [torch.empty_like(t) for _ in range(world_size)]
    dist.all_gather(out, t.contiguous())
    return out


def gather_features(image_features, text_features, local_loss=False, gather_with_grad=False,
                    rank=0, world_size=1, use_horovod=False):
    """All ranks' features, concatenated in rank order (open_clip's gather_features).

    Without gather_with_grad the other ranks' features are constants; for the global loss the
    local chunk is put back in so that this rank's gradient still flows.
    """
    if use_horovod:
        raise ValueError("use_horovod=True is not supported by clipkern; launch with torchrun (torch.distributed)")
    _require_initialised(world_size)
    if gather_with_grad:
        return all_gather_with_grad(image_features), all_gather_with_grad(text_features)
    images = all_gather_no_grad(image_features, world_size)
    texts = all_gather_no_grad(text_features, world_size)
    if not local_loss:
        images[rank] = image_features
        texts[rank] = text_features
    return torch.cat(images, dim=0), torch.cat(texts, dim=0)
