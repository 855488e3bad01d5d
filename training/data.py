"""Data loading for the finetuning loop: record files (read in training/records.py) → torch Datasets →
batches.

Record files (paths inside them are relative to the record file's folder, or absolute; when the first
relative path of a file is missing there but exists from the working directory, the whole file is
read relative to the working directory, as open_clip does):
- "csv": open_clip's CSV: a header naming the image and caption columns (tab-separated by default).
- "diffs": JSONL of {"image_a", "image_b", "text"}: text says how image_a differs from image_b.
- "paraphrases": JSONL of {"image", "caption", "para1", "para2"}.
Extra keys or columns are ignored. A malformed record (bad JSON, a missing key, a non-string value,
a wrong number of columns) raises ValueError naming the file and the line.

    loader, sampler, stats = make_loader(kind, path, preprocess, tokenizer, batch_size, ...)

Batches are dicts (B kept samples; L the tokenizer's context length):
- "csv":         image (B,3,H,W), text (B,L), caption list[str], index (B,)
- "diffs":       image (N,3,H,W): the distinct images of the batch's records, in order of first use;
                 pairs (P,2) long: rows of indices into image, (image_a, image_b); text (P,L); index (P,)
- "paraphrases": image, text (caption tokens), para1, para2 (tokens), caption list[str], index (B,)
and "skipped": the number of samples (records) of the batch dropped because an image of theirs was
missing or unreadable. A batch whose samples were all dropped has zero rows. `stats` (ImageLoadStats)
accumulates the dropped samples and the first few bad paths, in the main process, as batches are
yielded; the loop reports it at the end of the epoch and calls stats.reset().

Sharding and order: the sampler is always a torch DistributedSampler(num_replicas=world_size,
rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last), also for world_size = 1, so the order
is a function of (seed, epoch) only; call sampler.set_epoch(epoch) at the start of every epoch.
"""
from __future__ import annotations

import logging
import os
from typing import Callable

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .records import (CsvRecord, DiffRecord, ParaphraseRecord, load_csv_records, load_diff_records,  # noqa: F401
                      load_paraphrase_records, read_jsonl)

__all__ = ["CsvRecord", "DiffRecord", "ParaphraseRecord", "ImageLoadStats", "load_csv_records",
           "load_diff_records", "load_paraphrase_records", "read_jsonl", "CsvDataset", "DiffDataset",
           "ParaphraseDataset", "CsvCollate", "DiffCollate", "ParaphraseCollate", "load_image", "make_loader", "KINDS"]

log = logging.getLogger(__name__)

KINDS = ("csv", "diffs", "paraphrases")


class ImageLoadStats:
    """Samples dropped because an image was missing or unreadable, and the first `max_paths` bad files."""

    def __init__(self, max_paths: int = 10):
        self.max_paths = max_paths
        self.skipped = 0
        self.paths: list[str] = []

    def add(self, skipped: int, paths) -> None:
        self.skipped += int(skipped)
        for p in paths:
            if p not in self.paths and len(self.paths) < self.max_paths:
                self.paths.append(p)
                log.warning("skipping samples with an unreadable image: %s", p)

    def reset(self) -> None:
        self.skipped = 0
        self.paths = []

    def __repr__(self) -> str:
        return f"ImageLoadStats(skipped={self.skipped}, paths={self.paths!r})"


# ------------------------------------------------------------------ images and datasets ----------------------

def load_image(path: str, preprocess: Callable):
    """preprocess(RGB PIL image), or None when the file is missing or cannot be decoded."""
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except Exception as e:  # noqa: BLE001 — PIL raises OSError, SyntaxError, ValueError, zlib/struct errors…
        log.debug("unreadable image %s: %s", path, e)
        return None
    return preprocess(rgb)


class CsvDataset(Dataset):
    def __init__(self, records: list[CsvRecord], preprocess: Callable):
        self.records, self.preprocess = records, preprocess

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        return {"index": i, "path": r.image, "image": load_image(r.image, self.preprocess), "caption": r.caption}


class ParaphraseDataset(Dataset):
    def __init__(self, records: list[ParaphraseRecord], preprocess: Callable):
        self.records, self.preprocess = records, preprocess

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        return {"index": i, "path": r.image, "image": load_image(r.image, self.preprocess),
                "caption": r.caption, "para1": r.para1, "para2": r.para2}


class DiffDataset(Dataset):
    """Item i: record i with both images loaded (None where unreadable)."""

    def __init__(self, records: list[DiffRecord], preprocess: Callable):
        self.records, self.preprocess = records, preprocess

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        return {"index": i, "path_a": r.image_a, "path_b": r.image_b, "text": r.text,
                "image_a": load_image(r.image_a, self.preprocess), "image_b": load_image(r.image_b, self.preprocess)}


# ------------------------------------------------------------------ collate ----------------------------------

class _Collate:
    """Shared parts of the collate functions (picklable, for worker processes)."""

    def __init__(self, tokenizer: Callable, preprocess: Callable):
        self.tokenizer, self.preprocess = tokenizer, preprocess

    def tokens(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))

    def images(self, tensors: list) -> torch.Tensor:
        if tensors:
            return torch.stack(tensors)
        shape = self.preprocess(Image.new("RGB", (8, 8))).shape  # zero rows of the right shape
        return torch.empty((0, *shape))


