"""RankCLIP / ListMLE at any batch (clipkern/ops/ranking/chunked.py): the row-chunked path against the
float64 reference (odd shapes, decay, 16-bit features, exact ties, per-row random upstream
gradients), the dispatch that picks it, its custom ops, and its peak memory measured in a
subprocess (process RSS high-water mark) against the bound the code computes."""
import functools
import json
import os
import subprocess
import sys

import pytest
import torch

import clipkern
import clipkern.ops.ranking as ranking
from clipkern.ops.ranking import chunked, listmle_rows_chunked, rankclip_rows_chunked, rankclip_terms, reference
from helpers import check_against_reference, features, run_with_grads

F32, F16 = torch.float32, torch.float16
GRADS = ["image_features", "text_features", "logit_scale"]


def _inputs(B, D, scale, dtype):
    return dict(image_features=features(B, D, dtype), text_features=features(B, D, dtype),
                logit_scale=torch.tensor(scale, dtype=torch.float64 if dtype == torch.float64 else F32))


def _terms_fn(decay, chunk_rows, weights):
    """w_cross·R_cross + w_in·R_in: the chunked path as the 'kernel' backend, the reference otherwise."""
    def fn(image_features, text_features, logit_scale, backend):
        if backend == "chunked":
            cross, inner = rankclip_terms(image_features, text_features, logit_scale, decay, "reference",
                                          chunk_rows=chunk_rows)
        else:
            cross, inner = reference.rankclip_terms(image_features, text_features, logit_scale, decay)
        return weights[0] * cross + weights[1] * inner
    return fn


@pytest.mark.parametrize("B, D, scale, dtype, decay, chunk", [
    (300, 8, 50.0, F32, None, 64),     # 64·4 + 44
    (777, 5, 100.0, F32, "log", 100),  # odd B, small D, 7 full chunks + 77
    (90, 16, 30.0, F16, "log", 33),
    (41, 12, 20.0, F32, None, 41),     # one chunk
])
def test_chunked_terms_match_float64_reference(B, D, scale, dtype, decay, chunk):
    weights = (float(torch.empty(()).uniform_(0.5, 2)), float(torch.empty(()).uniform_(-2, -0.5)))
    check_against_reference(_terms_fn(decay, chunk, weights), _inputs(B, D, scale, dtype), dtype, GRADS,
                            kernel_backend="chunked")


