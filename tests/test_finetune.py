"""The finetuning loop end to end on a tiny model and a tiny generated world (training.world).

- every recipe runs a few steps with a finite, decreasing loss: one batch per epoch holding the whole
  (tiny) training file, so every step sees the same samples and "decreasing" is not luck;
- the triton backend (interpreted on CPU) runs the loop;
- evaluations land in the metrics JSONL and the plot is written;
- a corrupt image is skipped, counted and reported at the end of the epoch;
- a bad --pretrained tag fails with an error that suggests a local path;
- torchrun with 2 gloo processes, --local-loss --gather-with-grad, plain DDP and grad cache agree.

Also holds the helpers test_checkpoint.py imports (make_world, run_finetune, metrics).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_WORLDS: dict = {}


# ------------------------------------------------------------------------------------------ helpers
def make_world(dest: Path, n_train: int = 32, n_val: int = 24, seed: int = 0) -> Path:
    """A copy (at dest) of the world of (seed, n_train, n_val), generated once per test session."""
    key = (seed, n_train, n_val)
    if key not in _WORLDS or not (_WORLDS[key] / "meta.json").exists():
        src = Path(dest).parent / f".world-{seed}-{n_train}-{n_val}"
        subprocess.run([sys.executable, "-m", "training.world", "--out", str(src), "--seed", str(seed),
                        "--n-train", str(n_train), "--n-val", str(n_val)], check=True, cwd=REPO,
                       capture_output=True)
        _WORLDS[key] = src
    shutil.copytree(_WORLDS[key], dest)
    return Path(dest)


def run_finetune(argv) -> int:
    from training.finetune import main

    code = main([str(a) for a in argv])
    assert code == 0, f"training.finetune exited with {code}"
    return code


def metrics(run_dir, kind: str = "train"):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return [r for r in rows if (r.get("kind") == "eval") == (kind == "eval")]


def _records(world: Path, kind: str) -> int:
    name = {"csv": "train.csv", "diffs": "train_diffs.jsonl", "paraphrases": "train_paraphrases.jsonl"}[kind]
    n = len([line for line in (world / name).read_text().splitlines() if line.strip()])
    return n - 1 if kind == "csv" else n


def _fast(tmp_path, name="run"):
    return ["--backend", "reference", "--no-eval", "--no-plot", "--save-frequency", "0", "--threads", "1",
            "--logs-dir", str(tmp_path),
            "--name", name]


# ------------------------------------------------------------------------------------------ recipes
TERMS = {
    "clip": {"contrastive_loss"},
    "siglip": {"contrastive_loss"},
    "rankclip": {"contrastive_loss", "rank_cross_loss", "rank_in_loss"},
    "alignclip": {"contrastive_loss", "imsep_loss"},
    "pcclip": {"difference_loss"},
    "paraclip": {"image_para_loss", "caption_para_loss", "para_para_loss"},
}
KIND = {"pcclip": "diffs", "paraclip": "paraphrases"}


@pytest.mark.parametrize("loss", list(TERMS))
def test_recipe_runs_with_decreasing_loss(tmp_path, loss):
    world = make_world(tmp_path / "world", n_train=16)
    batch = min(_records(world, KIND.get(loss, "csv")), 48)
    steps = 6
    run_finetune(["--loss", loss, "--train-data", world, "--batch-size", batch, "--epochs", 40,
                  "--max-steps", steps, "--lr", "2e-3", "--warmup", 1, "--wd", 0.0,
                  "--semantic-cache", tmp_path / "semantic.pt", *_fast(tmp_path)])
    rows = metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    for r in rows:
        assert TERMS[loss] <= set(r), f"{loss}: loss terms {set(r)}"
        assert math.isfinite(r["loss"]) and abs(r["loss"] - sum(r[k] for k in TERMS[loss])) < 1e-4
        assert 0 <= math.log(r["logit_scale"]) <= math.log(100) + 1e-6
        assert r["samples_per_s"] > 0 and r["lr"] > 0
    first, last = rows[0]["loss"], rows[-1]["loss"]
    assert last < first, f"{loss}: loss did not decrease over {steps} steps: {[r['loss'] for r in rows]}"
    if loss == "rankclip":   # the epoch ramp: w(1) = 0, then the ranking terms switch on
        assert rows[0]["rank_cross_loss"] == 0 and rows[-1]["rank_cross_loss"] > 0
    if loss == "alignclip":
        assert (tmp_path / "semantic.pt").exists(), "the semantic features were not cached on disk"
    ck = tmp_path / "run" / "checkpoints" / "latest.pt"
    assert ck.exists()


@pytest.mark.parametrize("loss,flags", [("pcclip", ["--all-pairs"]), ("paraclip", [])])
def test_image_tower_frozen_by_default(tmp_path, loss, flags):
    import torch

    world = make_world(tmp_path / "world", n_train=16)
    run_finetune(["--loss", loss, *flags, "--train-data", world, "--batch-size", 8, "--max-steps", 2,
                  "--lr", "1e-2", *_fast(tmp_path)])
    ck = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", map_location="cpu", weights_only=False)
    from training.models import create
    torch.manual_seed(0)
    init = create("clipkern-tiny")[0].state_dict()
    changed = {k for k, v in ck["model"].items() if not torch.equal(v, init[k])}
    assert changed and not any(k.startswith("visual.") for k in changed), sorted(changed)[:5]
    assert any(k.startswith("transformer.") for k in changed)
    assert ("logit_scale" in changed) == (loss == "paraclip"), "pcclip's loss has a fixed scale: frozen"


def test_triton_backend_runs_the_loop(tmp_path):
    world = make_world(tmp_path / "world", n_train=16)
    run_finetune(["--loss", "clip", "--train-data", world, "--batch-size", 8, "--max-steps", 2,
                  "--logs", tmp_path, "--name", "run", "--threads", 1, "--backend", "triton", "--no-eval", "--no-plot",
                  "--save-frequency", "0"])
    rows = metrics(tmp_path / "run")
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)


@pytest.mark.parametrize("precision", ["amp_bf16", "bf16"])
def test_precisions_run(tmp_path, precision):
    world = make_world(tmp_path / "world", n_train=16)
    run_finetune(["--loss", "clip", "--train-data", world, "--batch-size", 8, "--max-steps", 2,
                  "--precision", precision, *_fast(tmp_path)])
    rows = metrics(tmp_path / "run")
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)


def test_synthetic_world_eval_metrics_and_plot(tmp_path):
    """No --train-data: the world is generated into the run folder; evals every 2 steps and at the end."""
    run_finetune(["--loss", "clip", "--dataset-type", "synthetic", "--world-n-train", 16, "--world-n-val", 24,
                  "--batch-size", 8, "--epochs", 2, "--max-steps", 4, "--eval-every", 2,
                  "--backend", "reference", "--threads", 1, "--logs", tmp_path, "--name", "run"])
    evals = metrics(tmp_path / "run", kind="eval")
    assert [e["step"] for e in evals] == [2, 4]       # every 2 steps; the final one is not repeated
    assert all("top1" in e or any(k.endswith("top1") for k in e) for e in evals), evals[0]
    assert (tmp_path / "run" / "world" / "meta.json").exists()
    assert (tmp_path / "run" / "metrics.png").stat().st_size > 1000
    assert "done: 4 steps" in (tmp_path / "run" / "out.log").read_text()


def test_corrupt_image_is_skipped_and_reported(tmp_path):
    world = make_world(tmp_path / "world", n_train=16)
    first = (world / "train.csv").read_text().splitlines()[1].split("\t")[0]
    (world / first).write_bytes(b"this is not a png")
    run_finetune(["--loss", "clip", "--train-data", world / "train.csv", "--batch-size", 8, "--epochs", 1,
                  *_fast(tmp_path)])
    rows = metrics(tmp_path / "run")
    assert len(rows) == 2 and sum(r["skipped"] for r in rows) == 1
    log = (tmp_path / "run" / "out.log").read_text()
    assert "epoch 0: skipped 1 unreadable images in this epoch" in log, log[-2000:]
    assert first.split("/")[-1] in log


def test_unknown_pretrained_tag_suggests_a_local_path(tmp_path):
    from training.finetune import main

    with pytest.raises(ValueError, match=r"--pretrained 'openai'.*local checkpoint path"):
        main(["--model", "clipkern-tiny", "--pretrained", "openai", *_fast(tmp_path)])


def test_unfetchable_pretrained_tag_suggests_a_local_path(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "training.finetune", "--model", "RN50", "--pretrained", "openai",
                          *_fast(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "could not fetch the open_clip weights" in out.stderr and "local path" in out.stderr, out.stderr[-3000:]


def test_bad_flags_name_the_argument(tmp_path, capsys):
    from training.params import parse_args

    for argv, what in ([["--batch-size", "0"], "--batch-size"], [["--loss", "rankclip", "--epochs", "1"], "--epochs"],
                       [["--dataset-type", "csv"], "--train-data"], [["--loss", "nope"], "--loss"]):
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert what in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ torchrun
def _torchrun(tmp_path, world, name, extra):
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("CLIPKERN_BACKEND", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training.finetune", "--train-data", str(world), "--batch-size", "8", "--epochs", "2", "--max-steps", "3",
           "--lr", "1e-3", "--local-loss", "--gather-with-grad", *_fast(tmp_path, name), *extra]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, f"torchrun failed ({out.returncode}):\n{out.stdout[-5000:]}\n{out.stderr[-5000:]}"
    return out


@pytest.mark.slow
def test_torchrun_two_gloo_processes_local_loss_gather_with_grad(tmp_path):
    """2 ranks × 8 samples. DDP's plain step and the grad-cache step (gradients all-reduced by hand)
    start from the same weights and data, so their losses agree step by step (up to summation order)."""
    world = make_world(tmp_path / "world", n_train=32)
    vit = ["--model", "clipkern-tiny-vit"]   # BatchNorm (clipkern-tiny's ResNet) is per chunk / per rank
    _torchrun(tmp_path, world, "ddp", vit)
    _torchrun(tmp_path, world, "gc", [*vit, "--grad-cache-chunk", "3"])
    ddp, gc = metrics(tmp_path / "ddp"), metrics(tmp_path / "gc")
    assert [r["step"] for r in ddp] == [1, 2, 3], "rank 0 alone writes one metrics row per step"
    assert "world_size=2" in (tmp_path / "ddp" / "out.log").read_text()
    assert (tmp_path / "ddp" / "checkpoints" / "latest.pt").exists()
    for a, b in zip(ddp, gc):
        assert math.isfinite(a["loss"])
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * abs(a["loss"]), (a, b)
    assert ddp[0]["loss"] != ddp[-1]["loss"], "the weights did not change"


@pytest.mark.slow
def test_torchrun_survives_a_corrupt_image_on_one_rank(tmp_path):
    """A dropped image shrinks one rank's batch; the gathered loss needs equal sizes, so every rank cuts
    its batch to the smallest (training.finetune.equalise_batch) instead of failing in the all_gather."""
    world = make_world(tmp_path / "world", n_train=32)
    for line in (world / "train.csv").read_text().splitlines()[1:]:
        (world / line.split("\t")[0]).write_bytes(b"not a png")
        break
    _torchrun(tmp_path, world, "corrupt", ["--max-steps", "4"])
    rows = metrics(tmp_path / "corrupt")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(math.isfinite(r["loss"]) for r in rows)
    assert "skipped 1 unreadable images" in (tmp_path / "corrupt" / "out.log").read_text()


# ------------------------------------------------------------------------------------------ semantic cache
class _CountingEncoder:
    def __init__(self):
        self.seen = []

    def encode(self, texts, convert_to_tensor=True, normalize_embeddings=True, **kw):
        import torch
        self.seen.extend(texts)
        x = torch.tensor([[float(len(t)), float(sum(map(ord, t)) % 97), 1.0] for t in texts])
        return torch.nn.functional.normalize(x, dim=1)


def test_semantic_cache_encodes_each_caption_once_and_persists(tmp_path):
    import torch

    from training.semantic import SemanticFeatureCache
    enc = _CountingEncoder()
    cache = SemanticFeatureCache(str(tmp_path / "sem.pt"), encoder=enc)
    a = cache(["a red circle", "a blue square", "a red circle"])
    b = cache(["a blue square", "two green crosses"])
    assert sorted(enc.seen) == ["a blue square", "a red circle", "two green crosses"]
    assert torch.equal(a[0], a[2]) and torch.equal(a[1], b[0]) and a.shape == (3, 3)
    cache.save()
    enc2 = _CountingEncoder()
    again = SemanticFeatureCache(str(tmp_path / "sem.pt"), encoder=enc2)
    assert torch.equal(again(["a red circle", "two green crosses"]), torch.stack([a[0], b[1]]))
    assert enc2.seen == [], "cached captions were encoded again"
    with pytest.raises(TypeError, match="list of strings"):
        again("a red circle")


@pytest.mark.slow
def test_torchrun_resume_gives_the_same_next_step_loss(tmp_path):
    """Each rank's RNG state is in the checkpoint: a 2-process run stopped at step 3 and resumed logs the
    same step-4 loss as one that never stopped (crops differ per rank, so rank 0's state alone would not do)."""
    world = make_world(tmp_path / "world", n_train=32)
    _torchrun(tmp_path, world, "stopped", [])                      # --max-steps 3 (2 steps per epoch)
    _torchrun(tmp_path, world, "straight", ["--max-steps", "4"])
    _torchrun(tmp_path, world, "resumed", ["--max-steps", "4", "--resume",
                                           str(tmp_path / "stopped" / "checkpoints" / "latest.pt")])
    straight = {r["step"]: r["loss"] for r in metrics(tmp_path / "straight")}
    resumed = {r["step"]: r["loss"] for r in metrics(tmp_path / "resumed")}
    assert list(resumed) == [4] and resumed[4] == straight[4], (resumed, straight)


def test_grad_cache_flag_follows_the_plain_run(tmp_path):
    """--grad-cache-chunk through the CLI, one process: same losses step by step as the plain loop."""
    world = make_world(tmp_path / "world", n_train=16)
    common = ["--loss", "clip", "--model", "clipkern-tiny-vit", "--train-data", world, "--batch-size", 8,
              "--epochs", 2, "--max-steps", 3, "--lr", "2e-3"]   # no BatchNorm: grad cache is exact
    run_finetune(common + _fast(tmp_path, "plain"))
    run_finetune(common + ["--grad-cache-chunk", 3] + _fast(tmp_path, "gc"))
    plain, gc = metrics(tmp_path / "plain"), metrics(tmp_path / "gc")
    assert len(plain) == len(gc) == 3
    for a, b in zip(plain, gc):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"]), (a, b)
    assert plain[0]["loss"] != plain[-1]["loss"]
