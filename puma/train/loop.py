"""The shared training runtime of both stages: accelerate, optimizer, schedule, data order, resume, logs.

A stage describes *what* to train in a :class:`StageSpec` (model with its trainable parameters, dataset,
collate function, loss); :func:`run_training` does the rest, identically for both stages:

- accelerate for device, precision, gradient accumulation and (optionally) DeepSpeed ZeRO-2;
- AdamW (beta2 0.98, eps 1e-7, no weight decay) with a cosine schedule and linear warmup (reference);
- a deterministic data order: a seeded permutation per epoch, cut into global batches of
  ``batch_size * world_size`` of which each rank takes its slice, so a resumed run sees the same batches;
- periodic atomic checkpoints (:mod:`puma.train.checkpoint`) and automatic resume from the newest;
- a progress bar (loss, lr, samples/s), a JSON-lines log ``OUT/train_log.jsonl`` (one row per optimizer
  step, read by ``puma.tracking``) and the live step loggers the caller passes in (``puma train`` builds
  them with :func:`puma.tracking.step_loggers`; this module never imports tracking).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from puma.config import RuntimeSettings, Settings
from puma.faults import fault_point
from puma.io import atomic_write, write_text_atomic
from puma.train.checkpoint import TrainState, load_checkpoint, resume_point, save_checkpoint

ADAM_BETAS = (0.9, 0.98)  # reference optimiser
ADAM_EPS = 1e-7
LOG_NAME = "train_log.jsonl"


@dataclass
class StepContext:
    """What a loss function may need to know about where training is."""

    epoch: int
    global_step: int  # optimizer steps done before this batch
    total_steps: int
    steps_per_epoch: int
    world_size: int
    device: torch.device


@dataclass
class StageSpec:
    """Everything stage-specific. ``compute_loss(model, batch, ctx) -> (loss, {name: float})``.

    ``dataset`` needs ``__len__``/``__getitem__`` and may have ``set_epoch(epoch)``; ``collate`` turns a
    list of dataset items into the batch ``compute_loss`` gets (it runs in loader workers). ``params`` are
    logged once (stage hyper-parameters for tracking).
    """

    name: str
    model: torch.nn.Module
    dataset: Any
    collate: Callable[[list], Any]
    compute_loss: Callable[[torch.nn.Module, Any, StepContext], tuple[torch.Tensor, dict[str, float]]]
    epochs: int
    lr: float
    batch_size: int
    grad_accum: int = 1
    warmup_ratio: float = 0.0
    max_steps: int = -1
    checkpoint_every: int = 50
    params: dict[str, Any] = field(default_factory=dict)


class StepLogger(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def close(self) -> None: ...


# ``(stage name, run directory) -> StepLogger | None``, called on the main process at the start of
# training. The caller (``puma train``: :func:`puma.tracking.step_loggers`) decides which exist.
StepLoggerFactory = Callable[[str, Path], "StepLogger | None"]


class JsonlLogger:
    """One JSON object per optimizer step in ``OUT/train_log.jsonl`` (rows carry ``step``)."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        if path.exists():
            # Drop rows past the checkpoint we resume from (they are recomputed identically).
            rows = [r for r in path.read_text().splitlines() if r.strip()]
            keep = [r for r in rows if json.loads(r).get("step", 0) <= resume_step]
            write_text_atomic(path, "".join(r + "\n" for r in keep))
        self._f = path.open("a")

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._f.write(json.dumps({"step": step, **metrics}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_accelerator(runtime: RuntimeSettings, grad_accum: int, batch_size: int):
    """An ``Accelerator`` for the runtime params (precision, DeepSpeed ZeRO-2 config, accumulation).

    The DeepSpeed config's batch entries are filled here (accelerate fills ``auto`` values from a
    prepared data loader, and this loop shards its data itself); gradient clipping is off, as without
    DeepSpeed.
    """
    import json as _json

    from accelerate import Accelerator

    kwargs: dict[str, Any] = {"gradient_accumulation_steps": grad_accum, "mixed_precision": runtime.precision,
                              # cpu=True is what makes accelerate run multi-process on gloo without GPUs.
                              "cpu": not torch.cuda.is_available()}
    if runtime.deepspeed:
        from accelerate.utils import DeepSpeedPlugin

        path = Path(runtime.deepspeed_config)
        if not path.is_file():
            raise FileNotFoundError(f"runtime.deepspeed_config: {path} does not exist")
        config = _json.loads(path.read_text())
        world = int(os.environ.get("WORLD_SIZE", "1"))
        config.update(train_micro_batch_size_per_gpu=batch_size, gradient_accumulation_steps=grad_accum,
                      train_batch_size=batch_size * grad_accum * world, gradient_clipping=0.0)
        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=config, gradient_accumulation_steps=grad_accum)
    return Accelerator(**kwargs)


def cosine_with_warmup(optimizer, warmup_steps: int, total_steps: int):
    """LambdaLR: linear warmup to the peak lr, then cosine decay to 0 at ``total_steps``."""
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)


