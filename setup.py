"""Build script: the package is pure Python plus one extension, `clipkern._C` (csrc/).

`clipkern._C` is always built from csrc/ops.cpp + csrc/composite/*.cpp + csrc/cpu/*.cpp (the op
schemas, the device-generic ops and the C++ CPU implementations). The CUDA kernels csrc/cuda/*.cu are added (with -DCLIPKERN_WITH_CUDA) when
  - CLIPKERN_BUILD_CUDA=1: always; an error if torch is not a CUDA build or nvcc is missing;
  - CLIPKERN_BUILD_CUDA=0: never;
  - unset: when torch is a CUDA build, nvcc is found and csrc/cuda/ has .cu files.
No GPU is needed to compile them. Environment this script fills in when unset:
  CUDA_HOME             the real toolkit folder (see `cuda_home`): the `nvcc` on PATH may be a wrapper
                        script, from which torch would guess the wrong folder
  CPATH                 + <site-packages>/nvidia/cu<major>/include (the pip CUDA headers torch uses)
  TORCH_CUDA_ARCH_LIST  "8.0;9.0a" (sm_80, and sm_90a for Hopper: wgmma/TMA need the arch-specific target;
                        an sm_90a cubin runs on compute capability 9.0 only)
  MAX_JOBS              2 (parallel compile jobs)
The Hopper contrastive kernels (csrc/cuda/hopper_contrastive.cu) need the CUTLASS/CuTe headers of the
pip package nvidia-cutlass (pinned in constraints.txt, installed by `make setup`): when they are found
their folder is added to the include path, and with 9.0a in the arch list -DCLIPKERN_HOPPER_SM90A
enables that path; otherwise the file compiles to stubs and the wmma kernels serve every GPU.
CLIPKERN_NO_EXTENSION=1 builds the pure-Python package only (clipkern then falls back at run time).
`pip install --no-build-isolation -e .` builds the extension in place, next to clipkern/*.py.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _build_helpers():
    """clipkern/_extension.py, loaded by path (importing the package would import all of clipkern):
    its cuda_home() / cuda_build_env() are the same ones the JIT path uses."""
    spec = importlib.util.spec_from_file_location("_clipkern_build_helpers",
                                                  os.path.join(ROOT, "clipkern", "_extension.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DEFAULT_ARCH_LIST = "8.0;9.0a"


def cutlass_include() -> str | None:
    """<site-packages>/cutlass_library/source/include of pip nvidia-cutlass (CuTe + CUTLASS headers), if installed."""
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "source", "include")
    return path if os.path.isfile(os.path.join(path, "cute", "tensor.hpp")) else None


def _hopper_flags() -> tuple[list[str], list[str], str]:
    """(include dirs, nvcc flags, why) for the Hopper kernels."""
    include = cutlass_include()
    archs = [a.strip().lower() for a in os.environ.get("TORCH_CUDA_ARCH_LIST", "").replace(" ", ";").split(";")]
    if include is None:
        return [], [], "Hopper kernels off: nvidia-cutlass (CuTe headers) is not installed"
    if not any(a.startswith("9.0a") for a in archs):
        return [include], [], "Hopper kernels off: 9.0a is not in TORCH_CUDA_ARCH_LIST"
    return [include], ["-DCLIPKERN_HOPPER_SM90A"], f"Hopper kernels on (CuTe headers: {include})"


def _cuda_plan(cu_sources: list[str]) -> tuple[bool, str]:
    """(build the CUDA sources?, why) following CLIPKERN_BUILD_CUDA. Sets CUDA_HOME and the rest
    of the build environment before torch.utils.cpp_extension is imported."""
    mode = os.environ.get("CLIPKERN_BUILD_CUDA", "").strip()
    if mode not in ("", "0", "1"):
        raise SystemExit(f"CLIPKERN_BUILD_CUDA must be 0, 1 or unset, got {mode!r}")
    if mode == "0":
        return False, "CLIPKERN_BUILD_CUDA=0"
    import torch

    helpers = _build_helpers()
    problems = []
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is not a CUDA build")
    elif helpers.cuda_home() is None:
        problems.append("nvcc was not found (PATH, CUDA_HOME, /usr/local/cuda)")
    if not cu_sources:
        problems.append("csrc/cuda/ has no .cu files")
    if problems:
        if mode == "1":
            raise SystemExit("CLIPKERN_BUILD_CUDA=1 but the CUDA kernels cannot be built: " + "; ".join(problems))
        return False, "; ".join(problems)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)  # before cuda_build_env's own default
    home = helpers.cuda_build_env(torch.__file__, torch.version.cuda)
    return True, f"CUDA_HOME={home}, TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}"


def extension_kwargs() -> dict:
    if os.environ.get("CLIPKERN_NO_EXTENSION", "0") not in ("", "0"):
        return {}
    if importlib.util.find_spec("torch") is None:
        # e.g. `pip install .` with build isolation: the build environment has no torch to compile against.
        print("clipkern: torch is not importable in this build environment, so clipkern._C is not built "
              "(backend='cuda' unavailable; triton/reference work). Build it with "
              "`pip install --no-build-isolation .` in an environment that has torch.", file=sys.stderr)
        return {}
    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))  # noqa: E731
    cpp_sources = ["csrc/ops.cpp", *rel("csrc/composite/*.cpp"), *rel("csrc/cpu/*.cpp")]
    cu_sources = rel("csrc/cuda/*.cu")
    with_cuda, why = _cuda_plan(cu_sources)
    os.environ.setdefault("MAX_JOBS", "2")
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    cxx = ["-O2", "-g0"]  # -g0: no debug info (python's CFLAGS add -g), a faster compile
    if with_cuda:
        hopper_includes, hopper_nvcc, hopper_why = _hopper_flags()
        print(f"clipkern: building clipkern._C with the CUDA kernels ({why}; {hopper_why})", file=sys.stderr)
        ext = CUDAExtension("clipkern._C", cpp_sources + cu_sources, define_macros=[("CLIPKERN_WITH_CUDA", None)],
                            include_dirs=hopper_includes,
                            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo", *hopper_nvcc]})
    else:
        print(f"clipkern: building clipkern._C without CUDA kernels ({why})", file=sys.stderr)
        ext = CppExtension("clipkern._C", cpp_sources, extra_compile_args={"cxx": cxx})
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension}}


setup(**extension_kwargs())
