"""CPU CI: csrc/cuda/kernels.cu compiles for sm_80 and sm_90 with torch's extension flags (no GPU needed),
and ptxas reports no large register spills. Runs tests/compile_cuda.sh; skipped when nvcc is absent."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "compile_cuda.sh"
MAX_SPILL_BYTES = 64  # the ListMLE kernels spill nothing (tests/test_listmle_spills.py); this bounds the rest


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME")
    for candidate in ([os.path.join(home, "bin", "nvcc")] if home else []) + ["/usr/local/cuda-13.0/bin/nvcc"]:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("nvcc")


def _spills(report: str) -> dict[str, int]:
    """kernel@arch -> spill store bytes, from ptxas -v lines."""
    out, current = {}, None
    for line in report.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for '(sm_\d+)'", line)
        if m:
            current = f"{m.group(1)}@{m.group(2)}"
            out[current] = 0
            continue
        m = re.search(r"(\d+) bytes spill stores", line)
        if m and current is not None:
            out[current] = int(m.group(1))
    return out


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(_nvcc() is None, reason="nvcc is not installed on this machine")
def test_cuda_kernels_compile_for_sm80_and_sm90(tmp_path):
    env = dict(os.environ, CLIPKERN_NVCC=_nvcc(), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "kernels.o")], capture_output=True, text=True,
                          env=env, timeout=880)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"nvcc failed on csrc/cuda/kernels.cu:\n{report[-6000:]}"
    assert (tmp_path / "kernels.o").stat().st_size > 0
    spills = _spills(report)
    for arch in ("sm_80", "sm_90"):
        for family in ("contrastive_fwd_kernel", "contrastive_bwd_kernel", "pairdiff_fwd_kernel", "listmle_fwd_kernel",
                       "listmle_bwd_kernel"):
            assert any(family in k and k.endswith(arch) for k in spills), f"no {family} compiled for {arch}"
    big = {k: v for k, v in spills.items() if v > MAX_SPILL_BYTES}
    assert not big, f"ptxas register spills above {MAX_SPILL_BYTES} bytes: {big}"


@pytest.mark.timeout(300)
@pytest.mark.skipif(_nvcc() is None, reason="nvcc is not installed on this machine")
def test_cuda_scalar_helpers_on_the_host(tmp_path):
    """tests/cuda_host_check.cu: the ListMLE sort key and the (max, sum) log-sum-exp helpers of
    csrc/cuda/, compiled by nvcc as host code and run on the CPU (about 15 s)."""
    exe = tmp_path / "cuda_host_check"
    build = subprocess.run([_nvcc(), "-std=c++17", "-O2", "-arch=sm_90", str(ROOT / "tests" / "cuda_host_check.cu"),
                            "-o", str(exe)], capture_output=True, text=True, timeout=280)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip().endswith("OK"), run.stdout[-4000:]