def epoch_batches(n: int, batch_size: int, world: int, rank: int, seed: int, epoch: int, accum: int) -> list[list[int]]:
    """This rank's index batches for ``epoch``: same for every run with the same seed (resume-safe).

    A seeded permutation of ``range(n)`` is cut into global batches of ``batch_size * world``; a partial
    last batch is dropped (in-batch negatives need full batches), and so are micro-batches past the last
    multiple of ``accum`` (an optimizer step always sees ``accum`` micro-batches).
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    global_bs = batch_size * world
    n_batches = (n // global_bs) // accum * accum
    if n_batches == 0:
        raise ValueError(f"dataset of {n} items is smaller than one step ({accum} x {global_bs} items)")
    return [perm[b * global_bs + rank * batch_size : b * global_bs + (rank + 1) * batch_size] for b in range(n_batches)]


def _loggers(factories: Sequence[StepLoggerFactory], stage: str, out: Path, resume_step: int,
             log_path: Path) -> list[StepLogger]:
    loggers: list[StepLogger] = [JsonlLogger(log_path, resume_step)]
    for factory in factories:
        try:
            lg = factory(stage, out)
        except Exception as e:  # noqa: BLE001 - tracking must never stop training
            warnings.warn(f"step logger {getattr(factory, '__name__', factory)} disabled: {e}", stacklevel=2)
            lg = None
        if lg is not None:
            loggers.append(lg)
    return loggers


@dataclass
class TrainResult:
    model: torch.nn.Module  # unwrapped (no DDP / DeepSpeed wrapper)
    state: TrainState
    history: list[dict[str, float]]  # every step's row (a resumed run: the logged rows up to the resume point first)
    resumed_from: str | None  # the checkpoint this run resumed from
    resumed_step: int | None = None
    skipped: list[str] = field(default_factory=list)  # checkpoints that failed verification


def run_training(spec: StageSpec, settings: Settings, out: str | Path, progress: bool = True,
                 step_loggers: Sequence[StepLoggerFactory] = (), work: str | Path | None = None,
                 fingerprint: str | None = None) -> TrainResult:
    """Train ``spec.model`` in place; checkpoints under ``WORK/checkpoints``, resumes from the newest valid one.

    ``work`` (default ``out``) is where what survives a crash lives: the checkpoints and the step log
    ``WORK/train_log.jsonl`` (one row per step; copied to ``OUT/train_log.jsonl`` at the end). The
    pipeline passes a work directory outside the stage's DVC outputs (:mod:`puma.workdir`) and its
    ``fingerprint``, recorded in every checkpoint and required to match on resume. A checkpoint that
    fails verification is reported and skipped for the previous one. ``step_loggers`` (factories, see
    :data:`StepLoggerFactory`) add live loggers on the main process; a failing one is warned about.
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    work = out if work is None else Path(work)
    work.mkdir(parents=True, exist_ok=True)
    seed_everything(settings.seed)
    accelerator = make_accelerator(settings.runtime, spec.grad_accum, spec.batch_size)
    world, rank = accelerator.num_processes, accelerator.process_index
    model = spec.model
    if settings.runtime.gradient_checkpointing:
        # Non-reentrant checkpointing works with frozen inputs (LoRA) without enable_input_require_grads.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"{spec.name}: the model has no trainable parameters")
    optimizer = torch.optim.AdamW(trainable, lr=spec.lr, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=0.0)

    n_micro = len(epoch_batches(len(spec.dataset), spec.batch_size, world, rank, settings.seed, 0, spec.grad_accum))
    steps_per_epoch = n_micro // spec.grad_accum
    total = spec.epochs * steps_per_epoch
    if spec.max_steps > 0:
        total = min(total, spec.max_steps)
    scheduler = cosine_with_warmup(optimizer, math.ceil(spec.warmup_ratio * total), total)
    # The scheduler is stepped here once per optimizer step (not prepared: accelerate would step it
    # once per process).
    model, optimizer = accelerator.prepare(model, optimizer)

    ckpt_root = work / "checkpoints"
    # ZeRO partitions the optimizer state across ranks; its moments are not in our (pickle-free)
    # checkpoint, so a DeepSpeed run resumes with weights, schedule, RNG and data position only.
    ckpt_optimizer = None if settings.runtime.deepspeed else optimizer
    state, resumed, resumed_step = TrainState(), None, None
    found, skipped = resume_point(ckpt_root, fingerprint, log=lambda m: accelerator.print(f"{spec.name}: {m}"))
    if found is not None:
        state = load_checkpoint(found, accelerator.unwrap_model(model), ckpt_optimizer, scheduler, fingerprint)
        resumed, resumed_step = str(found), state.global_step
        accelerator.print(f"{spec.name}: resumed from step {state.global_step}/{total} ({found})")
    elif fingerprint is not None:
        accelerator.print(f"{spec.name}: no checkpoint in {ckpt_root}; starting at step 0")

    log_path = work / LOG_NAME
    loggers = (_loggers(step_loggers, spec.name, out, state.global_step, log_path)
               if accelerator.is_main_process else [])
    for lg in loggers:
        lg.log_params({"stage": spec.name, "total_steps": total, "world_size": world, **spec.params})
    bar = tqdm(total=total, initial=state.global_step, desc=spec.name,
               disable=not (progress and accelerator.is_main_process), dynamic_ncols=True)
    history: list[dict[str, float]] = []
    if accelerator.is_main_process and state.global_step and log_path.is_file():
        # The steps before the resume point, as the interrupted run logged them (its summary needs them).
        history = [json.loads(r) for r in log_path.read_text().splitlines() if r.strip()]
    model.train()
    try:
        while state.global_step < total:
            epoch = state.epoch
            if hasattr(spec.dataset, "set_epoch"):
                spec.dataset.set_epoch(epoch)
            batches = epoch_batches(len(spec.dataset), spec.batch_size, world, rank, settings.seed, epoch,
                                    spec.grad_accum)
            skip = state.step_in_epoch * spec.grad_accum
            # An explicit generator keeps the loader from drawing on the global RNG (dropout's), so a
            # run resumed mid-epoch continues the same random stream as an uninterrupted one.
            loader = DataLoader(spec.dataset, batch_sampler=batches[skip:], collate_fn=spec.collate,
                                num_workers=settings.runtime.num_workers,
                                generator=torch.Generator().manual_seed(settings.seed + epoch))
            t0, seen, sums = time.perf_counter(), 0, {}
            for batch in loader:
                ctx = StepContext(epoch, state.global_step, total, steps_per_epoch, world, accelerator.device)
                with accelerator.accumulate(model):
                    loss, metrics = spec.compute_loss(model, batch, ctx)
                    accelerator.backward(loss)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                seen += spec.batch_size * world
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v) / spec.grad_accum
                if not accelerator.sync_gradients:
                    continue
                lr = scheduler.get_last_lr()[0]
                scheduler.step()
                state.global_step += 1
                state.step_in_epoch += 1
                dt = time.perf_counter() - t0
                row = {"epoch": epoch, "lr": lr, "samples_per_s": seen / dt if dt > 0 else 0.0, **sums}
                history.append({"step": state.global_step, **row})
                for lg in loggers:
                    lg.log_metrics(row, state.global_step)
                bar.update(1)
                bar.set_postfix(loss=f"{sums.get('loss', float('nan')):.4f}", lr=f"{lr:.2e}",
                                samples_s=f"{row['samples_per_s']:.1f}")
                t0, seen, sums = time.perf_counter(), 0, {}
                done = state.global_step >= total
                if state.step_in_epoch >= steps_per_epoch:
                    state.epoch, state.step_in_epoch = state.epoch + 1, 0
                if done or state.global_step % spec.checkpoint_every == 0:
                    save_checkpoint(ckpt_root, accelerator.unwrap_model(model), ckpt_optimizer, scheduler, state,
                                    fingerprint=fingerprint)
                fault_point(spec.name, state.global_step)  # test hook (puma/faults.py): off unless asked
                if done:
                    break
    finally:
        bar.close()
        for lg in loggers:
            try:
                lg.close()
            except Exception as e:  # noqa: BLE001 - a tracking failure at exit must not hide a training error
                warnings.warn(f"closing step logger failed: {e}", stacklevel=2)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and work != out and log_path.is_file():
        atomic_write(out / LOG_NAME, lambda f: f.write(log_path.read_bytes()))
    return TrainResult(accelerator.unwrap_model(model), state, history, resumed, resumed_step, skipped)


