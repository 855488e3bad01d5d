"""The synthetic attribute world (training/world.py): determinism, and that every file agrees with the
attributes it claims (images, captions, difference texts, paraphrases, held-out split)."""
import json
import math
import re
from collections import deque
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import world as W

N_TRAIN, N_VAL, SIZE = 240, 90, 32


def _generate(out, seed=0, **kw):
    kw = {"n_train": N_TRAIN, "n_val": N_VAL, "image_size": SIZE, **kw}
    return W.generate_world(out, seed=seed, **kw)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    _generate(out)
    return out


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _attributes(root: Path, split: str) -> dict:
    return {r["image"]: r for r in _jsonl(root / f"{split}_attributes.jsonl")}


# ------------------------------------------------------------------ determinism ------------------------------

def test_same_seed_gives_identical_bytes(world, tmp_path):
    again = tmp_path / "again"
    _generate(again)
    a, b = _files(world), _files(again)
    assert sorted(a) == sorted(b)
    assert len([k for k in a if k.endswith(".png")]) == N_TRAIN + N_VAL
    different = [k for k in a if a[k] != b[k]]
    assert different == []


def test_regenerating_into_a_previous_world_gives_identical_bytes(world, tmp_path):
    out = tmp_path / "w"
    _generate(out, seed=5, n_train=N_TRAIN + 50)  # a different, bigger world first
    _generate(out)
    assert _files(out) == _files(world)


def test_different_seed_differs(world, tmp_path):
    other = tmp_path / "other"
    _generate(other, seed=1)
    a, b = _files(world), _files(other)
    assert a["train.csv"] != b["train.csv"]
    assert a["train_diffs.jsonl"] != b["train_diffs.jsonl"]
    pngs = [k for k in a if k.endswith(".png")]
    assert sum(a[k] != b[k] for k in pngs) > 0.9 * len(pngs)


def test_cli_writes_the_world(tmp_path, capsys):
    assert W.main(["--out", str(tmp_path / "cli"), "--seed", "0", "--n-train", "20", "--n-val", "30",
                   "--image-size", "64"]) == 0
    meta = json.loads((tmp_path / "cli" / "meta.json").read_text())
    assert meta["seed"] == 0 and meta["version"] == W.VERSION and meta["image_size"] == 64
    with Image.open(tmp_path / "cli" / "images" / "val" / "000029.png") as im:
        assert im.size == (64, 64) and im.mode == "RGB"
    assert "world written" in capsys.readouterr().out


@pytest.mark.parametrize("kw, name", [({"n_train": 0}, "n_train"), ({"n_val": -1}, "n_val"),
                                      ({"image_size": 4}, "image_size"), ({"n_held_out": 99}, "n_held_out"),
                                      ({"diffs_per_image": -1.0}, "diffs_per_image")])
def test_bad_arguments_name_the_argument(tmp_path, kw, name):
    with pytest.raises(ValueError, match=name):
        _generate(tmp_path / "bad", **kw)


