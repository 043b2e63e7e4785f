"""Layer pruning: keep the first ``k`` decoder layers of Qwen2-VL (and everything before them).

Kept: vision tower + merger, ``embed_tokens``, decoder layers ``0..k-1`` and the full model's final
RMSNorm. Dropped: layers ``k..L-1`` and ``lm_head``. Because the final norm is applied after the
last kept layer, the pruned model's ``last_hidden_state`` equals ``norm(hidden_states_full[k])``
exactly (same weights, same ops): pruning is a cut, not an approximation.

The saved checkpoint is a plain ``Qwen2VLModel`` (``Qwen2VLModel.from_pretrained(dir)`` loads it
with no missing or unexpected weights, no ``layer=k`` to pass by hand) with its processor beside it
and a ``puma`` section in ``config.json`` recording the base, ``k`` and provenance.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import torch
from transformers import Qwen2VLConfig, Qwen2VLModel

from puma.io import file_sha256
from puma.model.ret import ensure_ret_token
from puma.model.tokens import RET_TOKEN

_LAYER_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def text_config_of(config):
    """The decoder's config (``Qwen2VLTextConfig``) from a full ``Qwen2VLConfig`` or the text config itself."""
    return getattr(config, "text_config", config)


def prune_config(config, k: int) -> None:
    """Cut a Qwen2-VL (text) config to ``k`` layers in place.

    ``num_hidden_layers``, ``layer_types`` and ``max_window_layers`` change together: the text config
    validates ``layer_types`` against the layer count, and ``max_window_layers`` must not point past it.
    """
    text = text_config_of(config)
    depth = text.num_hidden_layers
    if not 1 <= k <= depth:
        raise ValueError(f"k must be in 1..{depth} (the base's decoder depth), got {k}")
    assert len(text.layer_types) == depth, f"layer_types has {len(text.layer_types)} entries for {depth} layers"
    text.layer_types = list(text.layer_types[:k])
    text.max_window_layers = min(text.max_window_layers, k)
    text.num_hidden_layers = k


def qwen2vl_model(model) -> Qwen2VLModel:
    """The ``Qwen2VLModel`` inside ``model`` (itself, a ForConditionalGeneration's ``.model``, or under peft)."""
    seen = model
    for _ in range(6):  # PeftModel -> LoraModel -> ForConditionalGeneration -> Qwen2VLModel at most
        if isinstance(seen, Qwen2VLModel):
            return seen
        if hasattr(seen, "get_base_model"):
            seen = seen.get_base_model()
        elif hasattr(seen, "model"):
            seen = seen.model
        else:
            break
    raise TypeError(f"no Qwen2VLModel inside {type(model).__name__}")


def vision_tower(model):
    """The vision tower (``.visual``) of a Qwen2-VL model in any wrapping (:func:`qwen2vl_model`), or of a bare
    module that keeps one at ``.visual``; None for a model without one."""
    try:
        return qwen2vl_model(model).visual
    except TypeError:
        return getattr(model, "visual", None)


def prune_layers(model, k: int) -> Qwen2VLModel:
    """Keep decoder layers ``0..k-1`` of ``model`` in place and return the ``Qwen2VLModel``.

    ``model`` is a ``Qwen2VLModel`` or a ``Qwen2VLForConditionalGeneration`` (whose ``lm_head`` is
    dropped by returning only ``.model``). The final norm is kept untouched. Works on any device,
    including ``meta`` (parameter counts of real configs without weights).
    """
    inner = qwen2vl_model(model)
    lm = inner.language_model
    depth = len(lm.layers)
    assert lm.config is inner.config.text_config, "decoder config is not the model's text_config"
    assert depth == lm.config.num_hidden_layers, f"{depth} layers but config says {lm.config.num_hidden_layers}"
    for i, layer in enumerate(lm.layers):
        # Each attention caches by layer_idx; a gap or reorder would mix caches and layer_types.
        assert layer.self_attn.layer_idx == i, f"layer {i} has layer_idx {layer.self_attn.layer_idx}"
    prune_config(inner.config, k)
    lm.layers = torch.nn.ModuleList(list(lm.layers)[:k])
    assert len(lm.layers) == len(lm.config.layer_types) == lm.config.num_hidden_layers == k
    return inner


