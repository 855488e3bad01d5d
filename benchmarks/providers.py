"""Benchmark providers: one callable `fn(image, text, logit_scale, logit_bias) -> 0-d loss` per
implementation (clipkern, cuda, torch, torch.compile, open_clip, inf-cl); see benchmarks/common.py's
docstring for what each runs. Re-exported by benchmarks/common.py."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .common import INTERPRETED_NOTE, PROVIDERS, ProviderUnavailable, interpreter_enabled, semantic_features


@dataclass
class Provider:
    name: str
    loss: str
    fn: Callable  # (image, text, logit_scale, logit_bias) -> 0-d loss
    backend: str = ""  # what actually runs, e.g. "triton", "reference", "eager"
    note: str = ""


def clipkern_backend(device: torch.device) -> str:
    """The backend the clipkern provider asks for: auto (on CPU: the C++ op where the family has one and the
    extension is built, else the chunked reference), or the interpreted triton kernels on CPU under
    TRITON_INTERPRET=1."""
    if device.type == "cuda":
        return "auto"
    return "triton" if interpreter_enabled() else "auto"


def _clipkern(loss, device, dtype, D):
    import clipkern.functional as CF
    from clipkern import _backend

    asked = clipkern_backend(device)
    family = {"clip": "contrastive", "siglip": "sigmoid", "imsep": "imsep"}[loss]
    used = _backend.resolve(asked, device, dtype, family=family)  # raises with the reason if unavailable
    note = INTERPRETED_NOTE if used == "triton" and device.type == "cpu" else ""
    if loss == "imsep":
        def f(i, t, s, b, backend):
            return CF.imsep_loss(i, t, semantic_features(i.shape[0], i.device), s, backend=backend)
    else:
        f = CF.clip_loss if loss == "clip" else CF.siglip_loss
    return Provider("clipkern", loss, lambda i, t, s, b: f(i, t, s, b, backend=asked),
                    used + (" (interpreted)" if note else ""), note)


def cuda_backend(device: torch.device, dtype: torch.dtype) -> str:
    """'cuda' when the csrc extension's CUDA kernels can run here; ProviderUnavailable (or the
    backend's own BackendUnavailable / TypeError, which build_provider turns into one) says why not."""
    if device.type != "cuda":
        raise ProviderUnavailable("the csrc CUDA kernels need a CUDA device")
    from clipkern import _backend

    return _backend.resolve("cuda", device, dtype)


CUDA_LOSSES = ("clip",)  # the families with CUDA kernels among LOSSES/BENCH_LOSSES


def _cuda(loss, device, dtype, D):
    if loss not in CUDA_LOSSES:
        raise ProviderUnavailable(f"the CUDA extension has no kernel for the {loss} loss")
    import clipkern.functional as CF

    used = cuda_backend(device, dtype)
    return Provider("cuda", loss, lambda i, t, s, b: CF.clip_loss(i, t, s, b, backend=used), used)


def reference_fn(loss):
    """The plain (unchunked) torch formula of clipkern.ops.*.reference as a provider fn, labels = arange(B).
    One code object per loss, so torch.compile's per-code graph cache is not shared between losses."""
    if loss == "clip":
        from clipkern.ops.contrastive.reference import plain_contrastive_loss

        def clip_reference(i, t, s, b):
            return plain_contrastive_loss(i, t, s, b, torch.arange(i.shape[0], device=i.device), True)

        return clip_reference
    if loss == "imsep":
        from clipkern.ops.imsep.reference import imsep_single

        def imsep_reference(i, t, s, b):
            return imsep_single(i, t, semantic_features(i.shape[0], i.device), s)

        return imsep_reference
    from clipkern.ops.sigmoid.reference import plain_sigmoid_loss

    def siglip_reference(i, t, s, b):
        return plain_sigmoid_loss(i, t, s, b, torch.arange(i.shape[0], device=i.device))

    return siglip_reference


def _torch(loss, device, dtype, D):
    return Provider("torch", loss, reference_fn(loss), "eager")


def _torch_compile(loss, device, dtype, D):
    # dynamic=False compiles one graph per B. Dynamo keeps at most `recompile_limit` (8) graphs per
    # code object and then silently runs eager: raise the limit so a long sweep stays compiled.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return Provider("torch.compile", loss, torch.compile(reference_fn(loss), dynamic=False), "inductor")


def _open_clip(loss, device, dtype, D):
    from open_clip.loss import ClipLoss, SigLipLoss

    if loss == "clip":
        mod = ClipLoss()
        return Provider("open_clip", loss, lambda i, t, s, b: mod(i, t, s), "eager")
    mod = SigLipLoss()
    return Provider("open_clip", loss, lambda i, t, s, b: mod(i, t, s, b), "eager")


def _inf_cl(loss, device, dtype, D):
    if loss != "clip":
        raise ProviderUnavailable("inf-cl has only the softmax (CLIP) loss")
    from inf_cl import cal_inf_loss  # signature: cal_inf_loss(q, k, labels=None, scale=None, head_dim=256)

    if device.type != "cuda":
        raise ProviderUnavailable("inf-cl's Triton launchers assert CUDA tensors (q.is_cuda)")
    head_dim = next((h for h in (256, 128, 64, 32, 16) if D % h == 0), None)
    if head_dim is None:
        raise ProviderUnavailable(f"inf-cl needs D divisible by a head_dim in 16..256, got D={D}")

    # cal_inf_loss(q, k) = mean_i [lse_j(q_i·k_j) − q_i·k_i], in fp32 (it casts its inputs). We scale q
    # ourselves: its `scale=` argument passes through a GradientGather whose backward calls
    # dist.all_reduce, which fails without a process group. The math is the same (it computes scale*q).
    def fn(i, t, s, b):
        return (cal_inf_loss(s * i, t, head_dim=head_dim) + cal_inf_loss(s * t, i, head_dim=head_dim)) / 2

    return Provider("inf-cl", loss, fn, f"triton, head_dim={head_dim}", "computes in fp32 (casts inputs)")


_FACTORIES = {"clipkern": _clipkern, "cuda": _cuda, "torch": _torch, "torch.compile": _torch_compile,
              "open_clip": _open_clip, "inf-cl": _inf_cl}


def build_provider(name: str, loss: str, device: torch.device, dtype: torch.dtype, D: int) -> Provider:
    """Build one provider, or raise ProviderUnavailable with the reason (import errors included)."""
    try:
        return _FACTORIES[name](loss, device, dtype, D)
    except ProviderUnavailable:
        raise
    except Exception as exc:  # ImportError, BackendUnavailable, ...
        raise ProviderUnavailable(f"{type(exc).__name__}: {exc}") from exc


def build_each(names, build: Callable[[str], Provider]):
    """(providers, skipped): `build(name)` for each name; skipped is a list of (name, reason) for the
    ones that raised ProviderUnavailable. Nothing is dropped silently."""
    providers, skipped = [], []
    for name in names:
        try:
            providers.append(build(name))
        except ProviderUnavailable as exc:
            skipped.append((name, str(exc)))
    return providers, skipped


def build_providers(loss, device, dtype, D, names=None):
    """(providers, skipped) for one loss of PROVIDERS; see build_each."""
    def build(name):
        if name not in PROVIDERS[loss]:
            raise ProviderUnavailable(f"no {name} provider for the {loss} loss")
        return build_provider(name, loss, device, dtype, D)

    return build_each(names or PROVIDERS[loss], build)
