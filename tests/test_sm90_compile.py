"""Every Triton kernel that clip/siglip/imsep/pairdiff launch compiles for sm_90a (H100/H200) with the
launch configuration and the JIT's runtime specialization it gets there, and ptxas reports no
register spills. Runs on a machine without a GPU (tests/sm90_compile.py, in a subprocess)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("sm90_compile.py")


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "CLIPKERN_TARGET")}
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=900,
                         cwd=str(SCRIPT.parents[1]))
    assert out.returncode == 0, f"{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    lines = [line for line in out.stdout.splitlines() if line.startswith(("ok ", "SPILLS", "FAIL"))]
    # at least forward + backward per loss and dtype
    assert len(lines) >= 2 * 4 * 3 and all(line.startswith("ok ") for line in lines), out.stdout
