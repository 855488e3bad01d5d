"""Training-side code on top of clipkern and open_clip: models (SharedCLIP, the tiny registered
configs), the finetuning loop (`python -m training.finetune`), data, world and evaluations.

clipkern never imports this package; this package imports clipkern and open_clip.
"""
from .shared_clip import SharedCLIP, SharedCLIPConfig, build_shared_clip, tiny_config

__all__ = ["SharedCLIP", "SharedCLIPConfig", "build_shared_clip", "tiny_config"]