def _exact_tied_features(B, D):
    """Entries in {−½, 0, ½} and repeated rows: every dot product is exact in fp32, so fp32 and fp64
    see the same targets with many exact ties."""
    base = (torch.randint(-1, 2, (B // 3 + 1, D)) / 2).to(torch.float64)
    return base[torch.randint(0, base.shape[0], (B,))]


@pytest.mark.parametrize("decay", [None, "log"])
def test_ties_follow_the_column_index_rule(decay):
    B, D = 90, 4
    V, T = _exact_tied_features(B, D), _exact_tied_features(B, D)
    L = V @ T.T
    assert min(len(row.unique()) for row in L) < B // 4, "the inputs must have many ties per row"
    inputs = dict(image_features=V, text_features=T, logit_scale=torch.tensor(8.0, dtype=torch.float64))
    fn = _terms_fn(decay, 16, (1.0, 0.6))
    got, g_got = run_with_grads(lambda **kw: fn(**kw, backend="chunked"), inputs, -1.2)
    want, g_want = run_with_grads(lambda **kw: fn(**kw, backend="reference"), inputs, -1.2)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-10)
    for name in GRADS:
        torch.testing.assert_close(g_got[name], g_want[name], rtol=1e-10, atol=1e-10)
    inputs32 = {k: v.float() for k, v in inputs.items()}  # exact products: fp32 takes the same order
    check_against_reference(fn, inputs32, F32, GRADS, kernel_backend="chunked")


def test_per_row_terms_with_random_upstream_gradients():
    """The op's per-row (cross_r, inner_r) in fp64 against reference.listmle_rows on the four
    matrices, with an independent random upstream gradient for every row of both outputs."""
    B, D, s = 37, 6, 25.0
    leaves = [features(B, D, torch.float64).requires_grad_() for _ in range(2)]
    scale = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    g_cross, g_inner = torch.randn(B, dtype=torch.float64), torch.randn(B, dtype=torch.float64)

    def grads_of(cross, inner, tensors):
        return torch.autograd.grad((g_cross * cross).sum() + (g_inner * inner).sum(), tensors)

    cross, inner = rankclip_rows_chunked(*leaves, scale, True, 10)
    got = grads_of(cross, inner, [*leaves, scale])
    V, T = leaves
    L, Gv, Gt = scale * (V @ T.T), scale * (V @ V.T), scale * (T @ T.T)
    rows = lambda x, y: reference.listmle_rows(x, y, "log")  # noqa: E731
    cross_ref, inner_ref = rows(L, L.T) + rows(L.T, L), rows(Gv, Gt) + rows(Gt, Gv)
    want = grads_of(cross_ref, inner_ref, [*leaves, scale])
    torch.testing.assert_close(cross, cross_ref, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(inner, inner_ref, rtol=1e-12, atol=1e-10)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-11)


def test_rankclip_loss_above_the_matrix_limit_takes_the_chunked_path(monkeypatch):
    """fused=None above MATRIX_PATH_MAX_B: the chunked op on every backend (spied), several chunks,
    equal to the reference objective; fused=False still forms the matrices."""
    monkeypatch.setattr(ranking, "MATRIX_PATH_MAX_B", 8)
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 5 * 12)  # 5-row chunks at B = 12
    calls = []
    real = ranking.rankclip_rows_chunked
    monkeypatch.setattr(ranking, "rankclip_rows_chunked", lambda *a: calls.append(a[-1]) or real(*a))
    inputs = _inputs(12, 16, 20.0, F32)

    def fn(image_features, text_features, logit_scale, backend):
        module = clipkern.RankClipLoss(6, decay="log", backend="triton" if backend == "triton" else "reference")
        return module(image_features, text_features, logit_scale, epoch=4)

    check_against_reference(fn, inputs, F32, GRADS, reference_backend="reference", kernel_backend="triton")
    assert calls and set(calls) == {5}, f"the chunked op must run with 5-row chunks, saw {calls}"
    calls.clear()
    rankclip_terms(*inputs.values(), None, "triton", fused=False)
    assert not calls, "fused=False forces the matrix path"


@pytest.mark.parametrize("kwargs, words", [
    (dict(chunk_rows=0), "chunk_rows must be a positive int"),
    (dict(chunk_rows=2.0), "chunk_rows must be a positive int"),
    (dict(chunk_rows=True), "chunk_rows must be a positive int"),
    (dict(chunk_rows=4, fused=False), r"chunk_rows=4 .* cannot be combined with fused=False"),
])
def test_bad_chunk_rows_names_the_argument(kwargs, words):
    with pytest.raises(ValueError, match=words):
        rankclip_terms(*_inputs(6, 4, 10.0, F32).values(), None, "reference", **kwargs)


def test_long_rows_take_the_chunked_path(monkeypatch):
    """listmle_loss with rows over MATRIX_MAX_N: the row-chunked op (several chunks), ties and a
    transposed view, against the float64 reference; a non-finite target still gives NaN."""
    from clipkern import functional as CF

    monkeypatch.setattr(ranking, "MATRIX_MAX_N", 16)
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 4 * 40)  # 4-row chunks
    calls = []
    real = ranking.listmle_rows_chunked
    monkeypatch.setattr(ranking, "listmle_rows_chunked", lambda *a: calls.append(a[-1]) or real(*a))
    scores = (30 * torch.randn(40, 30)).T  # 30 rows of 40 columns, a transposed view
    targets = torch.randint(0, 4, (30, 40)).float()
    for decay in (None, "log"):
        check_against_reference(functools.partial(CF.listmle_loss, decay=decay), dict(scores=scores, targets=targets),
                                F32, ["scores"])
    assert calls == [4, 4], f"the chunked op must run in 4-row chunks, saw {calls}"
    targets[3, 7] = float("inf")
    assert torch.isnan(CF.listmle_loss(scores, targets, backend="triton"))


