"""torch.library glue for the csrc ListMLE ops (backend="cuda"): fake implementations and autograd
for clipkern::listmle_fwd, mirroring the Triton custom op triton_listmle_rows (targets get no
gradient). Importing this module loads the extension (BackendUnavailable with the reason if it
cannot); registration runs once, on import. RankCLIP on this backend uses the matrix path (L and
the Gram matrices are formed, then these ops run on them): the extension has no fused
from-features kernel."""
from __future__ import annotations

import torch
from torch import Tensor

from ..._checks import register_no_double_backward
from ..base import accumulation_dtype, extension_ops
from . import rows_backward, rows_setup_context

_OPS = extension_ops()


@torch.library.register_fake("clipkern::listmle_fwd")
def _(scores, targets, decay_log):
    return scores.new_empty(scores.shape[0], dtype=accumulation_dtype(scores))


@torch.library.register_fake("clipkern::listmle_bwd")
def _(scores, targets, g, decay_log):
    return scores.new_empty(scores.shape)


torch.library.register_autograd("clipkern::listmle_fwd", rows_backward(_OPS.listmle_bwd),
                               setup_context=rows_setup_context)
register_no_double_backward("clipkern::listmle_bwd", "ListMLE", "cuda")


def cuda_listmle_rows(scores: Tensor, targets: Tensor, decay_log: bool) -> Tensor:
    """Per-row ListMLE ℓ_r (fp32, (B,)) of scores against the order of targets (csrc twin of
    triton_listmle_rows); targets get no gradient."""
    return _OPS.listmle_fwd(scores, targets, decay_log)
