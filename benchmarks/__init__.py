"""Benchmarks for clipkern: providers side by side in one process (see benchmarks/common.py).

    python -m benchmarks.demo               # `make demo`: clipkern vs open_clip, short
    python -m benchmarks.run --out DIR      # `make bench`: JSON + PNG per loss under DIR/<gpu>/
    pytest benchmarks/test_bench_losses.py  # pytest-benchmark suite (also a CI smoke test)
"""
