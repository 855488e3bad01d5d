"""The C++/CUDA extension (csrc/, backend="cuda"): its C++ CPU implementations against the float64
references through the public functionals and op by op, opcheck on every schema, the build and
loader (prebuilt / mismatched build / JIT settings), the measured selection table, and — on a GPU
(-m gpu) — the CUDA kernels against the Triton twins and the reference."""
import functools
import json
import os
import subprocess
import sys

import pytest
import torch

import clipkern
import clipkern.functional as CF
from clipkern import _backend, _extension, _selection
from helpers import (assert_compile_matches_eager, assert_within_2x_torch, check_against_reference, features,
                     run_with_grads)

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
OPS = torch.ops.clipkern
cuda_check = functools.partial(check_against_reference, kernel_backend="cuda")


@pytest.fixture(scope="module", autouse=True)
def _extension_loaded():
    assert _extension.load() is not None, f"clipkern._C is not usable: {_extension.unavailable_reason()}"


def distinct_pairs(P: int, N: int) -> torch.Tensor:
    i = torch.randint(0, N, (P,))
    return torch.stack([i, (i + torch.randint(1, N, (P,))) % N], dim=1)


# ------------------------------------------------------------------------- build and loader
def test_extension_is_built_and_reports_itself():
    assert _extension.active_path() in ("prebuilt", "jit")
    assert _extension.version_triplet(OPS.torch_version()) == _extension.version_triplet(torch.__version__)
    assert isinstance(OPS.has_cuda(), bool) and _extension.has_cuda() == OPS.has_cuda()
    out = subprocess.run([sys.executable, "-m", "clipkern.info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    line = next(li for li in out.stdout.splitlines() if li.startswith("cuda extension:"))
    assert "prebuilt" in line or "jit" in line, line
    assert ("CUDA kernels: compiled in" if OPS.has_cuda() else "CUDA kernels: none") in line, line


def test_mismatched_build_warns_once_and_falls_back():
    # a clipkern._C compiled for another torch: simulated by a different torch.__version__ in a fresh process
    code = ("import warnings, torch\n"
            "torch.__version__ = '2.0.1+cu118'\n"
            "import clipkern, clipkern.functional as CF\n"
            "a = torch.randn(4, 8)\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    for _ in range(3):\n"
            "        try:\n"
            "            CF.clip_loss(a, a, torch.tensor(2.0), backend='cuda')\n"
            "        except clipkern.BackendUnavailable as exc:\n"
            "            err = str(exc)\n"
            "mine = [w for w in caught if 'clipkern' in str(w.message)]\n"
            "print(len(mine)); print(mine[0].message); print(err)\n"
            "print(float(CF.clip_loss(a, a, torch.tensor(2.0))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    count, warning, error, loss = out.stdout.strip().splitlines()[-4:]
    assert count == "1"
    assert "compiled against torch" in warning and "2.0.1" in warning
    assert "backend='cuda' is unavailable" in error and "2.0.1" in error
    assert float(loss) > 0  # the other backends still work


def test_failed_import_is_one_warning_and_a_reason(monkeypatch):
    def broken(name, *args, **kwargs):
        raise ImportError("clipkern/_C.so: undefined symbol: _ZN3c104impl8GPUTrace")

    monkeypatch.setattr(_extension.importlib, "import_module", broken)
    _extension._reset_for_tests()
    try:
        with pytest.warns(RuntimeWarning, match="undefined symbol") as caught:
            assert _extension.load() is None
            assert _extension.load() is None
        assert len([w for w in caught if "clipkern" in str(w.message)]) == 1
        assert "undefined symbol" in _backend.unavailable_reason("cuda", torch.device("cpu"))
        with pytest.raises(clipkern.BackendUnavailable, match="backend='cuda' is unavailable"):
            _backend.resolve("cuda", torch.device("cpu"), F32)
        assert _backend.resolve("auto", torch.device("cpu"), F32) == "reference"
    finally:
        monkeypatch.undo()
        _extension._reset_for_tests()
        assert _extension.load() is not None


def test_jit_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPKERN_JIT", "0")
    assert "CLIPKERN_JIT=0" in _extension.jit_unavailable_reason()
    monkeypatch.delenv("CLIPKERN_JIT")
    if not torch.cuda.is_available():
        assert "no GPU" in _extension.jit_unavailable_reason()
    monkeypatch.setenv("CLIPKERN_CACHE_DIR", str(tmp_path))
    assert _extension.cache_dir() == str(tmp_path)
    monkeypatch.delenv("CLIPKERN_CACHE_DIR")
    assert _extension.cache_dir().endswith(os.path.join(".cache", "clipkern", torch.__version__))
    sources = _extension._jit_sources()
    assert sources[0].endswith("ops.cpp") and all(os.path.exists(s) for s in sources)


def test_cuda_home_follows_an_nvcc_wrapper(monkeypatch, tmp_path):
    toolkit = tmp_path / "cuda-13.0"
    (toolkit / "bin").mkdir(parents=True)
    real = toolkit / "bin" / "nvcc"
    real.write_bytes(b"\x7fELF fake binary")
    wrapper_dir = tmp_path / "wrapper-bin"
    wrapper_dir.mkdir()
    wrapper = wrapper_dir / "nvcc"
    wrapper.write_text(f'#!/bin/sh\nexec {real} "$@"\n')
    for f in (real, wrapper):
        f.chmod(0o755)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(wrapper_dir))
    assert _extension.cuda_home() == str(toolkit)
    monkeypatch.setenv("CUDA_HOME", "/opt/my-cuda")
    assert _extension.cuda_home() == "/opt/my-cuda"


# ------------------------------------------------------------------- contrastive (clip_loss)
CLIP_CASES = ([(B, B, D, 14.3, F32) for B in (1, 2, 7, 64, 257) for D in (16, 100)]
              + [(B, B, D, 100.0, F16) for B in (7, 257) for D in (16, 100)]
              + [(7, 33, 16, 14.3, F32), (64, 257, 100, 100.0, F32), (33, 130, 100, 14.3, F16)])


@pytest.mark.parametrize("case", CLIP_CASES, ids=lambda c: f"B{c[0]}-N{c[1]}-D{c[2]}-s{c[3]}-{str(c[4])[6:]}")
def test_clip_loss_matches_float64_reference(case):
    B, N, D, scale, dtype = case
    inputs = dict(image_features=features(B, D, dtype), text_features=features(N, D, dtype),
                  logit_scale=torch.tensor(scale), logit_bias=torch.tensor(-1.5))
    if N != B:
        inputs["labels"] = torch.randperm(N)[:B]
    cuda_check(CF.clip_loss, inputs, dtype, ["image_features", "text_features", "logit_scale", "logit_bias"])


def test_rows_only_direction_and_strided_inputs():
    base = features(40, 66)
    inputs = dict(features=base[:, ::2], other_features=features(100, 33).T.contiguous().T,
                  logit_scale=torch.tensor(20.0))
    cuda_check(CF.clip_loss_rows, inputs, F32, ["features", "other_features", "logit_scale"])


@pytest.mark.parametrize("dtype", [F32, F16, torch.float64])
@pytest.mark.parametrize("M,N", [(1, 1), (7, 33), (300, 5)])
def test_contrastive_ops_against_dense_float64(M, N, dtype):
    x, y = features(M, 20, dtype), features(N, 20, dtype)
    s = torch.tensor(30.0)
    rm, rl, cm, cl = OPS.contrastive_fwd(x, y, s)
    acc = torch.float64 if dtype == torch.float64 else F32
    assert all(t.dtype == acc for t in (rm, rl, cm, cl))
    S = 30.0 * x.double() @ y.double().T
    tol = dict(rtol=1e-5, atol=1e-5) if dtype != torch.float64 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close((rm + rl).double(), S.logsumexp(1), **tol)
    torch.testing.assert_close((cm + cl).double(), S.logsumexp(0), **tol)
    torch.testing.assert_close(rm.double(), S.amax(1), **tol)
    g_row, g_col = torch.randn(M, dtype=acc), torch.randn(N, dtype=acc)
    dx, dy, ds = OPS.contrastive_bwd(x, y, s, rm, rl, cm, cl, g_row, g_col)
    assert dx.dtype == dtype and dy.dtype == dtype and ds.dim() == 0
    x64, y64, s64 = (t.double().requires_grad_() for t in (x, y, s))
    S64 = s64 * x64 @ y64.T
    ((S64.logsumexp(1) * g_row.double()).sum() + (S64.logsumexp(0) * g_col.double()).sum()).backward()
    gtol = dict(rtol=2e-3, atol=2e-3) if dtype == F16 else tol
    torch.testing.assert_close(dx.double(), x64.grad, **gtol)
    torch.testing.assert_close(dy.double(), y64.grad, **gtol)
    torch.testing.assert_close(ds.double(), s64.grad, **tol)


# ---------------------------------------------------------------- pairwise difference (PC-CLIP)
PAIR_CASES = ([(form, N, P, D, s, F32) for form in ("all", "listed") for N, P, D, s in
               [(2, 1, 16, 1.0), (7, 7, 100, 14.3), (17, 64, 16, 1.0), (64, 5, 100, 50.0)]]
              + [(form, N, P, D, s, F16) for form in ("all", "listed") for N, P, D, s in
                 [(7, 33, 16, 14.3), (64, 7, 100, 1.0)]])


@pytest.mark.parametrize("case", PAIR_CASES, ids=lambda c: f"{c[0]}-N{c[1]}-P{c[2]}-D{c[3]}-s{c[4]}-{str(c[5])[6:]}")
def test_pairwise_difference_loss_matches_float64_reference(case):
    form, N, P, D, scale, dtype = case
    inputs = dict(text_features=features(P, D, dtype), image_features=features(N, D, dtype),
                  pairs=distinct_pairs(P, N), logit_scale=torch.tensor(scale))

    def fn(backend, **kw):
        return CF.pairwise_difference_loss(**kw, all_pairs=form == "all", backend=backend)

    loss, grads = cuda_check(fn, inputs, dtype, ["text_features", "image_features", "logit_scale"])
    if P > 1 or form == "all":
        assert loss.abs() > 1e-3 and grads["image_features"].abs().max() > 0


@pytest.mark.parametrize("P,N", [(1, 2), (5, 7), (33, 17)])
def test_pairdiff_ops_against_dense_float64(P, N):
    a = torch.randn(P, N)
    r = torch.rand(N, N)
    r[0, 1] = 0.0  # a degenerate pair: a logit-0 candidate
    s = torch.tensor(3.0)
    lmax, lsum = OPS.pairdiff_fwd(a, r, s)
    a64, r64, s64 = (t.double().requires_grad_() for t in (a, r, s))
    L = s64 * (a64[:, :, None] - a64[:, None, :]) * r64
    off = ~torch.eye(N, dtype=torch.bool)
    lse = L[:, off].logsumexp(1)
    torch.testing.assert_close((lmax + lsum).double(), lse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lmax.double(), L[:, off].amax(1), rtol=1e-6, atol=1e-6)
    g = torch.randn(P)
    u, t = OPS.pairdiff_bwd(a, r, s, lmax, lsum, g)
    (lse * g.double()).sum().backward()
    torch.testing.assert_close(3.0 * u.double(), a64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(3.0 * t.double(), r64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close((t * r).sum().double(), s64.grad, rtol=1e-5, atol=1e-5)


def test_pairdiff_single_image_has_no_candidates():
    lmax, lsum = OPS.pairdiff_fwd(torch.randn(3, 1), torch.zeros(1, 1), torch.tensor(1.0))
    assert torch.isneginf(lmax).all() and torch.isneginf(lsum).all()
    u, t = OPS.pairdiff_bwd(torch.randn(3, 1), torch.zeros(1, 1), torch.tensor(1.0), lmax, lsum, torch.ones(3))
    assert (u == 0).all() and (t == 0).all()


# --------------------------------------------------------------------------- ListMLE / RankCLIP
def _ranking_inputs(B, N, magnitude, ties, dtype):
    scores = (magnitude * (2 * torch.rand(B, N, dtype=torch.float64) - 1)).to(dtype)
    targets = (torch.randint(0, 3, (B, N)) if ties else torch.randn(B, N, dtype=torch.float64)).to(dtype)
    return dict(scores=scores, targets=targets)


LISTMLE_CASES = ([(B, N, 100.0, ties, None, F32) for B, N in [(1, 1), (2, 7), (7, 64), (4, 257)]
                  for ties in (False, True)]
                 + [(5, 100, 14.3, True, "log", dt) for dt in (F32, F16)]
                 + [(64, 7, 100.0, False, "log", F16), (3, 1000, 100.0, True, "log", F32)])


@pytest.mark.parametrize("case", LISTMLE_CASES,
                         ids=lambda c: f"B{c[0]}-N{c[1]}-s{c[2]}-{'ties' if c[3] else 'distinct'}-{c[4]}-{str(c[5])[6:]}")
def test_listmle_loss_matches_float64_reference(case):
    B, N, magnitude, ties, decay, dtype = case
    fn = functools.partial(CF.listmle_loss, decay=decay)
    cuda_check(fn, _ranking_inputs(B, N, magnitude, ties, dtype), dtype, ["scores"])


def test_listmle_ties_signed_zero_and_nan_targets():
    from clipkern.ops.ranking import reference

    scores = torch.randn(3, 6, dtype=torch.float64)
    targets = torch.tensor([[0.0, -0.0, 1.0, 0.0, -0.0, -1.0],    # ±0 tie: column order decides
                            [2.0, 2.0, 2.0, 2.0, 2.0, 2.0],       # all tied: identity order
                            [1.0, float("nan"), 0.5, 0.0, 3.0, 2.0]], dtype=torch.float64)
    for decay_log in (False, True):
        got = OPS.listmle_fwd(scores, targets, decay_log)
        want = reference.listmle_rows(scores, targets, "log" if decay_log else None)
        torch.testing.assert_close(got[:2], want[:2], rtol=1e-12, atol=1e-12)
        assert torch.isnan(got[2]) and torch.isnan(want[2])
        g = torch.randn(3, dtype=torch.float64)
        q = scores.clone().requires_grad_()
        (reference.listmle_rows(q, targets, "log" if decay_log else None)[:2] * g[:2]).sum().backward()
        torch.testing.assert_close(OPS.listmle_bwd(scores, targets, g, decay_log)[:2], q.grad[:2],
                                   rtol=1e-10, atol=1e-12)


def test_listmle_reads_transposed_views():
    logits = torch.randn(9, 9) * 10
    inputs = dict(scores=logits.T, targets=logits)
    cuda_check(functools.partial(CF.listmle_loss, decay="log"), inputs, F32, ["scores"])


# s = 14.3 at B = 1: the loss is exactly 0 there (one logit minus itself), so the error floor is
# absolute (1e-6) and any independent fp32 rounding of s·<v, t> at s = 50 (half an ulp = 1.9e-6) fails it
@pytest.mark.parametrize("B,D,scale,dtype,decay", [(1, 16, 14.3, F32, None), (7, 16, 50.0, F32, "log"),
                                                   (40, 100, 50.0, F16, None), (64, 100, 50.0, F32, "log")])
def test_rankclip_matrix_path_matches_float64_reference(B, D, scale, dtype, decay):
    def fn(image_features, text_features, logit_scale, backend):
        module = clipkern.RankClipLoss(6, decay=decay, backend=backend)
        return module(image_features, text_features, logit_scale, epoch=4)

    inputs = dict(image_features=features(B, D, dtype), text_features=features(B, D, dtype),
                  logit_scale=torch.tensor(scale))
    cuda_check(fn, inputs, dtype, ["image_features", "text_features", "logit_scale"])


def test_rankclip_fused_is_triton_only():
    module = clipkern.RankClipLoss(6, fused=True, backend="cuda")
    with pytest.raises(ValueError, match="backend 'cuda' has no fused kernel"):
        module(features(4, 8), features(4, 8), torch.tensor(10.0), epoch=4)


# ------------------------------------------------------------------------------------- opcheck
def _opcheck_cases(dtype):
    x, y = features(7, 20, dtype), features(33, 20, dtype)
    s = torch.tensor(14.3)
    rm, rl, cm, cl = OPS.contrastive_fwd(x, y, s)
    labels = torch.randint(0, 33, (7,))
    loss_stats = OPS.contrastive_loss_fwd(x, y, s, labels, True)[1:]
    a, r = torch.randn(5, 9), torch.rand(9, 9)
    lmax, lsum = OPS.pairdiff_fwd(a, r, s)
    scores, targets = torch.randn(6, 11, dtype=dtype), torch.randn(6, 11, dtype=dtype)
    grad = lambda t: t.clone().requires_grad_()  # noqa: E731
    return [
        (OPS.contrastive_fwd, (grad(x), grad(y), grad(s))),
        (OPS.contrastive_bwd, (x, y, s, rm, rl, cm, cl, torch.randn(7), torch.randn(33))),
        (OPS.contrastive_bwd, (x, x, s, rm, rl, rm, rl, torch.randn(7), torch.randn(7), torch.tensor(-0.3))),
        (OPS.contrastive_loss_fwd, (grad(x), grad(y), grad(s), None, True)),
        (OPS.contrastive_loss_fwd, (grad(x), grad(y), grad(s), labels, True)),
        (OPS.contrastive_loss_fwd, (grad(x), grad(y), grad(s), None, False)),
        (OPS.contrastive_loss_bwd, (x, y, s, labels, *loss_stats, torch.randn(()), True)),
        (OPS.pairdiff_fwd, (grad(a), grad(r), grad(s))),
        (OPS.pairdiff_bwd, (a, r, s, lmax, lsum, torch.randn(5))),
        (OPS.listmle_fwd, (grad(scores), targets, True)),
        (OPS.listmle_fwd, (grad(scores.T), targets.T, False)),
        (OPS.listmle_bwd, (scores, targets, torch.randn(6), False)),
    ]


@pytest.mark.parametrize("dtype", [F32, F16])
def test_opcheck_every_schema(dtype):
    import clipkern.ops.contrastive.extension_ops  # noqa: F401  (fake + autograd registrations)
    import clipkern.ops.pairdiff.extension_ops  # noqa: F401
    import clipkern.ops.ranking.extension_ops  # noqa: F401

    for op, args in _opcheck_cases(dtype):
        torch.library.opcheck(op, args)


def test_fullgraph_compile_of_the_cuda_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))

    def step(a, c, s):
        return CF.clip_loss(a, c, s, backend="cuda") + CF.listmle_loss(a @ c.T, c @ a.T, backend="cuda")

    assert_compile_matches_eager(step, [features(9, 16), features(9, 16), torch.tensor(10.0)])


# ------------------------------------------------------------------ families without a csrc twin
def test_families_without_a_cuda_twin_raise_a_clear_error():
    a, c = features(4, 8), features(4, 8)
    with pytest.raises((ValueError, clipkern.BackendUnavailable), match="cuda"):
        CF.imsep_loss(a, c, features(4, 5), torch.tensor(10.0), backend="cuda")
    err = _backend.no_cuda_twin("sigmoid")
    assert "backend='cuda'" in str(err) and "triton" in str(err) and "sigmoid" in str(err)


def test_cuda_backend_on_cuda_tensors_needs_the_cuda_kernels():
    why = _backend.unavailable_reason("cuda", torch.device("cuda"))
    if _extension.has_cuda():
        assert why is None
    else:
        assert "built without its CUDA kernels" in why
    assert _backend.unavailable_reason("cuda", torch.device("cpu")) is None


# ---------------------------------------------------------------------- measured selection table
def test_committed_table_is_valid_and_its_sources_exist():
    root = os.path.dirname(os.path.dirname(os.path.abspath(_selection.__file__)))
    for rule in _selection.load_rules(_selection.TABLE_PATH):
        assert os.path.exists(os.path.join(root, rule.source)), rule
    # no rule matches CPU tensors: auto keeps its CPU default there (the C++ op, tests/test_cpu_lean_path.py)
    assert _backend.resolve("auto", torch.device("cpu"), F32, family="contrastive", rows=64) == "cuda"


def _write_table(tmp_path, rules):
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"version": 1, "rules": rules}))
    return str(path)


