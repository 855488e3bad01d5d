"""benchmarks/cpu_compare.py (`python -m benchmarks.run --cpu-compare`): a tiny run writes rows of
run.py's schema with a measured peak extra memory for every provider, and the RSS high-water mark
it reads sees a plain torch allocation."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import cpu_compare

ROOT = Path(__file__).resolve().parent.parent


def test_high_water_mark_sees_a_torch_allocation():
    script = ("import torch, benchmarks.cpu_compare as cc\n"
              "before = cc._status_kib('VmRSS')\n"
              "open('/proc/self/clear_refs', 'w').write('5')\n"
              "x = torch.ones(64 * 2**20 // 4); del x\n"
              "print((cc._status_kib('VmHWM') - before) / 1024)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                         env={"MALLOC_MMAP_THRESHOLD_": "65536", "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 60 <= float(out.stdout.strip().splitlines()[-1]) <= 80  # the 64 MiB tensor, freed again


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tiny_cpu_compare_run_writes_memory_and_time_rows(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--cpu-compare", "--out", str(tmp_path),
                           "--batch-sizes", "96", "--dim", "16", "--loss", "clip", "siglip", "--cpu-threads", "1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=580)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    for loss in ("clip", "siglip"):
        rows = json.loads((tmp_path / "cpu" / f"{loss}_cpu_compare.json").read_text())
        got = {(r["provider"], r["metric"]): r for r in rows}
        for name in cpu_compare.DEFAULT_PROVIDERS:
            mem, tm = got[(name, "peak_mem_mib")], got[(name, "time_ms")]
            assert mem["status"] == tm["status"] == "ok", (mem, tm)
            assert mem["median"] is not None and mem["memory_method"] == cpu_compare.MEMORY_METHOD
            assert tm["median"] > 0 and tm["reps"] == 3 and tm["threads"] == 1 and tm["B"] == 96
        assert abs(got[("clipkern", "time_ms")]["loss_value"] - got[("open_clip", "time_ms")]["loss_value"]) < 1e-4
    assert "x open_clip" in proc.stdout
