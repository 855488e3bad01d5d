"""The training run behind `python -m training.finetune` (training/finetune.py: flags, processes,
logging). `Run(args, info, device)` builds the model, the recipe, the data and the optimizer (and
resumes); `Run.train()` runs the epochs, one `Run.step(batch)` per batch, then saves, evaluates and plots.
"""
from __future__ import annotations

import datetime
import json
import logging
import math
import os
import sys
import time

import torch
import torch.distributed as dist

from . import checkpoint as ckpt_mod
from .models import create, model_config
from .recipes import make_recipe
from .runtime import (_Interrupt, _report_skipped, _seed_everything, _sync_flag, generate_world, resolve_data,
                      setup_logging, world_dir_of)
from .steps import (_input_dtype, _to, autocast_ctx, average_gradients, cosine_lr, equalise_batch,
                    grad_cache_step, param_groups, plain_step)

log = logging.getLogger("training.finetune")

# ------------------------------------------------------------------------------------------ the run
class Run:
    def __init__(self, args, info, device):
        if args.name is None:
            args.name = f"{args.loss}-{args.model}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
        self.args, self.info, self.device = args, info, device
        self.run_dir = os.path.join(args.logs, args.name)
        if info.is_master:
            os.makedirs(self.run_dir, exist_ok=True)
        setup_logging(self.run_dir, info.is_master)
        self._build_model()
        self._build_data()
        self.optimizer = torch.optim.AdamW(param_groups(self.unwrapped, args.wd), lr=args.lr,
                                           betas=(args.beta1, args.beta2), eps=args.eps)
        self.scaler = (torch.amp.GradScaler(device.type) if args.precision == "amp" and device.type == "cuda"
                       else None)
        self.autocast = autocast_ctx(args.precision, device)
        self.step_no, self.epoch, self.batch_in_epoch, self.resume_state = 0, 0, 0, None
        if args.resume:
            self._resume()
        log.info("run %s: loss=%s model=%s backend=%s world_size=%d device=%s trainable params=%d "
                 "steps/epoch=%d epochs=%d grad_cache_chunk=%s", args.name, args.loss, args.model, args.backend,
                 info.world_size, device, sum(p.numel() for p in self.trainable), self.steps_per_epoch,
                 args.epochs, args.grad_cache_chunk)
        if info.is_master:
            with open(os.path.join(self.run_dir, "params.json"), "w") as f:
                json.dump(vars(args), f, indent=1, default=str)
        self.metrics_path = os.path.join(self.run_dir, "metrics.jsonl")
        self.metrics_file = open(self.metrics_path, "a") if info.is_master else None
        self.epoch_rng, self.last_eval_step = None, None
        self.loader_gen = getattr(getattr(self.loader, "loader", self.loader), "generator", None)

    # -------------------------------------------------------------- construction
    def _build_model(self):
        args, info, device = self.args, self.info, self.device
        torch.manual_seed(args.seed)          # the same initial weights on every rank
        self.semantic = None
        if args.loss == "alignclip":
            from .semantic import SemanticFeatureCache
            self.semantic = SemanticFeatureCache(args.semantic_cache or os.path.join(args.logs, "semantic_cache.pt"))
        self.recipe = make_recipe(args, info.rank, info.world_size, semantic=self.semantic)
        model, self.preprocess_train, self.preprocess_val, self.tokenizer = create(
            args.model, args.pretrained, args.precision, device=device, **self.recipe.model_kwargs())
        model.to(device)
        self.recipe.configure_model(model)
        self.unwrapped = model
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        if not self.trainable:
            raise ValueError("every parameter is frozen (--lock-image and --lock-text?): nothing to train")
        _seed_everything(args.seed + info.rank)   # per-rank augmentation streams from here on
        ddp = info.distributed and args.grad_cache_chunk is None
        if info.distributed and not ddp:
            for t in model.state_dict().values():
                dist.broadcast(t, 0)
        if ddp:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        self.model = model

    def _build_data(self):
        args, info = self.args, self.info
        train_path = args.train_data
        if train_path is None:
            world = os.path.join(args.logs, args.name, "world")
            if info.is_master and not os.path.isfile(os.path.join(world, "meta.json")):
                generate_world(world, args)
            if info.distributed:
                dist.barrier()
            train_path = world
        from .data import make_loader

        train_file = resolve_data(train_path, self.recipe.data_kind, "train")
        self.loader, self.sampler, self.stats = make_loader(
            self.recipe.data_kind, train_file, self.preprocess_train, self.tokenizer, args.batch_size, shuffle=True,
            seed=args.seed, rank=info.rank, world_size=info.world_size, num_workers=args.workers, drop_last=True,
            csv_separator=args.csv_separator, csv_img_key=args.csv_img_key, csv_caption_key=args.csv_caption_key)
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise ValueError(f"--batch-size {args.batch_size} is larger than the data of {train_file!r} "
                             f"(per process, with drop_last): no full batch")
        self.total_steps = self.steps_per_epoch * args.epochs
        self.world_dir = world_dir_of(args.val_data or train_path)

    def _resume(self):
        path = ckpt_mod.resolve_resume(self.args.resume, self.run_dir)
        state = self.resume_state = ckpt_mod.load_checkpoint(path)
        self.unwrapped.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step_no, self.epoch = int(state["step"]), int(state["epoch"])
        self.batch_in_epoch = int(state.get("batch_in_epoch", 0))
        per_rank = state.get("rng_per_rank")
        if per_rank and len(per_rank) == self.info.world_size:      # each rank its own augmentation stream
            state.update(per_rank[self.info.rank])
        elif self.info.distributed:
            log.warning("the checkpoint holds no RNG state per rank for world_size=%d: every rank resumes with "
                        "rank 0's (the run goes on, but not bit-identical to an uninterrupted one)",
                        self.info.world_size)
        log.info("resumed from %s: step %d, epoch %d, batch %d of the epoch", path, self.step_no, self.epoch,
                 self.batch_in_epoch)

    # -------------------------------------------------------------- records, checkpoints, evaluations
    def write_metrics(self, row: dict) -> None:
        if self.metrics_file is not None:
            self.metrics_file.write(json.dumps(row) + "\n")
            self.metrics_file.flush()

    def rng_now(self) -> dict:
        return {**ckpt_mod.rng_state(),
                **({"loader_generator": self.loader_gen.get_state()} if self.loader_gen is not None else {})}

    def save(self, epoch_done=None) -> None:
        """Called on every rank at the same points: each rank's RNG states are gathered, rank 0 writes."""
        info, rng, per_rank = self.info, self.rng_now(), None
        if info.distributed:
            per_rank = [None] * info.world_size
            dist.all_gather_object(per_rank, {"rng": rng, "epoch_rng": self.epoch_rng})
        if self.semantic is not None and info.is_master:
            self.semantic.save()
        if info.is_master:
            state = {"step": self.step_no, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                     "model": self.unwrapped.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scaler": self.scaler.state_dict() if self.scaler else None, "args": vars(self.args),
                     "model_name": self.args.model, "model_cfg": model_config(self.args.model, self.unwrapped),
                     "rng": rng, "epoch_rng": self.epoch_rng, "rng_per_rank": per_rank}
            path = ckpt_mod.save_checkpoint(state, self.run_dir, epoch_done=epoch_done)
            log.info("checkpoint: %s (step %d)", path, self.step_no)

    def evaluate(self) -> None:
        args = self.args
        if args.no_eval or self.world_dir is None or not self.info.is_master or self.last_eval_step == self.step_no:
            return
        self.last_eval_step = self.step_no
        from .evaluate import evaluate_model
        model = self.unwrapped
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                m = evaluate_model(model, self.tokenizer, self.preprocess_val, self.world_dir, split="val",
                                   device=self.device, batch_size=args.eval_batch_size)
        finally:
            model.train(was_training)
        m = {k: float(v) for k, v in m.items()
             if isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1)}
        if m:
            log.info("eval at step %d: %s", self.step_no, ", ".join(f"{k}={v:.4f}" for k, v in sorted(m.items())))
            self.write_metrics({"step": self.step_no, "epoch": self.epoch, "kind": "eval", **m})

    # -------------------------------------------------------------- the loop
    def _epoch_iterator(self):
        """The epoch's batch iterator; on resume, restores the RNG states and replays consumed batches."""
        resume = self.resume_state
        if resume is not None:   # mid-epoch: the epoch's start; at an epoch boundary: now
            state = resume["epoch_rng"] if self.batch_in_epoch > 0 else resume["rng"]
            ckpt_mod.set_rng_state(state)
            if self.loader_gen is not None and state.get("loader_generator") is not None:
                self.loader_gen.set_state(state["loader_generator"])
        self.epoch_rng = ckpt_mod.rng_state()
        if self.loader_gen is not None:      # draws the worker seeds of each epoch's iterator
            self.epoch_rng["loader_generator"] = self.loader_gen.get_state()
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)
        self.recipe.set_epoch(self.epoch)
        if self.batch_in_epoch == 0:
            self.stats.reset()
        it = iter(self.loader)
        for _ in range(self.batch_in_epoch):     # resume mid-epoch: replay the data path's RNG draws
            next(it)
        if resume is not None and self.batch_in_epoch > 0:
            ckpt_mod.set_rng_state(resume["rng"])
        self.resume_state = None
        return it

    def step(self, batch) -> dict:
        """One optimisation step; returns the metrics row (also written to metrics.jsonl)."""
        args, info, recipe, opt, scaler = self.args, self.info, self.recipe, self.optimizer, self.scaler
        batch = equalise_batch(_to(batch, self.device), info, self.device)
        if "image" in batch and torch.is_tensor(batch["image"]):
            batch["image"] = batch["image"].to(_input_dtype(self.unwrapped))
        lr = cosine_lr(self.step_no, args.lr, args.warmup, self.total_steps)
        for g in opt.param_groups:
            g["lr"] = lr
        extra = recipe.prepare(batch, self.device)
        opt.zero_grad(set_to_none=True)
        if args.grad_cache_chunk is not None:
            total, terms = grad_cache_step(self.unwrapped, recipe, batch, extra, self.autocast, args.grad_cache_chunk,
                                           scale_loss=scaler.scale if scaler else (lambda x: x))
            if info.distributed:
                average_gradients(self.unwrapped, info.world_size)
        else:
            total, terms = plain_step(self.model, recipe, batch, extra, self.autocast)
            (scaler.scale(total) if scaler else total).backward()
        if args.grad_clip_norm is not None:
            if scaler:
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(self.trainable, args.grad_clip_norm)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        with torch.no_grad():
            self.unwrapped.logit_scale.clamp_(0, math.log(100))
        self.step_no += 1
        self.batch_in_epoch += 1
        now = time.perf_counter()
        n = int(batch["image"].shape[0]) if recipe.data_kind != "diffs" else int(batch["pairs"].shape[0])
        row = {"step": self.step_no, "epoch": self.epoch, "lr": lr, "loss": float(total.detach()),
               **{k: float(v.detach()) for k, v in terms.items()},
               "logit_scale": float(self.unwrapped.logit_scale.exp().detach()),
               "samples_per_s": n * info.world_size / max(now - self._t_last, 1e-9),
               "step_time_s": now - self._t_last, "skipped": int(batch.get("skipped", 0))}
        self._t_last = now
        if not math.isfinite(row["loss"]):
            raise FloatingPointError(f"loss is not finite at step {self.step_no}: {row}")
        self.write_metrics(row)
        if info.is_master and args.log_every and self.step_no % args.log_every == 0:
            log.info("step %d epoch %d lr %.3e loss %.5f (%s) logit_scale %.3f %.1f samples/s", self.step_no,
                     self.epoch, lr, row["loss"], ", ".join(f"{k}={row[k]:.5f}" for k in terms),
                     row["logit_scale"], row["samples_per_s"])
        return row

    def train(self) -> int:
        from tqdm import tqdm

        args, info = self.args, self.info
        done = args.max_steps is not None and self.step_no >= args.max_steps
        interrupted = False
        self.model.train()
        with _Interrupt() as interrupt:
            while self.epoch < args.epochs and not done:
                it = self._epoch_iterator()
                bar = tqdm(total=self.steps_per_epoch, initial=self.batch_in_epoch,
                           disable=not info.is_master or not sys.stderr.isatty(),   # no \r noise in log files
                           desc=f"epoch {self.epoch}", dynamic_ncols=True, leave=False, file=sys.stderr)
                self._t_last = time.perf_counter()
                for batch in it:
                    row = self.step(batch)
                    bar.update(1)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
                    if args.eval_every and self.step_no % args.eval_every == 0:
                        self.evaluate()
                    if args.save_every and self.step_no % args.save_every == 0:
                        self.save()
                    if _sync_flag(interrupt.requested, info, self.device):
                        interrupted = done = True
                        break
                    if args.max_steps is not None and self.step_no >= args.max_steps:
                        done = True
                        break
                bar.close()
                finished = self.batch_in_epoch >= self.steps_per_epoch
                if finished or interrupted or done:
                    _report_skipped(self.stats, self.epoch, info, self.device, partial=not finished)
                if finished:
                    self.epoch += 1
                    self.batch_in_epoch = 0
                    if not interrupted and args.save_frequency and self.epoch % args.save_frequency == 0:
                        self.save(epoch_done=self.epoch)
            if interrupted:
                self.save()
                log.warning("interrupted: checkpoint saved at step %d; exiting", self.step_no)
                return 130
        self.save()
        self.evaluate()
        self.close()
        if info.is_master and not args.no_plot:
            try:
                from .plot import plot_metrics
                out = plot_metrics(self.metrics_path, os.path.join(self.run_dir, "metrics.png"))
                log.info("plot: %s", out)
            except Exception as e:  # a plot must never fail a finished run
                log.warning("plot failed: %s", e)
        log.info("done: %d steps, run folder %s", self.step_no, self.run_dir)
        return 0

    def close(self) -> None:
        if self.metrics_file is not None:
            self.metrics_file.close()
            self.metrics_file = None