RULES = [
    {"family": "contrastive", "gpu": "H100", "dtype": "bfloat16", "min_rows": 4096, "max_rows": None,
     "backend": "cuda", "source": "benchmarks/results/h100/contrastive.json"},
    {"family": "contrastive", "gpu": "*", "dtype": "*", "min_rows": None, "max_rows": 8,
     "backend": "reference", "source": "benchmarks/results/h100/contrastive.json"},
    {"family": "ranking", "gpu": "h100", "dtype": "*", "min_rows": None, "max_rows": None,
     "backend": "cuda", "source": "benchmarks/results/h100/ranking.json"},
]


def test_selection_rules_match_gpu_dtype_and_rows(monkeypatch, tmp_path):
    path = _write_table(tmp_path, RULES)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    dev = torch.device("cuda")
    choose = functools.partial(_selection.choose, path=path)
    assert choose("contrastive", dev, BF16, 32768).backend == "cuda"
    assert choose("contrastive", dev, F16, 32768) is None  # dtype does not match
    assert choose("contrastive", dev, BF16, 1024) is None  # below min_rows
    assert choose("contrastive", dev, F16, 8).backend == "reference"  # second rule, wildcard GPU
    assert choose("ranking", dev, F32, 5).backend == "cuda"  # case-insensitive GPU match
    assert choose("pairdiff", dev, F32, 5) is None
    assert choose(None, dev, BF16, 32768) is None  # no family: no rule
    assert choose("contrastive", torch.device("cpu"), BF16, 32768) is None  # CPU tensors: no rule
    # an unavailable backend is skipped, then the next matching rule (or the default) applies
    assert choose("contrastive", dev, BF16, 32768, available=lambda b: b != "cuda") is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-40GB")
    assert choose("contrastive", dev, BF16, 32768) is None
    assert choose("ranking", dev, F32, 5) is None


