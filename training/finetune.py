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

Only rank 0 writes logs, metrics, plots and checkpoints.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from typing import Optional

import torch
import torch.distributed as dist

from . import checkpoint as ckpt_mod
from .models import create, model_config
from .params import parse_args
from .recipes import Recipe, make_recipe

log = logging.getLogger("training.finetune")

_SPLIT_FILES = {"csv": "{split}.csv", "diffs": "{split}_diffs.jsonl", "paraphrases": "{split}_paraphrases.jsonl"}


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


def setup_logging(run_dir: Optional[str], is_master: bool) -> None:
    _close_logging()
    root = logging.getLogger()
    root._clipkern_level = root.level
    root.setLevel(logging.INFO if is_master else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s | %(levelname)s | %(message)s", "%Y-%m-%d,%H:%M:%S")
    handlers = [logging.StreamHandler(sys.stdout)]
    if run_dir and is_master:
        handlers.append(logging.FileHandler(os.path.join(run_dir, "out.log")))
    for h in handlers:
        h.setFormatter(fmt)
        h._clipkern = True
        root.addHandler(h)


def _close_logging() -> None:
    """Removes this run's handlers (in-process callers, e.g. tests, keep their logging as it was)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_clipkern", False):
            root.removeHandler(h)
            h.close()
    if getattr(root, "_clipkern_level", None) is not None:
        root.setLevel(root._clipkern_level)
        root._clipkern_level = None


def resolve_data(path: str, kind: str, split: str) -> str:
    """A file as given, or the `kind` file of `split` inside a world folder."""
    if os.path.isdir(path):
        f = os.path.join(path, _SPLIT_FILES[kind].format(split=split))
        if not os.path.isfile(f):
            raise FileNotFoundError(f"--{split}-data {path!r} is a folder without {os.path.basename(f)} "
                                    f"(needed by the {kind!r} data of this recipe)")
        return f
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--{split}-data: no such file or folder {path!r}")
    return path


def world_dir_of(path: Optional[str]) -> Optional[str]:
    """The world folder (with meta.json) that a data path belongs to, if any."""
    if not path:
        return None
    d = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    return d if os.path.isfile(os.path.join(d, "meta.json")) else None


def generate_world(out: str, args) -> None:
    cmd = [sys.executable, "-m", "training.world", "--out", out, "--seed", str(args.world_seed),
           "--n-train", str(args.world_n_train), "--n-val", str(args.world_n_val)]
    log.info("generating the synthetic world: %s", " ".join(cmd))
    subprocess.run(cmd, check=True)


def param_groups(model, wd: float):
    """open_clip's split: no weight decay on gains, biases, embeddings-as-vectors and logit_scale."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": wd}]


def cosine_lr(step: int, base_lr: float, warmup: int, total: int) -> float:
    """open_clip's schedule: linear warmup over `warmup` steps, then cosine to 0 at `total`."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    e, es = step - warmup, max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(e, es) / es)) * base_lr


def autocast_ctx(precision: str, device: torch.device):
    if precision == "amp":
        return torch.autocast(device.type, dtype=torch.float16)
    if precision == "amp_bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ------------------------------------------------------------------------------------------ steps
def _to(batch, device):
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def equalise_batch(batch: dict, info: "DistInfo", device) -> dict:
    """Cuts every rank's batch to the smallest rank's size. Unreadable images shrink a batch on one rank
    only, and the gathered losses (local_loss / gather_with_grad) need equal sizes on every rank.
    Per-sample entries (tensors and lists whose first dimension is the batch size) are truncated;
    'diffs' batches are left alone (their loss is computed per process, no gather)."""
    if not info.distributed or "pairs" in batch or not torch.is_tensor(batch.get("image")):
        return batch
    n = batch["image"].shape[0]
    t = torch.tensor([n], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    m = int(t.item())
    if m == n:
        return batch
    return {k: (v[:m] if (torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == n) or
                (isinstance(v, list) and len(v) == n) else v) for k, v in batch.items()}


def _input_dtype(model) -> torch.dtype:
    """The dtype images must have: the image stem's (its first conv), else the most common weight dtype
    (open_clip's pure bf16 keeps embeddings and scalars in fp32)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            return m.weight.dtype
    count: dict = {}
    for p in model.parameters():
        if p.is_floating_point():
            count[p.dtype] = count.get(p.dtype, 0) + p.numel()
    return max(count, key=count.get) if count else torch.float32


def plain_step(model, recipe: Recipe, batch, extra, autocast):
    """Forward through `model` (DDP or not) once per tower, loss, backward. Returns (total, terms)."""
    images, texts = recipe.inputs(batch)
    sizes = [t.shape[0] for t in texts]
    with autocast:
        out = model(images, torch.cat(texts))
        text_features = list(out["text_features"].split(sizes))
        kw = recipe.loss_kwargs(out["image_features"], text_features, out["logit_scale"], out.get("logit_bias"),
                                extra)
        terms = recipe.loss(**kw, output_dict=True)
        total = sum(terms.values())
    return total, terms


def _leaf(t: Optional[torch.Tensor], requires_grad: bool):
    if t is None:
        return None
    return t.detach().requires_grad_(requires_grad)


def grad_cache_step(model, recipe: Recipe, batch, extra, autocast, chunk: int, scale_loss=lambda x: x):
    """Gradient caching (see the module docstring). `model` is the unwrapped model. Calls backward
    itself (scaled by `scale_loss`); returns (total, terms) like plain_step."""
    images, texts = recipe.inputs(batch)
    sizes = [t.shape[0] for t in texts]
    text_all = torch.cat(texts)
    # (1) embeddings without a graph
    with torch.no_grad(), autocast:
        image_emb = (torch.cat([model.encode_image(c, normalize=True) for c in images.split(chunk)])
                     if images is not None else None)
        text_emb = torch.cat([model.encode_text(c, normalize=True) for c in text_all.split(chunk)])
    # (2) the loss on leaf embeddings, and its gradient with respect to them
    scale = model.logit_scale.exp()
    bias = getattr(model, "logit_bias", None)
    image_leaf, text_leaf = _leaf(image_emb, True), _leaf(text_emb, True)
    scale_leaf, bias_leaf = _leaf(scale, scale.requires_grad), _leaf(bias, bias is not None and bias.requires_grad)
    with autocast:
        kw = recipe.loss_kwargs(image_leaf, list(text_leaf.split(sizes)), scale_leaf, bias_leaf, extra)
        terms = recipe.loss(**kw, output_dict=True)
        total = sum(terms.values())
    scale_loss(total).backward()
    # (3) the towers again, chunk by chunk, with their graphs, fed the cached embedding gradients
    if image_leaf is not None and image_leaf.grad is not None:
        for c, g in zip(images.split(chunk), image_leaf.grad.split(chunk)):
            with autocast:
                emb = model.encode_image(c, normalize=True)
            if emb.requires_grad:
                emb.backward(g.to(emb.dtype))
    if text_leaf.grad is not None:
        for c, g in zip(text_all.split(chunk), text_leaf.grad.split(chunk)):
            with autocast:
                emb = model.encode_text(c, normalize=True)
            if emb.requires_grad:
                emb.backward(g.to(emb.dtype))
    if scale_leaf.requires_grad and scale_leaf.grad is not None:
        scale.backward(scale_leaf.grad)
    if bias_leaf is not None and bias_leaf.requires_grad and bias_leaf.grad is not None:
        bias.backward(bias_leaf.grad)
    return total.detach(), {k: v.detach() for k, v in terms.items()}


def average_gradients(model, world_size: int) -> None:
    for p in model.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad.div_(world_size)


# ------------------------------------------------------------------------------------------ loop
class _Interrupt:
    """SIGINT sets a flag; the loop saves a checkpoint after the current step and exits. A second
    SIGINT raises KeyboardInterrupt at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:          # not the main thread
            self._previous = None
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("SIGINT: saving a checkpoint after this step, then exiting (again to abort)")

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _sync_flag(flag: bool, info: DistInfo, device) -> bool:
    if not info.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def _run_eval(unwrapped, tokenizer, preprocess_val, world_dir, device, args) -> Optional[dict]:
    try:
        from .evals import evaluate_model
    except ImportError as e:
        log.warning("evaluation skipped: training.evals is not importable (%s)", e)
        return None
    was_training = unwrapped.training
    unwrapped.eval()
    try:
        with torch.no_grad():
            metrics = evaluate_model(unwrapped, tokenizer, preprocess_val, world_dir, split="val", device=device,
                                     batch_size=args.eval_batch_size)
    finally:
        unwrapped.train(was_training)
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) or
            (torch.is_tensor(v) and v.numel() == 1)}


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
    if args.name is None:
        args.name = f"{args.loss}-{args.model}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    run_dir = os.path.join(args.logs, args.name)
    if info.is_master:
        os.makedirs(run_dir, exist_ok=True)
    setup_logging(run_dir, info.is_master)
    torch.manual_seed(args.seed)          # the same initial weights on every rank
    # model, recipe, loss
    semantic = None
    if args.loss == "alignclip":
        from .semantic import SemanticFeatureCache
        semantic = SemanticFeatureCache(args.semantic_cache or os.path.join(args.logs, "semantic_cache.pt"))
    recipe = make_recipe(args, info.rank, info.world_size, semantic=semantic)
    model, preprocess_train, preprocess_val, tokenizer = create(args.model, args.pretrained, args.precision,
                                                                device=device, **recipe.model_kwargs())
    model.to(device)
    recipe.configure_model(model)
    unwrapped = model
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("every parameter is frozen (--lock-image and --lock-text?): nothing to train")
    _seed_everything(args.seed + info.rank)   # per-rank augmentation streams from here on
    ddp = info.distributed and args.grad_cache_chunk is None
    if info.distributed and not ddp:
        for t in unwrapped.state_dict().values():
            dist.broadcast(t, 0)
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    # data source
    train_path = args.train_data
    if train_path is None:
        world = os.path.join(args.logs, args.name, "world")
        if info.is_master and not os.path.isfile(os.path.join(world, "meta.json")):
            generate_world(world, args)
        if info.distributed:
            dist.barrier()
        train_path = world
    val_path = args.val_data or train_path

    from .data import make_loader

    train_file = resolve_data(train_path, recipe.data_kind, "train")
    loader, sampler, stats = make_loader(
        recipe.data_kind, train_file, preprocess_train, tokenizer, args.batch_size, shuffle=True, seed=args.seed,
        rank=info.rank, world_size=info.world_size, num_workers=args.workers, drop_last=True,
        csv_separator=args.csv_separator, csv_img_key=args.csv_img_key, csv_caption_key=args.csv_caption_key)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(f"--batch-size {args.batch_size} is larger than the data of {train_file!r} "
                         f"(per process, with drop_last): no full batch")
    total_steps = steps_per_epoch * args.epochs
    world_dir = world_dir_of(val_path)

    optimizer = torch.optim.AdamW(param_groups(unwrapped, args.wd), lr=args.lr, betas=(args.beta1, args.beta2),
                                  eps=args.eps)
    scaler = torch.amp.GradScaler(device.type) if args.precision == "amp" and device.type == "cuda" else None
    autocast = autocast_ctx(args.precision, device)

    step, epoch, batch_in_epoch, resume_state = 0, 0, 0, None
    if args.resume:
        path = ckpt_mod.resolve_resume(args.resume, run_dir)
        resume_state = ckpt_mod.load_checkpoint(path)
        unwrapped.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        if scaler is not None and resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        step, epoch = int(resume_state["step"]), int(resume_state["epoch"])
        batch_in_epoch = int(resume_state.get("batch_in_epoch", 0))
        per_rank = resume_state.get("rng_per_rank")
        if per_rank and len(per_rank) == info.world_size:      # each rank its own augmentation stream
            resume_state.update(per_rank[info.rank])
        elif info.distributed:
            log.warning("the checkpoint holds no RNG state per rank for world_size=%d: every rank resumes with "
                        "rank 0's (the run goes on, but not bit-identical to an uninterrupted one)", info.world_size)
        log.info("resumed from %s: step %d, epoch %d, batch %d of the epoch", path, step, epoch, batch_in_epoch)

    n_params = sum(p.numel() for p in trainable)
    log.info("run %s: loss=%s model=%s backend=%s world_size=%d device=%s trainable params=%d "
             "steps/epoch=%d epochs=%d grad_cache_chunk=%s", args.name, args.loss, args.model, args.backend,
             info.world_size, device, n_params, steps_per_epoch, args.epochs, args.grad_cache_chunk)
    if info.is_master:
        with open(os.path.join(run_dir, "params.json"), "w") as f:
            json.dump(vars(args), f, indent=1, default=str)
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    metrics_file = open(metrics_path, "a") if info.is_master else None

    def write_metrics(row):
        if metrics_file is not None:
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()

    epoch_rng = None
    loader_gen = getattr(getattr(loader, "loader", loader), "generator", None)

    def rng_now():
        return {**ckpt_mod.rng_state(),
                **({"loader_generator": loader_gen.get_state()} if loader_gen is not None else {})}

    def save(epoch_done=None):
        """Called on every rank at the same points: each rank's RNG states are gathered, rank 0 writes."""
        rng, per_rank = rng_now(), None
        if info.distributed:
            per_rank = [None] * info.world_size
            dist.all_gather_object(per_rank, {"rng": rng, "epoch_rng": epoch_rng})
        if semantic is not None and info.is_master:
            semantic.save()
        if info.is_master:
            state = {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "model": unwrapped.state_dict(),
                     "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                     "args": vars(args), "model_name": args.model,
                     "model_cfg": model_config(args.model, unwrapped), "rng": rng, "epoch_rng": epoch_rng,
                     "rng_per_rank": per_rank}
            path = ckpt_mod.save_checkpoint(state, run_dir, epoch_done=epoch_done)
            log.info("checkpoint: %s (step %d)", path, step)

    last_eval_step = [None]

    def evaluate():
        if args.no_eval or world_dir is None or not info.is_master or last_eval_step[0] == step:
            return
        last_eval_step[0] = step
        m = _run_eval(unwrapped, tokenizer, preprocess_val, world_dir, device, args)
        if m:
            log.info("eval at step %d: %s", step, ", ".join(f"{k}={v:.4f}" for k, v in sorted(m.items())))
            write_metrics({"step": step, "epoch": epoch, "kind": "eval", **m})

    from tqdm import tqdm

    done = args.max_steps is not None and step >= args.max_steps
    interrupted = False
    model.train()
    with _Interrupt() as interrupt:
        while epoch < args.epochs and not done:
            if resume_state is not None:   # mid-epoch: the epoch's start; at an epoch boundary: now
                state = resume_state["epoch_rng"] if batch_in_epoch > 0 else resume_state["rng"]
                ckpt_mod.set_rng_state(state)
                if loader_gen is not None and state.get("loader_generator") is not None:
                    loader_gen.set_state(state["loader_generator"])
            epoch_rng = ckpt_mod.rng_state()
            if loader_gen is not None:      # draws the worker seeds of each epoch's iterator
                epoch_rng["loader_generator"] = loader_gen.get_state()
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            recipe.set_epoch(epoch)
            if batch_in_epoch == 0:
                stats.reset()
            it = iter(loader)
            for _ in range(batch_in_epoch):     # resume mid-epoch: replay the data path's RNG draws
                next(it)
            if resume_state is not None and batch_in_epoch > 0:
                ckpt_mod.set_rng_state(resume_state["rng"])
            resume_state = None
            bar = tqdm(total=steps_per_epoch, initial=batch_in_epoch,
                       disable=not info.is_master or not sys.stderr.isatty(),   # no \r noise in log files
                       desc=f"epoch {epoch}", dynamic_ncols=True, leave=False, file=sys.stderr)
            t_last = time.perf_counter()
            for batch in it:
                batch = equalise_batch(_to(batch, device), info, device)
                if "image" in batch and torch.is_tensor(batch["image"]):
                    batch["image"] = batch["image"].to(_input_dtype(unwrapped))
                lr = cosine_lr(step, args.lr, args.warmup, total_steps)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                extra = recipe.prepare(batch, device)
                optimizer.zero_grad(set_to_none=True)
                if args.grad_cache_chunk is not None:
                    total, terms = grad_cache_step(unwrapped, recipe, batch, extra, autocast, args.grad_cache_chunk,
                                                   scale_loss=scaler.scale if scaler else (lambda x: x))
                    if info.distributed:
                        average_gradients(unwrapped, info.world_size)
                else:
                    total, terms = plain_step(model, recipe, batch, extra, autocast)
                    (scaler.scale(total) if scaler else total).backward()
                if args.grad_clip_norm is not None:
                    if scaler:
                        scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(trainable, args.grad_clip_norm)
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                with torch.no_grad():
                    unwrapped.logit_scale.clamp_(0, math.log(100))
                step += 1
                batch_in_epoch += 1
                now = time.perf_counter()
                n_samples = int(batch["image"].shape[0]) if recipe.data_kind != "diffs" else int(batch["pairs"].shape[0])
                row = {"step": step, "epoch": epoch, "lr": lr, "loss": float(total.detach()),
                       **{k: float(v.detach()) for k, v in terms.items()},
                       "logit_scale": float(unwrapped.logit_scale.exp().detach()),
                       "samples_per_s": n_samples * info.world_size / max(now - t_last, 1e-9),
                       "step_time_s": now - t_last, "skipped": int(batch.get("skipped", 0))}
                t_last = now
                if not math.isfinite(row["loss"]):
                    raise FloatingPointError(f"loss is not finite at step {step}: {row}")
                write_metrics(row)
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}")
                if info.is_master and args.log_every and step % args.log_every == 0:
                    log.info("step %d epoch %d lr %.3e loss %.5f (%s) logit_scale %.3f %.1f samples/s", step, epoch,
                             lr, row["loss"], ", ".join(f"{k}={float(v.detach()):.5f}" for k, v in terms.items()),
                             row["logit_scale"], row["samples_per_s"])
                if args.eval_every and step % args.eval_every == 0:
                    evaluate()
                if args.save_every and step % args.save_every == 0:
                    save()
                if _sync_flag(interrupt.requested, info, device):
                    interrupted = True
                    done = True
                    break
                if args.max_steps is not None and step >= args.max_steps:
                    done = True
                    break
            bar.close()
            epoch_finished = batch_in_epoch >= steps_per_epoch
            if epoch_finished or interrupted or done:
                _report_skipped(stats, epoch, info, device, partial=not epoch_finished)
            if epoch_finished:
                epoch += 1
                batch_in_epoch = 0
                if not interrupted and args.save_frequency and epoch % args.save_frequency == 0:
                    save(epoch_done=epoch)
        if interrupted:
            save()
            log.warning("interrupted: checkpoint saved at step %d; exiting", step)
            if metrics_file:
                metrics_file.close()
            return 130
    save()
    evaluate()
    if metrics_file:
        metrics_file.close()
    if info.is_master and not args.no_plot:
        try:
            from .plot import plot_metrics
            out = plot_metrics(metrics_path, os.path.join(run_dir, "metrics.png"))
            log.info("plot: %s", out)
        except Exception as e:  # a plot must never fail a finished run
            log.warning("plot failed: %s", e)
    log.info("done: %d steps, run folder %s", step, run_dir)
    return 0


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _report_skipped(stats, epoch, info, device, partial=False):
    skipped = int(getattr(stats, "skipped", 0))
    if info.distributed:
        t = torch.tensor([skipped], dtype=torch.long, device=device)
        dist.all_reduce(t)
        skipped = int(t.item())
    paths = list(getattr(stats, "paths", []) or [])[:5]
    what = "so far in" if partial else "in"
    log.info("epoch %d: skipped %d unreadable images %s this epoch%s", epoch, skipped, what,
             f" (e.g. {paths})" if paths else "")


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        os._exit(code)   # gloo's threads sometimes abort a normal interpreter teardown after a clean run
    sys.exit(code)
