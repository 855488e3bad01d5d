"""The synthetic attribute world: small RGB images of objects with known attributes, and the caption,
difference and paraphrase records that every recipe trains on, written as real files.

    python -m training.world --out DIR --seed S [--n-train 2000] [--n-val 500] [--image-size 32]

Each image shows `count` (1–3) copies of one object on a black background. An object has
- shape  ∈ SHAPES and colour ∈ COLOURS (the zero-shot class is "colour shape");
- size ∈ [0.45, 1]: the object's area is π·(size·R)², R fixed by the image size, the same for every
  shape (so "larger" means more area, whatever the shapes);
- brightness ∈ [0.35, 1]: the fill is brightness × the colour's RGB;
- position: the image is a 2×2 grid of cells; each object sits in its own cell (so objects never
  overlap and the count is visible) with a random jitter that keeps it inside the cell.
Objects are rasterised analytically at 4×4 samples per pixel and averaged (anti-aliased), so size and
position are continuous in the pixels.

Splits: some colour×shape combinations (meta.json "held_out_combinations") appear only in val; train
is balanced over the other classes, val over all classes with the held-out ones guaranteed.

Difference records pair two images of a split that differ by a clear margin (MARGINS) in one ordered
attribute (size, brightness, count), in random order, phrased from either image ("the first object is
larger than the second" / "the second object is smaller than the first"). Every template puts the
subject's ordinal before "than" and the other's after it. Besides the loaders' keys, each record keeps
"attribute" and "direction" (+1: image_a has more of it than image_b, −1: less), which the loaders
ignore.

Paraphrases: para1 is a concise rewrite of the caption (the noun phrase); para2 rewrites it with other
words (synonyms for count, size, brightness, colour and shape), sharing no content word with either.

Determinism: all randomness comes from numpy Generators seeded by (seed, split, stream); PNGs carry
no timestamps, so the same arguments give byte-identical files. meta.json is written last: its
presence marks a complete world.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["SHAPES", "COLOURS", "MARGINS", "class_names", "generate_world", "main"]

VERSION = 2  # 2: a medium size has no word in the texts
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 245),
           "yellow": (240, 220, 40), "purple": (165, 60, 225), "orange": (250, 140, 25)}
SIZE_RANGE = (0.45, 1.0)
BRIGHTNESS_RANGE = (0.35, 1.0)
COUNT_RANGE = (1, 3)
MARGINS = {"size": 0.25, "brightness": 0.25, "count": 1}
PROMPT_TEMPLATE = "a photo of a {}."
SUPERSAMPLE = 4
GRID = 2  # GRID×GRID cells, one object per cell

# Bounding radius of each shape in units of its area-equivalent radius r (area = π r²).
_BOUND = {"circle": 1.0,
          "square": math.sqrt(math.pi / 2),                      # half-diagonal of the side √π·r
          "triangle": math.sqrt(4 * math.pi / (3 * math.sqrt(3))),  # circumradius of an equilateral one
          "diamond": math.sqrt(math.pi / 2),
          "cross": math.sqrt(9 * math.pi / 20) * math.sqrt(10) / 3}  # arm half-length L, width 2L/3
_MAX_BOUND = max(_BOUND.values())

# ------------------------------------------------------------------ words ------------------------------------
_COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds",
           "cross": "crosses"}
_CAPTION_TEMPLATES = ("a photo of {}.", "an image of {}.", "{} on a black background.")

# para2 vocabulary: none of these words occurs in a caption or para1.
_SYN_COUNT = {1: ("a single", "a lone", "a solitary"), 2: ("a pair of", "a couple of", "a duo of"),
              3: ("a trio of", "a triad of")}
_SYN_SIZE = {"small": ("little", "tiny", "petite"),
             "large": ("big", "huge", "sizable")}  # medium: no word
_SYN_BRIGHTNESS = {"dark": ("dim", "shadowy", "murky"), "bright": ("vivid", "glowing", "luminous")}
_SYN_COLOUR = {"red": ("crimson", "scarlet"), "green": ("emerald", "lime"), "blue": ("azure", "cobalt"),
               "yellow": ("golden", "lemon"), "purple": ("violet", "lilac"), "orange": ("amber", "tangerine")}
_SYN_SHAPE = {"circle": (("disc", "discs"), ("round shape", "round shapes"), ("dot", "dots")),
              "square": (("box", "boxes"), ("block", "blocks"), ("tile", "tiles")),
              "triangle": (("wedge", "wedges"), ("three-sided shape", "three-sided shapes"), ("delta", "deltas")),
              "diamond": (("rhombus", "rhombi"), ("lozenge", "lozenges")),
              "cross": (("plus sign", "plus signs"), ("plus mark", "plus marks"))}

# Difference templates: {s} = subject ordinal, {o} = the other, {adj} = comparative word.
DIFF_WORDS = {"size": (("larger", "bigger"), ("smaller", "tinier")),
              "brightness": (("brighter", "lighter"), ("darker", "dimmer")),
              "count": (("more",), ("fewer",))}
DIFF_TEMPLATES = {
    "size": ("the {s} object is {adj} than the {o}",
             "the {s} image shows {adj} objects than the {o}",
             "the objects in the {s} image are {adj} than those in the {o}"),
    "brightness": ("the {s} image is {adj} than the {o}",
                   "the {s} object is {adj} than the {o}",
                   "the objects in the {s} image look {adj} than those in the {o}"),
    "count": ("the {s} image has {adj} objects than the {o}",
              "the {s} image contains {adj} shapes than the {o}",
              "there are {adj} objects in the {s} image than in the {o}")}
_ORDINALS = ("first", "second")


def class_names() -> list[str]:
    """Zero-shot classes, index = colour_index·len(SHAPES) + shape_index."""
    return [f"{c} {s}" for c in COLOURS for s in SHAPES]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def size_word(size: float) -> str | None:  # medium: no word, so "a photo of a red circle." is a caption form
    return "small" if size < 0.65 else ("large" if size >= 0.82 else None)


def brightness_word(brightness: float) -> str | None:
    return "dark" if brightness < 0.55 else ("bright" if brightness >= 0.8 else None)


# ------------------------------------------------------------------ attributes -------------------------------

def _rng(seed: int, split: str, stream: str) -> np.random.Generator:
    return np.random.default_rng([seed, {"train": 0, "val": 1, "meta": 2}[split],
                                  {"attributes": 0, "text": 1, "diffs": 2, "held_out": 3}[stream]])


def choose_held_out(seed: int, n_held_out: int) -> list[tuple[str, str]]:
    """n_held_out colour×shape combinations with distinct colours and distinct shapes, so that every
    colour and every shape still appears in training."""
    colours, shapes = list(COLOURS), list(SHAPES)
    if not 0 <= n_held_out <= min(len(colours), len(shapes)):
        raise ValueError(f"n_held_out must lie in [0, {min(len(colours), len(shapes))}], got {n_held_out}")
    rng = _rng(seed, "meta", "held_out")
    cs = rng.permutation(len(colours))[:n_held_out]
    ss = rng.permutation(len(shapes))[:n_held_out]
    return sorted((colours[c], shapes[s]) for c, s in zip(cs, ss))


def sample_attributes(rng: np.random.Generator, n: int, classes: np.ndarray, first: np.ndarray) -> dict:
    """Attributes of n images. Classes cycle through `first` (guaranteed when n ≥ len(first)), then
    `classes`, in a random order."""
    order = np.concatenate([rng.permutation(first), rng.permutation(classes)]).astype(np.int64)
    cls = rng.permutation(np.resize(order, n))
    count = rng.integers(COUNT_RANGE[0], COUNT_RANGE[1] + 1, size=n)
    return {"class": cls,
            "colour": cls // len(SHAPES), "shape": cls % len(SHAPES),
            "size": np.round(rng.uniform(*SIZE_RANGE, size=n), 4),
            "brightness": np.round(rng.uniform(*BRIGHTNESS_RANGE, size=n), 4),
            "count": count,
            "cells": np.argsort(rng.random((n, GRID * GRID)), axis=1),  # first `count` are used
            "jitter": rng.uniform(-1.0, 1.0, size=(n, GRID * GRID, 2))}


# ------------------------------------------------------------------ drawing ----------------------------------

def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Whether the points (dx, dy), offsets from the centre, lie inside an object of area π r²."""
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        h = math.sqrt(math.pi) * r / 2
        return np.maximum(ax, ay) <= h
    if shape == "diamond":
        return ax + ay <= _BOUND["diamond"] * r
    if shape == "triangle":  # equilateral, apex up (y grows downwards); inside all three edges
        R = _BOUND["triangle"] * r
        inside = np.ones(np.broadcast_shapes(dx.shape, dy.shape), dtype=bool)
        for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6):  # vertex directions
            inside &= -(dx * math.cos(a) + dy * math.sin(a)) <= R / 2  # the edge opposite that vertex
        return inside
    if shape == "cross":
        L = math.sqrt(9 * math.pi / 20) * r
        w = L / 3
        return ((ax <= L) & (ay <= w)) | ((ax <= w) & (ay <= L))
    raise ValueError(f"unknown shape {shape!r}")


