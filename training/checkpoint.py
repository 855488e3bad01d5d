"""Checkpoints of the finetuning loop: atomic writes, `--resume latest`, RNG capture, `load_model`.

Format (a dict, `torch.save`):
    {"step": optimizer steps done, "epoch": current epoch (from 0), "batch_in_epoch": batches of that
     epoch already consumed, "model": state_dict, "optimizer", "scaler", "args": vars(args),
     "model_name", "model_cfg": dict | None (SharedCLIP), "rng": RNG states now,
     "epoch_rng": RNG states at the start of the epoch (before the loader's iterator was made),
     "rng_per_rank": [{"rng", "epoch_rng"} of every rank] under torchrun, else None}

Exact resume: the sampler's order comes from (seed, epoch); train-time crops draw from the global
RNGs (num_workers=0) or from each worker's RNG, seeded per epoch from the DataLoader's generator. The
loop restores `epoch_rng` (global RNGs and the loader generator as they were when the epoch's
iterator was made), rebuilds that iterator, skips `batch_in_epoch` batches (each is loaded again, so
workers replay their draws), then restores `rng`. The next step then sees the same batch, the same
augmentations and the same weights and optimizer state as an uninterrupted run
(tests/test_checkpoint.py checks the loss for equality, mid-epoch, at an epoch boundary and with a
worker in the second epoch).

Writes are atomic: a temporary file in the same folder, flushed and fsync'ed, then os.replace.
"""
from __future__ import annotations

import os
import random
import re
import tempfile
from typing import Optional

import numpy as np
import torch

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.pt"


def atomic_save(obj, path: str) -> None:
    """torch.save to a temp file next to `path`, fsync, then os.replace (never a half-written file)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + ".", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINT_DIR)


def save_checkpoint(state: dict, run_dir: str, *, epoch_done: Optional[int] = None) -> str:
    """Writes `latest.pt` (and `epoch_<N>.pt` when an epoch N just finished, `step_<S>.pt` otherwise
    is not kept: latest.pt is the step-level one). Returns the path of latest.pt."""
    folder = checkpoint_dir(run_dir)
    latest = os.path.join(folder, LATEST)
    if epoch_done is not None:
        atomic_save(state, os.path.join(folder, f"epoch_{epoch_done}.pt"))
    atomic_save(state, latest)
    return latest


def _step_of(path: str) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False).get("step", -1))
    except Exception:
        return -1


def find_latest(folder: str) -> Optional[str]:
    """The newest checkpoint in `folder` (a run folder or its checkpoints/ folder): the one with the
    most steps done among latest.pt and epoch_N.pt; None when there is none."""
    if os.path.isdir(os.path.join(folder, CHECKPOINT_DIR)):
        folder = os.path.join(folder, CHECKPOINT_DIR)
    if not os.path.isdir(folder):
        return None
    names = [n for n in os.listdir(folder) if n == LATEST or re.fullmatch(r"epoch_\d+\.pt", n)]
    if not names:
        return None
    paths = [os.path.join(folder, n) for n in names]
    return max(paths, key=lambda p: (_step_of(p), p.endswith(LATEST)))


def resolve_resume(resume: str, run_dir: str) -> str:
    if resume == "latest":
        path = find_latest(run_dir)
        if path is None:
            raise FileNotFoundError(f"--resume latest: no checkpoint in {checkpoint_dir(run_dir)}")
        return path
    if os.path.isdir(resume):
        path = find_latest(resume)
        if path is None:
            raise FileNotFoundError(f"--resume {resume!r}: no checkpoint in that folder")
        return path
    if not os.path.isfile(resume):
        raise FileNotFoundError(f"--resume: no such checkpoint {resume!r}")
    return resume


def load_checkpoint(path: str) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{path!r} is not a clipkern training checkpoint (no 'model' entry)")
    return ckpt


def load_model(path: str, device="cpu"):
    """(model, preprocess_val, tokenizer) rebuilt from a checkpoint's model_name / model_cfg, weights
    loaded, in eval mode on `device`."""
    from .models import complete_state_dict, create

    ckpt = load_checkpoint(path)
    name = ckpt.get("model_name") or (ckpt.get("args") or {}).get("model")
    if not name:
        raise ValueError(f"{path!r} has no model_name; cannot rebuild the model")
    kwargs = {}
    state = ckpt["model"]
    if "logit_bias" in state:
        kwargs["init_logit_bias"] = float(state["logit_bias"])
    model, _, preprocess_val, tokenizer = create(name, None, "fp32", model_cfg=ckpt.get("model_cfg"), **kwargs)
    model.load_state_dict(complete_state_dict(model, state))
    model.to(device).eval()
    return model, preprocess_val, tokenizer
