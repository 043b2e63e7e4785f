"""The shared stage runner: what both training stages do besides their loss.

LoRA on a checkpoint, the [RET] encoder, pair batches, the training run and the final merged save.

- :func:`load_lora_student` puts a fresh LoRA adapter (peft) on the decoder's q/k/v/o/gate/up/down
  projections of a standalone checkpoint, and makes the ``[RET]`` embedding row trainable (peft
  ``trainable_token_indices``) or leaves it frozen (``model.ret_trainable``).
- :class:`RetEncoder` is the module the trainer optimises: ``forward(batch) -> [B, H]`` ``[RET]`` states,
  so accelerate/DDP see one ordinary module with one forward per step.
- :class:`PairCollator` turns dataset examples (``{"query": item, "positive": item}``) into one joined batch.
- :func:`run_pair_stage` runs one stage (:func:`puma.train.loop.run_training`) and saves its model.
- :func:`save_merged` merges the adapter and writes a standalone retriever checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import BatchFeature

from puma.data.schema import modality_of
from puma.model.encoding import collate, ret_states
from puma.train.batching import concat_batches, row_keys

if TYPE_CHECKING:
    from puma.train.loop import StepLoggerFactory
    from puma.workdir import WorkDir

# Decoder projections only: Qwen2-VL's vision blocks use fused `qkv`/`proj`/`fc1`/`fc2` and the merger
# an `mlp` Sequential, so anchoring on `language_model` keeps the vision tower frozen by construction.
LORA_TARGETS = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


def load_lora_student(model_dir: str | Path, settings, stage_cfg, dtype=None):
    """Load the checkpoint at ``model_dir`` as a ``Qwen2VLModel`` with a new LoRA adapter (peft)."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2VLModel

    from puma.model.processor import load_processor
    from puma.model.prune import _quiet_transformers

    processor = load_processor(model_dir, settings.prompt.min_pixels, settings.prompt.max_pixels)
    ret_id = processor.tokenizer.convert_tokens_to_ids(settings.model.ret_token)
    with _quiet_transformers():
        base = Qwen2VLModel.from_pretrained(model_dir, dtype=dtype or getattr(torch, settings.model.dtype),
                                            attn_implementation=settings.model.attn_implementation)
    config = LoraConfig(
        r=stage_cfg.lora_r,
        lora_alpha=stage_cfg.lora_alpha,
        lora_dropout=stage_cfg.lora_dropout,
        target_modules=LORA_TARGETS,
        # decision 3: the [RET] row is a real, trained embedding (reference: frozen, never trained).
        trainable_token_indices={"embed_tokens": [ret_id]} if settings.model.ret_trainable else None,
    )
    model = get_peft_model(base, config)
    return model, processor, ret_id


