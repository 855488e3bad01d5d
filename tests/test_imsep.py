"""AlignCLIP IMSep and ParaCLIP losses against float64 references (docs/design.md §1.5, §1.6, §4)."""
import pytest
import torch
import torch.nn.functional as F

import clipkern
import clipkern.functional as CF
from clipkern.ops import base
from clipkern.ops.imsep import triton_imsep_loss, triton_imsep_loss_bwd
from helpers import check_against_reference, features

F32, F16 = torch.float32, torch.float16
GRADS = ["image_features", "text_features", "logit_scale"]
BOTH = ("image", "text")


def _explicit_imsep(v, t, u, s, modalities):
    """Independent oracle, built the long way: Dsem, M^v, M^t with explicit loops over the diagonal."""
    u = u / u.norm(dim=1, keepdim=True)
    dsem = 1 - u @ u.T
    total = 0.0
    for name in modalities:
        x, y = (v, t) if name == "image" else (t, v)
        m = (x @ x.T) * dsem
        m = m.clone()
        for i in range(x.shape[0]):
            m[i, i] = x[i] @ y[i]
        logits = s * m
        total = total + (logits.logsumexp(dim=1) - logits.diagonal()).mean()
    return total


def _case_id(c):
    B, D, K, s, mods, dt = c
    return f"B{B}-D{D}-K{K}-s{s}-{'+'.join(mods)}-{str(dt)[6:]}"


CASES = (
    [(B, D, 8, 14.3, ("image",), F32) for B in (1, 2, 7, 64, 257) for D in (16, 100)]
    + [(B, 16, 384, 100.0, BOTH, F32) for B in (2, 7, 64)]
    + [(64, 100, 384, s, BOTH, F16) for s in (1.0, 100.0)]
    + [(257, 16, 8, 14.3, BOTH, F16), (7, 100, 8, 100.0, ("text",), F32)]
    + [(70, 45, 13, 100.0, BOTH, dt) for dt in (F32, F16)]  # odd shapes, K ≠ D, several tiles
)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_imsep_matches_float64_reference(case):
    B, D, K, scale, mods, dtype = case
    inputs = dict(image_features=features(B, D, dtype), text_features=features(B, D, dtype),
                  semantic_features=torch.randn(B, K).to(dtype), logit_scale=torch.tensor(scale))
    fn = lambda backend, **kw: CF.imsep_loss(**kw, modalities=mods, backend=backend)  # noqa: E731
    check_against_reference(fn, inputs, dtype, GRADS)


