"""Stage 2: instruction tuning on the M-BEIR union training set with the MAC loss (paper section 4.3).

A new LoRA adapter goes on the merged stage-1 model. Each epoch the dataset gives every training
query one positive (sampled per epoch, seeded, by ``MBEIRTrain.set_epoch``). Per step::

    L = MAC(queries, gathered positives; tau0, tau_hard(epoch))        (Eq. 6-8, Algorithm 1)

where each query's target modality is its positive's modality, the candidates' modalities are
gathered with the embeddings, and ``tau_hard`` decays with the (fractional) epoch per ``mac.form``.
``mac.enabled: false`` trains with plain InfoNCE at ``stage2.tau`` instead (Table 3 ablation).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from puma.config import Settings
from puma.distributed import gather
from puma.losses import info_nce, mac_loss, modality_ids, tau_hard_schedule
from puma.train.loop import StepContext, StepLoggerFactory, gathered_weight
from puma.train.runner import PairBatch, load_lora_student, run_pair_stage


def mbeir_dataset(settings: Settings):
    """The stage-2 training set (union_train queries with their positives), from the data package."""
    from puma.data.datasets import MBEIRTrain

    return MBEIRTrain(settings.data.root, seed=settings.seed)


def current_tau_hard(settings: Settings, ctx: StepContext) -> float:
    """Eq. 8 at this step: the epoch counts fractionally (as the reference trainer's ``state.epoch``)."""
    epochs_done = ctx.global_step / ctx.steps_per_epoch
    total_epochs = ctx.total_steps / ctx.steps_per_epoch  # max_steps may end training early
    return tau_hard_schedule(settings.stage2.tau, settings.mac.lambda_, epochs_done, total_epochs, settings.mac.form)


def stage2_loss(
    model: torch.nn.Module, batch: PairBatch, ctx: StepContext, settings: Settings
) -> tuple[torch.Tensor, dict[str, float]]:
    """MAC (or InfoNCE) on one batch with negatives gathered from every process."""
    states = model(batch.inputs.to(ctx.device))  # [2n, H]: n queries then their n positives
    q, c = gather(states[: batch.n]), gather(states[batch.n :])  # [N, H] each, N = n * world
    tau = settings.stage2.tau
    metrics: dict[str, float] = {}
    if settings.mac.enabled:
        target = gather(modality_ids(batch.target_modality, ctx.device))  # [N]: each query's target modality
        cand = gather(modality_ids(batch.cand_modality, ctx.device))  # [N]: each positive's modality
        tau_hard = current_tau_hard(settings, ctx)
        loss = mac_loss(q, c, target, cand, tau, tau_hard, reverse=settings.mac.reverse)
        metrics["tau_hard"] = tau_hard
    else:
        loss = info_nce(q, c, tau)
    metrics["loss"] = loss.item()
    return loss * gathered_weight(ctx), metrics


# The params stage 2 reads (dvc.yaml's stage2 params): its checkpoints resume only under the same values.
PARAMS = ("seed", "model.ret_token", "model.ret_trainable", "model.dtype", "model.attn_implementation", "prompt",
          "stage2", "mac", "runtime", "data.root")


def stage2_workdir(settings: Settings, model_dir: str | Path, out: str | Path):
    """The work directory (checkpoints, :mod:`puma.workdir`) of a stage-2 run into ``out``."""
    from puma.workdir import WorkDir, fingerprint

    inputs = {"model": model_dir, "data": settings.data.root}
    return WorkDir(Path(out), fingerprint("stage2", settings, PARAMS, inputs))


def train_stage2(
    settings: Settings, model_dir: str | Path, out: str | Path, dataset=None, progress: bool = True,
    step_loggers: Sequence[StepLoggerFactory] = (), work=None,
) -> dict[str, Any]:
    """Run stage 2 from the stage-1 checkpoint ``model_dir``; the merged retriever goes to ``OUT/model``.

    ``step_loggers``: live loggers for :func:`puma.train.loop.run_training` (the CLI's tracking ones);
    ``work``: a :class:`puma.workdir.WorkDir` for the checkpoints (default: ``OUT/checkpoints``).
    """
    from puma.train.loop import seed_everything

    cfg, out = settings.stage2, Path(out)
    seed_everything(settings.seed)
    peft_model, processor, _ = load_lora_student(model_dir, settings, cfg)
    dataset = mbeir_dataset(settings) if dataset is None else dataset
    return run_pair_stage("stage2", settings, cfg, peft_model, processor, dataset,
                          lambda model, batch, ctx: stage2_loss(model, batch, ctx, settings), out,
                          {"mac": settings.mac.model_dump(by_alias=True)}, progress, step_loggers, work)
