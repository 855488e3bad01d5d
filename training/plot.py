"""The run's plot: training loss (total and per term) over steps, and the evaluations over steps.

    python -m training.plot RUN_DIR/metrics.jsonl [out.png]
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict

_NOT_LOSS = {"step", "epoch", "lr", "logit_scale", "samples_per_s", "step_time_s", "skipped", "kind"}


def read_metrics(path: str):
    train, evals = [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e})") from e
            (evals if row.get("kind") == "eval" else train).append(row)
    return train, evals


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


if __name__ == "__main__":
    src = sys.argv[1]
    print(plot_metrics(src, sys.argv[2] if len(sys.argv) > 2 else src.rsplit(".", 1)[0] + ".png"))