class CsvCollate(_Collate):
    def __call__(self, samples: list[dict]) -> dict:
        kept = [s for s in samples if s["image"] is not None]
        bad = [s["path"] for s in samples if s["image"] is None]
        captions = [s["caption"] for s in kept]
        return {"image": self.images([s["image"] for s in kept]), "text": self.tokens(captions),
                "caption": captions, "index": torch.tensor([s["index"] for s in kept], dtype=torch.long),
                "skipped": len(bad), "_bad_paths": bad}


class ParaphraseCollate(_Collate):
    def __call__(self, samples: list[dict]) -> dict:
        kept = [s for s in samples if s["image"] is not None]
        bad = [s["path"] for s in samples if s["image"] is None]
        captions = [s["caption"] for s in kept]
        return {"image": self.images([s["image"] for s in kept]), "text": self.tokens(captions),
                "para1": self.tokens([s["para1"] for s in kept]), "para2": self.tokens([s["para2"] for s in kept]),
                "caption": captions, "index": torch.tensor([s["index"] for s in kept], dtype=torch.long),
                "skipped": len(bad), "_bad_paths": bad}


class DiffCollate(_Collate):
    """Drops records with an unreadable image, lists the distinct images of the rest (by path, in
    order of first use) and indexes the pairs into that list."""

    def __call__(self, samples: list[dict]) -> dict:
        slot: dict[str, int] = {}
        images, pairs, texts, index, bad = [], [], [], [], []
        for s in samples:
            if s["image_a"] is None or s["image_b"] is None:
                bad += [p for p, im in ((s["path_a"], s["image_a"]), (s["path_b"], s["image_b"])) if im is None]
                continue
            row = []
            for p, im in ((s["path_a"], s["image_a"]), (s["path_b"], s["image_b"])):
                if p not in slot:
                    slot[p] = len(images)
                    images.append(im)
                row.append(slot[p])
            pairs.append(row)
            texts.append(s["text"])
            index.append(s["index"])
        return {"image": self.images(images),
                "pairs": torch.tensor(pairs, dtype=torch.long).reshape(len(pairs), 2),
                "text": self.tokens(texts), "index": torch.tensor(index, dtype=torch.long),
                "skipped": len(samples) - len(pairs), "_bad_paths": list(dict.fromkeys(bad))}


# ------------------------------------------------------------------ loader -----------------------------------

class RecordLoader:
    """Iterates a DataLoader and moves each batch's bad paths into `stats` (in the main process)."""

    def __init__(self, loader: DataLoader, stats: ImageLoadStats):
        self.loader, self.stats = loader, stats

    @property
    def dataset(self):
        return self.loader.dataset

    @property
    def sampler(self):
        return self.loader.sampler

    @property
    def batch_size(self):
        return self.loader.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.stats.add(batch["skipped"], batch.pop("_bad_paths"))
            yield batch


_SPECS = {"csv": (CsvDataset, CsvCollate), "diffs": (DiffDataset, DiffCollate),
          "paraphrases": (ParaphraseDataset, ParaphraseCollate)}


def _int_arg(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < lo:
        raise ValueError(f"{name} must be ≥ {lo}, got {value}")
    return value


def make_loader(kind: str, path, preprocess: Callable, tokenizer: Callable, batch_size: int, *, shuffle: bool = True,
                seed: int = 0, rank: int = 0, world_size: int = 1, num_workers: int = 0, drop_last: bool = True,
                csv_separator: str = "\t", csv_img_key: str = "filepath", csv_caption_key: str = "title"):
    """(loader, sampler, stats) for a record file of `kind` ("csv", "diffs" or "paraphrases"); see the
    module docstring for the batches. batch_size counts records (pairs for "diffs")."""
    if kind not in _SPECS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not callable(preprocess):
        raise TypeError(f"preprocess must be callable (PIL image → tensor), got {type(preprocess).__name__}")
    if not callable(tokenizer):
        raise TypeError(f"tokenizer must be callable (list[str] → LongTensor), got {type(tokenizer).__name__}")
    _int_arg("batch_size", batch_size, 1)
    _int_arg("seed", seed, 0)
    _int_arg("world_size", world_size, 1)
    _int_arg("num_workers", num_workers, 0)
    if _int_arg("rank", rank, 0) >= world_size:
        raise ValueError(f"rank must be < world_size ({world_size}), got {rank}")
    if os.path.isdir(os.fspath(path)):
        raise ValueError(f"path {os.fspath(path)!r} is a folder; give the {kind} record file (in a world folder: "
                         f"train.csv, train_diffs.jsonl or train_paraphrases.jsonl)")
    if kind == "csv":
        records = load_csv_records(path, csv_separator, csv_img_key, csv_caption_key)
    elif kind == "diffs":
        records = load_diff_records(path)
    else:
        records = load_paraphrase_records(path)
    if not records:
        raise ValueError(f"path {os.fspath(path)!r} holds no {kind} records")
    dataset_cls, collate_cls = _SPECS[kind]
    dataset = dataset_cls(records, preprocess)
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=bool(shuffle), seed=seed,
                                 drop_last=bool(drop_last))
    stats = ImageLoadStats()
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        collate_fn=collate_cls(tokenizer, preprocess), drop_last=bool(drop_last),
                        generator=torch.Generator().manual_seed(seed))
    return RecordLoader(loader, stats), sampler, stats