def test_refuses_a_folder_that_is_not_a_world(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="meta.json"):
        _generate(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_cli_reports_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        W.main(["--out", str(tmp_path / "x"), "--n-train", "0"])


# ------------------------------------------------------------------ layout and meta --------------------------

def test_layout_and_meta(world):
    meta = json.loads((world / "meta.json").read_text())
    assert meta["classes"] == [f"{c} {s}" for c in W.COLOURS for s in W.SHAPES]
    assert meta["class_attribute"] == "colour+shape" and meta["prompt_template"] == "a photo of a {}."
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        lines = (world / f"{split}.csv").read_text().splitlines()
        assert lines[0] == "filepath\ttitle" and len(lines) == n + 1
        paths = [line.split("\t")[0] for line in lines[1:]]
        assert paths == [f"images/{split}/{i:06d}.png" for i in range(n)]
        attrs = _attributes(world, split)
        assert list(attrs) == paths
        for r in attrs.values():
            assert meta["classes"][r["class"]] == f"{r['colour']} {r['shape']}"
            assert W.SIZE_RANGE[0] <= r["size"] <= W.SIZE_RANGE[1]
            assert W.BRIGHTNESS_RANGE[0] <= r["brightness"] <= W.BRIGHTNESS_RANGE[1]
            assert r["count"] in (1, 2, 3)
    names = set(meta["classes"])
    comps = meta["comparisons"]
    assert len(comps) == len(names) * (len(names) - 1)
    assert all(c["a"] in names and c["b"] in names and c["a"] != c["b"] and c["text"] for c in comps)


def test_held_out_combinations_only_in_val(world):
    meta = json.loads((world / "meta.json").read_text())
    held = {tuple(c) for c in meta["held_out_combinations"]}
    assert len(held) == 5
    train = _attributes(world, "train").values()
    val = _attributes(world, "val").values()
    train_combos = {(r["colour"], r["shape"]) for r in train}
    val_combos = {(r["colour"], r["shape"]) for r in val}
    assert not held & train_combos
    assert held <= val_combos
    # every colour and every shape is still seen in training, in all the other combinations
    assert {c for c, _ in train_combos} == set(W.COLOURS) and {s for _, s in train_combos} == set(W.SHAPES)
    assert len(train_combos) == len(meta["classes"]) - len(held)


# ------------------------------------------------------------------ images agree with attributes ------------

def _components(mask: np.ndarray) -> int:
    seen = np.zeros_like(mask, dtype=bool)
    n = 0
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        n += 1
        queue = deque([(y, x)])
        seen[y, x] = True
        while queue:
            cy, cx = queue.popleft()
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
    return n


@pytest.mark.parametrize("split", ["train", "val"])
def test_images_show_the_attributes(world, split):
    """Count = connected blobs; brightness·colour = the blobs' fill; size: the box-filtered pixel mass
    divided by the fill colour is the covered area, count·π·r²."""
    for rel, r in _attributes(world, split).items():
        with Image.open(world / rel) as im:
            img = np.asarray(im.convert("RGB"), dtype=np.float64)
        fill = np.rint(np.array(W.COLOURS[r["colour"]]) * r["brightness"])
        c = int(np.argmax(fill))
        assert _components(img[:, :, c] > 0.5 * fill[c]) == r["count"], rel
        assert abs(img[:, :, c].max() - fill[c]) <= 1.0, rel  # the interior is the exact fill
        area = img[:, :, c].sum() / fill[c]
        radius = r["size"] * 0.92 * (SIZE / (2 * W.GRID)) / W._MAX_BOUND
        expected = r["count"] * math.pi * radius ** 2
        assert abs(area - expected) <= 0.12 * expected + 0.5, (rel, area, expected)


# ------------------------------------------------------------------ captions and paraphrases ----------------

_STOP = {"a", "an", "the", "of", "on", "in", "with", "and"}


def _content(text: str) -> set:
    return {w for w in re.findall(r"[a-z]+(?:-[a-z]+)*", text.lower()) if w not in _STOP}


@pytest.mark.parametrize("split", ["train", "val"])
def test_captions_and_paraphrases_agree_with_attributes(world, split):
    attrs = _attributes(world, split)
    paras = _jsonl(world / f"{split}_paraphrases.jsonl")
    csv_rows = dict(line.split("\t") for line in (world / f"{split}.csv").read_text().splitlines()[1:])
    assert [p["image"] for p in paras] == list(attrs)
    for p in paras:
        r = attrs[p["image"]]
        assert csv_rows[p["image"]] == p["caption"]
        words = _content(p["caption"])
        noun = r["shape"] if r["count"] == 1 else W._PLURAL[r["shape"]]
        assert {r["colour"], noun} <= words, p
        sw = W.size_word(r["size"])
        assert (sw in words) if sw else not words & {"small", "large", "medium"}, p
        bw = W.brightness_word(r["brightness"])
        assert (bw in words) if bw else not words & {"dark", "bright"}, p
        if r["count"] > 1:
            assert W._COUNT_WORDS[r["count"]] in words
        assert {r["colour"], noun, W._COUNT_WORDS[r["count"]]} <= _content(p["para1"])
        assert len(p["para1"].split()) < len(p["caption"].split())


@pytest.mark.parametrize("split", ["train", "val"])
def test_para2_is_lexically_different(world, split):
    paras = _jsonl(world / f"{split}_paraphrases.jsonl")
    for p in paras:
        shared = _content(p["para2"]) & (_content(p["caption"]) | _content(p["para1"]))
        assert not shared, p
        assert 2 <= len(p["para2"].split()) <= 15
    assert len({p["para2"] for p in paras}) > 0.5 * len(paras)  # varied, not one phrase per class


# ------------------------------------------------------------------ difference texts ------------------------

_WORDS = {"larger": ("size", 1), "bigger": ("size", 1), "smaller": ("size", -1), "tinier": ("size", -1),
          "brighter": ("brightness", 1), "lighter": ("brightness", 1), "darker": ("brightness", -1),
          "dimmer": ("brightness", -1), "more": ("count", 1), "fewer": ("count", -1)}


def _parse(text: str) -> tuple[str, int]:
    """(attribute, sign of attribute(image_a) − attribute(image_b)) read from the text alone."""
    left, right = text.split(" than ")
    lw, rw = left.split(), right.split()
    subject = [w for w in lw if w in ("first", "second")]
    other = [w for w in rw if w in ("first", "second")]
    assert len(subject) == 1 and len(other) == 1 and subject != other, text
    comparatives = [w for w in lw if w in _WORDS]
    assert len(comparatives) == 1, text
    attribute, more = _WORDS[comparatives[0]]
    return attribute, more if subject[0] == "first" else -more


@pytest.mark.parametrize("split", ["train", "val"])
def test_difference_texts_agree_with_attributes(world, split):
    attrs = _attributes(world, split)
    diffs = _jsonl(world / f"{split}_diffs.jsonl")
    n = N_TRAIN if split == "train" else N_VAL
    assert len(diffs) == n
    for d in diffs:
        a, b = attrs[d["image_a"]], attrs[d["image_b"]]
        attribute, sign = _parse(d["text"])
        assert (attribute, sign) == (d["attribute"], d["direction"]), d
        gap = a[attribute] - b[attribute]
        assert sign * gap >= W.MARGINS[attribute] - 1e-9, (d, a[attribute], b[attribute])
    # both orders, both phrasings, every attribute, several templates each
    assert {(d["attribute"], d["direction"]) for d in diffs} == {(k, s) for k in W.MARGINS for s in (1, -1)}
    assert {re.search(r"\b(first|second)\b", d["text"]).group(1) for d in diffs} == {"first", "second"}
    for attribute in W.MARGINS:
        templates = {re.sub(r"\b(first|second)\b", "#", re.sub("|".join(_WORDS), "@", d["text"]))
                     for d in diffs if d["attribute"] == attribute}
        assert len(templates) >= 3, (attribute, templates)


def test_difference_text_direction_is_consistent():
    """difference_text alone: for every attribute and direction, the parsed sign equals the direction."""
    rng = np.random.default_rng(0)
    for attribute in W.MARGINS:
        for direction in (1, -1):
            for _ in range(20):
                assert _parse(W.difference_text(rng, attribute, direction)) == (attribute, direction)
