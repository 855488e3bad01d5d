"""Count the work of one call on the GPU's launch configuration, on a CPU.

Two hooks, active inside `Recorder`:

* Triton interpreter (TRITON_INTERPRET=1): `InterpretedFunction.run` records every launch (kernel,
  grid, arguments, constexprs, num_warps/num_stages) and derives the JIT's runtime specialization
  for an sm_90 target from triton's own binder; `InterpreterBuilder.create_dot` tallies
  2·M·N·K per tl.dot, `create_exp`/`create_exp2` (and libdevice exp*) the elements exponentiated,
  `create_log`/`create_log2` the logarithms. With `stub_kernels=True` launches are recorded but
  not executed (the structural pass: launches, torch ops and syncs at the full batch).
* torch (`TorchDispatchMode`): every aten op outside the interpreter is classified (see
  `classify`): GEMM FLOPs from shapes, device-work ops, host-device syncs. With `stub_gemms=True`
  the GEMMs return uninitialised outputs of the right shape instead of computing.
"""
from __future__ import annotations

import contextlib

import math
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# ---------------------------------------------------------------- torch op classification
# Not device work: aliasing views and metadata (OpOverload.is_view, plus the names below) and pure
# allocations (no kernel runs: the caching allocator hands out memory).
NOT_DEVICE_WORK = frozenset({
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "resize_", "set_",
    "detach", "detach_", "alias", "lift_fresh", "_unsafe_view", "_reshape_alias", "as_strided", "view",
    "t", "transpose", "permute", "expand", "unsqueeze", "squeeze", "select", "slice", "unbind", "split",
    "split_with_sizes", "chunk", "narrow", "diagonal", "real", "imag", "view_as_real",
    "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "size", "stride", "dim", "is_same_size",
    "_has_compatible_shallow_copy_type", "record_stream", "_version", "prim_layout", "is_contiguous",
})
# Reads device data on the host (a device→host sync on CUDA). bincount/histc/repeat_interleave/unique:
# their CUDA implementations read the output size from the device; index with a bool mask calls nonzero.
SYNC_OPS = frozenset({
    "_local_scalar_dense", "item", "nonzero", "nonzero_numpy", "argwhere", "is_nonzero", "equal",
    "allclose", "masked_select", "bincount", "histc", "unique_consecutive", "unique_dim", "_unique",
    "_unique2", "unique", "repeat_interleave", "tolist", "_assert_async_msg_sync", "cpu",
})
GEMMS = frozenset({"mm", "addmm", "addmm_", "bmm", "baddbmm", "baddbmm_", "addbmm", "addbmm_", "mv", "addmv",
                   "addmv_", "dot", "vdot", "_addmm_activation", "matmul"})


