"""The run's surroundings: logging set-up, data paths (a file or a world folder), SIGINT handling, the
cross-rank flag, seeding and the skipped-images report. Used by training/loop.py."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from typing import Optional

import torch
import torch.distributed as dist

log = logging.getLogger("training.finetune")

_SPLIT_FILES = {"csv": "{split}.csv", "diffs": "{split}_diffs.jsonl", "paraphrases": "{split}_paraphrases.jsonl"}


# ------------------------------------------------------------------------------------------ data paths
def resolve_data(path: str, kind: str, split: str) -> str:
    """A file as given, or the `kind` file of `split` inside a world folder."""
    if os.path.isdir(path):
        f = os.path.join(path, _SPLIT_FILES[kind].format(split=split))
        if not os.path.isfile(f):
            raise FileNotFoundError(f"--{split}-data {path!r} is a folder without {os.path.basename(f)} "
                                    f"(needed by the {kind!r} data of this recipe)")
        return f
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--{split}-data: no such file or folder {path!r}")
    return path


def world_dir_of(path: Optional[str]) -> Optional[str]:
    """The world folder (with meta.json) that a data path belongs to, if any."""
    if not path:
        return None
    d = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    return d if os.path.isfile(os.path.join(d, "meta.json")) else None


def generate_world(out: str, args) -> None:
    cmd = [sys.executable, "-m", "training.world", "--out", out, "--seed", str(args.world_seed),
           "--n-train", str(args.world_n_train), "--n-val", str(args.world_n_val)]
    log.info("generating the synthetic world: %s", " ".join(cmd))
    subprocess.run(cmd, check=True)


# ------------------------------------------------------------------------------------------ small helpers
def setup_logging(run_dir: Optional[str], is_master: bool) -> None:
    _close_logging()
    root = logging.getLogger()
    root._clipkern_level = root.level
    root.setLevel(logging.INFO if is_master else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s | %(levelname)s | %(message)s", "%Y-%m-%d,%H:%M:%S")
    handlers = [logging.StreamHandler(sys.stdout)]
    if run_dir and is_master:
        handlers.append(logging.FileHandler(os.path.join(run_dir, "out.log")))
    for h in handlers:
        h.setFormatter(fmt)
        h._clipkern = True
        root.addHandler(h)


def _close_logging() -> None:
    """Removes this run's handlers (in-process callers, e.g. tests, keep their logging as it was)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_clipkern", False):
            root.removeHandler(h)
            h.close()
    if getattr(root, "_clipkern_level", None) is not None:
        root.setLevel(root._clipkern_level)
        root._clipkern_level = None


class _Interrupt:
    """SIGINT sets a flag; the loop saves a checkpoint after the current step and exits. A second
    SIGINT raises KeyboardInterrupt at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:          # not the main thread
            self._previous = None
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("SIGINT: saving a checkpoint after this step, then exiting (again to abort)")

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _sync_flag(flag: bool, info, device) -> bool:
    if not info.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _report_skipped(stats, epoch, info, device, partial=False):
    skipped = int(getattr(stats, "skipped", 0))
    if info.distributed:
        t = torch.tensor([skipped], dtype=torch.long, device=device)
        dist.all_reduce(t)
        skipped = int(t.item())
    paths = list(getattr(stats, "paths", []) or [])[:5]
    what = "so far in" if partial else "in"
    log.info("epoch %d: skipped %d unreadable images %s this epoch%s", epoch, skipped, what,
             f" (e.g. {paths})" if paths else "")
