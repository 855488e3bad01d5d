"""SIGINT under torchrun: training/finetune.py on 2 gloo ranks saves exactly one checkpoint (rank 0
writes, every rank stops after the same step) and exits.

torchrun's agent forwards the SIGINT to its workers and then exits non-zero itself (it raises
SignalException); the run's outcome is read from the run folder and the workers' log lines.
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

from test_finetune import REPO, make_world


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