def gemm_flops(name: str, args) -> tuple[int, tuple]:
    """(2·M·N·K, output shape) of a GEMM-like aten op from its operand shapes."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if name in ("addmm", "addmm_", "baddbmm", "baddbmm_", "addbmm", "addbmm_", "addmv", "addmv_",
                "_addmm_activation"):
        tensors = tensors[1:]
    a, b = tensors[0], tensors[1]
    if name in ("dot", "vdot"):
        return 2 * a.shape[0], ()
    if a.dim() == 2 and b.dim() == 1:  # mv
        return 2 * a.shape[0] * a.shape[1], (a.shape[0],)
    batch = a.shape[0] if a.dim() == 3 else 1
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    shape = (m, n) if name in ("addbmm", "addbmm_") else ((batch, m, n) if a.dim() == 3 else (m, n))
    return 2 * batch * m * n * k, shape


def classify(func, args) -> str:
    """'sync', 'gemm', 'free' (no device work) or 'op'."""
    name = func.overloadpacket.__name__
    if name in SYNC_OPS:
        return "sync"
    if name == "index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                               for i in (args[1] if len(args) > 1 else ()) or ()):
        return "sync"
    if name in GEMMS:
        return "gemm"
    if name in NOT_DEVICE_WORK or getattr(func, "is_view", False):
        return "free"
    return "op"


def _tensor_bytes(args, kwargs, out) -> int:
    seen, total = set(), 0
    for t in torch.utils._pytree.tree_leaves((args, kwargs, out)):
        if isinstance(t, torch.Tensor) and id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


@dataclass
class TorchOp:
    name: str
    kind: str
    phase: str
    flops: int = 0
    bytes: int = 0
    dtype: str = ""


class _TorchCounter(TorchDispatchMode):
    def __init__(self, rec: "Recorder"):
        super().__init__()
        self.rec = rec

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rec = self.rec
        if rec.in_kernel:
            return func(*args, **kwargs)
        if func.namespace not in ("aten", "prims", "prim"):
            # a custom op (torch.library): count the aten ops its implementation runs, not the op
            with self:
                return func._op_dk(torch._C.DispatchKey.CompositeExplicitAutograd, *args, **kwargs)
        kind = classify(func, args)
        name = func.overloadpacket.__name__
        flops = 0
        if kind == "gemm":
            flops, shape = gemm_flops(name, args)
            if rec.stub_gemms:
                out = kwargs.get("out")
                if out is None and name.endswith("_"):
                    out = args[0]
                if out is None:
                    ref = [a for a in args if isinstance(a, torch.Tensor)][-1]
                    out = torch.empty(shape, dtype=kwargs.get("out_dtype") or ref.dtype, device=ref.device)
                rec.torch_ops.append(TorchOp(name, kind, rec.phase, flops, _tensor_bytes(args, kwargs, out),
                                             str(out.dtype)))
                return out
        out = func(*args, **kwargs)
        if kind == "op" and not any(isinstance(t, torch.Tensor) for t in torch.utils._pytree.tree_leaves(out)):
            kind = "free"  # no tensor result (promote_types, result_type, ...): host-side only
        if kind != "free":
            first = next((t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)), None)
            rec.torch_ops.append(TorchOp(name, kind, rec.phase, flops, _tensor_bytes(args, kwargs, out),
                                         str(first.dtype) if first is not None else ""))
        return out


# ---------------------------------------------------------------- Triton launches
@dataclass
class Launch:
    name: str
    module: str
    phase: str
    grid: tuple
    spec: dict                 # the sm_90a compile spec (benchmarks.perfmodel.compile)
    key: str                   # kernel name + constexprs: one line in the tables
    footprint_bytes: int       # Σ bytes of the tensors passed (simulated dtype), each storage once
    dot_flops: int = 0
    dot_shapes: dict = field(default_factory=dict)
    exps: int = 0
    logs: int = 0

    @property
    def programs(self) -> int:
        return math.prod(self.grid)


class _Sim:
    """What triton's binder reads from a tensor argument: data_ptr() (alignment) and dtype."""

    def __init__(self, ptr: int, dtype):
        self._ptr, self.dtype = ptr, dtype

    def data_ptr(self) -> int:
        return self._ptr


_BINDERS: dict = {}


def _binder(fn):
    """triton's own argument binder for `fn`, built against the CUDA backend for sm_90."""
    if fn not in _BINDERS:
        from triton.compiler.compiler import make_backend
        from triton.runtime.jit import JITFunction, create_function_from_signature

        from .compile import target

        jf = JITFunction(fn)
        backend = make_backend(target())
        _BINDERS[fn] = (jf, backend, create_function_from_signature(jf.signature, jf.params, backend))
    return _BINDERS[fn]


def _jsonable(v):
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return str(v)


