"""training/data.py: record loaders (file:line errors), unreadable images skipped and counted, the
diffs batch's unique images and re-indexed pairs, and the distributed sampler's shards."""
import json
import os
import shutil

import open_clip
import pytest
import torch
from PIL import Image

from training import world as W
from training.data import (ImageLoadStats, load_csv_records, load_diff_records, load_paraphrase_records,
                           make_loader)


@pytest.fixture(scope="module")
def tokenizer():
    return open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture(scope="module")
def preprocess():
    return open_clip.image_transform(32, is_train=False)


@pytest.fixture(scope="module")
def source_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    W.generate_world(out, seed=0, n_train=24, n_val=30, image_size=32)
    return out


@pytest.fixture
def world(source_world, tmp_path):
    """A private copy that a test may damage."""
    out = tmp_path / "world"
    shutil.copytree(source_world, out)
    return out


def _pixels(path, preprocess):
    with Image.open(path) as im:
        return preprocess(im.convert("RGB"))


# ------------------------------------------------------------------ record files -----------------------------

def test_loaders_read_the_world(world):
    rows = load_csv_records(world / "train.csv")
    assert len(rows) == 24 and rows[0].image == str(world / "images/train/000000.png")
    assert rows[0].caption == (world / "train.csv").read_text().splitlines()[1].split("\t")[1]
    diffs = load_diff_records(world / "train_diffs.jsonl")
    first = json.loads((world / "train_diffs.jsonl").read_text().splitlines()[0])
    assert diffs[0].image_a == str(world / first["image_a"]) and diffs[0].text == first["text"]
    paras = load_paraphrase_records(world / "val_paraphrases.jsonl")
    assert len(paras) == 30 and all(os.path.isfile(p.image) for p in paras)


