"""Backend names, availability and the `auto` choice.

Backends:
- ``reference``: plain PyTorch (clipkern/ops/*/reference.py). Always available; the float64 oracle.
- ``triton``: the fused kernels. Needs an importable triton and either CUDA tensors or
  ``TRITON_INTERPRET=1`` (the CPU interpreter, which is how CI runs them).
- ``cuda``: the csrc/ extension. Not part of this release yet.

``auto`` (or ``CLIPKERN_BACKEND``) picks per call: ``triton`` for CUDA tensors of a supported dtype,
``reference`` otherwise. There is one fused backend so far, so there is no measured table to choose
between fused backends yet; it arrives with the CUDA extension.
"""
from __future__ import annotations

import importlib.util
import os

import torch

BACKENDS = ("auto", "reference", "triton", "cuda")
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class BackendUnavailable(RuntimeError):
    """Raised when a named backend cannot run here; the message says why."""


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_TRITON_IMPORT: dict[str, str | None] = {}


def _triton_import_error() -> str | None:
    """Why triton cannot be imported (None if it can); computed once per process."""
    if "error" not in _TRITON_IMPORT:
        err = None
        try:
            if importlib.util.find_spec("triton") is None:
                err = "triton is not installed (pip install triton)"
            else:
                import triton  # noqa: F401
                import triton.language  # noqa: F401
        except Exception as exc:  # pragma: no cover - depends on the install
            err = f"triton failed to import: {type(exc).__name__}: {exc}"
        _TRITON_IMPORT["error"] = err
    return _TRITON_IMPORT["error"]


def triton_unavailable_reason(device: torch.device | None = None) -> str | None:
    """None if the triton backend can run on `device`, else a one-line reason."""
    err = _triton_import_error()
    if err:
        return err
    if device is None or device.type == "cuda":
        if device is None and not torch.cuda.is_available() and not interpreter_enabled():
            return "no CUDA GPU is visible and TRITON_INTERPRET=1 is not set"
        return None
    if device.type == "cpu":
        if interpreter_enabled():
            return None
        return "tensors are on the CPU; the triton kernels need CUDA tensors or TRITON_INTERPRET=1 (slow CPU interpreter)"
    return f"device type {device.type!r} is not supported by the triton kernels"


def cuda_unavailable_reason(device: torch.device | None = None) -> str | None:
    return "the CUDA extension (csrc/) is not part of this clipkern release yet; use backend='triton'"


def unavailable_reason(backend: str, device: torch.device | None = None) -> str | None:
    if backend == "reference":
        return None
    if backend == "triton":
        return triton_unavailable_reason(device)
    if backend == "cuda":
        return cuda_unavailable_reason(device)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def resolve(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """Turn the user's `backend` argument into a concrete backend name, or raise."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get("CLIPKERN_BACKEND", "").strip()
        if env and env != "auto":
            if env not in BACKENDS:
                raise ValueError(f"CLIPKERN_BACKEND must be one of {BACKENDS}, got {env!r}")
            backend = env
        else:
            if device.type == "cuda" and dtype in TRITON_DTYPES and triton_unavailable_reason(device) is None:
                return "triton"
            return "reference"
    why = unavailable_reason(backend, device)
    if why is not None:
        raise BackendUnavailable(f"backend={backend!r} is unavailable: {why}")
    if backend == "triton" and dtype not in TRITON_DTYPES:
        raise TypeError(
            f"backend='triton' supports float32, float16 and bfloat16 features, got {dtype}; "
            "use backend='reference' for float64"
        )
    return backend