def test_auto_follows_the_table(monkeypatch, tmp_path):
    monkeypatch.setattr(_selection, "TABLE_PATH", _write_table(tmp_path, RULES))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.delenv("CLIPKERN_BACKEND", raising=False)
    dev = torch.device("cuda")
    monkeypatch.setattr(_backend, "unavailable_reason", lambda name, device=None: None)
    assert _backend.resolve("auto", dev, BF16, family="contrastive", rows=32768) == "cuda"
    assert _backend.resolve("auto", dev, F32, family="contrastive", rows=4) == "reference"
    # no matching rule: the default (triton on CUDA tensors when it can run)
    monkeypatch.setattr(_backend, "triton_unavailable_reason", lambda device=None: None)
    assert _backend.resolve("auto", dev, F32, family="contrastive", rows=1000) == "triton"
    # the rule's backend cannot run here: skipped
    monkeypatch.setattr(_backend, "unavailable_reason", lambda name, device=None: "no" if name == "cuda" else None)
    assert _backend.resolve("auto", dev, BF16, family="contrastive", rows=32768) == "triton"


@pytest.mark.parametrize("bad,words", [
    ({"family": "softmax"}, "family must be one of"),
    ({"dtype": "fp8"}, "dtype must be one of"),
    ({"backend": "cudnn"}, "backend must be one of"),
    ({"min_rows": 0}, "min_rows must be a positive integer"),
    ({"source": ""}, "source must name the benchmark JSON"),
], ids=["family", "dtype", "backend", "min_rows", "source"])
def test_malformed_table_names_the_problem(tmp_path, bad, words):
    path = _write_table(tmp_path, [{**RULES[0], **bad}])
    with pytest.raises(ValueError, match=words):
        _selection.load_rules(path)
    rule = dict(RULES[0])
    del rule["source"]
    with pytest.raises(ValueError, match="lacks"):
        _selection.load_rules(_write_table(tmp_path, [rule]))