class RetEncoder(torch.nn.Module):
    """``forward(batch) -> [B, H]``: un-normalised final-norm ``[RET]`` states of the wrapped model."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch: BatchFeature) -> torch.Tensor:
        return ret_states(self.model, batch)

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.model.gradient_checkpointing_enable(**kwargs)


def candidate_modality(item: dict) -> str:
    """The M-BEIR modality string of an item from what it holds (M-BEIR's rule for candidates)."""
    return modality_of(bool(item.get("text")), item.get("image") is not None)


def as_pair(example: dict) -> tuple[dict, dict]:
    """``(query item, positive item)`` of a training example ``{"query": item, "positive": item, ...}``
    (what :class:`puma.data.datasets.NLIPairs` and :class:`puma.data.datasets.MBEIRTrain` give)."""
    try:
        return example["query"], example["positive"]
    except (KeyError, TypeError):
        keys = sorted(example) if isinstance(example, dict) else type(example).__name__
        raise KeyError(f"training example has keys {keys}; expected 'query' and 'positive'") from None


@dataclass
class PairBatch:
    """One training step's input: ``inputs`` holds the ``n`` queries, then the ``n`` positives."""

    inputs: BatchFeature
    n: int
    keys: list[str]  # content key per row (teacher cache)
    target_modality: list[str]  # M-BEIR modality of each query's target (MAC, Algorithm 1)
    cand_modality: list[str]  # M-BEIR modality of each positive


class PairCollator:
    """Collates examples into a :class:`PairBatch` (picklable, so it can run in loader workers)."""

    def __init__(self, processor, prompt_settings, ret_token: str):
        self.processor = processor
        self.prompt = prompt_settings
        self.ret_token = ret_token
        self.pad_id = processor.tokenizer.pad_token_id
        self.vision_start = processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")

    def __call__(self, examples: list[dict]) -> PairBatch:
        pairs = [as_pair(e) for e in examples]
        queries = [dict(q) for q, _ in pairs]
        positives = [dict(p) for _, p in pairs]
        q = collate(self.processor, queries, True, self.prompt, self.ret_token)
        c = collate(self.processor, positives, False, self.prompt, self.ret_token)
        inputs = concat_batches(q, c, self.pad_id)
        cand = [e.get("cand_modality") or candidate_modality(p) for e, p in zip(examples, positives)]
        target = [e.get("query_target_modality") or m for e, m in zip(examples, cand)]
        return PairBatch(inputs, len(pairs), row_keys(inputs, self.vision_start), target, cand)


RESUME = "resume.json"


def run_pair_stage(name: str, settings, cfg, peft_model, processor, dataset, compute_loss, out: Path,
                   record: dict[str, Any], progress: bool = True,
                   step_loggers: Sequence[StepLoggerFactory] = (), work: WorkDir | None = None) -> dict[str, Any]:
    """Train ``peft_model`` on (query, positive) pairs with ``compute_loss``, then merge and save ``OUT/model``.

    ``cfg`` is the stage's params section; ``record`` goes into ``config.json["puma"][name]`` with the
    number of steps. ``work``: the stage's work directory (checkpoints; :mod:`puma.workdir`),
    default ``OUT`` itself. Where the run resumed goes to ``OUT/resume.json``. Returns the run summary
    (:func:`puma.train.loop.run_summary`, identical for a resumed and an uninterrupted run) with
    ``resumed_from`` added. The caller removes the work directory once it has written the rest.
    """
    from puma import distributed
    from puma.io import write_json_atomic
    from puma.train.loop import StageSpec, resume_record, run_summary, run_training, tracked_params

    spec = StageSpec(
        name=name, model=RetEncoder(peft_model), dataset=dataset,
        collate=PairCollator(processor, settings.prompt, settings.model.ret_token), compute_loss=compute_loss,
        epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
        warmup_ratio=cfg.warmup_ratio, max_steps=cfg.max_steps, checkpoint_every=cfg.checkpoint_every,
        params=tracked_params(settings),
    )
    wd, key = (work.prepare(), work.key) if work is not None else (None, None)
    result = run_training(spec, settings, out, progress=progress, step_loggers=step_loggers, work=wd,
                          fingerprint=key)
    resumed = resume_record(result, key)
    if distributed.rank() == 0:
        save_merged(result.model.model, processor, settings, Path(out) / "model",
                    {name: {"steps": result.state.global_step, **record}})
        write_json_atomic(Path(out) / RESUME, resumed)
    return {**run_summary(result), "resumed_from": resumed["resumed_from"]}


def save_merged(model, processor, settings, out: str | Path, record: dict[str, Any]) -> Path:
    """Merge the LoRA adapter into the weights and write a standalone retriever to ``out`` (atomic).

    ``record`` is added to ``config.json["puma"]`` (stage, steps, losses) beside the pruning record.
    """
    from puma.model.retriever import PumaRetriever, qwen_config

    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    config = qwen_config(merged)
    config.puma = {**(getattr(config, "puma", None) or {}), **record}
    return PumaRetriever(merged, processor, prompt=settings.prompt, ret_token=settings.model.ret_token).save_pretrained(out)
