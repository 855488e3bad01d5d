"""Loading clipkern's C++/CUDA extension (csrc/), lazily and without ever breaking `import clipkern`.

Paths, tried once per process on the first `load()` (importing clipkern does not load anything):
1. prebuilt: `clipkern._C`, built by setup.py (`pip install -e .` builds it in place). If it fails to
   import (e.g. "undefined symbol": built for another torch) or was compiled against a torch
   version other than torch.__version__, ONE warning says so and the extension is unavailable
   (clipkern falls back to its other backends). A mismatched build is never used.
2. JIT: with no prebuilt extension, a visible GPU and nvcc, the same sources are compiled with
   torch.utils.cpp_extension.load (ninja) into $CLIPKERN_CACHE_DIR, default
   ~/.cache/clipkern/<torch version>; one log line says so. CLIPKERN_JIT=0 disables it. Needs the
   csrc/ folder next to the package (a source checkout).
3. otherwise unavailable, with the reason (`unavailable_reason()`).

`python -m clipkern.info` shows which path is active.

torch.compile: the loader takes a lock and imports modules, which dynamo cannot trace, so the
functions that traced code calls (`unavailable_reason`, `has_cuda`, `active_path`) are marked
constant for the compiler (`torch.compiler.assume_constant_result`): dynamo runs them eagerly
while tracing (loading the extension then, outside the graph) and bakes their answer into the graph.
Their answers are fixed for the life of the process, so that is sound. A cold
`torch.compile(fullgraph=True)` of a loss with backend="cuda" therefore works on its first call. The build-environment helpers here
(`cuda_home`, `pip_cuda_include`) are shared with setup.py, which loads this file by path: keep
this module free of clipkern imports and of top-level torch.utils.cpp_extension imports.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import re
import shutil
import threading
import warnings

log = logging.getLogger("clipkern")

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
JIT_NAME = "clipkern_jit_C"
_LOCK = threading.Lock()
_STATE: dict = {}  # filled by load(): module, path ("prebuilt" | "jit" | None), reason, file


# ------------------------------------------------------------------------------- build helpers
def _nvcc_target(path: str) -> str:
    """The real nvcc behind `path`: follows symlinks and a shell wrapper's `exec <nvcc>` line."""
    path = os.path.realpath(path)
    for _ in range(4):
        try:
            with open(path, "rb") as f:
                head = f.read(4096)
        except OSError:
            return path
        match = re.search(rb"exec\s+[\"']?(/[^\s\"']*nvcc)\b", head) if head.startswith(b"#!") else None
        if not match:
            return path
        path = os.path.realpath(match.group(1).decode())
    return path


