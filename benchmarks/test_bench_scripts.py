"""Smoke tests of the benchmark scripts (benchmarks.bench_pcclip, bench_ranking, run) and of their
shared loop, common.sweep, at tiny sizes on CPU, so that a crash shows in CI and not first on a
scarce GPU session.

    TRITON_INTERPRET=1 pytest benchmarks/test_bench_scripts.py -q --benchmark-disable

Each script's main runs on sizes 16 and 32, D = 16, fp32, a 1 ms time budget, with the providers
that can run on a CPU (clipkern: the Triton kernels interpreted under TRITON_INTERPRET=1, else the
reference; the torch reference; open_clip for run.py) and with cuda / inf-cl, which are skipped
there with their reasons. torch.compile is left out: compiling takes longer than the whole test.
The JSON it writes is checked (every provider has rows, a skipped one says why, clipkern's loss
agrees with the torch provider's) and so is the printed table. Timings are not checked.
"""
from __future__ import annotations

import json

import pytest
import torch

from . import bench_pcclip, bench_ranking, common as C, run as bench_run

SIZES = (16, 32)
FLAGS = ["--dim", "16", "--dtype", "fp32", "--rep-ms", "1"]


def _main(script, tmp_path, capsys, size_flag, providers, filename):
    """Runs script.main on the tiny sizes; (rows of its JSON, printed table)."""
    argv = ["--out", str(tmp_path), size_flag, *map(str, SIZES), *FLAGS, "--providers", *providers]
    assert script.main(argv) == 0
    (path,) = tmp_path.glob(f"*/{filename}")
    return json.loads(path.read_text()), capsys.readouterr().out


def _check_rows(rows, providers, size_key):
    """Every provider: one skipped row with a reason, or a time_ms and a peak_mem_mib row per size."""
    for name in providers:
        mine = [r for r in rows if r["provider"] == name]
        assert mine, f"no rows for {name}"
        if mine[0]["status"] == "skipped":
            assert len(mine) == 1 and mine[0]["note"], mine
            continue
        assert [(r[size_key], r["metric"]) for r in mine] == [(n, m) for n in SIZES for m in C.METRICS], mine
        for r in mine:
            assert r["status"] in ("ok", "not measured"), r
            assert r["D"] == 16 and r["dtype"] == "fp32" and r["mode"] == "fwd+bwd", r
            assert r["torch"] == torch.__version__ and r["date"], r
        for r in mine[::2]:  # time_ms
            assert r["median"] > 0 and r["q20"] <= r["median"] <= r["q80"] and r["reps"] >= 3, r
            assert r["loss_value"] is not None and r["loss_value"] == r["loss_value"], r  # not NaN
    return {name: [r for r in rows if r["provider"] == name] for name in providers}


def _skipped(rows, name):
    return any(r["provider"] == name and r["status"] == "skipped" for r in rows)


def _check_table(out, rows, title):
    assert f"== {title}" in out
    for r in rows:
        if r["status"] == "skipped":
            assert f"skipped {r['provider']}: {r['note']}" in out
        elif r["metric"] == "time_ms":
            assert any(line.split()[:2] == [str(r[next(k for k in ("N", "B") if k in r)]), r["provider"]]
                       for line in out.splitlines()), f"no table line for {r['provider']}"


def test_bench_pcclip_script(tmp_path, capsys):
    providers = ["clipkern", "clipkern-listed", "cuda", "torch"]
    rows, out = _main(bench_pcclip, tmp_path, capsys, "--sizes", providers, "pcclip_pairdiff.json")
    by = _check_rows(rows, providers, "N")
    assert not _skipped(rows, "torch") and not _skipped(rows, "clipkern")
    for r in rows:
        if r["metric"] is not None:
            assert r["B"] == r["N"] == r["P"] and r["loss"] == bench_pcclip.LOSS, r
    for r in by["torch"][::2]:
        assert r["rel_diff_vs_torch"] == 0.0, r
    for r in by["clipkern"][::2]:
        assert r["rel_diff_vs_torch"] is not None and r["rel_diff_vs_torch"] < 1e-4, r
    for r in by["clipkern-listed"]:  # a different loss: no comparison with the all-pairs torch value
        assert r["rel_diff_vs_torch"] is None, r
    if not torch.cuda.is_available():
        assert _skipped(rows, "cuda")
    _check_table(out, rows, "PC-CLIP all-pairs loss")
    assert "N=P" in out.splitlines()[1]


def test_bench_ranking_script(tmp_path, capsys):
    providers = ["clipkern", "clipkern-matrix", "cuda", "torch"]
    rows, out = _main(bench_ranking, tmp_path, capsys, "--batch-sizes", providers, "rankclip_listmle.json")
    by = _check_rows(rows, providers, "B")
    assert not _skipped(rows, "torch") and not _skipped(rows, "clipkern")
    for r in by["torch"][::2]:
        assert r["rel_diff_vs_torch"] == 0.0, r
    for name in ("clipkern", "clipkern-matrix"):
        for r in by[name][::2]:
            if r["status"] == "ok":
                assert r["rel_diff_vs_torch"] < 1e-4, r
                assert r["note"], r  # which path ran: fused / matrix / torch reference
    if not torch.cuda.is_available():
        assert _skipped(rows, "cuda")
    _check_table(out, rows, "four ListMLE calls of a RankCLIP step")