@pytest.mark.parametrize("dtype", [F32, torch.float64], ids=["fp32", "fp64"])
def test_opcheck_chunked_ops(dtype):
    v = features(11, 6, dtype).requires_grad_()
    t = features(11, 6, dtype).requires_grad_()
    s = torch.tensor(20.0, dtype=dtype, requires_grad=True)
    torch.library.opcheck(rankclip_rows_chunked, (v, t, s, True, 4))
    torch.library.opcheck(rankclip_rows_chunked, (v, v, s, False, 11))
    scores = (10 * torch.randn(5, 13, dtype=dtype)).requires_grad_()
    torch.library.opcheck(listmle_rows_chunked, (scores, torch.randint(0, 3, (5, 13)).to(dtype), True, 2))


def test_double_backward_raises_a_clear_error():
    v, t = (features(6, 4).requires_grad_() for _ in range(2))
    cross, inner = rankclip_terms(v, t, torch.tensor(5.0), None, "reference", chunk_rows=4)
    (dv,) = torch.autograd.grad(cross + inner, v, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward .* row-chunked RankCLIP"):
        dv.sum().backward()


def test_model_bound_at_32768_is_under_one_gib():
    """The computed bound (chunked.peak_extra_bytes, from the chunk the code picks) at the issue's
    size: B = 32768 with CLIP-sized features."""
    for dim, dtype in ((768, torch.bfloat16), (1024, torch.bfloat16), (1024, F32)):
        assert chunked.peak_extra_bytes(32768, dim, dtype) <= 2**30, (dim, dtype)
    assert chunked.chunk_rows(32768, 32768) == chunked.CHUNK_ELEMENTS // 32768


MEMORY_SCRIPT = r'''
import json, sys, time
import torch
torch.set_num_threads(1)
from clipkern.ops.ranking import rankclip_terms, reference

def status(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))

def leaves(B, D):
    g = torch.Generator().manual_seed(B)
    return [torch.randn(B, D, generator=g).requires_grad_(), torch.randn(B, D, generator=g).requires_grad_(),
            torch.tensor(10.0, requires_grad=True)]

def peak_extra(step, B, D):
    """Bytes of RSS above the level just before step(...), the inputs already allocated."""
    inputs = leaves(B, D)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = status("VmRSS")
    step(*inputs)
    return status("VmHWM") - before

def chunked(chunk):
    def step(v, t, s):
        cross, inner = rankclip_terms(v, t, s, "log", "reference", chunk_rows=chunk)
        (cross + inner).backward()
    return step

def matrices(v, t, s):
    cross, inner = reference.rankclip_terms(v, t, s, "log")
    (cross + inner).backward()

B, D, chunk, control_B = (int(a) for a in sys.argv[1:])
chunked(8)(*leaves(16, D)); matrices(*leaves(16, D))  # warm-up: every op once
t0 = time.time()
out = dict(chunked=peak_extra(chunked(chunk), B, D), seconds=time.time() - t0,
           control=peak_extra(matrices, control_B, D))
print(json.dumps(out))
'''


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
def test_peak_memory_stays_within_the_computed_bound():
    """Fresh process, one thread; glibc returns every block ≥ 64 KiB to the OS when freed
    (MALLOC_MMAP_THRESHOLD_), so RSS tracks live torch CPU tensors. Forward + backward of the chunked
    path at B = 2048 in 64-row chunks must stay under chunked.peak_extra_bytes (+ 2 MiB for the
    allocator and interpreter), which is below one B×B fp32 matrix: any B×B buffer fails it. The
    control run (the matrix reference at B = 512) shows the measurement does see torch tensors."""
    B, D, chunk, control_B = 2048, 64, 64, 512
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(B), str(D), str(chunk), str(control_B)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    bound = chunked.peak_extra_bytes(B, D, F32, chunk) + 2 * 2**20
    assert bound < 4 * B * B, "the bound must be below one B×B fp32 matrix for this test to mean anything"
    assert measured["chunked"] <= bound, f"measured {measured['chunked'] / 2**20:.1f} MiB > {bound / 2**20:.1f} MiB"
    assert measured["control"] >= 3 * 4 * control_B**2, f"control saw only {measured['control']} bytes"
