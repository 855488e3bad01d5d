"""Every recipe from one base checkpoint, for the same number of epochs, on the synthetic attribute
world; writes `training/RESULTS.md` with one row per seed paper's claim.

    python -m training.reproduce [--out runs/reproduce] [--seeds 0 1] [--epochs 5] [--results training/RESULTS.md]
    (or: bash training/reproduce.sh)

1. generate the world (seed 0) and train a base tiny CLIP (`clipkern-tiny`) with the fused CLIP loss;
2. for every seed and every recipe (clip, siglip, pcclip, rankclip, alignclip, paraclip), finetune
   the base for `--epochs` epochs with that recipe's defaults (towers frozen as the recipe says) at
   one learning rate, then evaluate the checkpoint on the held-out split (training.evaluate);
3. write the per-recipe table (mean over seeds, every seed's value kept in the JSON) and the claim
   rows: the numbers are whatever came out, with the comparison each paper makes.

`clip` (the plain objective continued for the same epochs) is the control every claim compares with.
AlignCLIP here runs its loss on the same open_clip model (to share the base); its SharedCLIP
architecture is a separate model (`--model shared-tiny`) that cannot start from this base.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

RECIPES = ("clip", "siglip", "pcclip", "rankclip", "alignclip", "paraclip")
METRICS = ("zs_top1", "zs_top1_heldout", "i2t_R@1", "t2i_R@1", "diff_acc", "cp_confused_before",
           "cp_confused_after", "alignment", "modality_gap", "AO@10", "JS@10")


def _run(cmd: list[str], log: str) -> None:
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"command failed (exit {proc.returncode}); see {log}")
    print(f"  ({time.perf_counter() - t0:.0f} s, log {log})", flush=True)


def _steps(run_dir: str) -> int:
    steps = 0
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") != "eval":
                steps = max(steps, int(rec["step"]))
    return steps


def _last_terms(run_dir: str) -> dict:
    """The loss terms of the last training step of a run."""
    last = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") != "eval":
                last = rec
    return {k: v for k, v in last.items() if k.endswith("_loss")}


def _notes(out: str, seeds) -> list[str]:
    """Measured facts that explain the rows (read from the runs, not written by hand)."""
    terms = [_last_terms(os.path.join(out, f"alignclip-seed{s}")) for s in seeds]
    imsep = _mean([t.get("imsep_loss", float("nan")) for t in terms])
    con = _mean([t.get("contrastive_loss", float("nan")) for t in terms])
    dsem = float("nan")
    cache = os.path.join(out, "semantic_cache.pt")
    if os.path.isfile(cache):  # the sentence-encoder features of the captions (training/semantic.py)
        u = torch.nn.functional.normalize(torch.stack(list(torch.load(cache).values())).float()[:2000], dim=1)
        g = u @ u.T
        dsem = float((1 - g).sum() / (g.numel() - g.shape[0]))
    return ["## Notes", "",
            f"- AlignCLIP: at the last step the IMSep term was {imsep:.2e} against a contrastive term of "
            f"{con:.3f} (β = 0.5 applied to the former). The mean off-diagonal Dsem = 1 − ÛÛᵀ over the "
            f"captions' sentence-encoder features is {dsem:.3f}: the separation logits are scaled by it. "
            "The recipe here runs on the same open_clip model as the others, not on "
            "SharedCLIP (`--model shared-tiny`), which cannot start from this base checkpoint.",
            "- The base and every finetune use `--backend auto`: the fused Triton kernels on a GPU, the "
            "torch reference on a CPU (the loss values are the same to rounding; the tests check that).",
            ""]


def _mean(vals):
    vals = [v for v in vals if v == v]  # drop NaN
    return statistics.fmean(vals) if vals else float("nan")


def _fmt(results, recipe, key):
    vals = [r[key] for r in results[recipe]]
    return f"{_mean(vals):.3f}" + (f" ({', '.join(f'{v:.3f}' for v in vals)})" if len(vals) > 1 else "")


def _verdict(ours: list, control: list, higher_is_better: bool = True) -> str:
    """Paired by seed: 'reproduces' when every seed moves the paper's way and the mean moves at least
    0.01; 'does not reproduce' when every seed moves the other way by the same rule; else no clear effect."""
    deltas = [(o - c) * (1 if higher_is_better else -1) for o, c in zip(ours, control)]
    if not deltas or any(d != d for d in deltas):
        return "n/a"
    mean = statistics.fmean(deltas)
    if all(d > 0 for d in deltas) and mean >= 0.01:
        return "reproduces"
    if all(d < 0 for d in deltas) and mean <= -0.01:
        return "does not reproduce"
    return "no clear effect"


def claims(results: dict, base: dict) -> list[tuple[str, str, str, str, str]]:
    """(paper, claim, ours, control, verdict) rows."""
    v = {r: {k: [x[k] for x in results[r]] for k in METRICS} for r in results}
    m = {r: {k: _mean(v[r][k]) for k in METRICS} for r in results}
    rows = [("PC-CLIP", "raises difference classification (chance 0.5)", f"pcclip {m['pcclip']['diff_acc']:.3f}",
             f"clip {m['clip']['diff_acc']:.3f}; base {base['diff_acc']:.3f}",
             _verdict(v["pcclip"]["diff_acc"], v["clip"]["diff_acc"])),
            ("PC-CLIP", "comparative prompting helps the most-confused classes",
             f"pcclip: {m['pcclip']['cp_confused_before']:.3f} → {m['pcclip']['cp_confused_after']:.3f}",
             f"clip: {m['clip']['cp_confused_before']:.3f} → {m['clip']['cp_confused_after']:.3f}",
             _verdict(v["pcclip"]["cp_confused_after"], v["pcclip"]["cp_confused_before"])),
            ("AlignCLIP", "raises the alignment score", f"alignclip {m['alignclip']['alignment']:.3f}",
             f"clip {m['clip']['alignment']:.3f}", _verdict(v["alignclip"]["alignment"], v["clip"]["alignment"])),
            ("AlignCLIP", "shrinks the modality gap", f"alignclip {m['alignclip']['modality_gap']:.3f}",
             f"clip {m['clip']['modality_gap']:.3f}",
             _verdict(v["alignclip"]["modality_gap"], v["clip"]["modality_gap"], higher_is_better=False))]
    for key in ("AO@10", "JS@10"):
        rows.append(("ParaCLIP", f"raises {key} paraphrase consistency", f"paraclip {m['paraclip'][key]:.3f}",
                     f"clip {m['clip'][key]:.3f}", _verdict(v["paraclip"][key], v["clip"][key])))
    for key in ("zs_top1", "zs_top1_heldout"):
        rows.append(("RankCLIP", f"beats CLIP on zero-shot ({key})", f"rankclip {m['rankclip'][key]:.3f}",
                     f"clip {m['clip'][key]:.3f}", _verdict(v["rankclip"][key], v["clip"][key])))
    return rows


def write_markdown(path: str, results: dict, base: dict, steps: dict, cmd: str, settings: dict,
                   notes: list[str]) -> None:
    lines = ["# Reproducing the seed papers' claims on the synthetic attribute world", "",
             "Generated by `training/reproduce.py`; do not edit by hand. Command:", "", f"    {cmd}", "",
             "Setting: " + ", ".join(f"{k} = {v}" for k, v in settings.items()) + ".", "",
             "Every recipe starts from the same base checkpoint (a tiny CLIP trained from scratch with the "
             "fused CLIP loss) and is finetuned for the same number of epochs with the recipe's own "
             "defaults; `clip` continues the plain objective and is the control. Metrics are on the "
             "held-out split, whose colour×shape combinations never occur in training. Values are means "
             "over the seeds, with each seed's value in brackets. These are a tiny model's numbers on "
             "synthetic data: they show the direction of each effect, not the papers' magnitudes.", "",
             "## Claims", "", "| paper | claim | ours | control | verdict |", "|---|---|---|---|---|"]
    lines += [f"| {p} | {c} | {o} | {k} | {v} |" for p, c, o, k, v in claims(results, base)]
    lines += ["", "## Every recipe", "",
              "| recipe | steps | " + " | ".join(METRICS) + " |", "|---|---:|" + "---:|" * len(METRICS),
              "| base | - | " + " | ".join(f"{base[k]:.3f}" for k in METRICS) + " |"]
    for r in results:
        lines.append(f"| {r} | {steps[r]} | " + " | ".join(_fmt(results, r, k) for k in METRICS) + " |")
    lines += ["", "Verdict rule, paired by seed: every seed moves the paper's way and the mean by at least "
              "0.01: reproduces; every seed the other way by the same rule: does not reproduce; otherwise "
              "no clear effect.", ""]
    lines += notes
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.reproduce", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/reproduce")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-val", type=int, default=400)
    p.add_argument("--base-epochs", type=int, default=10)
    p.add_argument("--epochs", type=int, default=5, help="finetuning epochs of every recipe")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--results", default="training/RESULTS.md")
    args = p.parse_args(argv)
    if "clip" not in args.recipes:
        p.error("--recipes must include clip (the control of every claim)")

    py, out = sys.executable, args.out
    os.makedirs(out, exist_ok=True)
    world = os.path.join(out, "world")
    common = ["--train-data", world, "--val-data", world, "--batch-size", str(args.batch_size), "--no-eval",
              "--no-plot", "--threads", "1", "--save-frequency", "0", "--logs", out]
    _run([py, "-m", "training.world", "--out", world, "--seed", "0", "--n-train", str(args.n_train),
          "--n-val", str(args.n_val)], os.path.join(out, "world.log"))
    base_ckpt = os.path.join(out, "base", "checkpoints", "latest.pt")
    if not os.path.isfile(base_ckpt):
        _run([py, "-m", "training.finetune", "--model", "clipkern-tiny", "--loss", "clip", *common,
              "--epochs", str(args.base_epochs), "--lr", "2e-3", "--wd", "0.1",
              "--warmup", "20", "--seed", "0", "--name", "base"], os.path.join(out, "base.log"))
    evaluate = [py, "-m", "training.evaluate", "--world", world, "--checkpoint"]
    base_json = os.path.join(out, "eval_base.json")
    _run(evaluate + [base_ckpt, "--out", base_json], os.path.join(out, "eval_base.log"))
    with open(base_json) as f:
        base = json.load(f)

    results, steps = {r: [] for r in args.recipes}, {}
    for seed in args.seeds:
        for recipe in args.recipes:
            name = f"{recipe}-seed{seed}"
            _run([py, "-m", "training.finetune", "--model", "clipkern-tiny", "--pretrained", base_ckpt,
                  "--loss", recipe, *common, "--epochs", str(args.epochs), "--lr", str(args.lr), "--wd", "0.0",
                  "--warmup", "10", "--seed", str(seed), "--name", name], os.path.join(out, f"{name}.log"))
            path = os.path.join(out, f"eval_{name}.json")
            _run(evaluate + [os.path.join(out, name, "checkpoints", "latest.pt"), "--out", path],
                 os.path.join(out, f"eval_{name}.log"))
            with open(path) as f:
                results[recipe].append(json.load(f))
            steps[recipe] = _steps(os.path.join(out, name))
    settings = {"seeds": " ".join(map(str, args.seeds)), "world": f"{args.n_train} train / {args.n_val} val images",
                "base": f"{args.base_epochs} epochs at lr 2e-3", "finetune": f"{args.epochs} epochs at lr {args.lr}",
                "batch": args.batch_size, "torch": torch.__version__, "machine": platform.machine() + " CPU"
                if not torch.cuda.is_available() else torch.cuda.get_device_name()}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"base": base, "results": results, "steps": steps, "settings": settings}, f, indent=2)
    cmd = "python -m training.reproduce " + " ".join(argv if argv is not None else sys.argv[1:])
    if set(args.recipes) == set(RECIPES):
        write_markdown(args.results, results, base, steps, cmd.strip(), settings, _notes(out, args.seeds))
        print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