def render(attrs: dict, i: int, image_size: int) -> Image.Image:
    """Image i of an attribute table, image_size × image_size RGB. Coverage is sampled at SUPERSAMPLE²
    points per pixel (pixel centres of the fine grid) and averaged, so edges are anti-aliased and the
    pixel mass is the object's area to within the sampling error."""
    big = image_size * SUPERSAMPLE
    cell = big / GRID
    shape = SHAPES[attrs["shape"][i]]
    fill = np.array(COLOURS[list(COLOURS)[attrs["colour"][i]]], dtype=np.float64) * attrs["brightness"][i]
    r = attrs["size"][i] * 0.92 * (cell / 2) / _MAX_BOUND
    slack = max(0.92 * cell / 2 - _BOUND[shape] * r, 0.0)
    grid = np.arange(big, dtype=np.float64) + 0.5
    mask = np.zeros((big, big), dtype=bool)
    for k in range(attrs["count"][i]):
        c = attrs["cells"][i, k]
        cx = (c % GRID + 0.5) * cell + slack * attrs["jitter"][i, k, 0]
        cy = (c // GRID + 0.5) * cell + slack * attrs["jitter"][i, k, 1]
        b = _BOUND[shape] * r + 1.0  # only the object's bounding window
        x0, x1 = max(int(cx - b), 0), min(int(cx + b) + 1, big)
        y0, y1 = max(int(cy - b), 0), min(int(cy + b) + 1, big)
        mask[y0:y1, x0:x1] |= shape_mask(shape, grid[None, x0:x1] - cx, grid[y0:y1, None] - cy, r)
    coverage = mask.reshape(image_size, SUPERSAMPLE, image_size, SUPERSAMPLE).mean(axis=(1, 3))
    pixels = np.rint(coverage[:, :, None] * fill[None, None, :]).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


# ------------------------------------------------------------------ texts ------------------------------------

def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def caption_texts(rng: np.random.Generator, colour: str, shape: str, size: float, brightness: float,
                  count: int) -> tuple[str, str, str]:
    """(caption, para1, para2) of one image."""
    sw, bw = size_word(size), brightness_word(brightness)
    noun = shape if count == 1 else _PLURAL[shape]
    adjs = " ".join(w for w in (sw, bw, colour) if w)
    first = _article(adjs) if count == 1 else _COUNT_WORDS[count]
    caption = _pick(rng, _CAPTION_TEMPLATES).format(f"{first} {adjs} {noun}")
    para1 = f"{_COUNT_WORDS[count]} {adjs} {noun}"
    syn_shape = _pick(rng, _SYN_SHAPE[shape])[0 if count == 1 else 1]
    words = [_pick(rng, _SYN_COUNT[count])] + ([_pick(rng, _SYN_SIZE[sw])] if sw else [])
    if bw:
        words.append(_pick(rng, _SYN_BRIGHTNESS[bw]))
    words += [_pick(rng, _SYN_COLOUR[colour]), syn_shape]
    return caption, para1, " ".join(words)


def difference_text(rng: np.random.Generator, attribute: str, direction: int) -> str:
    """A text saying that image_a has more (direction +1) or less (−1) `attribute` than image_b,
    phrased from either image."""
    subject = int(rng.integers(2))            # 0: image_a is the subject, 1: image_b
    more = (direction > 0) == (subject == 0)  # does the subject have more of it?
    adj = _pick(rng, DIFF_WORDS[attribute][0 if more else 1])
    return _pick(rng, DIFF_TEMPLATES[attribute]).format(s=_ORDINALS[subject], o=_ORDINALS[1 - subject], adj=adj)


def difference_pairs(rng: np.random.Generator, attrs: dict, n_records: int) -> list[tuple[int, int, str, int]]:
    """n_records (a, b, attribute, direction) with |attribute(a) − attribute(b)| ≥ its margin; the
    attribute is drawn uniformly, the order of a and b at random. Fewer when no such pair exists."""
    n = len(attrs["class"])
    out = []
    if n < 2:
        return out
    names = tuple(MARGINS)
    for _ in range(n_records):
        attribute = names[int(rng.integers(len(names)))]
        values = attrs[attribute].astype(np.float64)
        for _attempt in range(32):
            i = int(rng.integers(n))
            ok = np.flatnonzero(np.abs(values - values[i]) >= MARGINS[attribute] - 1e-9)
            if ok.size:
                j = int(ok[int(rng.integers(ok.size))])
                break
        else:
            continue
        a, b = (i, j) if rng.random() < 0.5 else (j, i)
        out.append((a, b, attribute, 1 if values[a] > values[b] else -1))
    return out


def comparison_records() -> list[dict]:
    """For every ordered pair of classes, a templated text saying how class a differs from class b."""
    out = []
    for a in class_names():
        ca, sa = a.split(" ")
        for b in class_names():
            if a == b:
                continue
            cb, sb = b.split(" ")
            if sa == sb:
                text = f"the first {sa} is {ca} and the second is {cb}"
            elif ca == cb:
                text = f"the first object is {_article(sa)} {sa} and the second is {_article(sb)} {sb}"
            else:
                text = f"the first object is {_article(ca)} {a} and the second is {_article(cb)} {b}"
            out.append({"a": a, "b": b, "text": text})
    return out


# ------------------------------------------------------------------ writing ----------------------------------

_OUR_FILES = ("train.csv", "val.csv", "train_diffs.jsonl", "val_diffs.jsonl", "train_paraphrases.jsonl",
              "val_paraphrases.jsonl", "train_attributes.jsonl", "val_attributes.jsonl")


def _prepare(out: Path) -> None:
    """Creates out, or clears a previous world in it; refuses a non-empty folder that is not a world."""
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"out {str(out)!r} exists and is not a folder")
        if any(out.iterdir()) and not (out / "meta.json").is_file():
            raise ValueError(f"out {str(out)!r} is a non-empty folder without a world's meta.json; "
                             f"give an empty or new folder")
        (out / "meta.json").unlink(missing_ok=True)
        for name in _OUR_FILES:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "images", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def _write_lines(path: Path, records) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")


