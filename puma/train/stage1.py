"""Stage 1: layer-pruned self-distillation (paper section 4.2) on query/positive pairs (``stage1.dataset``, NLI).

The student is the pruned checkpoint with a new LoRA adapter; the teacher is the frozen full-depth
base on the same inputs, live or read from the teacher cache (``stage1.teacher``). Per step (Eq. 4)::

    L = alpha1 * InfoNCE(student queries, gathered student positives)     (Eq. 3)
      + alpha2 * distill(student [RET] states, teacher [RET] states)      (Eq. 2, queries and positives)

with ``(alpha1, alpha2)`` from :func:`puma.losses.alpha_schedule` (``stage1.alpha_mode``) and alpha2
multiplied by ``stage1.distill_scale`` (paper 1.0; the authors' released code 0.05). ``distill_kind:
none`` drops the distillation term (and the teacher). At the end the adapter is merged and a
standalone checkpoint is written to ``OUT/model``. With ``stage1.enabled: false`` nothing is trained:
:func:`skip_stage1` copies the pruned checkpoint to ``OUT/model``, so stage 2 starts from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from puma.config import Settings
from puma.distributed import gather
from puma.losses import alpha_schedule, distill_loss, info_nce, pretraining_loss
from puma.train.loop import StepContext, StepLoggerFactory, gathered_weight
from puma.train.runner import PairBatch, as_pair, load_lora_student, run_pair_stage
from puma.train.teacher_cache import TeacherCache, load_teacher, teacher_fingerprint, write_teacher_cache


def stage1_pairs(settings: Settings):
    """The stage-1 training pairs: the registered dataset ``stage1.dataset`` (default NLI, ``data.nli_path``)."""
    from puma.data.stage1_datasets import stage1_dataset

    spec = stage1_dataset(settings.stage1.dataset)
    return spec.load(spec.path(settings.data))


class Teacher:
    """Teacher ``[RET]`` states for a :class:`PairBatch`: a live frozen model or the on-disk cache."""

    def __init__(self, model=None, cache: TeacherCache | None = None):
        assert (model is None) != (cache is None), "exactly one of a live teacher and a cache"
        self.model, self.cache = model, cache

    @torch.no_grad()
    def states(self, batch: PairBatch, device) -> torch.Tensor:
        if self.cache is not None:
            return self.cache.get(batch.keys).to(device)  # [2n, H]
        from puma.model.encoding import ret_states

        return ret_states(self.model, batch.inputs.to(device))  # [2n, H]


def stage1_alphas(step: int, total_steps: int, cfg) -> tuple[float, float]:
    """Eq. 4's ``(alpha1, alpha2)`` with alpha2 scaled by ``cfg.distill_scale`` (0 for ``distill_kind: none``)."""
    a1, a2 = alpha_schedule(step, total_steps, cfg.alpha_mode)
    return a1, (0.0 if cfg.distill_kind == "none" else a2 * cfg.distill_scale)


def needs_teacher(cfg) -> bool:
    """Whether stage 1 reads the teacher (enabled and with a distillation term)."""
    return cfg.enabled and cfg.distill_kind != "none"


