"""Loss families, one folder each: reference.py (plain torch), triton_kernels.py (@triton.jit),
triton_launchers.py (launchers), __init__.py (custom ops, autograd and dispatch). Shared pieces live in
clipkern/ops/base/."""
