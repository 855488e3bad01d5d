"""The run's plot: training loss (total and per term) over steps, and the evaluations over steps; and
the demo's figure (plot_demo): both runs' curves and the before/after evaluations.

    python -m training.plot RUN_DIR/metrics.jsonl [out.png]
"""
from __future__ import annotations

import sys
from collections import defaultdict

_NOT_LOSS = {"step", "epoch", "lr", "logit_scale", "samples_per_s", "step_time_s", "skipped", "kind"}


def read_metrics(path: str):
    """(training rows, eval rows) of a metrics.jsonl (training.records.read_jsonl)."""
    from .records import read_jsonl

    rows = read_jsonl(path)
    return [r for r in rows if r.get("kind") != "eval"], [r for r in rows if r.get("kind") == "eval"]


def plot_metrics(jsonl_path: str, out_path: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = read_metrics(jsonl_path)
    fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(11 if evals else 6, 4), squeeze=False)
    ax = axes[0][0]
    series = defaultdict(list)
    for row in train:
        for k, v in row.items():
            if k not in _NOT_LOSS and isinstance(v, (int, float)):
                series[k].append((row["step"], v))
    for k, pts in sorted(series.items(), key=lambda kv: kv[0] != "loss"):
        xs, ys = zip(*pts)
        ax.plot(xs, ys, label=k, linewidth=2 if k == "loss" else 1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training loss")
    if series:
        ax.legend(fontsize=7)
    if evals:
        ax = axes[0][1]
        ev = defaultdict(list)
        for row in evals:
            for k, v in row.items():   # counts (n_images, n_skipped_images) are not scores
                if k not in _NOT_LOSS and not k.startswith("n_") and isinstance(v, (int, float)):
                    ev[k].append((row["step"], v))
        for k, pts in sorted(ev.items()):
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", label=k)
        ax.set_xlabel("step")
        ax.set_title("evaluations (val)")
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def plot_demo(base_jsonl: str, finetune_jsonl: str, rows, before: dict, after: dict, out_path: str,
              finetune_name: str = "PC-CLIP") -> str:
    """training/demo.py's figure: (1) the training loss of the base run and of the finetune (its steps
    continue the base's), (2) the base run's evaluations over steps, (3) before/after bars of `rows`
    ((key, label, paper) of the demo's table) for the metrics both evaluations have."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base_train, base_evals = read_metrics(base_jsonl)
    ft_train, _ = read_metrics(finetune_jsonl)
    offset = base_train[-1]["step"] if base_train else 0
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(16, 4.2), gridspec_kw={"width_ratios": [1, 1, 1.4]})
    a1.plot([r["step"] for r in base_train], [r["loss"] for r in base_train], lw=1, label="base: CLIP loss (fused)")
    a1.plot([r["step"] + offset for r in ft_train], [r["loss"] for r in ft_train], lw=1,
            label=f"{finetune_name} finetune loss")
    a1.set_xlabel("step")
    a1.set_ylabel("loss")
    a1.set_yscale("log")
    a1.set_title("training loss")
    a1.legend(fontsize=8)
    for key, label in (("zs_top1", "zero-shot top-1 (30 classes)"), ("zs_top1_heldout", "top-1, unseen colour×shape"),
                       ("i2t_R@1", "image→text R@1")):
        pts = [(r["step"], r[key]) for r in base_evals if key in r]
        if pts:
            a2.plot(*zip(*pts), marker="o", label=label)
    a2.axhline(1 / 30, color="grey", ls=":", lw=1, label="chance (1/30)")
    a2.set_ylim(0, 1)
    a2.set_xlabel("step")
    a2.set_title("base model, evaluations on val")
    a2.text(0.02, 0.97, "eval mode: BatchNorm's running statistics lag the\nweights while the lr is high (early points)",
            transform=a2.transAxes, fontsize=7, va="top", color="grey")
    a2.legend(fontsize=8, loc="lower right")
    keys = [(k, label) for k, label, _ in rows if before.get(k) is not None and after.get(k) is not None]
    ys = range(len(keys))
    a3.barh([y + 0.2 for y in ys], [before[k] for k, _ in keys], height=0.4, label="base")
    a3.barh([y - 0.2 for y in ys], [after[k] for k, _ in keys], height=0.4, label=f"+ {finetune_name}")
    a3.set_yticks(list(ys), [label for _, label in keys], fontsize=8)
    a3.invert_yaxis()
    a3.set_title("held-out split: before / after")
    a3.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


if __name__ == "__main__":
    src = sys.argv[1]
    print(plot_metrics(src, sys.argv[2] if len(sys.argv) > 2 else src.rsplit(".", 1)[0] + ".png"))