def skip_stage1(model_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """``stage1.enabled: false``: copy the pruned checkpoint to ``OUT/model`` unchanged (atomic) and
    return the summary; stage 2 then starts from the pruned model."""
    import shutil

    from puma.io import atomic_dir

    model_dir, out = Path(model_dir), Path(out)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json (not a checkpoint)")
    with atomic_dir(out / "model") as tmp:
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
    return {"stage": "stage1", "enabled": False, "steps": 0, "model": str(out / "model"),
            "source": str(model_dir)}


def stage1_loss(
    student: torch.nn.Module, teacher: Teacher, batch: PairBatch, ctx: StepContext, cfg
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 4 on one batch; returns (the loss to back-propagate, its logged terms).

    ``teacher`` is None exactly when ``cfg.distill_kind`` is ``none`` (the distillation term is 0).
    """
    states = student(batch.inputs.to(ctx.device))  # [2n, H]: n queries then n positives
    s_q, s_c = states[: batch.n], states[batch.n :]
    contrastive = info_nce(gather(s_q), gather(s_c), cfg.tau)  # Eq. 3, in-batch negatives from all ranks
    if cfg.distill_kind == "none":
        distill = states.new_zeros(())
    else:
        t = teacher.states(batch, ctx.device).to(states.dtype)
        t_q, t_c = t[: batch.n], t[batch.n :]
        distill = distill_loss((s_q, s_c), (t_q, t_c), cfg.distill_kind, tau=cfg.tau)  # Eq. 2
    alphas = stage1_alphas(ctx.global_step, ctx.total_steps, cfg)
    loss = pretraining_loss(contrastive, distill, alphas)  # Eq. 4
    # Gradient of the gathered term is per-rank exact; DDP averages ranks, so scale it back (see loop).
    backward = pretraining_loss(contrastive * gathered_weight(ctx), distill, alphas)
    return backward, {"loss": loss.item(), "loss_contrastive": contrastive.item(),
                      "loss_distill": distill.item(), "alpha1": alphas[0], "alpha2": alphas[1]}


def _teacher(settings: Settings, model_dir: Path, ret_id: int, cache_dir: Path | None) -> Teacher | None:
    if not needs_teacher(settings.stage1):
        return None
    if settings.stage1.teacher == "cache":
        if cache_dir is None:
            raise ValueError("stage1.teacher is 'cache' but no teacher cache directory was given")
        cache = TeacherCache(cache_dir)
        cache.check(teacher_fingerprint(settings.model.base, model_dir, ret_id))
        return Teacher(cache=cache)
    return Teacher(model=load_teacher(settings.model.base, model_dir, ret_id, getattr(torch, settings.model.dtype)))


# The params stage 1 / the teacher cache read (dvc.yaml): their checkpoints resume only under the same values.
PARAMS = ("seed", "model.base", "model.ret_token", "model.ret_trainable", "model.dtype", "model.attn_implementation",
          "prompt", "stage1", "runtime", "embed.batch_size", "embed.shard_size", "data.nli_path")
CACHE_PARAMS = ("model.base", "model.ret_token", "model.dtype", "prompt", "embed.batch_size", "embed.shard_size",
                "data.nli_path", "stage1.dataset")


def _stage1_inputs(settings: Settings, model_dir: str | Path) -> dict[str, Any]:
    from puma.data.stage1_datasets import stage1_dataset

    inputs = {"model": model_dir, "data": stage1_dataset(settings.stage1.dataset).path(settings.data)}
    if Path(settings.model.base).is_dir():
        inputs["base"] = settings.model.base
    return inputs


def stage1_workdir(settings: Settings, model_dir: str | Path, out: str | Path, cache_dir: str | Path | None = None):
    """The work directory (checkpoints, :mod:`puma.workdir`) of a stage-1 run into ``out``."""
    from puma.workdir import WorkDir, fingerprint

    inputs = _stage1_inputs(settings, model_dir)
    if settings.stage1.teacher == "cache" and cache_dir is not None:
        inputs["teacher_cache"] = cache_dir
    return WorkDir(Path(out), fingerprint("stage1", settings, PARAMS, inputs))


def teacher_cache_workdir(settings: Settings, model_dir: str | Path, out: str | Path, batch_size: int | None = None):
    """The work directory (finished shards) of a teacher-cache build into ``out``.

    ``batch_size`` (``--batch-size``, default ``embed.batch_size``) is part of the key: the teacher's
    states are computed batch by batch, and a resume must continue with the same batches.
    """
    from puma.workdir import WorkDir, fingerprint

    if batch_size:
        settings = settings.model_copy(update={"embed": settings.embed.model_copy(update={"batch_size": batch_size})})
    return WorkDir(Path(out), fingerprint("teacher_cache", settings, CACHE_PARAMS, _stage1_inputs(settings, model_dir)))


def train_stage1(
    settings: Settings, model_dir: str | Path, out: str | Path, cache_dir: str | Path | None = None,
    dataset=None, progress: bool = True, step_loggers: Sequence[StepLoggerFactory] = (), work=None,
) -> dict[str, Any]:
    """Run stage 1 from the pruned checkpoint ``model_dir``; the merged model goes to ``OUT/model``.

    With ``stage1.enabled: false`` it only copies ``model_dir`` there (:func:`skip_stage1`).

    ``step_loggers``: live loggers for :func:`puma.train.loop.run_training` (the CLI's tracking ones).
    """
    from puma.train.loop import seed_everything

    cfg, out, model_dir = settings.stage1, Path(out), Path(model_dir)
    if not cfg.enabled:
        return skip_stage1(model_dir, out)
    seed_everything(settings.seed)  # LoRA initialisation
    peft_model, processor, ret_id = load_lora_student(model_dir, settings, cfg)
    teacher = _teacher(settings, model_dir, ret_id, Path(cache_dir) if cache_dir else None)
    dataset = stage1_pairs(settings) if dataset is None else dataset
    if teacher is not None and teacher.model is not None:
        teacher.model.to("cuda" if torch.cuda.is_available() else "cpu")
    record = {"teacher": cfg.teacher, "alpha_mode": cfg.alpha_mode, "distill_kind": cfg.distill_kind,
              "distill_scale": cfg.distill_scale}
    return run_pair_stage("stage1", settings, cfg, peft_model, processor, dataset,
                          lambda model, batch, ctx: stage1_loss(model, teacher, batch, ctx, cfg), out, record,
                          progress, step_loggers, work)


def build_teacher_cache(
    settings: Settings, model_dir: str | Path, out: str | Path, dataset=None, batch_size: int | None = None,
    progress: bool = True, work=None,
) -> Path:
    """Compute the teacher's ``[RET]`` states for every query and positive of the stage-1 data.

    ``work``: the build's :class:`puma.workdir.WorkDir` (:func:`teacher_cache_workdir`): finished
    shards are kept there, so a killed build resumes; the caller removes it once ``out`` is complete.
    """
    from puma.model.processor import load_processor

    model_dir = Path(model_dir)
    processor = load_processor(model_dir, settings.prompt.min_pixels, settings.prompt.max_pixels)
    ret_id = processor.tokenizer.convert_tokens_to_ids(settings.model.ret_token)
    teacher = load_teacher(settings.model.base, model_dir, ret_id, getattr(torch, settings.model.dtype))
    teacher.to("cuda" if torch.cuda.is_available() else "cpu")
    dataset = stage1_pairs(settings) if dataset is None else dataset
    bs = batch_size or settings.embed.batch_size

    def batches():
        pairs = [as_pair(dataset[i]) for i in range(len(dataset))]
        for start in range(0, len(pairs), bs):
            chunk = pairs[start : start + bs]
            yield [q for q, _ in chunk], True
            yield [p for _, p in chunk], False

    return write_teacher_cache(out, teacher, processor, settings.prompt, batches(),
                               teacher_fingerprint(settings.model.base, model_dir, ret_id),
                               shard_size=settings.embed.shard_size, progress=progress,
                               work=None if work is None else work.prepare() / "shards")
