"""`python -m clipkern.info`: versions, the GPU, the C++/CUDA extension (prebuilt / JIT / unavailable
and why, CUDA kernels compiled in or not) and each backend's availability with the reason.
It never starts a JIT compile; `--build` does (then reports the result)."""
from __future__ import annotations

import importlib.metadata as md
import os
import platform


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def report(allow_jit: bool = False) -> str:
    import torch

    from . import __version__, _extension
    from ._backend import BACKENDS, unavailable_reason

    lines = [f"clipkern {__version__}", f"python {platform.python_version()} ({platform.machine()})",
             f"torch {torch.__version__} (built for CUDA {torch.version.cuda or 'none'})",
             f"triton {_version('triton')}", f"open_clip_torch {_version('open_clip_torch')}"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(f"gpu {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}, "
                         f"{p.multi_processor_count} SMs")
        device = torch.device("cuda")
    else:
        lines.append("gpu: none visible")
        device = torch.device("cpu")
    extension = _extension.describe(allow_jit=allow_jit)
    lines.append(f"cuda extension: {extension}")
    for key in ("TRITON_INTERPRET", "CLIPKERN_BACKEND", "CLIPKERN_JIT", "CLIPKERN_CACHE_DIR"):
        if os.environ.get(key):
            lines.append(f"{key}={os.environ[key]}")
    lines.append(f"backends on {device.type}:")
    for name in BACKENDS[1:]:
        if name == "cuda" and extension.startswith("not built"):
            lines.append(f"  {name:<9} compiled on first use (python -m clipkern.info --build compiles it now)")
            continue
        why = unavailable_reason(name, device)
        lines.append(f"  {name:<9} {'available' if why is None else 'unavailable: ' + why}")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(report(allow_jit="--build" in sys.argv[1:]))
