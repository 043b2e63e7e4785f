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
from typing import Any

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


def lm_head_weight(path: str | Path) -> torch.Tensor | None:
    """A checkpoint's ``lm_head.weight`` ``(V, H)`` read from its safetensors files, or None if it has none (a
    pruned or trained retriever keeps no head; the pretrained base does)."""
    from safetensors import safe_open

    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            names = list(f.keys())  # a safe_open handle is not a mapping
            if "lm_head.weight" in names:
                return f.get_tensor("lm_head.weight")
    return None


def caption_pictures(pairs, limit: int = 192) -> list[tuple[dict, dict[str, str]]]:
    """Up to ``limit`` captioned pictures of train pairs with a known scene (caption -> picture and picture ->
    caption pairs: :func:`puma.train.pretrain.caption_row`), each with its described attributes."""
    from puma.train.pretrain import caption_row, described_attributes

    out = []
    for pair in pairs:
        if pair.get("positive_scene") and (row := caption_row(pair)) is not None:
            out.append((row, described_attributes(pair["positive_scene"])))
    return out[:limit]


def _r1_mrr(queries: torch.Tensor, docs: torch.Tensor) -> tuple[float, float]:
    """R@1 and mean reciprocal rank of row i of ``docs`` for row i of ``queries`` by cosine (ties count against)."""
    q = torch.nn.functional.normalize(queries.float(), dim=-1)
    d = torch.nn.functional.normalize(docs.float(), dim=-1)
    scores = q @ d.T
    rank = (scores >= scores.diag()[:, None]).sum(1)
    return float((rank == 1).float().mean()), float((1.0 / rank.float()).mean())


@torch.no_grad()
def caption_agreement(model, processor, head: torch.Tensor, rows: list[tuple[dict, dict[str, str]]], prompt,
                      batch_size: int = 64) -> dict[str, Any]:
    """Do a caption and its picture meet? For each captioned picture (:func:`caption_pictures`) the caption's
    ``[RET]`` state (query prompt) and the picture's (candidate prompt, the picture alone): ``caption_to_picture``,
    R@1 / MRR of the picture among all by cosine; per attribute (colour, shape), the word ``head`` names at
    ``[RET]`` (argmax within the word's class, as the pretraining answer loss scores it) for the caption
    (``text``: right how often, though the word is in the caption), for the picture (``picture``) and whether the
    two name the same word (``agree``). ``head``: the pretrained base's lm_head (:func:`lm_head_weight`); with a
    prefix model (``DIR@k``) it reads the prefix's final-norm state."""
    from puma.model.encoding import collate, ret_states
    from puma.train.pretrain import AnswerTargets

    if not rows:
        raise ValueError("caption_agreement: no captioned pictures")
    texts, pictures = [], []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        texts.append(ret_states(model, collate(processor, [{"text": r["text"], "image": None} for r, _ in chunk],
                                               True, prompt)))
        pictures.append(ret_states(model, collate(processor, [{"text": None, "image": r["image"]} for r, _ in chunk],
                                                  False, prompt)))
    t, p = torch.cat(texts).float(), torch.cat(pictures).float()
    out: dict[str, Any] = {"pairs": len(rows), "caption_to_picture": dict(zip(("r1", "mrr"), _r1_mrr(t, p)))}
    targets = AnswerTargets(processor.tokenizer)
    head = head.float()
    for attr in ("color", "shape"):
        have = [i for i, (_, a) in enumerate(rows) if attr in a]
        right_t = right_p = same = 0
        for i in have:
            ((token, cls),) = targets([rows[i][1][attr]])
            if cls is None:
                raise ValueError(f"caption_agreement: {rows[i][1][attr]!r} is not a world word")
            named = [int(cls[(head[cls] @ state).argmax()]) for state in (t[i], p[i])]
            right_t += named[0] == token
            right_p += named[1] == token
            same += named[0] == named[1]
        n = max(1, len(have))
        out[attr] = {"text": right_t / n, "picture": right_p / n, "agree": same / n, "n": len(have)}
    return out


@torch.no_grad()
def layer_contributions(model, processor, items: list[dict], prompt, is_query: bool = False,
                        batch_size: int = 64) -> dict[str, list[float]]:
    """How much each decoder layer writes into the ``[RET]`` state, and how far that moves the embedding.

    For ``items`` (retriever inputs) through the full-depth ``model``, per decoder layer ``j`` (0-based), lists
    of means over the items: ``update``, the norm of what layer ``j`` adds to the residual stream at ``[RET]``
    (``|h_{j+1} - h_j|``, ``h_0`` the input embedding); ``residual``, the norm of ``h_{j+1}``;
    ``cos_to_final``, the cosine between the embedding of the model pruned to layers ``0..j`` (the final norm of
    ``h_{j+1}``: a truncated model's last state is ``norm(hs_full[k])``, REFERENCE.md) and the full depth's;
    ``spread``, the mean cosine between two different items' embeddings at that depth. When one layer writes
    most of the residual, every prefix gives nearly the full depth's embedding, and pruning costs zero-shot
    retrieval nothing."""
    from puma.model.encoding import MODEL_INPUTS, collate, mrope_positions
    from puma.model.prune import qwen2vl_model

    if len(items) < 2:
        raise ValueError("layer_contributions: needs at least 2 items")
    inner = qwen2vl_model(model)
    norm = inner.language_model.norm
    raws, finals = [], []
    last: list[torch.Tensor] = []  # the last layer's raw output (hidden_states[-1] is after the final norm)
    handle = norm.register_forward_hook(lambda _m, args, _out: last.append(args[0]))
    try:
        for i in range(0, len(items), batch_size):
            batch = collate(processor, items[i:i + batch_size], is_query, prompt)
            inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
            last.clear()
            hs = inner(**inputs, position_ids=mrope_positions(inner, inputs), use_cache=False,
                       output_hidden_states=True).hidden_states
            rows, pos = torch.arange(len(batch["ret_positions"])), batch["ret_positions"]
            raws.append(torch.stack([h[rows, pos].float() for h in (*hs[:-1], last[-1])], 1))  # (B, L + 1, H)
            finals.append(hs[-1][rows, pos].float())
    finally:
        handle.remove()
    raw, final = torch.cat(raws), torch.nn.functional.normalize(torch.cat(finals), dim=-1)
    n = len(items)
    out: dict[str, list[float]] = {"update": [], "residual": [], "cos_to_final": [], "spread": []}
    for j in range(raw.shape[1] - 1):
        emb = torch.nn.functional.normalize(norm(raw[:, j + 1]), dim=-1)
        out["update"].append(float((raw[:, j + 1] - raw[:, j]).norm(dim=-1).mean()))
        out["residual"].append(float(raw[:, j + 1].norm(dim=-1).mean()))
        out["cos_to_final"].append(float((emb * final).sum(-1).mean()))
        out["spread"].append(float(((emb @ emb.T).sum() - n) / (n * (n - 1))))
    return out