def test_run_script_clip(tmp_path, capsys):
    providers = ["clipkern", "cuda", "torch", "open_clip", "inf-cl"]
    argv = ["--out", str(tmp_path), "--loss", "clip", "--batch-sizes", *map(str, SIZES), *FLAGS,
            "--providers", *providers]
    assert bench_run.main(argv) == 0
    (path,) = tmp_path.glob("*/clip.json")
    assert path.with_suffix(".png").stat().st_size > 0
    rows, out = json.loads(path.read_text()), capsys.readouterr().out
    by = _check_rows(rows, providers, "B")
    assert not _skipped(rows, "torch") and not _skipped(rows, "clipkern")
    if not torch.cuda.is_available():
        assert _skipped(rows, "cuda") and _skipped(rows, "inf-cl")
    ref = {r["B"]: r["loss_value"] for r in by["torch"][::2]}
    for name in ("clipkern", "open_clip"):
        for r in by[name][::2]:
            if r["status"] == "ok":
                assert abs(r["loss_value"] - ref[r["B"]]) <= 1e-4 * abs(ref[r["B"]]), r
                assert r["tflops"] > 0, r
    _check_table(out, rows, "clip loss, fwd+bwd, D=16")


# ------------------------------------------------------------------------ the shared loop itself
def _provider(name, fail_at=None, message="boom"):
    def fn(i, t, s, b):
        if i.shape[0] == fail_at:
            raise RuntimeError(message)
        return (s * (i * t).sum(-1)).mean()

    return C.Provider(name, "test", fn, "eager", f"note of {name}")


def _sweep(providers, sizes=(4, 8, 16), **kw):
    def make_row(name, backend, size, metric, status, note="", **vals):
        row = dict(provider=name, backend=backend, B=size, metric=metric, status=status, note=note,
                   median=None, loss_value=None, rel_diff_vs_torch=None)
        return {**row, **vals}

    rows = C.sweep(providers, sizes, lambda B: C.make_inputs("clip", B, 8, torch.float32, "cpu", seed=B),
                   make_row, label="[test] B={size} {name}", device=torch.device("cpu"),
                   time_kw=dict(warmup_ms=0.0, rep_ms=0.0, min_reps=3), **kw)
    return C.rel_diff_vs_torch(rows, "B")


def test_sweep_records_errors_and_stops_the_provider():
    rows = _sweep([_provider("torch"), _provider("bad", fail_at=8), _provider("oom", 4, "CUDA out of memory.")],
                  skipped=[("gone", "not installed")])
    assert rows[0] == dict(provider="gone", backend=None, B=None, metric=None, status="skipped",
                           note="not installed", median=None, loss_value=None, rel_diff_vs_torch=None)
    seen = [(r["provider"], r["B"], r["metric"], r["status"]) for r in rows[1:]]
    assert seen == [("torch", 4, "time_ms", "ok"), ("torch", 4, "peak_mem_mib", "not measured"),
                    ("bad", 4, "time_ms", "ok"), ("bad", 4, "peak_mem_mib", "not measured"),
                    ("oom", 4, "time_ms", "OOM"), ("oom", 4, "peak_mem_mib", "OOM"),
                    ("torch", 8, "time_ms", "ok"), ("torch", 8, "peak_mem_mib", "not measured"),
                    ("bad", 8, "time_ms", "error"), ("bad", 8, "peak_mem_mib", "error"),
                    ("torch", 16, "time_ms", "ok"), ("torch", 16, "peak_mem_mib", "not measured")]
    for r in rows:
        if r["status"] == "error":
            assert r["note"] == "RuntimeError: boom" and r["loss_value"] is None
        if r["status"] == "ok":
            assert r["note"] == f"note of {r['provider']}" and r["rel_diff_vs_torch"] == 0.0
            assert r["median"] > 0 and r["reps"] >= 3
        if r["status"] == "not measured":
            assert r["note"] == "not measured on CPU" and r["median"] is None


def test_sweep_options():
    calls = []
    rows = _sweep([_provider("torch"), _provider("never", fail_at=4), _provider("later", fail_at=8)],
                  sizes=(4, 8), also=[(16, [_provider("huge")])], first_failure_skips=True,
                  value_dtype=torch.float32, note_fn=lambda p, B: f"{p.name}@{B}",
                  time_vals=lambda B, t: calls.append(B) or {"extra": B})
    seen = [(r["provider"], r["B"], r["metric"], r["status"]) for r in rows]
    assert seen == [("torch", 4, "time_ms", "ok"), ("torch", 4, "peak_mem_mib", "not measured"),
                    ("never", None, None, "skipped"),  # its first run failed: not a result at B=4
                    ("later", 4, "time_ms", "ok"), ("later", 4, "peak_mem_mib", "not measured"),
                    ("torch", 8, "time_ms", "ok"), ("torch", 8, "peak_mem_mib", "not measured"),
                    ("later", 8, "time_ms", "error"), ("later", 8, "peak_mem_mib", "error"),
                    ("huge", 16, "time_ms", "ok"), ("huge", 16, "peak_mem_mib", "not measured")]
    assert calls == [4, 4, 8, 16]
    for r in rows:
        if r["metric"] == "time_ms" and r["status"] == "ok":
            assert r["note"] == f"{r['provider']}@{r['B']}" and r["extra"] == r["B"]


@pytest.mark.parametrize("show_note", [False, True])
def test_ratio_table(show_note):
    rows = _sweep([_provider("torch"), _provider("bad", fail_at=8)], sizes=(4, 8), skipped=[("gone", "why")])
    lines = C.ratio_table(rows, "B", "B", show_note=show_note).splitlines()
    assert lines[0].split()[:2] == ["B", "provider"]
    assert [ln.split()[:2] for ln in lines[1:5]] == [["4", "bad"], ["4", "torch"], ["8", "bad"], ["8", "torch"]]
    assert lines[3].rstrip().endswith("error: RuntimeError: boom")
    assert lines[2].rstrip().endswith("ok note of torch" if show_note else "1.00       n/a        -   0.0e+00  ok")
    assert lines[5:] == ["skipped gone: why", "peak memory: not measured on CPU (CUDA only)"]