# -------------------------------------------------------------------------------- GPU lane
GPU_DTYPES = [F32, F16, BF16]


def _three_way(fn, inputs, dtype, grads):
    """cuda vs the fp64 reference (2× torch rule) and vs triton (same rule against triton's error)."""
    upstream = 0.73
    got, g_got = run_with_grads(lambda **kw: fn(**kw, backend="cuda"), inputs, upstream)
    twin, g_twin = run_with_grads(lambda **kw: fn(**kw, backend="triton"), inputs, upstream)
    same, g_same = run_with_grads(lambda **kw: fn(**kw, backend="reference"), inputs, upstream)
    ref, g_ref = run_with_grads(lambda **kw: fn(**kw, backend="reference"),
                                {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                                 for k, v in inputs.items()}, upstream)
    assert_within_2x_torch("loss", got, same, ref, dtype)
    assert_within_2x_torch("loss vs triton", got, twin, ref, dtype)
    for name in grads:
        assert_within_2x_torch(f"d{name}", g_got[name], g_same[name], g_ref[name], dtype)
        assert_within_2x_torch(f"d{name} vs triton", g_got[name], g_twin[name], g_ref[name], dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("B,N,D", [(1, 1, 16), (7, 7, 100), (257, 257, 768), (1000, 1000, 512), (64, 4099, 100)])
def test_gpu_clip_loss_cuda_vs_triton_and_reference(B, N, D, dtype):
    inputs = dict(image_features=features(B, D, dtype, "cuda"), text_features=features(N, D, dtype, "cuda"),
                  logit_scale=torch.tensor(100.0, device="cuda"))
    if N != B:
        inputs["labels"] = torch.randperm(N, device="cuda")[:B]
    _three_way(CF.clip_loss, inputs, dtype, ["image_features", "text_features", "logit_scale"])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("N,P", [(2, 1), (17, 33), (257, 64)])
def test_gpu_all_pairs_cuda_vs_triton_and_reference(N, P, dtype):
    inputs = dict(text_features=features(P, 64, dtype, "cuda"), image_features=features(N, 64, dtype, "cuda"),
                  pairs=distinct_pairs(P, N).cuda(), logit_scale=torch.tensor(14.3, device="cuda"))
    fn = functools.partial(CF.pairwise_difference_loss, all_pairs=True)
    _three_way(fn, inputs, dtype, ["text_features", "image_features", "logit_scale"])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("B,N", [(1, 1), (7, 33), (257, 257), (64, 4096)])
def test_gpu_listmle_cuda_vs_triton_and_reference(B, N, dtype):
    inputs = {k: v.cuda() for k, v in _ranking_inputs(B, N, 14.3, True, dtype).items()}
    _three_way(functools.partial(CF.listmle_loss, decay="log"), inputs, dtype, ["scores"])