def test_csv_other_separator_and_columns(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    f = tmp_path / "x.csv"
    f.write_text("caption,path,extra\nhello,a.png,1\n")
    [rec] = load_csv_records(f, separator=",", img_key="path", caption_key="caption")
    assert rec.caption == "hello" and rec.image == str(tmp_path / "a.png")


@pytest.mark.parametrize("text, line, what", [
    ("filepath\ttitle\na.png\tok\nb.png\n", 3, "columns"),
    ("filepath\ttitle\na.png\tok\n\nc.png\tx\textra\n", 4, "columns"),
    ("path\ttitle\na.png\tok\n", 1, "filepath"),
    ("filepath\ttitle\n\tno image\n", 2, "image path"),
    ("", 1, "empty file"),
])
def test_malformed_csv_names_file_and_line(tmp_path, text, line, what):
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(ValueError, match=rf"{f}:{line}: .*{what}"):
        load_csv_records(f)


def test_bad_utf8_names_the_line(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_bytes(b"filepath\ttitle\na.png\tok\nb.png\t\xff\xfe\n")
    with pytest.raises(ValueError, match=rf"{f}:3: not valid UTF-8"):
        load_csv_records(f)


@pytest.mark.parametrize("loader, good, bad, what", [
    (load_diff_records, {"image_a": "a.png", "image_b": "b.png", "text": "t"}, "{not json", "invalid JSON"),
    (load_diff_records, {"image_a": "a.png", "image_b": "b.png", "text": "t"},
     json.dumps({"image_a": "a.png", "text": "t"}), "missing key 'image_b'"),
    (load_diff_records, {"image_a": "a.png", "image_b": "b.png", "text": "t"},
     json.dumps({"image_a": "a.png", "image_b": "b.png", "text": 3}), "'text' must be a string"),
    (load_diff_records, {"image_a": "a.png", "image_b": "b.png", "text": "t"}, "[1, 2]", "JSON object"),
    (load_paraphrase_records, {"image": "a.png", "caption": "c", "para1": "p", "para2": "q"},
     json.dumps({"image": "a.png", "caption": "c", "para1": "p"}), "missing key 'para2'"),
    (load_paraphrase_records, {"image": "a.png", "caption": "c", "para1": "p", "para2": "q"},
     json.dumps({"image": "", "caption": "c", "para1": "p", "para2": "q"}), "empty 'image'"),
])
def test_malformed_jsonl_names_file_and_line(tmp_path, loader, good, bad, what):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps(good) + "\n\n" + json.dumps(good) + "\n" + bad + "\n" + json.dumps(good) + "\n")
    with pytest.raises(ValueError, match=rf"{f}:4: .*{what}"):
        loader(f)
    f.write_text(json.dumps(good) + "\n\n" + json.dumps(good) + "\n")
    assert len(loader(f)) == 2  # blank lines are fine; extra keys are ignored


def test_missing_record_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_diff_records(tmp_path / "nope.jsonl")


def test_relative_paths_fall_back_to_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.png").write_bytes(b"")
    (tmp_path / "lists").mkdir()
    f = tmp_path / "lists" / "x.csv"
    f.write_text("filepath\ttitle\ndata/a.png\thi\n")
    monkeypatch.chdir(tmp_path)  # open_clip users write paths relative to where they launch
    assert load_csv_records(f)[0].image == str(tmp_path / "data" / "a.png")


# ------------------------------------------------------------------ unreadable images ------------------------

def _damage(world):
    """A garbage PNG, a truncated PNG and a missing file, among the train images."""
    (world / "images/train/000003.png").write_bytes(b"\x89PNG garbage, not an image" * 4)
    data = (world / "images/train/000007.png").read_bytes()
    (world / "images/train/000007.png").write_bytes(data[: len(data) // 2])
    (world / "images/train/000011.png").unlink()
    return {str(world / f"images/train/{i:06d}.png") for i in (3, 7, 11)}


@pytest.mark.parametrize("num_workers", [0, pytest.param(2, marks=pytest.mark.timeout(120))])
def test_csv_skips_and_counts_unreadable_images(world, preprocess, tokenizer, num_workers):
    bad = _damage(world)
    loader, _, stats = make_loader("csv", world / "train.csv", preprocess, tokenizer, 8, shuffle=False,
                                   num_workers=num_workers)
    records = load_csv_records(world / "train.csv")
    batches = list(loader)
    assert [b["skipped"] for b in batches] == [2, 1, 0]  # images 3 and 7, then 11
    assert stats.skipped == 3 and set(stats.paths) == bad
    for b in batches:
        assert b["image"].shape == (len(b["index"]), 3, 32, 32) and b["text"].shape == (len(b["index"]), 77)
        assert "_bad_paths" not in b
        for row, i in enumerate(b["index"].tolist()):
            assert records[i].image not in bad
            assert b["caption"][row] == records[i].caption
            assert torch.equal(b["text"][row], tokenizer([records[i].caption])[0])
            assert torch.allclose(b["image"][row], _pixels(records[i].image, preprocess))
    assert sorted(i for b in batches for i in b["index"].tolist()) == [
        i for i, r in enumerate(records) if r.image not in bad]
    stats.reset()
    assert stats.skipped == 0 and stats.paths == []
    list(loader)
    assert stats.skipped == 3  # counted again in the next epoch


def test_paraphrases_skip_and_count(world, preprocess, tokenizer):
    bad = _damage(world)
    # the train paraphrase records are the train images in order
    loader, _, stats = make_loader("paraphrases", world / "train_paraphrases.jsonl", preprocess, tokenizer, 24,
                                   shuffle=False)
    [b] = list(loader)
    records = load_paraphrase_records(world / "train_paraphrases.jsonl")
    assert b["skipped"] == 3 and stats.skipped == 3 and set(stats.paths) == bad
    assert b["image"].shape[0] == b["text"].shape[0] == b["para1"].shape[0] == b["para2"].shape[0] == 21
    for row, i in enumerate(b["index"].tolist()):
        assert torch.equal(b["para2"][row], tokenizer([records[i].para2])[0])
        assert b["caption"][row] == records[i].caption


def test_a_batch_of_only_bad_images_has_zero_rows(world, preprocess, tokenizer):
    f = world / "bad.csv"
    f.write_text("filepath\ttitle\nmissing1.png\ta\nmissing2.png\tb\n")
    loader, _, stats = make_loader("csv", f, preprocess, tokenizer, 2, shuffle=False)
    [b] = list(loader)
    assert b["skipped"] == 2 and stats.skipped == 2
    assert b["image"].shape == (0, 3, 32, 32) and b["text"].shape[0] == 0 and b["index"].numel() == 0


def test_stats_keep_only_the_first_paths():
    stats = ImageLoadStats(max_paths=2)
    stats.add(3, ["a", "b", "c"])
    stats.add(1, ["a"])
    assert stats.skipped == 4 and stats.paths == ["a", "b"]


# ------------------------------------------------------------------ diffs batches ----------------------------

def test_diffs_batch_indexes_the_right_images(world, preprocess, tokenizer):
    """Records that share images: each image appears once in the batch, and every pair row points to
    the pixels of its record's image_a and image_b, in that order."""
    imgs = [f"images/train/{i:06d}.png" for i in range(6)]
    combos = [(0, 1), (1, 0), (2, 1), (3, 4), (4, 5), (0, 5), (5, 0), (2, 3)]
    f = world / "shared.jsonl"
    f.write_text("".join(json.dumps({"image_a": imgs[a], "image_b": imgs[b], "text": f"record {k}"}) + "\n"
                         for k, (a, b) in enumerate(combos)))
    loader, _, _ = make_loader("diffs", f, preprocess, tokenizer, 8, shuffle=True, seed=3)
    records = load_diff_records(f)
    [b] = list(loader)
    assert b["skipped"] == 0 and b["pairs"].shape == (8, 2) and b["pairs"].dtype == torch.long
    assert b["image"].shape == (6, 3, 32, 32)  # unique images only
    assert sorted(b["index"].tolist()) == list(range(8)) and b["index"].tolist() != list(range(8))
    for p, i in enumerate(b["index"].tolist()):
        rec = records[i]
        assert torch.equal(b["text"][p], tokenizer([rec.text])[0])
        assert torch.allclose(b["image"][b["pairs"][p, 0]], _pixels(rec.image_a, preprocess))
        assert torch.allclose(b["image"][b["pairs"][p, 1]], _pixels(rec.image_b, preprocess))
    for u in range(6):  # no duplicate pixels in the image list
        for v in range(u):
            assert not torch.equal(b["image"][u], b["image"][v])


def test_diffs_drop_records_with_a_bad_image(world, preprocess, tokenizer):
    bad = _damage(world)
    records = load_diff_records(world / "train_diffs.jsonl")
    hit = [r.image_a in bad or r.image_b in bad for r in records]
    assert any(hit) and not all(hit)
    loader, _, stats = make_loader("diffs", world / "train_diffs.jsonl", preprocess, tokenizer, len(records),
                                   shuffle=False)
    [b] = list(loader)
    assert b["skipped"] == sum(hit) == stats.skipped
    assert set(stats.paths) <= bad and stats.paths
    kept = [i for i, h in enumerate(hit) if not h]
    assert b["index"].tolist() == kept and b["pairs"].shape == (len(kept), 2)
    used = sorted(set(b["pairs"].flatten().tolist()))
    assert used == list(range(b["image"].shape[0]))  # no image left over from a dropped record
    for p, i in enumerate(kept):
        assert torch.allclose(b["image"][b["pairs"][p, 0]], _pixels(records[i].image_a, preprocess))
        assert torch.allclose(b["image"][b["pairs"][p, 1]], _pixels(records[i].image_b, preprocess))


# ------------------------------------------------------------------ sampler ----------------------------------

def _epoch_indices(world, preprocess, tokenizer, rank, epoch, **kw):
    loader, sampler, _ = make_loader("csv", world / "val.csv", preprocess, tokenizer, 4, rank=rank, **kw)
    sampler.set_epoch(epoch)
    return [i for b in loader for i in b["index"].tolist()]


def test_distributed_sampler_shards_disjointly(source_world, preprocess, tokenizer):
    kw = {"world_size": 2, "seed": 7, "shuffle": True, "drop_last": False}
    r0 = _epoch_indices(source_world, preprocess, tokenizer, 0, 0, **kw)
    r1 = _epoch_indices(source_world, preprocess, tokenizer, 1, 0, **kw)
    assert len(r0) == len(r1) == 15
    assert not set(r0) & set(r1) and sorted(r0 + r1) == list(range(30))
    assert r0 == _epoch_indices(source_world, preprocess, tokenizer, 0, 0, **kw)  # a function of (seed, epoch)
    e1 = _epoch_indices(source_world, preprocess, tokenizer, 0, 1, **kw)
    assert e1 != r0
    assert not set(e1) & set(_epoch_indices(source_world, preprocess, tokenizer, 1, 1, **kw))
    # drop_last: equal, full batches on every rank
    loader, _, _ = make_loader("csv", source_world / "val.csv", preprocess, tokenizer, 4, world_size=2, rank=1)
    assert len(loader) == 3 and all(b["image"].shape[0] == 4 for b in loader)


def test_single_process_order_follows_seed_and_epoch(source_world, preprocess, tokenizer):
    a = _epoch_indices(source_world, preprocess, tokenizer, 0, 0, seed=1, drop_last=False)
    assert sorted(a) == list(range(30)) and a != list(range(30))
    assert a == _epoch_indices(source_world, preprocess, tokenizer, 0, 0, seed=1, drop_last=False)
    assert a != _epoch_indices(source_world, preprocess, tokenizer, 0, 0, seed=2, drop_last=False)
    assert _epoch_indices(source_world, preprocess, tokenizer, 0, 0, shuffle=False, drop_last=False) == list(range(30))


@pytest.mark.parametrize("kw, match", [
    ({"kind": "images"}, "kind"), ({"batch_size": 0}, "batch_size"), ({"rank": 2, "world_size": 2}, "rank"),
    ({"world_size": 0}, "world_size"), ({"num_workers": -1}, "num_workers"), ({"preprocess": None}, "preprocess"),
    ({"tokenizer": "x"}, "tokenizer"),
])
def test_make_loader_bad_arguments(source_world, preprocess, tokenizer, kw, match):
    args = {"kind": "csv", "path": source_world / "train.csv", "preprocess": preprocess, "tokenizer": tokenizer,
            "batch_size": 4}
    args.update(kw)
    with pytest.raises((ValueError, TypeError), match=match):
        make_loader(args.pop("kind"), args.pop("path"), args.pop("preprocess"), args.pop("tokenizer"),
                    args.pop("batch_size"), **args)


def test_make_loader_rejects_a_folder_and_an_empty_file(source_world, tmp_path, preprocess, tokenizer):
    with pytest.raises(ValueError, match="train_diffs.jsonl"):
        make_loader("diffs", source_world, preprocess, tokenizer, 4)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no diffs records"):
        make_loader("diffs", tmp_path / "empty.jsonl", preprocess, tokenizer, 4)