def count_params(model) -> dict[str, int]:
    """Parameter counts of the parts pruning keeps (works on the meta device)."""
    inner = qwen2vl_model(model)
    lm = inner.language_model

    def n(module) -> int:
        return sum(p.numel() for p in module.parameters())

    layers = [n(layer) for layer in lm.layers]
    counts = {
        "vision": n(inner.visual),
        "embed_tokens": n(lm.embed_tokens),
        "layers": sum(layers),
        "per_layer": layers[0] if layers else 0,
        "norm": n(lm.norm),
    }
    counts["total"] = n(inner)
    return counts


@contextlib.contextmanager
def _quiet_transformers():
    # The load report lists the dropped layers as "unexpected"; they are checked explicitly instead.
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def load_qwen2vl(path: str | os.PathLike, config=None, **kwargs) -> Qwen2VLModel:
    """``Qwen2VLModel.from_pretrained`` that fails loudly instead of silently random-initialising.

    Weights the model needs but the checkpoint lacks (or has in another shape) are an error; the
    checkpoint may carry only what the model drops on purpose: ``lm_head`` and decoder layers past
    the model's depth. The load report transformers prints for those is silenced.
    """
    with _quiet_transformers():
        model, info = Qwen2VLModel.from_pretrained(path, config=config, output_loading_info=True, **kwargs)
    if info["missing_keys"] or info["mismatched_keys"]:
        raise ValueError(f"{path}: weights missing or mismatched for the model: "
                         f"{sorted(info['missing_keys'])[:5]} {sorted(info['mismatched_keys'])[:5]}")
    k = model.config.text_config.num_hidden_layers
    unexpected = [key for key in info["unexpected_keys"] if not _dropped(key, k)]
    if unexpected:
        raise ValueError(f"{path}: checkpoint weights the model has no place for: {sorted(unexpected)[:5]}")
    return model.eval()


def load_pruned(base: str | os.PathLike, k: int, dtype=None, device_map=None, **kwargs) -> Qwen2VLModel:
    """Load only the kept part of ``base`` (a checkpoint dir or hub id) as a ``k``-layer ``Qwen2VLModel``.

    The config is cut before loading, so the dropped layers and ``lm_head`` are never materialised:
    a 7B base pruned to 12 layers never holds the full model (works with ``device_map``/bf16). Every
    weight the base leaves out must be one pruning drops, and nothing kept may be missing.
    """
    config = Qwen2VLConfig.from_pretrained(base)
    prune_config(config, k)
    return load_qwen2vl(base, config=config, dtype=dtype, device_map=device_map, **kwargs)


def _dropped(key: str, k: int) -> bool:
    if key.endswith("lm_head.weight"):
        return True
    m = _LAYER_KEY.search(key)
    return m is not None and "visual" not in key and int(m.group(1)) >= k


def _provenance(base: str | os.PathLike) -> dict:
    """Where the base came from: the hub revision, or content hashes of a local checkpoint's files."""
    from importlib.metadata import version

    # importlib.metadata, not puma.__version__: a stale editable install can import puma as a namespace.
    prov = {"puma_version": version("puma-retriever"), "transformers_version": version("transformers")}
    path = Path(base)
    if path.is_dir():
        prov["base_files_sha256"] = {
            f.name: file_sha256(f) for f in sorted(path.iterdir()) if f.suffix in (".safetensors", ".json")
        }
    else:
        prov["base_revision"] = getattr(Qwen2VLConfig.from_pretrained(base), "_commit_hash", None)
    return prov


def save_pruned(
    base: str | os.PathLike,
    k: int,
    out: str | os.PathLike,
    ret_token: str = RET_TOKEN,
    ret_init: str = "mean",
    dtype=None,
    device_map=None,
) -> Path:
    """Prune ``base`` to ``k`` layers and write a standalone checkpoint to ``out`` (atomically).

    Adds ``ret_token`` to the tokenizer when missing (resizing and initialising its row per
    ``ret_init``), saves safetensors + config + processor, and records
    ``config.json["puma"] = {"base", "k", "depth", "ret", "provenance"}``.
    """
    from puma.io import atomic_dir
    from puma.model.processor import load_processor

    depth = text_config_of(Qwen2VLConfig.from_pretrained(base)).num_hidden_layers
    model = load_pruned(base, k, dtype=dtype, device_map=device_map)
    processor = load_processor(base)
    ret = ensure_ret_token(model, processor.tokenizer, ret_token, ret_init)
    model.config.puma = {"base": str(base), "k": k, "depth": depth, "ret": ret, "provenance": _provenance(base)}
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return Path(out)
