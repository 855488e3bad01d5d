"""clipkern: fused GPU kernels for CLIP-family losses, drop-in for open_clip.

    from clipkern import ClipLoss, SigLipLoss
    import clipkern.functional as CF
"""
from . import functional
from ._backend import BACKENDS, BackendUnavailable
from .losses import (AlignClipLoss, ClipLoss, PairwiseDifferenceLoss, ParaClipLoss, RankClipLoss,
                     SigLipLoss)

__version__ = "0.1.0"
__all__ = ["ClipLoss", "SigLipLoss", "PairwiseDifferenceLoss", "RankClipLoss", "AlignClipLoss", "ParaClipLoss",
           "functional", "BACKENDS", "BackendUnavailable", "__version__"]