def _write_split(out: Path, split: str, seed: int, n: int, image_size: int, diffs_per_image: float,
                 classes: np.ndarray, first: np.ndarray) -> None:
    attrs = sample_attributes(_rng(seed, split, "attributes"), n, classes, first)
    colours = list(COLOURS)
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    rel = [f"images/{split}/{i:06d}.png" for i in range(n)]
    for i in range(n):
        render(attrs, i, image_size).save(out / rel[i], format="PNG")

    text_rng = _rng(seed, split, "text")
    csv_lines, paras, attr_rows = ["filepath\ttitle"], [], []
    for i in range(n):
        colour, shape = colours[attrs["colour"][i]], SHAPES[attrs["shape"][i]]
        size, brightness, count = float(attrs["size"][i]), float(attrs["brightness"][i]), int(attrs["count"][i])
        caption, para1, para2 = caption_texts(text_rng, colour, shape, size, brightness, count)
        csv_lines.append(f"{rel[i]}\t{caption}")
        paras.append({"image": rel[i], "caption": caption, "para1": para1, "para2": para2})
        attr_rows.append({"image": rel[i], "shape": shape, "colour": colour, "size": size,
                          "brightness": brightness, "count": count, "class": int(attrs["class"][i])})
    (out / f"{split}.csv").write_text("\n".join(csv_lines) + "\n", encoding="utf-8", newline="\n")
    _write_lines(out / f"{split}_paraphrases.jsonl", paras)
    _write_lines(out / f"{split}_attributes.jsonl", attr_rows)

    diff_rng = _rng(seed, split, "diffs")
    pairs = difference_pairs(diff_rng, attrs, int(round(diffs_per_image * n)))
    _write_lines(out / f"{split}_diffs.jsonl",
                 ({"image_a": rel[a], "image_b": rel[b], "text": difference_text(diff_rng, attribute, direction),
                   "attribute": attribute, "direction": direction} for a, b, attribute, direction in pairs))


