"""torch.library integration: opcheck on every custom op, a fullgraph torch.compile parity test,
and a pure-Python import that needs neither triton nor a GPU."""
import subprocess
import sys

import pytest
import torch

import clipkern
from clipkern.ops.contrastive import (triton_clip_loss, triton_clip_loss_bwd, triton_contrastive_lse,
                                      triton_contrastive_lse_moment)
from clipkern.ops.sigmoid import triton_sigmoid_loss, triton_sigmoid_loss_bwd
from helpers import assert_compile_matches_eager, features


def _leaf(t):
    return t.detach().clone().requires_grad_()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_opcheck_contrastive(dtype):
    args = (_leaf(features(9, 20, dtype)), _leaf(features(70, 20, dtype)), _leaf(torch.tensor(7.0)))
    torch.library.opcheck(triton_contrastive_lse, args)
    torch.library.opcheck(triton_contrastive_lse_moment, args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("labels", [False, True], ids=["implicit", "labels"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "rows"])
def test_opcheck_clip_loss(dtype, labels, symmetric):
    lab = torch.randperm(70)[:9] if labels else None
    args = (_leaf(features(9, 20, dtype)), _leaf(features(70, 20, dtype)), _leaf(torch.tensor(7.0)), lab, symmetric)
    torch.library.opcheck(triton_clip_loss, args)
    out = triton_clip_loss(*[a.detach() if isinstance(a, torch.Tensor) else a for a in args])
    torch.library.opcheck(triton_clip_loss_bwd, (*[a.detach() if isinstance(a, torch.Tensor) else a for a in args[:4]],
                                                 *out[1:], torch.tensor(0.7), symmetric))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("bias,labels", [(True, True), (False, False)], ids=["bias-labels", "plain"])
def test_opcheck_sigmoid(dtype, bias, labels):
    args = (_leaf(features(9, 20, dtype)), _leaf(features(70, 20, dtype)), _leaf(torch.tensor(7.0)),
            _leaf(torch.tensor(-3.0)) if bias else None, torch.randperm(70)[:9] if labels else None)
    torch.library.opcheck(triton_sigmoid_loss, args)
    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    torch.library.opcheck(triton_sigmoid_loss_bwd, (*plain, torch.tensor(1.3)))


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_fullgraph_compile_matches_eager(loss, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    module = clipkern.ClipLoss(backend="triton") if loss == "clip" else clipkern.SigLipLoss(backend="triton")

    def step(a, c, s, b):
        out = module(a, c, s, b, output_dict=True)
        return sum(out.values())

    assert_compile_matches_eager(step, [features(33, 24), features(33, 24), torch.tensor(14.3), torch.tensor(-2.0)])


def test_imports_without_triton():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch, clipkern, clipkern.functional as F\n"
            "a = torch.randn(5, 8); print(float(F.clip_loss(a, a, torch.tensor(2.0))))\n"
            "from clipkern._backend import unavailable_reason\n"
            "print(unavailable_reason('triton', torch.device('cpu')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "triton" in out.stdout.splitlines()[-1]


def test_info_reports_every_backend():
    out = subprocess.run([sys.executable, "-m", "clipkern.info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for word in ("torch", "triton", "reference", "cuda", "gpu"):
        assert word in out.stdout
