"""The one dispatch table: which function computes each loss family on each backend.

Every entry is "module:function" under clipkern.ops; each family's package binds its entries when it
is imported (`bind`, at the end of its __init__.py), so a call only reads a dict (torch.compile traces
it). The implementations import triton or load the csrc extension only when they run. All
implementations of a family take the same arguments, without a backend. A (family, backend) pair that is absent has no implementation:
- named explicitly (`backend="cuda"` in a call), it raises BackendUnavailable saying which backends do
  implement the family;
- reached through the `CLIPKERN_BACKEND` preference, the family falls back to the next backend in
  PREFERENCE_FALLBACK that it implements and can run, with one warning per family (a preference set
  to speed up CLIP must not break SigLIP).
"""
from __future__ import annotations

import importlib
import warnings

from .._backend import BackendUnavailable

TABLE: dict[str, dict[str, str]] = {
    "contrastive": {"reference": "contrastive:reference_loss", "triton": "contrastive:triton_loss",
                    "cuda": "contrastive:extension_loss"},
    "sigmoid": {"reference": "sigmoid:reference_loss", "triton": "sigmoid:triton_loss"},
    "imsep": {"reference": "imsep:reference_loss", "triton": "imsep:triton_loss"},
    "pairdiff": {"reference": "pairdiff:reference_loss", "triton": "pairdiff:triton_loss",
                 "cuda": "pairdiff:extension_loss"},
    "ranking": {"reference": "ranking:reference_loss", "triton": "ranking:triton_loss",
                "cuda": "ranking:extension_loss"},
}
PREFERENCE_FALLBACK = ("cuda", "triton", "reference")
_WARNED: set[tuple[str, str]] = set()
_BOUND: dict[tuple[str, str], object] = {}


def bind(module: str, namespace: dict) -> None:
    """Resolve the table's entries that live in clipkern.ops.<module> from its namespace."""
    for family, entries in TABLE.items():
        for backend, entry in entries.items():
            where, name = entry.split(":")
            if where == module:
                _BOUND[(family, backend)] = namespace[name]


def implements(family: str, backend: str) -> bool:
    return backend in TABLE[family]


def missing(family: str, backend: str) -> BackendUnavailable:
    have = ", ".join(repr(b) for b in TABLE[family])
    return BackendUnavailable(f"backend={backend!r} has no {family} implementation (this family runs on {have}); "
                              "use one of those, or backend='auto'")


def fallback(family: str, preferred: str, runnable) -> str:
    """The backend a CLIPKERN_BACKEND preference gives for `family`: `preferred` when the family
    implements it and `runnable(preferred)`, else the next in PREFERENCE_FALLBACK that does (one
    warning per family and preference)."""
    start = PREFERENCE_FALLBACK.index(preferred) + 1 if preferred in PREFERENCE_FALLBACK else 0
    for name in (preferred, *PREFERENCE_FALLBACK[start:]):
        if implements(family, name) and runnable(name):
            if name != preferred and (family, preferred) not in _WARNED:
                _WARNED.add((family, preferred))
                why = "has no" if not implements(family, preferred) else "cannot run its"
                warnings.warn(f"CLIPKERN_BACKEND={preferred!r}: the {family} loss {why} {preferred!r} "
                              f"implementation here; using {name!r} for it", stacklevel=4)
            return name
    raise missing(family, preferred)


def implementation(family: str, backend: str):
    """The function that computes `family` on `backend` (BackendUnavailable if there is none)."""
    if backend not in TABLE[family]:
        raise missing(family, backend)
    fn = _BOUND.get((family, backend))
    if fn is None:  # its package was not imported yet (clipkern.functional imports them all)
        importlib.import_module(f"{__package__}.{TABLE[family][backend].split(':')[0]}")
        fn = _BOUND[(family, backend)]
    return fn


def run(family: str, backend: str, *args):
    return implementation(family, backend)(*args)
