"""torch.library glue for the csrc ListMLE ops (backend="cuda"): fake implementations and autograd
for clipkern::listmle_fwd, mirroring the Triton custom op triton_listmle_rows (targets get no
gradient). Importing this module loads the extension (BackendUnavailable with the reason if it
cannot); registration runs once, on import. RankCLIP on this backend uses the matrix path (L and
the Gram matrices are formed, then these ops run on them): the extension has no fused
from-features kernel."""
from __future__ import annotations

import torch
from torch import Tensor

from ... import _extension
from ..._backend import BackendUnavailable
from . import rows_backward, rows_setup_context

if _extension.load() is None:
    raise BackendUnavailable(f"backend='cuda' is unavailable: {_extension.unavailable_reason()}")

_OPS = torch.ops.clipkern


@torch.library.register_fake("clipkern::listmle_fwd")
def _(scores, targets, decay_log):
    acc = torch.float64 if scores.dtype == torch.float64 else torch.float32
    return scores.new_empty(scores.shape[0], dtype=acc)


@torch.library.register_fake("clipkern::listmle_bwd")
def _(scores, targets, g, decay_log):
    return scores.new_empty(scores.shape)


torch.library.register_autograd("clipkern::listmle_fwd", rows_backward(_OPS.listmle_bwd),
                               setup_context=rows_setup_context)


def cuda_listmle_rows(scores: Tensor, targets: Tensor, decay_log: bool) -> Tensor:
    """Per-row ListMLE ℓ_r (fp32, (B,)) of scores against the order of targets (csrc twin of
    triton_listmle_rows); targets get no gradient."""
    return _OPS.listmle_fwd(scores, targets, decay_log)