def specialize(fn, args, kwargs, sim_dtype) -> tuple[dict, int]:
    """(compile spec, footprint bytes) of one launch: the JIT's specialization for sm_90 of the call
    as the GPU would make it. Feature pointers (base.FEATURE_PTRS) take the simulated dtype, their
    addresses the simulated byte offset into their storage (allocations are ≥ 256-byte aligned on
    CUDA; we align the base to 256); INTERPRETED=False and the GPU's PRECISION replace the
    interpreter's values."""
    from clipkern.ops.base import FEATURE_PTRS
    from clipkern.ops.base.triton_tiles import dot_precision

    jf, backend, binder = _binder(fn)
    names = [p.name for p in jf.params]
    bound = dict(zip(names, args))
    bound.update({k: v for k, v in kwargs.items() if k in names})
    has_features = any(n in FEATURE_PTRS for n in names)
    call, storages, footprint = [], {}, 0
    for p in jf.params:
        if p.is_constexpr:
            continue
        v = bound[p.name]
        if isinstance(v, torch.Tensor):
            dtype = sim_dtype if p.name in FEATURE_PTRS and v.is_floating_point() else v.dtype
            elem = torch.empty((), dtype=dtype).element_size()
            sid = v.untyped_storage().data_ptr()
            base = storages.setdefault(sid, 256 * (len(storages) + 1) * 4096)
            footprint += v.numel() * elem
            v = _Sim(base + v.storage_offset() * elem, dtype)
        call.append(v)
    const = {p.name: bound[p.name] for p in jf.params if p.is_constexpr and p.name in bound}
    if "INTERPRETED" in const:
        const["INTERPRETED"] = False
    if "PRECISION" in const:
        const["PRECISION"] = dot_precision(sim_dtype if has_features else torch.float32, False)
    opts = {k: kwargs[k] for k in ("num_warps", "num_stages", "num_ctas", "maxnreg") if k in kwargs}
    kw = dict(const, **opts, debug=False)
    bound_args, spec, options = binder(*call, **kw)
    options, signature, constexprs, attrs = jf._pack_args(backend, kw, bound_args, spec, options)
    out = dict(module=fn.__module__, name=fn.__name__, signature=signature,
               constexprs=[[list(k), _jsonable(v)] for k, v in constexprs.items()],
               attrs=[[list(k), _jsonable(v)] for k, v in attrs.items()],
               options=dict(num_warps=options.num_warps, num_stages=options.num_stages))
    return out, footprint


