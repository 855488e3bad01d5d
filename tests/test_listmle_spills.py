"""CPU CI: every CUDA ListMLE kernel the launcher can pick (rows up to 8192 columns, fp32/fp16/bf16)
compiles for sm_80 and sm_90a without a single register spill (ptxas -v). Compiles only
tests/listmle_spill_check.cu (the kernels of csrc/cuda/listmle.cuh), not the whole extension;
skipped when nvcc is absent."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from test_cuda_compile import _nvcc

ROOT = Path(__file__).resolve().parent.parent
ARCHS = ("sm_80", "sm_90a")
# (threads, items per thread) of each row capacity in listmle::for_each_row_capacity
CAPACITIES = {256: (128, 2), 1024: (256, 4), 4096: (512, 8), 8192: (256, 32)}


def _ptxas_report(nvcc: str, out: Path) -> str:
    import torch

    site = Path(torch.__file__).resolve().parent.parent
    includes = [f"-I{p}" for p in sorted(site.glob("nvidia/cu[0-9]*/include"))[-1:]]
    gencode = [f"-gencode=arch=compute_{a[3:]},code={a}" for a in ARCHS]
    cmd = [nvcc, "-c", str(ROOT / "tests" / "listmle_spill_check.cu"), "-o", str(out), *gencode, "-std=c++20",
           "-O3", "-lineinfo", "--expt-relaxed-constexpr", "-D__CUDA_NO_HALF_OPERATORS__",
           "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
           *includes, "-Xptxas", "-v"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"nvcc failed:\n{(proc.stdout + proc.stderr)[-6000:]}"
    return proc.stdout + proc.stderr


def spill_report(report: str) -> dict[str, int]:
    """'kernel@arch' -> spill store bytes + spill load bytes, from ptxas -v output (sm_90a included)."""
    out, current = {}, None
    for line in report.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for '(sm_\w+)'", line)
        if m:
            current = f"{m.group(1)}@{m.group(2)}"
            out[current] = 0
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current is not None:
            out[current] += int(m.group(1)) + int(m.group(2))
    return out


def test_spill_report_parser_reads_sm90a_entries():
    report = ("ptxas info    : Compiling entry function '_Z3fooILi512EEvv' for 'sm_90a'\n"
              "    56 bytes stack frame, 56 bytes spill stores, 56 bytes spill loads\n"
              "ptxas info    : Compiling entry function '_Z3barv' for 'sm_80'\n"
              "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n")
    assert spill_report(report) == {"_Z3fooILi512EEvv@sm_90a": 112, "_Z3barv@sm_80": 0}


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(_nvcc() is None, reason="nvcc is not installed on this machine")
def test_listmle_kernels_do_not_spill(tmp_path):
    spills = spill_report(_ptxas_report(_nvcc(), tmp_path / "listmle.o"))
    for arch in ARCHS:
        for threads, ipt in CAPACITIES.values():
            for kind in ("fwd", "bwd"):
                # mangled template arguments: ...listmle_<kind>_kernelI<T>Li<threads>ELi<ipt>ELi<colbits>E...
                pattern = re.compile(rf"listmle_{kind}_kernelI.*Li{threads}ELi{ipt}ELi\d+E.*@{arch}$")
                found = [k for k in spills if pattern.search(k)]
                assert len(found) == 3, f"expected the {kind} kernel {threads}x{ipt} for 3 dtypes on {arch}: {found}"
    spilling = {k: v for k, v in spills.items() if v}
    assert not spilling, f"ListMLE kernels spill registers: {spilling}"