def tracked_params(settings: Settings) -> dict[str, Any]:
    """The params a training run logs: all of params.yaml flattened (k, lambda, tau, alpha mode, LoRA, ...)."""
    return {k: v for k, v in settings.flat().items() if not k.startswith(("evaluate.", "embed."))}


def run_summary(result: TrainResult) -> dict[str, Any]:
    """Steps and the mean loss over the first and the last tenth of the steps (a resumed run: all of them).

    The same for a resumed run as for an uninterrupted one: where a run resumed is in
    :func:`resume_record`, not here (``OUT/metrics.json`` is the stage's result, compared across runs).
    """
    hist = result.history
    tenth = max(1, len(hist) // 10)

    def mean(rows: list[dict[str, float]]) -> float | None:
        vals = [r["loss"] for r in rows if "loss" in r]
        return sum(vals) / len(vals) if vals else None

    return {"steps": result.state.global_step, "loss_first": mean(hist[:tenth]), "loss_last": mean(hist[-tenth:])}


def resume_record(result: TrainResult, fingerprint: str | None = None) -> dict[str, Any]:
    """Where this run started: ``{"resumed_from": step or None, "checkpoint", "skipped", "fingerprint"}``."""
    return {"resumed_from": result.resumed_step, "checkpoint": result.resumed_from,
            "skipped_checkpoints": result.skipped, "fingerprint": fingerprint}


def gathered_weight(ctx: StepContext) -> float:
    """Factor for loss terms computed on gathered embeddings (see :mod:`puma.distributed`).

    Every rank computes the same full-batch contrastive loss, but data-parallel training averages the
    parameter gradients over ranks; multiplying by the world size restores one process's gradient.
    """
    return float(ctx.world_size)


__all__ = [
    "StageSpec",
    "StepContext",
    "StepLogger",
    "StepLoggerFactory",
    "TrainResult",
    "epoch_batches",
    "gathered_weight",
    "make_accelerator",
    "resume_record",
    "run_summary",
    "run_training",
    "seed_everything",
    "tracked_params",
]
