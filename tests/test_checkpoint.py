"""Checkpoints: atomic writes, `--resume latest`, load_model, exact resume, SIGINT saving.

Resume equality (the issue's criterion): run K steps and stop (checkpoint); run K+1 steps without a
stop; resume the first run from its checkpoint for one more step. The loss of step K+1 must be equal
bit for bit (same batch, same augmentations, same weights and optimizer state), both mid-epoch and at
an epoch boundary.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from training import checkpoint as C
from training.models import create

from test_finetune import REPO, make_world, metrics, run_finetune


# ---------------------------------------------------------------------------------- atomic writes
def test_atomic_save_replaces_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "ck" / "latest.pt"
    C.atomic_save({"step": 1}, str(path))
    C.atomic_save({"step": 2}, str(path))
    assert torch.load(path, weights_only=False)["step"] == 2
    assert sorted(os.listdir(path.parent)) == ["latest.pt"]


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("boom while writing")


def test_atomic_save_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "latest.pt"
    C.atomic_save({"step": 1}, str(path))
    with pytest.raises(RuntimeError, match="boom"):
        C.atomic_save({"step": 2, "bad": _Unpicklable()}, str(path))
    assert torch.load(path, weights_only=False)["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["latest.pt"], "a temporary file was left behind"


def test_find_latest_picks_most_steps(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    C.atomic_save({"step": 10, "model": {}}, str(folder / "epoch_1.pt"))
    C.atomic_save({"step": 30, "model": {}}, str(folder / "epoch_3.pt"))
    C.atomic_save({"step": 25, "model": {}}, str(folder / "latest.pt"))
    assert C.find_latest(str(tmp_path / "run")) == str(folder / "epoch_3.pt")
    C.atomic_save({"step": 31, "model": {}}, str(folder / "latest.pt"))
    assert C.resolve_resume("latest", str(tmp_path / "run")) == str(folder / "latest.pt")
    assert C.find_latest(str(tmp_path / "empty")) is None
    with pytest.raises(FileNotFoundError, match="--resume latest"):
        C.resolve_resume("latest", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="--resume"):
        C.resolve_resume(str(tmp_path / "nope.pt"), str(tmp_path))


def test_rng_state_roundtrip():
    import random

    import numpy as np
    state = C.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(3))
    C.set_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


@pytest.mark.parametrize("name", ["clipkern-tiny", "shared-tiny"])
def test_load_model_roundtrip(tmp_path, name):
    torch.manual_seed(3)
    model, _, pre_val, tok = create(name)
    with torch.no_grad():
        model.logit_scale.fill_(2.5)
    from training.models import model_config
    path = tmp_path / "m.pt"
    C.atomic_save({"step": 0, "epoch": 0, "model": model.state_dict(), "model_name": name,
                   "model_cfg": model_config(name, model), "args": {"model": name}}, str(path))
    torch.manual_seed(4)                      # a different init: loading must overwrite every weight
    loaded, pre, tok2 = C.load_model(str(path), "cpu")
    assert not loaded.training
    for (n, a), (n2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n == n2 and torch.equal(a, b), n
    text = tok2(["a red circle", "two blue squares"])
    size = 64 if name == "clipkern-tiny" else 32        # clipkern-tiny's ResNet runs at 64 px
    img = torch.randn(2, 3, size, size)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(img, text)["image_features"], model(img, text)["image_features"])
        torch.testing.assert_close(loaded(img, text)["text_features"], model(img, text)["text_features"])


def test_pretrained_local_path_loads_weights(tmp_path):
    """--pretrained accepts a clipkern checkpoint and a plain (DDP-prefixed) state dict."""
    torch.manual_seed(5)
    model = create("clipkern-tiny")[0]
    C.atomic_save({"model": model.state_dict()}, str(tmp_path / "ck.pt"))
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, tmp_path / "sd.pt")
    for f in ("ck.pt", "sd.pt"):
        torch.manual_seed(6)
        other = create("clipkern-tiny", str(tmp_path / f))[0]
        for (n, a), b in zip(model.state_dict().items(), other.state_dict().values()):
            assert torch.equal(a, b), (f, n)
    torch.save({"nonsense.weight": torch.zeros(2)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not fit the model"):
        create("clipkern-tiny", str(tmp_path / "bad.pt"))


# ---------------------------------------------------------------------------------- exact resume
@pytest.mark.parametrize("k,steps_per_epoch,workers", [(3, 4, 0), (4, 4, 0), (6, 4, 1)],
                         ids=["mid-epoch", "epoch-boundary", "second-epoch-with-a-worker"])
def test_resume_gives_the_same_next_step_loss(tmp_path, k, steps_per_epoch, workers):
    """With a loader worker the crops come from the worker's RNG, seeded per epoch from the loader's
    generator: the checkpoint must restore that generator (a fresh one would replay epoch 0's seed)."""
    world = make_world(tmp_path / "world", n_train=8 * steps_per_epoch)
    common = ["--train-data", str(world), "--batch-size", "8", "--epochs", "3", "--lr", "1e-3", "--warmup", "2",
              "--workers", str(workers),
              "--backend", "reference", "--no-eval", "--no-plot", "--save-frequency", "0", "--threads", "1", "--logs", str(tmp_path)]
    run_finetune(common + ["--name", "stopped", "--max-steps", str(k)])
    run_finetune(common + ["--name", "straight", "--max-steps", str(k + 2)])
    run_finetune(common + ["--name", "resumed", "--max-steps", str(k + 2),
                           "--resume", str(tmp_path / "stopped" / "checkpoints" / "latest.pt")])
    straight = {r["step"]: r for r in metrics(tmp_path / "straight")}
    resumed = {r["step"]: r for r in metrics(tmp_path / "resumed")}
    assert sorted(resumed) == [k + 1, k + 2]
    for s in (k + 1, k + 2):
        assert resumed[s]["loss"] == straight[s]["loss"], (s, resumed[s], straight[s])
        assert resumed[s]["lr"] == straight[s]["lr"]
    # and "latest" finds the run's own checkpoint
    run_finetune(common + ["--name", "stopped", "--max-steps", str(k + 1), "--resume", "latest"])
    again = [r for r in metrics(tmp_path / "stopped") if r["step"] == k + 1]
    assert len(again) == 1 and again[0]["loss"] == straight[k + 1]["loss"]


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_and_exits(tmp_path):
    world = make_world(tmp_path / "world", n_train=32)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "training.finetune", "--train-data", str(world), "--batch-size", "8",
           "--epochs", "1000", "--backend", "reference", "--no-eval", "--no-plot", "--save-frequency", "0",
           "--threads", "1", "--logs", str(tmp_path), "--name", "run"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    jsonl = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if jsonl.exists() and len(jsonl.read_text().splitlines()) >= 2:
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    ck = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=False, map_location="cpu")
    last = json.loads(jsonl.read_text().splitlines()[-1])
    assert ck["step"] == last["step"] >= 2
    assert "SIGINT" in out and "checkpoint saved" in out
