"""training/finetune.py under torchrun on 2 gloo ranks:
- SIGINT saves exactly one checkpoint (rank 0 writes, every rank stops after the same step) and exits;
- every recipe builds its clipkern loss with the process's rank and world size (so RankCLIP, AlignCLIP
  and PC-CLIP score each rank's rows against the whole gathered batch), and the paper recipes run
  a few steps across two processes.

torchrun's agent forwards the SIGINT to its workers and then exits non-zero itself (it raises
SignalException); the run's outcome is read from the run folder and the workers' log lines.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from test_finetune import KIND, REPO, TERMS, _records, _torchrun, make_world, metrics


@pytest.mark.slow
def test_sigint_under_torchrun_saves_one_checkpoint(tmp_path):
    world = make_world(tmp_path / "world", n_train=32)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    # --logs-dir: torchrun's own parser rejects --logs as an abbreviation of its --logs-specs
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training.finetune", "--train-data", str(world), "--batch-size", "8", "--epochs", "1000",
           "--backend", "reference", "--no-eval", "--no-plot", "--save-frequency", "0", "--threads", "1",
           "--logs-dir", str(tmp_path), "--name", "run"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    jsonl = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if jsonl.exists() and len(jsonl.read_text().splitlines()) >= 2:
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[0][-6000:]
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    folder = tmp_path / "run" / "checkpoints"
    assert sorted(os.listdir(folder)) == ["latest.pt"], out[-6000:]
    ck = torch.load(folder / "latest.pt", weights_only=False, map_location="cpu")
    last = json.loads(jsonl.read_text().splitlines()[-1])
    assert ck["step"] == last["step"] >= 2, out[-6000:]
    assert out.count("checkpoint: ") == 1, out[-6000:]  # one rank writes, once
    assert out.count("interrupted: checkpoint saved") == 2, out[-6000:]  # both ranks stop after that step


@pytest.mark.parametrize("loss", sorted(TERMS))
def test_every_recipe_builds_a_distributed_loss(loss):
    """The recipe hands rank and world_size to its loss (a per-process loss under torchrun would
    quietly change the objective: RankCLIP ranking within the local batch, AlignCLIP refusing)."""
    from training.params import parse_args
    from training.recipes import make_recipe

    args = parse_args(["--loss", loss, "--train-data", "unused", "--epochs", "4"])
    recipe = make_recipe(args, rank=1, world_size=2, semantic=object())
    mods = [recipe.loss] + [getattr(recipe.loss, "clip", None)]
    assert any(getattr(m, "world_size", None) == 2 and getattr(m, "rank", None) == 1 for m in mods), \
        f"{loss}: {type(recipe.loss).__name__} was built without rank/world_size"


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["rankclip", "alignclip", "pcclip"])
def test_paper_recipes_run_under_torchrun(tmp_path, loss):
    world = make_world(tmp_path / "world", n_train=32)
    batch = min(_records(world, KIND.get(loss, "csv")) // 2, 8)
    _torchrun(tmp_path, world, loss, ["--loss", loss, "--batch-size", str(batch), "--max-steps", "2",
                                      "--semantic-cache", str(tmp_path / "semantic.pt")])
    rows = metrics(tmp_path / loss)
    assert [r["step"] for r in rows] == [1, 2], rows
    for r in rows:
        assert TERMS[loss] <= set(r) and math.isfinite(r["loss"]), r
    assert "world_size=2" in (tmp_path / loss / "out.log").read_text()


def test_equalise_batch_cuts_a_diffs_batch_by_its_texts(monkeypatch):
    """A PC-CLIP batch that lost a record to an unreadable image on one rank is cut to the smallest
    rank's number of difference texts (the distributed loss gathers one row per text); its images stay,
    indexed by the remaining pairs."""
    from training import steps

    def fake_min(t, op=None):
        t.fill_(2)  # the smallest rank holds 2 texts
    monkeypatch.setattr(steps.dist, "all_reduce", fake_min)
    info = type("Info", (), {"distributed": True})()
    batch = {"image": torch.zeros(3, 3, 4, 4), "pairs": torch.tensor([[0, 1], [1, 2], [2, 0]]),
             "text": torch.arange(3 * 5).reshape(3, 5), "index": torch.tensor([7, 8, 9]), "skipped": 0,
             "_bad_paths": []}
    out = steps.equalise_batch(batch, info, torch.device("cpu"))
    assert out["image"].shape[0] == 3 and out["pairs"].tolist() == [[0, 1], [1, 2]]
    assert out["text"].shape[0] == 2 and out["index"].tolist() == [7, 8]
    csv = {"image": torch.zeros(3, 3, 4, 4), "text": torch.zeros(3, 5), "caption": ["a", "b", "c"]}
    out = steps.equalise_batch(csv, info, torch.device("cpu"))
    assert out["image"].shape[0] == 2 and out["caption"] == ["a", "b"]
