"""What a checkpoint's pictures tell its decoder: linear probes of the vision tower's tokens and the ``[RET]`` state.

Zero-shot retrieval on MBEIR-mini's picture columns needs a base whose ``[RET]`` state says what a picture shows.
This measures, for image-only candidates of MBEIR-mini's local pools whose scene is an object, how well a ridge
classifier reads the object's colour and shape from (a) the vision tower's output tokens (the merged visual tokens
the decoder reads) and (b) the final-norm ``[RET]`` state of the candidate prompt, fitted on the first part of the
items and scored on the rest. The raw pixels' patch mean is the reference a tower should beat. Used by
``ablations/vision_probe.py`` (docs/results/reproducibility.md, session 27).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch


def ridge_probe_accuracy(features: np.ndarray, labels: list[str], train: int, ridge: float = 10.0) -> float:
    """Accuracy on rows ``train:`` of a one-vs-all ridge classifier fitted on rows ``:train`` (features
    standardised with the training rows' mean and std)."""
    x = np.asarray(features, dtype=np.float64).reshape(len(labels), -1)
    if not 0 < train < len(labels):
        raise ValueError(f"train must split the {len(labels)} rows, got {train}")
    mean, std = x[:train].mean(0), x[:train].std(0) + 1e-6
    x = (x - mean) / std
    classes = sorted(set(labels))
    y = np.eye(len(classes))[[classes.index(v) for v in labels]]
    w = np.linalg.solve(x[:train].T @ x[:train] + ridge * np.eye(x.shape[1]), x[:train].T @ y[:train])
    return float(np.mean((x[train:] @ w).argmax(1) == y[train:].argmax(1)))


def object_pictures(root: str | Path, limit: int = 960, seed: int = 0) -> list[tuple[dict, dict]]:
    """``(item, scene)`` for image-only candidates of ``root``'s local pools whose MBEIR-mini scene record
    (``src_content``) is an object, shuffled with ``seed``, at most ``limit``. Empty for a dataset without scene
    records (real M-BEIR)."""
    root = Path(root)
    out = []
    for pool in sorted((root / "cand_pool" / "local").glob("*.jsonl")):
        for line in pool.read_text().splitlines():
            cand = json.loads(line)
            if not cand.get("img_path") or cand.get("txt") or not cand.get("src_content"):
                continue
            try:
                scene = json.loads(cand["src_content"]).get("scene") or {}
            except (ValueError, AttributeError):
                continue
            if scene.get("kind") == "object":
                out.append(({"image": str(root / cand["img_path"]), "text": None}, scene))
    random.Random(seed).shuffle(out)
    return out[:limit]


@torch.no_grad()
def picture_features(model, processor, items: list[dict], prompt, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Per item: ``pixels`` (the patch mean of the processor's pixel values), ``vision`` (the vision tower's output
    tokens, flattened) and ``ret`` (the final-norm ``[RET]`` state of the candidate prompt). ``model``: a
    Qwen2-VL ForConditionalGeneration or a (pruned) ``Qwen2VLModel``."""
    from puma.model.encoding import collate, ret_states
    from puma.model.prune import vision_tower

    visual = vision_tower(model)
    parts: dict[str, list[np.ndarray]] = {"pixels": [], "vision": [], "ret": []}
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        batch = collate(processor, chunk, False, prompt)
        grid = batch["image_grid_thw"]
        if not bool((grid == grid[0]).all()):
            raise ValueError("picture_features: the pictures must share one size (one patch grid)")
        tokens = visual(batch["pixel_values"], grid_thw=grid)
        tokens = getattr(tokens, "pooler_output", tokens)
        parts["vision"].append(tokens.reshape(len(chunk), -1).float().numpy())
        parts["pixels"].append(batch["pixel_values"].reshape(len(chunk), int(grid[0].prod()), -1).mean(1).numpy())
        parts["ret"].append(ret_states(model, batch).float().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def probe_checkpoint(model, processor, root: str | Path, prompt, limit: int = 960, train_frac: float = 2 / 3,
                     seed: int = 0) -> dict[str, dict[str, float]]:
    """Colour and shape accuracy of :func:`ridge_probe_accuracy` on each of :func:`picture_features`' features,
    with the chance rate (one over the classes); raises if ``root`` has no object pictures."""
    pictures = object_pictures(root, limit, seed)
    if len(pictures) < 30:
        raise ValueError(f"{root}: {len(pictures)} image-only object candidates with scene records; the probe needs "
                         "MBEIR-mini (puma data synth)")
    feats = picture_features(model, processor, [item for item, _ in pictures], prompt)
    train = int(len(pictures) * train_frac)
    out: dict[str, dict[str, float]] = {}
    for attr in ("color", "shape"):
        labels = [scene[attr] for _, scene in pictures]
        out[attr] = {name: ridge_probe_accuracy(x, labels, train) for name, x in feats.items()}
        out[attr]["chance"] = 1 / len(set(labels))
    return out
