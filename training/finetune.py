"""The finetuning loop: `python -m training.finetune ...` or `torchrun --nproc_per_node N -m training.finetune ...`.

One step (plain):
    images, texts = recipe.inputs(batch)            # texts: 1 (CLIP) to 3 (ParaCLIP) token tensors
    out = model(images, cat(texts))                 # one pass per tower (through DDP when distributed)
    terms = loss(**recipe.loss_kwargs(out..., extra), output_dict=True); total = Σ terms
    total.backward(); AdamW step (cosine lr with linear warmup); logit_scale.clamp_(0, ln 100)

Gradient caching (--grad-cache-chunk K), exact for towers without dropout (or with RNG-synchronised
dropout); the tiny models have none:
    (1) under no_grad, embed the batch K samples at a time: Î (N×D), T̂ (M×D)
    (2) make Î, T̂ (and s = exp(logit_scale), b) leaf tensors, run the fused loss, backward:
        gÎ = ∂L/∂Î, gT̂ = ∂L/∂T̂, g_s, g_b
    (3) for each chunk c, re-run its tower with grad and backprop Î_c.backward(gÎ_c) (same for text),
        then exp(logit_scale).backward(g_s), logit_bias.backward(g_b)
    Parameter gradients are then those of the plain step: the chain rule through the embeddings, with
    the towers' activations alive for K samples at a time only. Under torchrun the gradients are then
    averaged over ranks with all_reduce (what DDP does), since DDP's hooks expect one forward per step.

Only rank 0 writes logs, metrics, plots and checkpoints. Files: this one (flags, processes),
training/loop.py (the run: model, data, optimizer, resume, epochs, checkpoints, evals), training/steps.py
(one step: plain or gradient-cached), training/runtime.py (logging, data paths, SIGINT, seeding).
"""
from __future__ import annotations

import datetime
import logging
import os
import sys

import torch
import torch.distributed as dist

from .loop import Run
from .runtime import _close_logging, generate_world, resolve_data, setup_logging, world_dir_of  # noqa: F401
from .params import parse_args
from .steps import (average_gradients, cosine_lr, equalise_batch, grad_cache_step,  # noqa: F401
                    param_groups, plain_step)

log = logging.getLogger("training.finetune")


# ------------------------------------------------------------------------------------------ setup
class DistInfo:
    def __init__(self, rank=0, world_size=1, local_rank=0):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def is_master(self):
        return self.rank == 0


def init_distributed(args) -> tuple[DistInfo, torch.device]:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if args.device:
        device = torch.device(args.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=10))
    return DistInfo(rank, world_size, local_rank), device


def main(argv=None) -> int:
    args = parse_args(argv)
    previous_threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    info, device = init_distributed(args)
    try:
        return _train(args, info, device)
    finally:
        torch.set_num_threads(previous_threads)
        _close_logging()
        if info.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _train(args, info: DistInfo, device) -> int:
    run = Run(args, info, device)
    try:
        return run.train()
    finally:
        run.close()


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        os._exit(code)   # gloo's threads sometimes abort a normal interpreter teardown after a clean run
    sys.exit(code)
