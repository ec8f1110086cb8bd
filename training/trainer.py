"""The one training loop of every MDFlow stage, on one process or many (torchrun / DDP).

A stage is a loss recipe (training/stages.py) plus the network it trains. The loop owns
what every stage needs: the resumable data stream, Adam and its learning-rate schedule,
an exponential moving average of the weights (``train.ema_decay``), atomic checkpoints with
the full RNG state (``--resume`` continues exactly), a tqdm bar, TensorBoard scalars and
pictures, periodic validation on ground-truth pairs, gradient clipping and mixed precision
on GPUs, and a stop on SIGINT/SIGTERM after the step in flight with a checkpoint at that step
(training/stop_signals.py; every rank stops at the same step).
"""
from __future__ import annotations

import copy
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mdflow_ros.files import ModelFileError
from training.augment import AugmentConfig, Augmentor
from training.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from training.config import check_choices, resume_differences
from training.sampler import ResumableSampler
from training.stop_signals import StopSignals, TrainingStopped, ignore_in_worker

LOG = logging.getLogger("mdflow_ros.training")

LATEST = "latest.pt"


class ResumeError(RuntimeError):
    """A resume was asked for but the checkpoint does not belong to this run."""


def distributed_context() -> tuple[int, int, int]:
    """(rank, world size, local rank), initialising torch.distributed when run under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def scheduled_lr(step: int, train_cfg: dict[str, Any]) -> float:
    """The learning rate of optimisation step ``step`` (0-based), a pure function of the step (resume-exact).

    ``train.lr_schedule`` (training/config.py LR_SCHEDULES) is "constant" or "cosine".
    """
    base, warmup, total = train_cfg["lr"], train_cfg["lr_warmup_steps"], train_cfg["steps"]
    if step < warmup:
        return base * (step + 1) / warmup
    if train_cfg["lr_schedule"] == "constant":
        return base
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def _collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


class Trainer:
    """Trains ``model`` with ``recipe`` on ``dataset`` (items: dict of tensors, indexed by (index, seed)).

    A recipe may hold a frozen partner as ``recipe.partner`` (training/partners.py: the other
    network of a distillation stage, or a classical estimator); it is moved to the trainer's
    device (a network in eval mode without gradients). With ``train.ema_decay`` > 0 the
    trainer keeps an exponential moving average of the weights, updated after every step,
    checkpointed with them, used for validation and returned by ``deployed_state``.
    ``snapshot(model, step)`` is called with the deployed model after every validation (rank 0),
    e.g. to keep a model file per validated step to choose from later.
    """

    def __init__(self, config: dict[str, Any], out_dir: str | Path, model: torch.nn.Module,
                 recipe: Callable[..., tuple[torch.Tensor, dict[str, float]]], dataset: Dataset,
                 meta: dict[str, Any] | None = None,
                 validate: Callable[[torch.nn.Module, int], dict[str, float]] | None = None,
                 snapshot: Callable[[torch.nn.Module, int], None] | None = None):
        self.cfg = config
        self.out = Path(out_dir)
        self.rank, self.world, local_rank = distributed_context()
        self.device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
        if config["train"]["threads"]:
            torch.set_num_threads(config["train"]["threads"])
        self.model = model.to(self.device)
        self.recipe = recipe
        partner = getattr(recipe, "partner", None)
        if partner is not None:
            partner.to(self.device)
        self.dataset = dataset
        self.meta = dict(meta or {})
        self.validate = validate
        self.snapshot = snapshot
        t = config["train"]
        check_choices(config)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=t["lr"], eps=t["adam_eps"],
                                          weight_decay=t["weight_decay"])
        self.generator = torch.Generator().manual_seed(config["seed"] * 7919 + self.rank)
        self.augmentor = Augmentor(AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v
                                                    for k, v in config["augment"].items()}), self.generator)
        self.step = 0
        self.ema = ({k: v.detach().clone() for k, v in self.model.state_dict().items()} if t["ema_decay"] else None)
        self.amp = bool(t["amp"]) and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

    @property
    def checkpoint_path(self) -> Path:
        return self.out / LATEST

    def resume(self) -> bool:
        """Load ``RUN_DIR/latest.pt`` if present; refuse it if it belongs to another model or config."""
        path = self.checkpoint_path
        if not path.is_file():
            return False
        ckpt = load_checkpoint(path)
        if ckpt["arch"] != self.meta.get("arch"):
            raise ResumeError(f"{path} holds a {ckpt['arch']} model, but this run trains {self.meta.get('arch')}")
        diffs = resume_differences(ckpt["config"], self.cfg)
        saved_steps = ckpt["config"]["train"]["steps"]
        if self.cfg["train"]["lr_schedule"] != "constant" and saved_steps != self.cfg["train"]["steps"]:
            diffs.append(f"train.steps: checkpoint has {saved_steps!r}, config has {self.cfg['train']['steps']!r} "
                         f"(the {self.cfg['train']['lr_schedule']} learning-rate schedule spans train.steps)")
        if diffs:
            raise ResumeError(f"{path} was written with another config; refusing to resume:\n  " + "\n  ".join(diffs))
        try:
            self.model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as err:
            raise ModelFileError(f"{path}: weights do not fit the model: {str(err).splitlines()[0]}") from None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.ema is not None:
            if "ema" not in ckpt:
                raise ResumeError(f"{path} has no weight average, but this run keeps one (train.ema_decay)")
            self.ema = {k: v.to(self.device) for k, v in ckpt["ema"].items()}
        self.step = int(ckpt["step"])
        restore_rng(ckpt["rng"], self.generator)
        LOG.info("resumed %s at step %d", path, self.step)
        return True

    def save(self) -> None:
        if self.rank == 0:
            meta = dict(self.meta, step=self.step, config=self.cfg)
            save_checkpoint(self.checkpoint_path, self.model, self.optimizer, self.step, self.cfg, self.generator, meta,
                            self.ema)

    def _update_ema(self) -> None:
        """ema <- decay * ema + (1 - decay) * weights (floating entries; others copied)."""
        decay = self.cfg["train"]["ema_decay"]
        with torch.no_grad():
            for key, value in self.model.state_dict().items():
                if value.is_floating_point():
                    self.ema[key].mul_(decay).add_(value.detach(), alpha=1.0 - decay)
                else:
                    self.ema[key].copy_(value)

    def deployed_state(self) -> dict[str, torch.Tensor]:
        """The weights to deploy and validate: the moving average when the run keeps one, else the weights."""
        return self.ema if self.ema is not None else self.model.state_dict()

    def _deployed_model(self) -> torch.nn.Module:
        """The model with the deployed weights (a copy when they are the moving average)."""
        if self.ema is None:
            return self.model
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.ema)
        return model

    def _loader(self) -> DataLoader:
        t, d = self.cfg["train"], self.cfg["data"]
        sampler = ResumableSampler(len(self.dataset), self.cfg["seed"], start=self.step * t["batch_size"],
                                   rank=self.rank, world=self.world)
        workers = d["num_workers"]
        return DataLoader(self.dataset, batch_size=t["batch_size"], sampler=sampler, num_workers=workers,
                          collate_fn=_collate, persistent_workers=workers > 0, prefetch_factor=2 if workers else None,
                          worker_init_fn=ignore_in_worker if workers else None)

    def run(self, max_steps: int | None = None) -> int:
        """Train until the configured step count (or ``max_steps`` more steps); returns the final step.
        Raises TrainingStopped, after writing the checkpoint, when a SIGINT or SIGTERM arrived."""
        with StopSignals() as signals:
            return self._run(max_steps, signals)

    def _stop_signal(self, signals: StopSignals) -> int:
        """The stop signal's number if any rank received one (0: none), agreed on by all ranks."""
        received = torch.tensor([signals.received or 0])
        if self.world > 1:
            dist.all_reduce(received, op=dist.ReduceOp.MAX)
        return int(received)

    def _run(self, max_steps: int | None, signals: StopSignals) -> int:
        t = self.cfg["train"]
        end = t["steps"] if max_steps is None else min(t["steps"], self.step + max_steps)
        net = DistributedDataParallel(self.model) if self.world > 1 else self.model
        net.train()
        writer = self._writer()
        bar = tqdm(total=end, initial=self.step, desc=self.cfg["stage"], disable=self.rank != 0, dynamic_ncols=True)
        batches = iter(self._loader())
        window_start, window_pairs = time.perf_counter(), 0
        while self.step < end:
            batch = {k: v.to(self.device, non_blocking=True) for k, v in next(batches).items()}
            with torch.autocast(self.device.type, enabled=self.amp):
                loss, terms = self.recipe(net, batch, self.augmentor, self.cfg["loss"], self.step)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss)} at step {self.step}; last checkpoint kept at "
                                         f"{self.checkpoint_path}")
            lr = scheduled_lr(self.step, t)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            terms["lr"] = lr
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if t["grad_clip"]:
                self.scaler.unscale_(self.optimizer)
                terms["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), t["grad_clip"]))
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self._update_ema()
            self.step += 1
            window_pairs += batch["img1"].shape[0] * self.world
            bar.update(1)
            if self.step % t["log_every"] == 0 and self.rank == 0:
                rate = window_pairs / (time.perf_counter() - window_start)
                window_start, window_pairs = time.perf_counter(), 0
                terms["pairs_per_s"] = rate
                bar.set_postfix(loss=f"{terms['loss']:.4f}", pairs_s=f"{rate:.2f}")
                for key, value in terms.items():
                    writer.add_scalar(f"train/{key}", value, self.step)
            stop = self._stop_signal(signals)
            if stop or self.step % t["checkpoint_every"] == 0 or self.step == end:
                self.save()
            if stop:
                bar.close()
                if writer is not None:
                    writer.close()
                if self.world > 1:
                    dist.barrier()
                raise TrainingStopped(stop, self.step, str(self.checkpoint_path))
            if self.validate and self.rank == 0 and (self.step % t["val_every"] == 0 or self.step == end):
                deployed = self._deployed_model()
                for key, value in self.validate(deployed, self.step).items():
                    writer.add_scalar(f"val/{key}", value, self.step)
                writer.flush()
                if self.snapshot is not None:
                    self.snapshot(deployed, self.step)
                LOG.info("step %d validation done", self.step)
                self.model.train()
        bar.close()
        if writer is not None:
            writer.close()
        if self.world > 1:
            dist.barrier()
        return self.step

    def _writer(self):
        """TensorBoard writer of rank 0 (the other ranks log nothing)."""
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.out / "tb")) if self.rank == 0 else None


def seed_everything(seed: int) -> None:
    """Seed the global RNGs a run draws from outside the trainer's own generator."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
