"""`python -m clipkern.info`: versions, the GPU, and each backend's availability with the reason."""
from __future__ import annotations

import importlib.metadata as md
import os
import platform


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def report() -> str:
    import torch

    from . import __version__
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
    for key in ("TRITON_INTERPRET", "CLIPKERN_BACKEND"):
        if os.environ.get(key):
            lines.append(f"{key}={os.environ[key]}")
    lines.append(f"backends on {device.type}:")
    for name in BACKENDS[1:]:
        why = unavailable_reason(name, device)
        lines.append(f"  {name:<9} {'available' if why is None else 'unavailable: ' + why}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
