"""Backend names, availability and the `auto` choice.

Backends:
- ``reference``: plain PyTorch (clipkern/ops/*/reference.py). Always available; the float64 oracle.
- ``triton``: the fused kernels. Needs an importable triton and either CUDA tensors or
  ``TRITON_INTERPRET=1`` (the CPU interpreter, which is how CI runs them).
- ``cuda``: the csrc/ extension (clipkern._C, loaded by clipkern/_extension.py on first use). On
  CUDA tensors it runs its CUDA kernels (unavailable if it was built without them); on CPU tensors
  its C++ CPU implementations. Which families it covers, and on which devices: ops/dispatch.py
  (IMSep has no twin; SigLIP has a C++ CPU op only).

``auto`` picks per call. On CUDA tensors it first asks the measured table (clipkern/_selection.py,
clipkern/backend_table.json) for a rule matching the op family, the GPU, the dtype and the batch
rows; without a matching rule: ``triton`` for a supported dtype, ``reference`` otherwise. On CPU
tensors it takes the extension's C++ implementation for the families in CPU_EXTENSION_FAMILIES when
the extension is built (measured against open_clip on 2 cores at B = 8192, D = 512: a fraction of its
extra memory and less time; README "On a CPU", `python -m benchmarks.run --cpu-compare`), else
``reference`` (plain torch, chunked so that it never holds more than open_clip's loss does).
``CLIPKERN_BACKEND`` is a preference: a family that cannot honour it falls back (ops/dispatch.py).
"""
from __future__ import annotations

import importlib.util
import os

import torch

BACKENDS = ("auto", "reference", "triton", "cuda")
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# families whose C++ CPU op `auto` prefers on CPU tensors (the measured ones; see the module docstring)
CPU_EXTENSION_FAMILIES = ("contrastive", "sigmoid")
CPU_EXTENSION_DTYPES = (*TRITON_DTYPES, torch.float64)


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
    """None if the csrc extension can run on `device` (None: anywhere it has kernels for), else why not.
    The first call loads the extension (and may JIT-compile it on a GPU machine)."""
    from . import _extension

    why = _extension.unavailable_reason()
    if why is not None:
        return f"the CUDA extension (csrc/) is not available: {why}"
    if device is not None and device.type == "cuda" and not _extension.has_cuda():
        return ("the CUDA extension was built without its CUDA kernels (CPU implementations only); rebuild it "
                "with a CUDA torch and nvcc: CLIPKERN_BUILD_CUDA=1 pip install --no-build-isolation -e .")
    if device is not None and device.type not in ("cpu", "cuda"):
        return f"device type {device.type!r} is not supported by the CUDA extension (cpu and cuda only)"
    return None


def unavailable_reason(backend: str, device: torch.device | None = None) -> str | None:
    if backend == "reference":
        return None
    if backend == "triton":
        return triton_unavailable_reason(device)
    if backend == "cuda":
        return cuda_unavailable_reason(device)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _auto(device: torch.device, dtype: torch.dtype, family: str | None, rows: int | None) -> str:
    from . import _selection

    rule = _selection.choose(family, device, dtype, rows,
                             available=lambda name: unavailable_reason(name, device) is None)
    if rule is not None:
        return rule.backend
    if device.type == "cuda" and dtype in TRITON_DTYPES and triton_unavailable_reason(device) is None:
        return "triton"
    if (device.type == "cpu" and family in CPU_EXTENSION_FAMILIES and dtype in CPU_EXTENSION_DTYPES
            and cuda_unavailable_reason(device) is None):
        return "cuda"
    return "reference"


def resolve(backend: str, device: torch.device, dtype: torch.dtype, *, family: str | None = None,
            rows: int | None = None) -> str:
    """Turn the user's `backend` argument into a concrete backend name, or raise. `family` (one of
    clipkern._selection.FAMILIES) and `rows` (the op's batch rows) let `auto` use the measured table."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get("CLIPKERN_BACKEND", "").strip()
        if env and env != "auto":
            if env not in BACKENDS:
                raise ValueError(f"CLIPKERN_BACKEND must be one of {BACKENDS}, got {env!r}")
            backend = env
            if family is not None:  # a preference: a family that cannot honour it falls back, warning once
                from .ops import dispatch

                backend = dispatch.fallback(family, env, lambda name: _runnable(name, device, dtype), device.type)
        else:
            return _auto(device, dtype, family, rows)
    why = unavailable_reason(backend, device)
    if why is not None:
        raise BackendUnavailable(f"backend={backend!r} is unavailable: {why}")
    if backend == "triton" and dtype not in TRITON_DTYPES:
        raise TypeError(
            f"backend='triton' supports float32, float16 and bfloat16 features, got {dtype}; "
            "use backend='reference' for float64"
        )
    if backend == "cuda" and device.type == "cuda" and dtype not in TRITON_DTYPES:
        raise TypeError(f"backend='cuda' supports float32, float16 and bfloat16 CUDA tensors, got {dtype}; "
                        "use backend='reference' for float64")
    return backend


def _runnable(backend: str, device: torch.device, dtype: torch.dtype) -> bool:
    if unavailable_reason(backend, device) is not None:
        return False
    if backend == "reference":
        return True
    return dtype in TRITON_DTYPES or (backend == "cuda" and device.type == "cpu")


def no_cuda_twin(family: str) -> BackendUnavailable:
    """The error for backend='cuda' on a family the csrc extension does not implement."""
    return BackendUnavailable(f"backend='cuda' has no {family} kernels (the csrc extension implements the "
                              "contrastive, pairwise-difference and ListMLE ops, and SigLIP on CPU tensors); "
                              "use backend='triton' (or 'auto') for this loss")
