"""The measured choice behind backend="auto": which fused backend runs a family's op on this GPU.

`auto` must not guess between the fused backends ("triton" and "cuda"); it follows the rules in
clipkern/backend_table.json, each taken from a committed benchmark JSON. When no rule matches
(always, until GPU measurements are committed), `auto` keeps its default: triton on CUDA tensors,
reference otherwise (see clipkern/_backend.py). On CPU tensors no rule applies.

Table format (clipkern/backend_table.json):

    {
      "version": 1,
      "rules": [
        {"family": "contrastive",          # one of FAMILIES
         "gpu": "H100",                    # case-insensitive substring of torch.cuda.get_device_name(), or "*"
         "dtype": "bfloat16",              # float32 | float16 | bfloat16 | "*"
         "min_rows": 4096, "max_rows": null,  # the op's batch rows B, inclusive bounds, null = unbounded
         "backend": "cuda",                # triton | cuda | reference
         "source": "benchmarks/results/h100/contrastive.json"}   # the measurement it came from
      ]
    }

The first matching rule whose backend is available wins; an unavailable one is skipped. Any other
key ("comment", "speedup", ...) is kept as documentation and ignored. A malformed table raises a
ValueError naming the file and the rule, so a bad commit fails the tests rather than the users.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache

TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "backend_table.json")
FAMILIES = ("contrastive", "sigmoid", "pairdiff", "ranking", "imsep")
DTYPES = ("float32", "float16", "bfloat16", "*")
CHOICES = ("triton", "cuda", "reference")
_REQUIRED = ("family", "gpu", "dtype", "min_rows", "max_rows", "backend", "source")


@dataclass(frozen=True)
class Rule:
    family: str
    gpu: str
    dtype: str
    min_rows: int | None
    max_rows: int | None
    backend: str
    source: str

    def matches(self, family: str, gpu_name: str, dtype: str, rows: int | None) -> bool:
        if self.family != family or (self.gpu != "*" and self.gpu.lower() not in gpu_name.lower()):
            return False
        if self.dtype not in ("*", dtype):
            return False
        if rows is None:
            return self.min_rows is None and self.max_rows is None
        return (self.min_rows is None or rows >= self.min_rows) and (self.max_rows is None or rows <= self.max_rows)


def _rule(path: str, i: int, raw) -> Rule:
    where = f"{path}: rule {i}"
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be an object, got {type(raw).__name__}")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise ValueError(f"{where} lacks {missing} (every rule needs {list(_REQUIRED)})")
    if raw["family"] not in FAMILIES:
        raise ValueError(f"{where}: family must be one of {FAMILIES}, got {raw['family']!r}")
    if raw["dtype"] not in DTYPES:
        raise ValueError(f"{where}: dtype must be one of {DTYPES}, got {raw['dtype']!r}")
    if raw["backend"] not in CHOICES:
        raise ValueError(f"{where}: backend must be one of {CHOICES}, got {raw['backend']!r}")
    for key in ("min_rows", "max_rows"):
        if raw[key] is not None and (not isinstance(raw[key], int) or isinstance(raw[key], bool) or raw[key] < 1):
            raise ValueError(f"{where}: {key} must be a positive integer or null, got {raw[key]!r}")
    if not isinstance(raw["gpu"], str) or not raw["gpu"]:
        raise ValueError(f"{where}: gpu must be a non-empty string (a device-name substring or '*')")
    if not isinstance(raw["source"], str) or not raw["source"]:
        raise ValueError(f"{where}: source must name the benchmark JSON the rule was measured in")
    return Rule(**{k: raw[k] for k in _REQUIRED})


@lru_cache(maxsize=4)
def load_rules(path: str = TABLE_PATH) -> tuple[Rule, ...]:
    """The table's rules, validated (cached per path)."""
    with open(path, encoding="utf-8") as f:
        table = json.load(f)
    if not isinstance(table, dict) or table.get("version") != 1 or not isinstance(table.get("rules"), list):
        raise ValueError(f"{path}: expected {{\"version\": 1, \"rules\": [...]}}")
    return tuple(_rule(path, i, r) for i, r in enumerate(table["rules"]))


def choose(family: str | None, device, dtype, rows: int | None, available=lambda backend: True,
           path: str | None = None) -> Rule | None:
    """The first rule of the table that matches (family, this GPU, dtype, rows) and whose backend is
    available (`available(name) -> bool`), or None: then `auto` keeps its default."""
    if family is None or getattr(device, "type", None) != "cuda":
        return None
    import torch

    gpu_name = torch.cuda.get_device_name(device)
    dtype_name = str(dtype).removeprefix("torch.")
    for rule in load_rules(path or TABLE_PATH):
        if rule.matches(family, gpu_name, dtype_name, rows) and available(rule.backend):
            return rule
    return None
