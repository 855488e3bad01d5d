"""Collectives across ranks for the losses, with open_clip's semantics. Nothing here touches
torch.distributed unless world_size > 1.

Every collective is a *functional* collective (torch.distributed._functional_collectives): it
returns a new tensor instead of filling a list, Dynamo traces it (torch.compile(fullgraph=True)
works), and its autograd is the exact adjoint of the forward:

    all_gather (concatenate along dim 0)   backward: reduce-scatter (sum) back to the owners
    all_to_all (equal splits)              backward: all_to_all
    all_reduce (sum)                       backward: all_reduce (sum)

So a rank's feature gradient after `loss_r.backward()` on every rank is ∂(Σ_r' loss_r')/∂x_r, as with
the deprecated torch.distributed.nn.functional.all_gather that open_clip 3.3 uses.

Equal batches. All-gather concatenates equal-sized chunks (open_clip has the same requirement).
`check_equal_batches` exchanges the local batch sizes (one tiny all_gather and a host read per call,
skipped while torch.compile traces) and raises a ValueError naming the argument when they differ,
instead of letting a mismatched collective hang or return garbage.
"""
from __future__ import annotations

import torch


def _funcol():
    import torch.distributed._functional_collectives as funcol

    return funcol


def _group():
    import torch.distributed as dist

    return dist.group.WORLD


def _waited(t: torch.Tensor) -> torch.Tensor:
    """A functional collective's result, waited for (eager mode returns an AsyncCollectiveTensor)."""
    funcol = _funcol()
    return t.wait() if isinstance(t, funcol.AsyncCollectiveTensor) else t


def _require_initialised(world_size: int) -> None:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"world_size={world_size} but torch.distributed is not initialised; call "
            "torch.distributed.init_process_group first (torchrun does this with open_clip's training loop)")
    actual = dist.get_world_size()
    if actual != world_size:
        raise ValueError(f"world_size={world_size} but the process group has {actual} ranks")


def check_equal_batches(name: str, t: torch.Tensor, world_size: int) -> None:
    """Raise a ValueError naming `name` unless every rank passes the same number of rows (dim 0)."""
    if torch.compiler.is_compiling():
        return  # a host read cannot be traced; the compiled graph is specialised on the shapes anyway
    local = torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device)
    sizes = _waited(_funcol().all_gather_single(local, 0, _group())).tolist()
    if len(set(sizes)) != 1:
        raise ValueError(
            f"{name} has a different batch size on each rank ({sizes}, by rank; world_size={world_size}): "
            "the losses gather equal-sized chunks across ranks, as open_clip does. Drop the last partial "
            "batch (DataLoader(drop_last=True), which open_clip's training data does) or pad every rank's "
            "batch to the same size")


def all_gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Every rank's tensor concatenated along dim 0 in rank order; the backward reduce-scatters the
    gradient to the owners (sum over ranks)."""
    return _waited(_funcol().all_gather_single(t.contiguous(), 0, _group()))


def all_gather_no_grad(t: torch.Tensor) -> torch.Tensor:
    """Every rank's tensor concatenated along dim 0, as a constant (no gradient to anyone)."""
    with torch.no_grad():
        return _waited(_funcol().all_gather_single(t.detach().contiguous(), 0, _group()))


def all_to_all_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Equal-split all_to_all along dim 0: chunk q of this rank's tensor goes to rank q; the result
    holds, in rank order, the chunk each rank sent here. Its backward is the reverse all_to_all."""
    return _waited(_funcol().all_to_all_single(t.contiguous(), None, None, _group()))


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Σ over ranks (with the sum's adjoint as its backward)."""
    return _waited(_funcol().all_reduce(t.contiguous(), "sum", _group()))


def gather_features(image_features, text_features, local_loss=False, gather_with_grad=False,
                    rank=0, world_size=1, use_horovod=False):
    """All ranks' features, concatenated in rank order (open_clip's gather_features).

    Without gather_with_grad the other ranks' features are constants; for the global loss the
    local chunk is put back in so that this rank's gradient still flows.
    """
    if use_horovod:
        raise ValueError("use_horovod=True is not supported by clipkern; launch with torchrun (torch.distributed)")
    _require_initialised(world_size)
    check_equal_batches("image_features", image_features, world_size)
    if gather_with_grad:
        return all_gather_with_grad(image_features), all_gather_with_grad(text_features)
    images, texts = all_gather_no_grad(image_features), all_gather_no_grad(text_features)
    if not local_loss:
        rows = slice(rank * image_features.shape[0], (rank + 1) * image_features.shape[0])
        images = torch.cat([images[:rows.start], image_features, images[rows.stop:]])
        texts = torch.cat([texts[:rows.start], text_features, texts[rows.stop:]])
    return images, texts