@pytest.mark.parametrize("mods", [("image",), BOTH], ids=["image", "image+text"])
def test_reference_equals_explicit_oracle(mods):
    v, t, u = features(33, 16, torch.float64), features(33, 16, torch.float64), torch.randn(33, 8, dtype=torch.float64)
    s = torch.tensor(20.0, dtype=torch.float64)
    got = CF.imsep_loss(v, t, u, s, modalities=mods, backend="reference")
    torch.testing.assert_close(got, _explicit_imsep(v, t, u, s, mods), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mods", [("image",), BOTH], ids=["image", "image+text"])
@pytest.mark.parametrize("dtype", [F32, F16], ids=["fp32", "fp16"])
def test_alignclip_loss_matches_float64_reference(mods, dtype):
    B, D, K = 65, 24, 16
    inputs = dict(image_features=features(B, D, dtype), text_features=features(B, D, dtype),
                  semantic_features=torch.randn(B, K).to(dtype), logit_scale=torch.tensor(30.0))

    def fn(backend, **kw):
        return clipkern.AlignClipLoss(modalities=mods, backend=backend)(**kw)

    loss, _ = check_against_reference(fn, inputs, dtype, GRADS)
    # and the whole objective equals α·(CE(S) + CE(Sᵀ)) + β·IMSep, built explicitly in fp64
    v, t = inputs["image_features"].double(), inputs["text_features"].double()
    s = torch.tensor(30.0, dtype=torch.float64)
    S = s * v @ t.T
    y = torch.arange(B)
    expected = (F.cross_entropy(S, y) + F.cross_entropy(S.T, y)) + 0.5 * _explicit_imsep(
        v, t, inputs["semantic_features"].double(), s, mods)
    tol = 1e-5 if dtype == F32 else 2e-2
    assert abs(loss.item() - expected.item()) <= tol * (1 + abs(expected.item()))


def test_alignclip_output_dict_and_weights():
    v, t, u, s = features(9, 16), features(9, 16), torch.randn(9, 8), torch.tensor(10.0)
    out = clipkern.AlignClipLoss(alpha=0.3, beta=2.0, backend="triton")(v, t, u, s, output_dict=True)
    assert set(out) == {"contrastive_loss", "imsep_loss"}
    torch.testing.assert_close(out["contrastive_loss"], 0.6 * CF.clip_loss(v, t, s, backend="reference"))
    torch.testing.assert_close(out["imsep_loss"], 2.0 * CF.imsep_loss(v, t, u, s, backend="reference"))


def test_semantic_features_get_no_gradient():
    u = torch.randn(9, 8, requires_grad=True)
    v = features(9, 16).requires_grad_()
    CF.imsep_loss(v, features(9, 16), u, torch.tensor(10.0), backend="triton").backward()
    assert u.grad is None and v.grad is not None


@pytest.mark.parametrize("dtype", [F32, F16], ids=["fp32", "fp16"])
def test_opcheck_imsep(dtype):
    x = features(70, 20, dtype).requires_grad_()
    u = torch.nn.functional.normalize(torch.randn(70, 12), dim=1).to(dtype)
    diag = torch.randn(70).requires_grad_()
    scale = torch.tensor(7.0, requires_grad=True)
    torch.library.opcheck(triton_imsep_loss, (x, u, diag, scale))
    _, *stats = triton_imsep_loss(x.detach(), u, diag.detach(), scale.detach())
    torch.library.opcheck(triton_imsep_loss_bwd, (x.detach(), u, diag.detach(), scale.detach(), *stats,
                                                  torch.tensor(1.3)))


def _loss_and_grads(B=150, D=45, K=13, dtype=F32, scale=100.0):
    torch.manual_seed(1)
    v, t = features(B, D, dtype).requires_grad_(), features(B, D, dtype).requires_grad_()
    u, s = torch.randn(B, K).to(dtype), torch.tensor(scale, requires_grad=True)
    loss = CF.imsep_loss(v, t, u, s, modalities=BOTH, backend="triton")
    (loss * -1.7).backward()
    return [loss.detach(), v.grad, t.grad, s.grad]


def _count_chunks(monkeypatch):
    """Counts the E-kernel launches (one per workspace chunk) of the IMSep backward."""
    from clipkern.ops.imsep import triton_launchers as triton_ops

    calls = []

    def counting(x, y, fill_ds, *args, **kwargs):
        def fill(ws, r0, r1):
            calls.append((r0, r1))
            fill_ds(ws, r0, r1)
        return base.chunked_input_grads(x, y, fill, *args, **kwargs)

    monkeypatch.setattr(triton_ops, "chunked_input_grads", counting)
    return calls


@pytest.mark.parametrize("dtype", [F32, F16], ids=["fp32", "fp16"])
def test_imsep_several_workspace_chunks_equal_one(dtype, monkeypatch):
    calls = _count_chunks(monkeypatch)
    one = _loss_and_grads(dtype=dtype)
    assert len(calls) == 2  # one chunk per modality
    monkeypatch.setenv("CLIPKERN_WORKSPACE_MB", "1e-6")  # one E row tile per chunk
    calls.clear()
    several = _loss_and_grads(dtype=dtype)
    assert len(calls) == 2 * 3
    assert torch.equal(one[0], several[0]) and torch.equal(one[3], several[3])  # E and its partials: same tiles
    for a, b in zip(one[1:3], several[1:3]):  # dX: one GEMM per chunk instead of one in all
        torch.testing.assert_close(b, a, rtol=1e-6 if dtype == F32 else 1e-3, atol=1e-7 if dtype == F32 else 1e-5)


def test_imsep_reruns_are_bit_identical():
    first, second = _loss_and_grads(), _loss_and_grads()
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [F32, F16], ids=["fp32", "fp16"])
def test_imsep_gpu_launch_configuration(dtype, monkeypatch):
    """CLIPKERN_TARGET=sm90: the blocks, splits and chunks an sm_90 GPU would get, run in the interpreter."""
    monkeypatch.setenv("CLIPKERN_TARGET", "sm90")
    assert base.simulated_target() == "sm90"
    B, D, K = 70, 45, 13
    inputs = dict(image_features=features(B, D, dtype), text_features=features(B, D, dtype),
                  semantic_features=torch.randn(B, K).to(dtype), logit_scale=torch.tensor(100.0))
    fn = lambda backend, **kw: CF.imsep_loss(**kw, modalities=BOTH, backend=backend)  # noqa: E731
    check_against_reference(fn, inputs, dtype, GRADS)


@pytest.mark.slow
def test_alignclip_fullgraph_compile(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    loss = clipkern.AlignClipLoss(modalities=BOTH, backend="triton")
    v, t, u, s = features(17, 16), features(17, 16), torch.randn(17, 8), torch.tensor(10.0)
    eager = loss(v, t, u, s)
    compiled = torch.compile(lambda *a: loss(*a), fullgraph=True)(v, t, u, s)
    torch.testing.assert_close(compiled, eager)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_paraclip_is_the_sum_of_three_clip_losses(backend):
    from open_clip.loss import ClipLoss as OpenClipLoss

    img, cap, p1, p2 = (features(21, 16) for _ in range(4))
    s = torch.tensor(14.3)
    out = clipkern.ParaClipLoss(backend=backend)(img, cap, p1, p2, s, output_dict=True)
    assert set(out) == {"image_para_loss", "caption_para_loss", "para_para_loss"}
    ref = OpenClipLoss()
    expected = {"image_para_loss": ref(img, p2, s), "caption_para_loss": ref(cap, p1, s),
                "para_para_loss": ref(p1, p2, s)}
    for k in out:
        torch.testing.assert_close(out[k], expected[k], rtol=1e-5, atol=1e-6)
    total = clipkern.ParaClipLoss(backend=backend)(img, cap, p1, p2, s)
    torch.testing.assert_close(total, sum(expected.values()), rtol=1e-5, atol=1e-6)


def test_bad_input_names_the_argument():
    v, t, s = features(6, 16), features(6, 16), torch.tensor(1.0)
    with pytest.raises(ValueError, match="image_features has batch 6 but semantic_features has batch 5"):
        CF.imsep_loss(v, t, torch.randn(5, 8), s)
    with pytest.raises(ValueError, match="modalities must be a non-empty subset"):
        CF.imsep_loss(v, t, torch.randn(6, 8), s, modalities=("audio",))
    with pytest.raises(ValueError, match="modalities must be a non-empty subset"):
        CF.imsep_loss(v, t, torch.randn(6, 8), s, modalities=())
    with pytest.raises(ValueError, match="modalities must be a non-empty subset"):
        clipkern.AlignClipLoss(modalities=("image", "image"))
    with pytest.raises(ValueError, match="semantic_features must be 2-D"):
        CF.imsep_loss(v, t, torch.randn(6), s)
    assert CF.imsep_loss(v, t, torch.randn(6, 8), s, modalities="image").dim() == 0