def _check_int(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < lo:
        raise ValueError(f"{name} must be ≥ {lo}, got {value}")
    return int(value)


def generate_world(out, seed: int = 0, n_train: int = 2000, n_val: int = 500, image_size: int = 32,
                   diffs_per_image: float = 1.0, n_held_out: int = 5) -> dict:
    """Writes a world folder (layout in the module docstring) and returns its meta dict."""
    seed, n_train, n_val = _check_int("seed", seed, 0), _check_int("n_train", n_train, 1), _check_int("n_val", n_val, 1)
    image_size, n_held_out = _check_int("image_size", image_size, 8), _check_int("n_held_out", n_held_out, 0)
    number = isinstance(diffs_per_image, (int, float)) and not isinstance(diffs_per_image, bool)
    if not (number and 0 <= diffs_per_image <= 100):
        raise ValueError(f"diffs_per_image must be a number in [0, 100], got {diffs_per_image!r}")
    held_out, names = choose_held_out(seed, n_held_out), class_names()
    held_idx = np.array(sorted(names.index(f"{c} {s}") for c, s in held_out), dtype=np.int64)
    train_idx = np.array([k for k in range(len(names)) if k not in set(held_idx.tolist())], dtype=np.int64)

    out = Path(out)
    _prepare(out)
    _write_split(out, "train", seed, n_train, image_size, diffs_per_image, train_idx, np.array([], np.int64))
    _write_split(out, "val", seed, n_val, image_size, diffs_per_image, train_idx, held_idx)

    meta = {"seed": seed, "classes": names, "class_attribute": "colour+shape", "prompt_template": PROMPT_TEMPLATE,
            "held_out_combinations": [list(c) for c in held_out], "comparisons": comparison_records(),
            "version": VERSION, "image_size": image_size, "n_train": n_train, "n_val": n_val,
            "shapes": list(SHAPES), "colours": {k: list(v) for k, v in COLOURS.items()},
            "ranges": {"size": list(SIZE_RANGE), "brightness": list(BRIGHTNESS_RANGE), "count": list(COUNT_RANGE)},
            "margins": dict(MARGINS)}
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8", newline="\n")
    os.replace(tmp, out / "meta.json")
    return meta


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.world", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the world folder to write (new, empty, or a previous world)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=2000, help="training images")
    p.add_argument("--n-val", type=int, default=500, help="validation (held-out split) images")
    p.add_argument("--image-size", type=int, default=32, help="image side in pixels")
    p.add_argument("--diffs-per-image", type=float, default=1.0, help="difference records per image of a split")
    p.add_argument("--held-out", type=int, default=5, help="colour×shape combinations that appear only in val")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        meta = generate_world(args.out, seed=args.seed, n_train=args.n_train, n_val=args.n_val,
                              image_size=args.image_size, diffs_per_image=args.diffs_per_image,
                              n_held_out=args.held_out)
    except (TypeError, ValueError) as e:
        p.error(str(e))
    held = ", ".join(" ".join(c) for c in meta["held_out_combinations"]) or "none"
    print(f"world written to {args.out} in {time.perf_counter() - t0:.1f} s: {args.n_train} train + {args.n_val} "
          f"val images ({args.image_size}px), {len(meta['classes'])} classes; held out: {held}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
