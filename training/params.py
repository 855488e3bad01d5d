"""Command-line flags of `python -m training.finetune`, with open_clip's names where open_clip has one."""
from __future__ import annotations

import argparse

LOSSES = ("clip", "siglip", "pcclip", "rankclip", "alignclip", "paraclip")
BACKENDS = ("auto", "reference", "triton", "cuda")
PRECISIONS = ("fp32", "amp", "amp_bf16", "bf16")


def _positive_int(name):
    def parse(value):
        try:
            v = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {value!r}")
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {v}")
        return v
    return parse


def _non_negative_float(name):
    def parse(value):
        try:
            v = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {value!r}")
        if not v >= 0:
            raise argparse.ArgumentTypeError(f"{name} must be >= 0, got {value!r}")
        return v
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.finetune",
                                description="Finetune a CLIP model with clipkern's fused losses.")
    a = p.add_argument
    # model
    a("--model", default=None, help="open_clip model name, 'clipkern-tiny' or 'shared-tiny' "
      "(default: clipkern-tiny; shared-tiny for --loss alignclip)")
    a("--pretrained", default=None, help="open_clip pretrained tag or a local checkpoint/state-dict path")
    # data
    a("--train-data", default=None, help="training file (CSV, diffs JSONL or paraphrases JSONL, by recipe) or "
      "a world folder written by training.world")
    a("--val-data", default=None, help="validation file or world folder (evaluations need a world folder)")
    a("--dataset-type", choices=("csv", "synthetic"), default="synthetic",
      help="synthetic: generate the attribute world into the logs folder when --train-data is not given")
    a("--world-seed", type=int, default=0, help="seed of the generated world (--dataset-type synthetic)")
    a("--world-n-train", type=_positive_int("--world-n-train"), default=512)
    a("--world-n-val", type=_positive_int("--world-n-val"), default=128)
    a("--csv-separator", default="\t")
    a("--csv-img-key", default="filepath")
    a("--csv-caption-key", default="title")
    a("--workers", type=int, default=0, help="data loader worker processes")
    # optimisation
    a("--batch-size", type=_positive_int("--batch-size"), default=32, help="per-process batch size")
    a("--epochs", type=_positive_int("--epochs"), default=1)
    a("--max-steps", type=_positive_int("--max-steps"), default=None, help="stop after this many optimizer steps")
    a("--lr", type=_non_negative_float("--lr"), default=5e-4)
    a("--wd", type=_non_negative_float("--wd"), default=0.2)
    a("--beta1", type=float, default=0.9)
    a("--beta2", type=float, default=0.98)
    a("--eps", type=float, default=1e-6)
    a("--warmup", type=int, default=10, help="linear warmup steps before the cosine decay")
    a("--precision", choices=PRECISIONS, default="fp32")
    a("--grad-clip-norm", type=float, default=None)
    a("--lock-image", action=argparse.BooleanOptionalAction, default=None,
      help="freeze the image tower (default: on for pcclip and paraclip, off otherwise)")
    a("--lock-text", action=argparse.BooleanOptionalAction, default=False, help="freeze the text tower")
    # loss
    a("--loss", choices=LOSSES, default="clip")
    a("--backend", choices=BACKENDS, default="auto", help="clipkern kernel backend")
    a("--local-loss", action="store_true", default=False)
    a("--gather-with-grad", action="store_true", default=False)
    a("--all-pairs", action="store_true", default=False, help="pcclip: score texts against all ordered image pairs")
    a("--grad-cache-chunk", type=_positive_int("--grad-cache-chunk"), default=None,
      help="gradient caching: re-run the towers this many samples at a time")
    # run
    a("--seed", type=int, default=0)
    a("--threads", type=_positive_int("--threads"), default=None,
      help="torch intra-op threads (default: torch's). On a small shared CPU box use 1: the tiny models' "
      "steps ran 50x slower with 2 threads competing with other processes")
    a("--device", default=None, help="cpu / cuda (default: cuda when available, with LOCAL_RANK)")
    a("--logs", "--logs-dir", dest="logs", default="./logs",
      help="folder of the run folders (under torchrun use --logs-dir: torchrun's own parser rejects --logs as "
      "an ambiguous abbreviation of its --logs-specs)")
    a("--name", default=None, help="run folder name under --logs (default: <loss>-<model>-<time>)")
    a("--resume", default=None, help="checkpoint path or 'latest' (the newest in this run's checkpoints folder)")
    a("--save-frequency", type=int, default=1, help="keep epoch_N.pt every N epochs (0: none; latest.pt is "
      "always written at the end, on SIGINT and with --save-every)")
    a("--save-every", type=int, default=0, help="also write latest.pt every N steps (0: off)")
    a("--eval-every", type=int, default=0, help="evaluate every N steps (0: only at the end)")
    a("--no-eval", action="store_true", default=False, help="skip the evaluations")
    a("--eval-batch-size", type=_positive_int("--eval-batch-size"), default=256)
    a("--semantic-cache", default=None, help="alignclip: the sentence-encoder feature cache file "
      "(default: <logs>/semantic_cache.pt)")
    a("--no-plot", action="store_true", default=False)
    a("--log-every", type=int, default=10, help="console log line every N steps (the JSONL gets every step)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.model is None:
        args.model = "shared-tiny" if args.loss == "alignclip" else "clipkern-tiny"
    if args.lock_image is None:
        args.lock_image = args.loss in ("pcclip", "paraclip")
    if args.loss == "rankclip" and args.epochs < 2:
        p.error("--epochs must be >= 2 for --loss rankclip (its ramp divides by epochs - 1)")
    if args.dataset_type == "csv" and args.train_data is None:
        p.error("--train-data is required with --dataset-type csv")
    if args.workers < 0:
        p.error("--workers must be >= 0")
    if args.gather_with_grad and not args.local_loss:
        pass  # allowed, as in open_clip
    return args
