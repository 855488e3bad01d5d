"""training.evaluate: evaluate_model and the CLI on a tiny random open_clip model over a hand-built
miniature world, and on a generated world."""
import json
import math

import pytest
import torch

from training import evals, evaluate


# ---------------------------------------------------------------- evaluate_model on a miniature world ---------

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 230)}
SHAPES = ("circle", "square")


def make_world(root, n=12):
    """A hand-built world folder in the contract's format (independent of training.world)."""
    from PIL import Image, ImageDraw

    classes = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    (root / "images" / "val").mkdir(parents=True)
    csv_lines, attrs, paras, diffs = ["filepath\ttitle"], [], [], []
    for i in range(n):
        colour, shape = list(COLOURS)[i % 3], SHAPES[(i // 3) % 2]
        size = 6 + i
        im = Image.new("RGB", (32, 32), (10, 10, 10))
        box = (16 - size // 2, 16 - size // 2, 16 + size // 2, 16 + size // 2)
        (ImageDraw.Draw(im).ellipse if shape == "circle" else ImageDraw.Draw(im).rectangle)(box, fill=COLOURS[colour])
        rel = f"images/val/{i:06d}.png"
        im.save(root / rel)
        caption = f"a {'small' if size < 12 else 'large'} {colour} {shape}"
        csv_lines.append(f"{rel}\t{caption}")
        attrs.append({"image": rel, "shape": shape, "colour": colour, "size": float(size), "brightness": 0.5,
                      "count": 1, "class": classes.index(f"{colour} {shape}")})
        paras.append({"image": rel, "caption": caption, "para1": f"{colour} {shape}",
                      "para2": f"one {shape} coloured {colour}"})
        prev = f"images/val/{i - 1:06d}.png"  # one record per consecutive pair (an odd count: no exact 0.5)
        if i % 2:
            diffs.append({"image_a": rel, "image_b": prev, "text": "the first object is larger than the second"})
        elif i:
            diffs.append({"image_a": prev, "image_b": rel, "text": "the first object is smaller than the second"})
    (root / "val.csv").write_text("\n".join(csv_lines) + "\n")
    for name, recs in (("val_attributes", attrs), ("val_paraphrases", paras), ("val_diffs", diffs)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    meta = {"seed": 0, "classes": classes, "class_attribute": "colour+shape", "prompt_template": "a photo of a {}.",
            "held_out_combinations": [["blue", "square"]], "version": 1}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def tiny_clip():
    import open_clip

    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=32,
                           vision_cfg={"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
                           text_cfg={"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2})
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=32)
    preprocess = open_clip.image_transform(32, is_train=False)
    return model, tokenizer, preprocess


EXPECTED_KEYS = {"n_images", "n_skipped_images", "i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@5", "alignment",
                 "modality_gap", "zs_top1", "zs_top5", "zs_top1_heldout", "cp_all_before", "cp_all_after",
                 "cp_confused_before", "cp_confused_after", "diff_acc", "AO@10", "JS@10"}


def test_evaluate_model_on_tiny_world(tmp_path, tiny_clip):
    from PIL import Image

    model, tokenizer, preprocess = tiny_clip
    world = make_world(tmp_path / "world")
    model.train()
    m = evaluate.evaluate_model(model, tokenizer, preprocess, world, split="val", batch_size=5)
    assert model.training  # mode restored
    assert set(m) == EXPECTED_KEYS and all(isinstance(v, float) for v in m.values())
    assert m["n_images"] == 12 and m["n_skipped_images"] == 0
    for k, v in m.items():
        if not k.startswith(("n_", "alignment", "modality_gap", "cp_confused")):
            assert 0.0 <= v <= 1.0, k
    # the wiring: recompute from the model's own embeddings with the pairs the files define
    rows = [line.split("\t") for line in (world / "val.csv").read_text().splitlines()[1:]]
    model.eval()
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(Image.open(world / p).convert("RGB")) for p, _ in rows]))
        txt = model.encode_text(tokenizer([c for _, c in rows]))
        names = json.loads((world / "meta.json").read_text())["classes"]
        cls = model.encode_text(tokenizer([f"a photo of a {c}." for c in names]))
        diffs = [json.loads(line) for line in (world / "val_diffs.jsonl").read_text().splitlines()]
        dtxt = model.encode_text(tokenizer([d["text"] for d in diffs]))
    ret = evals.retrieval(img, txt)
    for k in ret:
        assert m[k] == pytest.approx(ret[k], abs=1e-6)
    assert m["alignment"] == pytest.approx(evals.alignment(img, txt)["alignment"], abs=1e-5)
    attrs = (world / "val_attributes.jsonl").read_text().splitlines()
    labels = torch.tensor([json.loads(line)["class"] for line in attrs])
    assert m["zs_top1"] == pytest.approx(evals.zero_shot(img, cls, labels)["top1"])
    held = [i for i in range(12) if i % 3 == 2 and (i // 3) % 2 == 1]  # blue squares
    assert m["zs_top1_heldout"] == pytest.approx(evals.zero_shot(img[held], cls, labels[held])["top1"])
    pairs = torch.tensor([[int(d["image_a"][-10:-4]), int(d["image_b"][-10:-4])] for d in diffs])
    assert len(pairs) == 11  # odd: swapping image_a/image_b would give 1 − diff_acc ≠ diff_acc
    assert m["diff_acc"] == pytest.approx(evals.difference_classification(img, pairs, dtxt)["diff_acc"])


def test_evaluate_model_skips_corrupt_image_and_rejects_bad_lines(tmp_path, tiny_clip):
    model, tokenizer, preprocess = tiny_clip
    world = make_world(tmp_path / "world")
    (world / "images/val/000003.png").write_bytes(b"not a png")
    m = evaluate.evaluate_model(model, tokenizer, preprocess, world)
    assert m["n_images"] == 11 and m["n_skipped_images"] == 1 and math.isfinite(m["diff_acc"])
    lines = (world / "val_diffs.jsonl").read_text().splitlines()
    lines[1] = "{not json"
    (world / "val_diffs.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"val_diffs\.jsonl:2:"):
        evaluate.evaluate_model(model, tokenizer, preprocess, world)
    with pytest.raises(FileNotFoundError, match="world_dir"):
        evaluate.evaluate_model(model, tokenizer, preprocess, tmp_path / "missing")


def test_evaluate_cli_writes_json_and_table(tmp_path, tiny_clip, monkeypatch, capsys):
    from training import evaluate

    model, tokenizer, preprocess = tiny_clip
    world = make_world(tmp_path / "world")
    seen = {}

    def fake_load(args):
        seen["args"] = args
        return model, preprocess, tokenizer

    monkeypatch.setattr(evaluate, "load", fake_load)
    out = tmp_path / "res" / "metrics.json"
    metrics = evaluate.main(["--checkpoint", "ckpt.pt", "--world", str(world), "--out", str(out)])
    assert seen["args"].checkpoint == "ckpt.pt" and seen["args"].split == "val"
    assert json.loads(out.read_text()) == pytest.approx(metrics, nan_ok=True)
    table = capsys.readouterr().out
    assert "AO@10" in table and "diff_acc" in table
    with pytest.raises(SystemExit):
        evaluate.main(["--world", str(world)])  # neither --checkpoint nor --model


def test_evaluate_model_nonfinite_model_gives_nan_metrics(tmp_path, tiny_clip):
    model, tokenizer, preprocess = tiny_clip

    class Diverged(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def encode_image(self, x):
            return model.encode_image(x) * math.nan

        def encode_text(self, t):
            return model.encode_text(t)

    m = evaluate.evaluate_model(Diverged(), tokenizer, preprocess, make_world(tmp_path / "world"))
    assert set(m) == EXPECTED_KEYS and m["n_images"] == 12
    assert all(math.isnan(v) for k, v in m.items() if not k.startswith("n_"))


def test_evaluate_cli_with_model_and_checkpoint(tmp_path):
    """The real loaders: --model clipkern-tiny, then a checkpoint of that model (same metrics)."""
    from training import evaluate
    from training.models import create

    world = make_world(tmp_path / "world")
    torch.manual_seed(3)
    model, *_ = create("clipkern-tiny")
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"step": 0, "epoch": 0, "model": model.state_dict(), "model_name": "clipkern-tiny",
                "model_cfg": None}, ckpt)
    from_ckpt = evaluate.main(["--checkpoint", str(ckpt), "--world", str(world)])
    assert set(from_ckpt) == EXPECTED_KEYS
    from training.evaluate import evaluate_model
    _, _, pre, tok = create("clipkern-tiny")
    direct = evaluate_model(model, tok, pre, world)
    assert from_ckpt == pytest.approx(direct, nan_ok=True)
    assert set(evaluate.main(["--model", "clipkern-tiny", "--world", str(world)])) == EXPECTED_KEYS


def test_evaluate_model_on_generated_world(tmp_path, tiny_clip):
    """The world generator's files (training.world, when present) are read as the contract says."""
    import subprocess
    import sys

    pytest.importorskip("training.world")
    out = tmp_path / "gen"
    subprocess.run([sys.executable, "-m", "training.world", "--out", str(out), "--seed", "0", "--n-train", "8",
                    "--n-val", "24", "--image-size", "32"], check=True, timeout=120)
    model, tokenizer, preprocess = tiny_clip
    m = evaluate.evaluate_model(model, tokenizer, preprocess, out)
    assert set(m) == EXPECTED_KEYS and m["n_skipped_images"] == 0 and m["n_images"] >= 24
