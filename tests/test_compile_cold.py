"""A cold `torch.compile(fullgraph=True)` of every loss with the csrc backend works on its first call on a
CPU: each case runs in a fresh interpreter (the extension not loaded yet, so dynamo meets the loader),
and the compiled loss and gradients equal eager's. ClipLoss and SigLipLoss ask for backend="cuda";
imsep_loss and AlignClipLoss run under CLIPKERN_BACKEND=cuda (IMSep has no csrc twin: it falls back
with one warning, which must stay out of the graph too)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from clipkern import _extension

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import sys, torch, clipkern, clipkern.functional as CF
    from clipkern import _extension
    assert "path" not in _extension._STATE, "the extension was loaded before the compile"
    case = sys.argv[1]
    torch.manual_seed(0)
    x, y = (torch.nn.functional.normalize(torch.randn(12, 16), dim=1) for _ in range(2))
    s, b, sem = torch.tensor(10.0), torch.tensor(-4.0), torch.randn(12, 5)
    if case == "clip":
        mod = clipkern.ClipLoss(backend="cuda")
        step = lambda x, y, s, b: mod(x, y, s)
    elif case == "siglip":
        mod = clipkern.SigLipLoss(backend="cuda")
        step = lambda x, y, s, b: mod(x, y, s, b)
    elif case == "imsep":
        step = lambda x, y, s, b: CF.imsep_loss(x, y, sem, s, modalities=("image", "text"))
    else:
        mod = clipkern.AlignClipLoss()
        step = lambda x, y, s, b: mod(x, y, sem, s)
    compiled = torch.compile(step, fullgraph=True)
    comp_in = [t.clone().requires_grad_() for t in (x, y, s, b)]
    loss = compiled(*comp_in)  # the first call: traces, loads the extension, compiles
    assert _extension.active_path() is not None
    loss.backward()
    eager_in = [t.clone().requires_grad_() for t in (x, y, s, b)]
    ref = step(*eager_in)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    for k, e in zip(comp_in[:3], eager_in[:3]):
        torch.testing.assert_close(k.grad, e.grad)
    print("COMPILED-OK", case, float(loss))
""")


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(_extension.unavailable_reason() is not None, reason="the csrc extension is not available")
@pytest.mark.parametrize("case", ["clip", "siglip", "imsep", "alignclip"])
def test_cold_fullgraph_compile_with_the_csrc_backend(case, tmp_path):
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"), PYTHONPATH=str(ROOT))
    env.pop("TRITON_INTERPRET", None)  # a CPU user's setting: IMSep's fallback is the reference
    if case in ("imsep", "alignclip"):
        env["CLIPKERN_BACKEND"] = "cuda"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, case], capture_output=True, text=True, env=env, timeout=580,
                          cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and f"COMPILED-OK {case}" in proc.stdout, out[-5000:]
    if case in ("imsep", "alignclip"):
        assert out.count("CLIPKERN_BACKEND='cuda': the imsep loss has no 'cuda' implementation") == 1, out[-3000:]
