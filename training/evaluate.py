"""Evaluate a model on a world folder: `python -m training.evaluate --checkpoint PATH | --model NAME
--world DIR [--split val] [--out metrics.json]`.

evaluate_model reads the split's files (meta.json, <split>.csv, <split>_diffs.jsonl,
<split>_paraphrases.jsonl, <split>_attributes.jsonl; JSONL through training.records.read_jsonl), embeds
every image and text once with the model in eval mode under no_grad, runs the metric functions of
training.evals (which imports nothing from here) and returns one flat dict of floats:

    zs_top1, zs_top5          zero-shot over all classes, images of <split>_attributes.jsonl
    zs_top1_heldout           the same, over images whose (colour, shape) is in held_out_combinations
    i2t_R@1/5, t2i_R@1/5      retrieval over the <split>.csv pairs
    alignment, modality_gap   over the <split>.csv pairs
    diff_acc                  difference classification over <split>_diffs.jsonl
    cp_all_before/after, cp_confused_before/after   comparative prompting (k = 3, alpha = 0.9)
    AO@10, JS@10              caption vs para2 of <split>_paraphrases.jsonl, gallery = the csv images
    n_images, n_skipped_images

A file that is absent skips its metrics (logged); a malformed line raises ValueError naming the file
and the line; an image that cannot be read is skipped, counted in n_skipped_images, and the records
that need it are dropped. If the model yields a non-finite embedding (a diverged run), every metric
is NaN (logged) instead of an error, so a training loop that evaluates keeps its record.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
from pathlib import Path

import torch

from . import evals
from .records import read_jsonl

log = logging.getLogger("training.evaluate")

CP_K, CP_ALPHA, CONSISTENCY_K = 3, 0.9, 10
METRIC_KEYS = ("i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@5", "alignment", "modality_gap", "zs_top1", "zs_top5",
               "zs_top1_heldout", "cp_all_before", "cp_all_after", "cp_confused_before", "cp_confused_after",
               "diff_acc", f"AO@{CONSISTENCY_K}", f"JS@{CONSISTENCY_K}")


class NonFiniteEmbeddings(ValueError):
    """The model produced NaN/inf embeddings (e.g. a diverged run)."""


# ---------------------------------------------------------------- reading the world -------------------------

def _read_csv(path: Path, img_key="filepath", caption_key="title", sep="\t") -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=sep)
        if reader.fieldnames is None or img_key not in reader.fieldnames or caption_key not in reader.fieldnames:
            raise ValueError(f"{path}, line 1: header must have columns {img_key!r} and {caption_key!r} "
                             f"(separator {sep!r}), got {reader.fieldnames}")
        rows = []
        for row in reader:
            if row.get(img_key) is None or row.get(caption_key) is None:
                raise ValueError(f"{path}, line {reader.line_num}: missing {img_key!r} or {caption_key!r} value")
            rows.append({"image": row[img_key], "caption": row[caption_key]})
    return rows


def read_world(world_dir, split: str = "val") -> dict:
    """The split's records: {"meta": dict|None, "csv", "diffs", "paraphrases", "attributes": list|None}."""
    root = Path(world_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"world_dir {str(root)!r} is not a folder")

    def opt(name, reader, *a):
        p = root / name
        if p.exists():
            return reader(p, *a)
        log.warning("%s not found: its metrics are skipped", p)
        return None

    meta = None
    if (root / "meta.json").exists():
        try:
            meta = json.loads((root / "meta.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{root / 'meta.json'}, line {e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(meta.get("classes"), list) or not meta["classes"]:
            raise ValueError(f"{root / 'meta.json'}: 'classes' must be a non-empty list of class names")
    return {"meta": meta,
            "csv": opt(f"{split}.csv", _read_csv),
            "diffs": opt(f"{split}_diffs.jsonl", read_jsonl, ("image_a", "image_b", "text")),
            "paraphrases": opt(f"{split}_paraphrases.jsonl", read_jsonl, ("image", "caption", "para2")),
            "attributes": opt(f"{split}_attributes.jsonl", read_jsonl, ("image", "class"))}


# ---------------------------------------------------------------- embedding ---------------------------------

def _model_dtype(model) -> torch.dtype:
    p = next(iter(model.parameters()), None)
    return p.dtype if p is not None and p.is_floating_point() else torch.float32


def embed_images(model, preprocess, root: Path, relpaths, device, batch_size) -> tuple[dict, torch.Tensor, list]:
    """Embeds each readable image once. Returns ({relpath: row}, fp32 CPU embeddings, bad relpaths)."""
    from PIL import Image

    dtype = _model_dtype(model)
    index, rows, bad, batch, names = {}, [], [], [], []

    def flush():
        if batch:
            x = torch.stack(batch).to(device=device, dtype=dtype)
            rows.append(model.encode_image(x).float().cpu())
            for n in names:
                index[n] = len(index)
            batch.clear()
            names.clear()

    for rel in relpaths:
        try:
            with Image.open(root / rel) as im:
                batch.append(preprocess(im.convert("RGB")))
            names.append(rel)
        except (OSError, ValueError) as e:  # missing or corrupt file
            bad.append(rel)
            log.warning("skipping unreadable image %s (%s)", root / rel, e)
        if len(batch) >= batch_size:
            flush()
    flush()
    return index, (torch.cat(rows) if rows else torch.empty(0, 0)), bad


def embed_texts(model, tokenizer, texts, device, batch_size) -> torch.Tensor:
    """fp32 CPU embeddings of texts, in order (each distinct text encoded once)."""
    uniq = list(dict.fromkeys(texts))
    out = []
    for s in range(0, len(uniq), batch_size):
        tokens = tokenizer(uniq[s:s + batch_size]).to(device)
        out.append(model.encode_text(tokens).float().cpu())
    emb = torch.cat(out)
    pos = {t: i for i, t in enumerate(uniq)}
    return emb[torch.tensor([pos[t] for t in texts], dtype=torch.long)]


# ---------------------------------------------------------------- evaluation --------------------------------

def evaluate_model(model, tokenizer, preprocess, world_dir, split: str = "val", device="cpu",
                   batch_size: int = 256) -> dict:
    """Every evaluation of training.evals for `model` on the `split` of a world folder, as one flat dict
    of floats (see the module docstring). The model's train/eval mode is restored afterwards."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    model = getattr(model, "module", model)  # DistributedDataParallel
    root = Path(world_dir)
    world = read_world(root, split)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return _evaluate(model, tokenizer, preprocess, root, world, torch.device(device), batch_size)
    finally:
        model.train(was_training)


def _evaluate(model, tokenizer, preprocess, root, world, device, batch_size) -> dict:
    rows, diffs, attrs = world["csv"], world["diffs"], world["attributes"]
    wanted = [r["image"] for r in rows or []] + [r["image"] for r in attrs or []]
    wanted += [r[k] for r in diffs or [] for k in ("image_a", "image_b")]
    index, img_emb, bad = embed_images(model, preprocess, root, dict.fromkeys(wanted), device, batch_size)
    m = {"n_images": float(len(index)), "n_skipped_images": float(len(bad))}
    try:
        if not torch.isfinite(img_emb).all():
            raise NonFiniteEmbeddings("image embeddings")
        _metrics(m, model, tokenizer, world, index, img_emb, device, batch_size)
    except NonFiniteEmbeddings as e:
        log.error("the model produced non-finite %s: every metric is NaN", e)
        m.update({k: math.nan for k in METRIC_KEYS if k not in m})
    return m


def _metrics(m, model, tokenizer, world, index, img_emb, device, batch_size) -> None:
    meta, rows, diffs, paras, attrs = (world[k] for k in ("meta", "csv", "diffs", "paraphrases", "attributes"))

    def encode(texts):
        emb = embed_texts(model, tokenizer, list(texts), device, batch_size)
        if not torch.isfinite(emb).all():
            raise NonFiniteEmbeddings("text embeddings")
        return emb

    def rows_of(paths):
        return img_emb[torch.tensor([index[p] for p in paths], dtype=torch.long)]

    rows = [r for r in rows or [] if r["image"] in index]
    if rows:
        img, txt = rows_of([r["image"] for r in rows]), encode(r["caption"] for r in rows)
        m.update(evals.retrieval(img, txt, ks=(1, 5)))
        m.update(evals.alignment(img, txt))

    attrs = [r for r in attrs or [] if r["image"] in index]
    if attrs and meta is not None:
        names = meta["classes"]
        template = meta.get("prompt_template", "a photo of a {}.")
        class_emb = encode(template.format(c) for c in names)
        img, labels = rows_of([r["image"] for r in attrs]), torch.tensor([int(r["class"]) for r in attrs])
        zs = evals.zero_shot(img, class_emb, labels)
        m.update({"zs_top1": zs["top1"], "zs_top5": zs["top5"]})
        held = {tuple(c) for c in meta.get("held_out_combinations") or []}
        keep = [i for i, r in enumerate(attrs) if (r.get("colour"), r.get("shape")) in held]
        m["zs_top1_heldout"] = (evals.zero_shot(img[keep], class_emb, labels[keep])["top1"] if keep
                                else math.nan)
        cp = evals.comparative_prompting(img, labels, class_emb, encode, names, k=CP_K, alpha=CP_ALPHA,
                                         comparisons=meta.get("comparisons") or None)
        log.info("comparative prompting: most-confused pairs %s", cp.pop("confused_pairs"))
        m.update(cp)

    diffs = [r for r in diffs or [] if r["image_a"] in index and r["image_b"] in index]
    if diffs:
        pairs = torch.tensor([[index[r["image_a"]], index[r["image_b"]]] for r in diffs], dtype=torch.long)
        m.update(evals.difference_classification(img_emb, pairs, encode(r["text"] for r in diffs)))

    if paras and rows:
        gallery = rows_of(list(dict.fromkeys(r["image"] for r in rows)))
        k = min(CONSISTENCY_K, gallery.shape[0])
        m.update(evals.paraphrase_consistency(gallery, encode(r["caption"] for r in paras),
                                              encode(r["para2"] for r in paras), k=k))


# ---------------------------------------------------------------- command line ------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint written by training.finetune")
    src.add_argument("--model", help="a model name (open_clip, clipkern-tiny, shared-tiny)")
    p.add_argument("--pretrained", default=None, help="with --model: an open_clip tag or a local weights file")
    p.add_argument("--world", required=True, help="the world folder (python -m training.world --out DIR)")
    p.add_argument("--split", default="val")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", default=None, help="write the metrics as JSON here")
    return p


def load(args):
    """(model, preprocess, tokenizer) from --checkpoint or --model."""
    if args.checkpoint:
        from .checkpoint import load_model
        return load_model(args.checkpoint, args.device)
    from .models import create
    model, _, preprocess_val, tokenizer = create(args.model, pretrained=args.pretrained, device=args.device)
    return model.to(args.device), preprocess_val, tokenizer


def format_table(metrics: dict) -> str:
    width = max(len(k) for k in metrics)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    lines += [f"{k:<{width}}  {int(v) if k.startswith('n_') and v == v else f'{v:.4f}'}"
              for k, v in metrics.items()]
    return "\n".join(lines)


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    args = build_parser().parse_args(argv)
    model, preprocess, tokenizer = load(args)
    metrics = evaluate_model(model, tokenizer, preprocess, args.world, split=args.split,
                                   device=args.device, batch_size=args.batch_size)
    print(format_table(metrics))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, out)
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
