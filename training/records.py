"""Record files of training/: open_clip's CSV, the diffs and paraphrases JSONL, and `read_jsonl`, the
one JSONL reader (also used for the world's attributes, metrics.jsonl and evaluation). Paths inside
record files are resolved as training/data.py's docstring says; a malformed record raises ValueError
naming `file:line`. Re-exported by training/data.py."""
from __future__ import annotations

import csv
import io
import json
import logging
import os
from typing import NamedTuple

log = logging.getLogger("training.data")


class CsvRecord(NamedTuple):
    image: str
    caption: str


class DiffRecord(NamedTuple):
    image_a: str
    image_b: str
    text: str


class ParaphraseRecord(NamedTuple):
    image: str
    caption: str
    para1: str
    para2: str


def _read_text(path) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"record file {path!r} does not exist or is not a file")
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not valid UTF-8 ({e.reason})") from None


class _PathResolver:
    """Resolves the image paths of one record file: absolute as given; relative ones against the file's
    folder, or against the working directory when the file's first relative path exists only there."""

    def __init__(self, record_file):
        self.base = os.path.dirname(os.path.abspath(os.fspath(record_file)))
        self.decided = False

    def __call__(self, p: str) -> str:
        if os.path.isabs(p):
            return p
        if not self.decided:
            self.decided = True
            if not os.path.exists(os.path.join(self.base, p)) and os.path.exists(p):
                log.info("image paths of records in %s are read relative to the working directory", self.base)
                self.base = os.getcwd()
        return os.path.join(self.base, p)


def load_csv_records(path, separator: str = "\t", img_key: str = "filepath",
                     caption_key: str = "title") -> list[CsvRecord]:
    """open_clip's CSV format: a header row naming img_key and caption_key, one sample per row."""
    if not isinstance(separator, str) or len(separator) != 1:
        raise ValueError(f"csv_separator must be one character, got {separator!r}")
    path = os.fspath(path)
    reader = csv.reader(io.StringIO(_read_text(path), newline=""), delimiter=separator)
    resolve = _PathResolver(path)
    header, records = None, []
    try:
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if header is None:
                header = row
                missing = [k for k in (img_key, caption_key) if k not in header]
                if missing:
                    raise ValueError(f"{path}:{line}: the header has no column {missing[0]!r} (columns: {header}, "
                                     f"separator {separator!r}); set csv_img_key / csv_caption_key / csv_separator")
                i_img, i_cap = header.index(img_key), header.index(caption_key)
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}:{line}: expected {len(header)} columns separated by {separator!r} "
                                 f"(as in the header), got {len(row)}")
            if not row[i_img].strip():
                raise ValueError(f"{path}:{line}: empty {img_key!r} (image path)")
            records.append(CsvRecord(resolve(row[i_img]), row[i_cap]))
    except csv.Error as e:
        raise ValueError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    if header is None:
        raise ValueError(f"{path}:1: empty file, expected a header with columns {img_key!r} and {caption_key!r}")
    return records


def read_jsonl(path, keys: tuple[str, ...] = ()) -> list[dict]:
    """The one JSONL reader of training/: one JSON object per non-blank line, each with `keys` (values
    of any type; extra keys kept). A bad line raises ValueError naming `path:line`."""
    return [rec for _, rec in _jsonl_lines(os.fspath(path), keys)]


def _jsonl_lines(path: str, keys: tuple[str, ...]):   # (line number, record), checked as read_jsonl says
    for line_no, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{line_no}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{line_no}: expected a JSON object with keys {list(keys)}, "
                             f"got {type(rec).__name__}")
        for k in keys:
            if k not in rec:
                raise ValueError(f"{path}:{line_no}: missing key {k!r} (a record needs {list(keys)})")
        yield line_no, rec


def _load_jsonl(path, keys: tuple[str, ...], path_keys: tuple[str, ...]) -> list[dict]:
    """read_jsonl, string values for `keys`, image paths resolved (_PathResolver)."""
    path = os.fspath(path)
    resolve, records = _PathResolver(path), []
    for line_no, rec in _jsonl_lines(path, keys):
        for k in keys:
            if not isinstance(rec[k], str):
                raise ValueError(f"{path}:{line_no}: {k!r} must be a string, got {type(rec[k]).__name__}")
            if k in path_keys and not rec[k].strip():
                raise ValueError(f"{path}:{line_no}: empty {k!r} (image path)")
        records.append({k: (resolve(rec[k]) if k in path_keys else rec[k]) for k in keys})
    return records


def load_diff_records(path) -> list[DiffRecord]:
    """JSONL of {"image_a", "image_b", "text"}; text describes how image_a differs from image_b."""
    return [DiffRecord(**r) for r in _load_jsonl(path, DiffRecord._fields, ("image_a", "image_b"))]


def load_paraphrase_records(path) -> list[ParaphraseRecord]:
    """JSONL of {"image", "caption", "para1", "para2"}."""
    return [ParaphraseRecord(**r) for r in _load_jsonl(path, ParaphraseRecord._fields, ("image",))]
