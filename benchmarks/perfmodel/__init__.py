"""CPU performance model of the fused losses on an H100/H200: see benchmarks/ROOFLINE.md."""
