"""Build script: the package is pure Python plus one extension, `clipkern._C` (csrc/).

`clipkern._C` is always built from csrc/ops.cpp + csrc/cpu/*.cpp (the op schemas and their C++
CPU implementations). The CUDA kernels csrc/cuda/*.cu are added (with -DCLIPKERN_WITH_CUDA) when
  - CLIPKERN_BUILD_CUDA=1: always; an error if torch is not a CUDA build or nvcc is missing;
  - CLIPKERN_BUILD_CUDA=0: never;
  - unset: when torch is a CUDA build, nvcc is found and csrc/cuda/ has .cu files.
No GPU is needed to compile them. Environment this script fills in when unset:
  CUDA_HOME             the real toolkit folder (see `cuda_home`): the `nvcc` on PATH may be a wrapper
                        script, from which torch would guess the wrong folder
  CPATH                 + <site-packages>/nvidia/cu<major>/include (the pip CUDA headers torch uses)
  TORCH_CUDA_ARCH_LIST  "8.0;9.0" (sm_80 and sm_90)
  MAX_JOBS              2 (parallel compile jobs)
CLIPKERN_NO_EXTENSION=1 builds the pure-Python package only (clipkern then falls back at run time).
`pip install --no-build-isolation -e .` builds the extension in place, next to clipkern/*.py.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _nvcc_target(path: str) -> str:
    """The real nvcc behind `path`: follows symlinks and a shell wrapper's `exec <nvcc>` line."""
    path = os.path.realpath(path)
    for _ in range(4):
        try:
            with open(path, "rb") as f:
                head = f.read(4096)
        except OSError:
            return path
        if not head.startswith(b"#!"):
            return path  # a binary
        match = re.search(rb"exec\s+[\"']?(/[^\s\"']*nvcc)\b", head)
        if not match:
            return path
        path = os.path.realpath(match.group(1).decode())
    return path


def cuda_home() -> str | None:
    """The CUDA toolkit folder: $CUDA_HOME if set; else the folder of the real nvcc behind the one
    on PATH (bin/..); else /usr/local/cuda if it has bin/nvcc; else None."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = os.path.dirname(os.path.dirname(_nvcc_target(nvcc)))
        if os.path.exists(os.path.join(home, "bin", "nvcc")):
            return home
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    return None


def _pip_cuda_include(cuda_major: str) -> str | None:
    import torch

    site = os.path.dirname(os.path.dirname(torch.__file__))
    path = os.path.join(site, "nvidia", f"cu{cuda_major}", "include")
    return path if os.path.isdir(path) else None


def _cuda_plan(cu_sources: list[str]) -> tuple[bool, str]:
    """(build the CUDA sources?, why) following CLIPKERN_BUILD_CUDA."""
    mode = os.environ.get("CLIPKERN_BUILD_CUDA", "").strip()
    if mode not in ("", "0", "1"):
        raise SystemExit(f"CLIPKERN_BUILD_CUDA must be 0, 1 or unset, got {mode!r}")
    if mode == "0":
        return False, "CLIPKERN_BUILD_CUDA=0"
    home = cuda_home()
    if home:
        os.environ["CUDA_HOME"] = home  # before torch.utils.cpp_extension reads it
    import torch

    problems = []
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is not a CUDA build")
    if home is None:
        problems.append("nvcc was not found (PATH, CUDA_HOME, /usr/local/cuda)")
    if not cu_sources:
        problems.append("csrc/cuda/ has no .cu files")
    if problems:
        if mode == "1":
            raise SystemExit("CLIPKERN_BUILD_CUDA=1 but the CUDA kernels cannot be built: " + "; ".join(problems))
        return False, "; ".join(problems)
    include = _pip_cuda_include(torch.version.cuda.split(".")[0])
    if include and include not in os.environ.get("CPATH", "").split(os.pathsep):
        os.environ["CPATH"] = os.pathsep.join(p for p in (include, os.environ.get("CPATH")) if p)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    return True, f"CUDA_HOME={home}, TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}"


def extension_kwargs() -> dict:
    if os.environ.get("CLIPKERN_NO_EXTENSION", "0") not in ("", "0"):
        return {}
    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))  # noqa: E731
    cpp_sources = ["csrc/ops.cpp", *rel("csrc/cpu/*.cpp")]
    cu_sources = rel("csrc/cuda/*.cu")
    with_cuda, why = _cuda_plan(cu_sources)
    os.environ.setdefault("MAX_JOBS", "2")
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    cxx = ["-O2", "-g0"]  # -g0: no debug info (python's CFLAGS add -g), a faster compile
    if with_cuda:
        print(f"clipkern: building clipkern._C with the CUDA kernels ({why})", file=sys.stderr)
        ext = CUDAExtension("clipkern._C", cpp_sources + cu_sources, define_macros=[("CLIPKERN_WITH_CUDA", None)],
                            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo"]})
    else:
        print(f"clipkern: building clipkern._C without CUDA kernels ({why})", file=sys.stderr)
        ext = CppExtension("clipkern._C", cpp_sources, extra_compile_args={"cxx": cxx})
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension}}


setup(**extension_kwargs())