class Recorder:
    """Context manager: hooks the interpreter and torch while active. Set `.phase` to tag work."""

    def __init__(self, sim_dtype=torch.float32, *, stub_kernels=False, stub_gemms=False):
        self.sim_dtype = sim_dtype
        self.stub_kernels, self.stub_gemms = stub_kernels, stub_gemms
        self.phase = "fwd"
        self.launches: list[Launch] = []
        self.torch_ops: list[TorchOp] = []
        self.in_kernel = False
        self.current: Launch | None = None
        self._saved = []

    # -- interpreter hooks
    def _hook(self, cls, name, make):
        orig = getattr(cls, name)
        self._saved.append((cls, name, orig))
        setattr(cls, name, make(orig))

    def __enter__(self):
        from triton.runtime import interpreter as ti

        rec = self

        def run(orig):
            def wrapped(self_fn, *args, grid, warmup, **kwargs):
                if warmup:
                    return orig(self_fn, *args, grid=grid, warmup=warmup, **kwargs)
                fn = self_fn.fn
                names = self_fn.arg_names
                bound = dict(zip(names, args), **{k: v for k, v in kwargs.items() if k in names})
                g = grid(bound) if callable(grid) else grid
                g = tuple(int(x) for x in g) + (1,) * (3 - len(g))
                spec, footprint = specialize(fn, args, kwargs, rec.sim_dtype)
                cnames = [p.name for p in _binder(fn)[0].params if p.is_constexpr]
                consts = ",".join(f"{n}={bound[n]}" for n in cnames if n in bound
                                  and n not in ("INTERPRETED", "PRECISION"))
                launch = Launch(fn.__name__, fn.__module__, rec.phase, g, spec,
                                f"{fn.__name__}[{consts}]", footprint)
                rec.launches.append(launch)
                if rec.stub_kernels:
                    return None
                rec.current, rec.in_kernel = launch, True
                try:
                    return orig(self_fn, *args, grid=grid, warmup=warmup, **kwargs)
                finally:
                    rec.current, rec.in_kernel = None, False
            return wrapped

        def dot(orig):
            def wrapped(builder, a, b, d, *rest):
                if rec.current is not None:
                    (m, k), n = a.data.shape[-2:], b.data.shape[-1]
                    batch = math.prod(a.data.shape[:-2])
                    rec.current.dot_flops += 2 * batch * m * n * k
                    shape = (batch, m, n, k)
                    rec.current.dot_shapes[shape] = rec.current.dot_shapes.get(shape, 0) + 1
                return orig(builder, a, b, d, *rest)
            return wrapped

        def unary(orig, attr):
            def wrapped(builder, arg):
                if rec.current is not None:
                    setattr(rec.current, attr, getattr(rec.current, attr) + int(arg.data.size))
                return orig(builder, arg)
            return wrapped

        B = ti.InterpreterBuilder
        self._hook(ti.InterpretedFunction, "run", run)
        self._hook(B, "create_dot", dot)
        for name, attr in (("create_exp", "exps"), ("create_exp2", "exps"), ("create_log", "logs"),
                           ("create_log2", "logs")):
            self._hook(B, name, lambda orig, attr=attr: unary(orig, attr))
        self._mode = _TorchCounter(self)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        while self._saved:
            cls, name, orig = self._saved.pop()
            setattr(cls, name, orig)

    # -- summaries
    def totals(self, phase: str | None = None) -> dict:
        L = [x for x in self.launches if phase in (None, x.phase)]
        T = [x for x in self.torch_ops if phase in (None, x.phase)]
        return dict(dot_flops=sum(x.dot_flops for x in L), exps=sum(x.exps for x in L), logs=sum(x.logs for x in L),
                    gemm_flops=sum(x.flops for x in T if x.kind == "gemm"), launches=len(L),
                    torch_ops=sum(x.kind in ("op", "gemm") for x in T), host_syncs=sum(x.kind == "sync" for x in T))


class sm90_target:
    """CLIPKERN_TARGET=sm90 (and the tile dtype) while counting; restores the environment."""

    def __init__(self, sim_dtype):
        self.sim_dtype = sim_dtype

    def __enter__(self):
        import os

        from clipkern.ops.base import config_dtype

        if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            raise RuntimeError("counting needs TRITON_INTERPRET=1 set before triton and clipkern are imported")
        self._old = {k: os.environ.get(k) for k in ("CLIPKERN_TARGET", "CLIPKERN_NAN_FILL")}
        os.environ["CLIPKERN_TARGET"] = "sm90"
        os.environ["CLIPKERN_NAN_FILL"] = "0"  # production allocation (empty, not a NaN fill: no extra op)
        self._cfg = config_dtype(self.sim_dtype)
        self._cfg.__enter__()
        return self

    def __exit__(self, *exc):
        import os

        self._cfg.__exit__(*exc)
        for k, v in self._old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def record_step(step, sim_dtype, *, stub: bool = False) -> Recorder:
    """Record one forward (`step()` returns the loss) and its backward on the sm_90 configuration.
    stub=False: the counted pass (kernels interpreted, GEMMs computed); stub=True: the structural
    pass (launches recorded, not run; GEMMs not computed)."""
    from clipkern.ops.base import cuda_gemm_paths

    gemm_paths = cuda_gemm_paths() if stub else contextlib.nullcontext()
    with sm90_target(sim_dtype), gemm_paths, Recorder(sim_dtype, stub_kernels=stub, stub_gemms=stub) as rec:
        rec.phase = "fwd"
        loss = step()
        rec.phase = "bwd"
        loss.backward()
    return rec
