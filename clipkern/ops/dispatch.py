"""The one dispatch table: which function computes each loss family on each backend.

Every entry is "module:function" under clipkern.ops; each family's package binds its entries when it
is imported (`bind`, at the end of its __init__.py), so a call only reads a dict (torch.compile traces
it). The implementations import triton or load the csrc extension only when they run. All
implementations of a family take the same arguments, without a backend. A (family, backend) pair that is absent has no implementation:
- named explicitly (`backend="cuda"` in a call), it raises BackendUnavailable saying which backends do
  implement the family; a pair in CPU_ONLY counts as absent on CUDA tensors;
- reached through the `CLIPKERN_BACKEND` preference, the family falls back to the next backend in
  PREFERENCE_FALLBACK that it implements and can run, with one warning per family (a preference set
  to speed up CLIP must not break SigLIP).
"""
from __future__ import annotations

import importlib
import warnings

import torch

from .._backend import BackendUnavailable

TABLE: dict[str, dict[str, str]] = {
    "contrastive": {"reference": "contrastive:reference_loss", "triton": "contrastive:triton_loss",
                    "cuda": "contrastive:extension_loss"},
    "sigmoid": {"reference": "sigmoid:reference_loss", "triton": "sigmoid:triton_loss",
                "cuda": "sigmoid:extension_loss"},
    "imsep": {"reference": "imsep:reference_loss", "triton": "imsep:triton_loss"},
    "pairdiff": {"reference": "pairdiff:reference_loss", "triton": "pairdiff:triton_loss",
                 "cuda": "pairdiff:extension_loss"},
    "ranking": {"reference": "ranking:reference_loss", "triton": "ranking:triton_loss",
                "cuda": "ranking:extension_loss"},
}
# (family, backend) pairs that run on CPU tensors only: the csrc extension has a C++ CPU op for them but
# no CUDA kernel yet, so on CUDA tensors they count as absent (a preference falls back, an explicit
# request raises saying so)
CPU_ONLY = frozenset({("sigmoid", "cuda")})
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


def implements(family: str, backend: str, device_type: str | None = None) -> bool:
    """Whether `family` has a `backend` implementation (for tensors of `device_type`, when given)."""
    if backend not in TABLE[family]:
        return False
    return device_type in (None, "cpu") or (family, backend) not in CPU_ONLY


def missing(family: str, backend: str, device_type: str | None = None) -> BackendUnavailable:
    have = ", ".join(repr(b) for b in TABLE[family] if implements(family, b, device_type))
    where = f" for {device_type} tensors" if device_type and backend in TABLE[family] else ""
    return BackendUnavailable(f"backend={backend!r} has no {family} implementation{where} (this family runs on "
                              f"{have}{where}); use one of those, or backend='auto'")


def fallback(family: str, preferred: str, runnable, device_type: str | None = None) -> str:
    """The backend a CLIPKERN_BACKEND preference gives for `family` on tensors of `device_type`:
    `preferred` when the family implements it there and `runnable(preferred)`, else the next in
    PREFERENCE_FALLBACK that does (one warning per family and preference)."""
    start = PREFERENCE_FALLBACK.index(preferred) + 1 if preferred in PREFERENCE_FALLBACK else 0
    for name in (preferred, *PREFERENCE_FALLBACK[start:]):
        if implements(family, name, device_type) and runnable(name):
            if name != preferred:
                _warn_fallback_once(family, preferred, name, implements(family, preferred, device_type))
            return name
    raise missing(family, preferred, device_type)


@torch.compiler.assume_constant_result  # torch.compile runs it while tracing: the warning stays out of the graph
def _warn_fallback_once(family: str, preferred: str, chosen: str, implemented: bool) -> bool:
    if (family, preferred) not in _WARNED:
        _WARNED.add((family, preferred))
        why = "cannot run its" if implemented else "has no"
        warnings.warn(f"CLIPKERN_BACKEND={preferred!r}: the {family} loss {why} {preferred!r} implementation here; "
                      f"using {chosen!r} for it", stacklevel=5)
    return True


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
    """`family` on `backend` for these arguments (the first is a tensor: its device must be one the
    implementation covers)."""
    device_type = args[0].device.type
    if not implements(family, backend, device_type):
        raise missing(family, backend, device_type)
    return implementation(family, backend)(*args)
