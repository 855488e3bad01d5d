"""Input validation shared by every loss. Errors name the argument; nothing here syncs with the
device: the label range check reads the labels on the host only for CPU tensors (free there; skipped
under torch.compile) and is a device-side assert for GPU tensors."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _is_compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover
        return False


def check_features(name: str, x, *, width: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    check_dense(name, x)
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (batch, dim), got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (fp16/bf16/fp32/fp64), got {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)})")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has zero feature width (shape {tuple(x.shape)})")
    if width is not None and x.shape[1] != width:
        raise ValueError(f"{name} has feature width {x.shape[1]}, expected {width} to match the other features")
    return x


def check_dense(name: str, x: torch.Tensor) -> None:
    """A sparse (or otherwise non-strided) tensor would reach backend internals and fail there with an
    unrelated message: refuse it here, by name."""
    if x.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {x.layout}; "
                        f"convert it with {name}.to_dense()")


def check_pair(a_name: str, a: torch.Tensor, b_name: str, b: torch.Tensor) -> None:
    """Two feature matrices that are multiplied together: same width, device and dtype."""
    check_features(a_name, a)
    check_features(b_name, b, width=a.shape[1])
    if a.device != b.device:
        raise ValueError(f"{a_name} is on {a.device} but {b_name} is on {b.device}")
    if a.dtype != b.dtype:
        raise TypeError(f"{a_name} is {a.dtype} but {b_name} is {b.dtype}; cast them to one dtype")


def check_same_batch(a_name: str, a: torch.Tensor, b_name: str, b: torch.Tensor) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{a_name} has batch {a.shape[0]} but {b_name} has batch {b.shape[0]}")


def as_scalar(name: str, value, like: torch.Tensor, *, optional: bool = False) -> torch.Tensor | None:
    """logit_scale / logit_bias: a 0-d (or one-element) tensor, kept in the autograd graph.

    Python numbers are accepted for functionals (they become constants, in float32 or in float64
    for float64 features, so an fp64 loss stays fp64 throughout); modules get tensors from
    open_clip. Anything else is a TypeError naming the argument.
    """
    if value is None:
        if optional:
            return None
        raise TypeError(f"{name} is required (a 0-d tensor or a number), got None")
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a tensor or a number, got bool")
    if isinstance(value, (int, float)):
        return torch.tensor(float(value), device=like.device, dtype=torch.promote_types(like.dtype, torch.float32))
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a 0-d tensor or a number, got {type(value).__name__}")
    check_dense(name, value)
    if value.numel() != 1:
        raise ValueError(f"{name} must hold a single value, got shape {tuple(value.shape)}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {value.dtype}")
    if value.device != like.device and value.device.type != "cpu":
        raise ValueError(f"{name} is on {value.device} but the features are on {like.device}")
    return value.reshape(()).to(like.device)


def check_labels(name: str, labels, rows: int, cols: int, device: torch.device) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(labels).__name__}")
    check_dense(name, labels)
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{name} must be an integer tensor, got {labels.dtype}")
    if labels.shape != (rows,):
        raise ValueError(f"{name} must have shape ({rows},) (one column index per row), got {tuple(labels.shape)}")
    if labels.device != device:
        raise ValueError(f"{name} is on {labels.device} but the features are on {device}")
    if labels.device.type != "cpu":
        # no host sync on a GPU: the range is asserted on the device (a failure surfaces as a device
        # assert at a later launch; CUDA_LAUNCH_BLOCKING=1 pins it here)
        torch._assert_async(((labels >= 0) & (labels < cols)).all())
    elif not _is_compiling() and rows > 0:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= cols:
            raise ValueError(f"{name} must lie in [0, {cols}) (the number of columns), got values in [{lo}, {hi}]")
    return labels.long()


def no_double_backward(op: str, backend: str):
    """An autograd formula for a fused backward op that refuses to be differentiated: a gradient of
    a gradient (create_graph=True, a gradient penalty, double backward) raises this clear error
    instead of torch treating the op's output as a constant (a silently wrong second derivative)."""
    def backward(ctx, *grads):
        raise RuntimeError(
            f"clipkern: double backward (differentiating a gradient, e.g. create_graph=True for a gradient "
            f"penalty) is not implemented by the fused {op} of backend={backend!r}; use "
            "backend='reference' (plain torch, which supports it) for second-order gradients")
    return backward


def register_no_double_backward(op, name: str, backend: str) -> None:
    """Registers `no_double_backward` on a backward op: `op` is a torch.library custom op or an
    operator name such as "clipkern::contrastive_bwd"."""
    setup = lambda ctx, inputs, output: None  # noqa: E731 (nothing to save)
    if isinstance(op, str):
        torch.library.register_autograd(op, no_double_backward(name, backend), setup_context=setup)
    else:
        op.register_autograd(no_double_backward(name, backend), setup_context=setup)