def cuda_home() -> str | None:
    """The CUDA toolkit folder: $CUDA_HOME if set; else the folder of the real nvcc behind the one
    on PATH (a wrapper script is followed to the nvcc it execs); else /usr/local/cuda if it has
    bin/nvcc; else None. torch would take a wrapper's parent folder, which has no headers."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = os.path.dirname(os.path.dirname(_nvcc_target(nvcc)))
        if os.path.exists(os.path.join(home, "bin", "nvcc")):
            return home
    return "/usr/local/cuda" if os.path.exists("/usr/local/cuda/bin/nvcc") else None


def pip_cuda_include(torch_file: str, cuda_version: str) -> str | None:
    """<site-packages>/nvidia/cu<major>/include (the pip CUDA headers a CUDA torch wheel uses), if present."""
    site = os.path.dirname(os.path.dirname(torch_file))
    path = os.path.join(site, "nvidia", f"cu{cuda_version.split('.')[0]}", "include")
    return path if os.path.isdir(path) else None


def cuda_build_env(torch_file: str, cuda_version: str) -> str | None:
    """Sets CUDA_HOME, CPATH and TORCH_CUDA_ARCH_LIST (when unset) for compiling the CUDA sources;
    call before importing torch.utils.cpp_extension. Returns the toolkit folder (None: no nvcc)."""
    home = cuda_home()
    if home is None:
        return None
    os.environ["CUDA_HOME"] = home
    include = pip_cuda_include(torch_file, cuda_version)
    if include and include not in os.environ.get("CPATH", "").split(os.pathsep):
        os.environ["CPATH"] = os.pathsep.join(p for p in (include, os.environ.get("CPATH")) if p)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    return home


def version_triplet(version: str) -> str:
    """'2.13.0+cu130' -> '2.13.0' (the C++ headers know only major.minor.patch)."""
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    return ".".join(match.groups()) if match else version


# ------------------------------------------------------------------------------------ loading
def _version_problem() -> str | None:
    import torch

    compiled = str(torch.ops.clipkern.torch_version())
    if version_triplet(compiled) != version_triplet(torch.__version__):
        return f"it was compiled against torch {compiled} but torch {torch.__version__} is running"
    return None


def _load_prebuilt():
    """(module, None), (None, reason) or (None, None) when there is no prebuilt extension."""
    try:
        if importlib.util.find_spec("clipkern._C") is None:
            return None, None
        module = importlib.import_module("clipkern._C")
    except Exception as exc:  # ImportError ("undefined symbol"), OSError, a registration clash...
        return None, f"clipkern._C failed to import ({type(exc).__name__}: {exc})"
    problem = _version_problem()
    if problem:
        return None, f"clipkern._C ({module.__file__}) is unusable: {problem}"
    return module, None


def cache_dir() -> str:
    import torch

    default = os.path.join(os.path.expanduser("~"), ".cache", "clipkern", torch.__version__)
    return os.environ.get("CLIPKERN_CACHE_DIR") or default


def _jit_sources() -> list[str]:
    import glob

    return [os.path.join(CSRC, "ops.cpp"), *sorted(glob.glob(os.path.join(CSRC, "composite", "*.cpp"))),
            *sorted(glob.glob(os.path.join(CSRC, "cpu", "*.cpp"))),
            *sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))]


def jit_unavailable_reason() -> str | None:
    """None if a JIT build can be attempted here, else why not."""
    import torch

    if os.environ.get("CLIPKERN_JIT", "1").strip() == "0":
        return "CLIPKERN_JIT=0 disables compiling it on first use"
    if not torch.cuda.is_available():
        return "no GPU is visible, so it is not compiled on first use (JIT needs a GPU)"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is not a CUDA build"
    if cuda_home() is None:
        return "nvcc was not found (PATH, CUDA_HOME, /usr/local/cuda) to compile it on first use"
    if not os.path.exists(os.path.join(CSRC, "ops.cpp")):
        return f"the C++ sources ({CSRC}) are not shipped with this install, so it cannot be compiled on first use"
    return None


def _jit_build():
    import torch

    cuda_build_env(torch.__file__, torch.version.cuda)
    from torch.utils import cpp_extension

    sources = _jit_sources()
    with_cuda = any(s.endswith(".cu") for s in sources)
    folder = cache_dir()
    os.makedirs(folder, exist_ok=True)
    log.warning("clipkern: compiling the CUDA extension (first use; cached in %s)", folder)
    flag = ["-DCLIPKERN_WITH_CUDA"] if with_cuda else []
    return cpp_extension.load(name=JIT_NAME, sources=sources, build_directory=folder, with_cuda=with_cuda,
                              extra_cflags=["-O2", "-g0", *flag], extra_cuda_cflags=["-O3", "-lineinfo", *flag],
                              is_python_module=True, verbose=False)


def _load_once() -> None:
    module, reason = _load_prebuilt()
    if module is not None:
        _STATE.update(module=module, path="prebuilt", reason=None, file=module.__file__)
        return
    if reason is not None:
        warnings.warn(f"clipkern: the C++/CUDA extension is disabled: {reason}. backend='cuda' is unavailable; "
                      "the other backends still work. Rebuild it for this torch with "
                      "`pip install --no-build-isolation -e .`.", RuntimeWarning, stacklevel=3)
        _STATE.update(module=None, path=None, reason=reason, file=None)
        return
    why_not = jit_unavailable_reason()
    if why_not is not None:
        _STATE.update(module=None, path=None, reason=f"clipkern._C is not built and {why_not}", file=None)
        return
    try:
        module = _jit_build()
        problem = _version_problem()
        if problem:
            raise RuntimeError(problem)
    except Exception as exc:
        reason = f"compiling it on first use failed ({type(exc).__name__}: {str(exc)[-2000:]})"
        warnings.warn(f"clipkern: {reason}; backend='cuda' is unavailable", RuntimeWarning, stacklevel=3)
        _STATE.update(module=None, path=None, reason=reason, file=None)
        return
    _STATE.update(module=module, path="jit", reason=None, file=getattr(module, "__file__", None))


def load():
    """The extension's Python module (prebuilt clipkern._C or the JIT build), or None. Loads once per
    process (the first call may compile: see the module docstring); the ops are torch.ops.clipkern.*."""
    if "path" not in _STATE:
        with _LOCK:
            if "path" not in _STATE:
                _load_once()
    return _STATE["module"]


def _constant_for_the_compiler(fn):
    """fn, marked so that torch.compile calls it while tracing and keeps its (fixed) answer as a constant."""
    import torch

    return torch.compiler.assume_constant_result(fn)


@_constant_for_the_compiler
def unavailable_reason() -> str | None:
    """None if the extension is loaded, else why not (loads it first if needed)."""
    load()
    return _STATE["reason"]


@_constant_for_the_compiler
def has_cuda() -> bool:
    """Whether the loaded extension has its CUDA kernels compiled in (False if none is loaded)."""
    import torch

    return load() is not None and bool(torch.ops.clipkern.has_cuda())


@_constant_for_the_compiler
def active_path() -> str | None:
    """'prebuilt', 'jit' or None (unavailable), after loading."""
    load()
    return _STATE["path"]


def describe(allow_jit: bool = False) -> str:
    """One line for `python -m clipkern.info`. Without allow_jit it never starts a JIT compile: it
    says that one would happen on first use instead."""
    import torch

    if ("path" not in _STATE and not allow_jit and importlib.util.find_spec("clipkern._C") is None
            and jit_unavailable_reason() is None):
        return f"not built; compiled on first use of backend='cuda' (JIT, cached in {cache_dir()})"
    if load() is None:
        return f"unavailable: {_STATE['reason']}"
    kernels = "CUDA kernels: compiled in" if has_cuda() else "CUDA kernels: none (C++ CPU implementations only)"
    return (f"{_STATE['path']} ({_STATE['file']}), built for torch {torch.ops.clipkern.torch_version()}, "
            f"{kernels}")


def _reset_for_tests() -> None:
    """Forget the load result so the next load() runs again (tests only)."""
    with _LOCK:
        _STATE.clear()
