"""The ``[RET]`` token: add it to a tokenizer, initialise its embedding row, find it in a batch.

The reference code adds ``[RET]`` to the tokenizer without resizing, so the token falls into one of
Qwen2-VL's spare (untrained) embedding rows and stays there. Here (decision 3) the row is set on
purpose: the mean of the rows of the existing vocabulary, or a copy of a chosen token's row.
"""

from __future__ import annotations

import torch

from puma.model.tokens import RET_TOKEN

__all__ = ["RET_TOKEN", "ensure_ret_token", "init_ret_row", "ret_positions"]


def init_ret_row(embed: torch.nn.Embedding, ret_id: int, init: str, tokenizer, n_existing: int) -> None:
    """Set ``embed.weight[ret_id]`` per ``init`` (params ``model.ret_init``).

    ``"mean"``: mean of rows ``0..n_existing-1`` (the tokenizer's vocabulary before ``[RET]``; the
    spare rows past it are untrained and would drag the mean). ``"token:<text>"``: the mean of the
    rows of ``<text>``'s tokens (one token gives an exact copy).
    """
    weight = embed.weight
    if init == "mean":
        rows = torch.arange(n_existing, device=weight.device)
    elif init.startswith("token:"):
        ids = tokenizer.encode(init[len("token:") :], add_special_tokens=False)
        if not ids:
            raise ValueError(f"model.ret_init={init!r}: the text gives no tokens")
        rows = torch.tensor(ids, device=weight.device)
    else:
        raise ValueError(f"model.ret_init must be 'mean' or 'token:<text>', got {init!r}")
    with torch.no_grad():
        # Average in fp32: a bf16 running sum over ~150k rows loses most of its digits.
        weight[ret_id] = weight.index_select(0, rows).float().mean(0).to(weight.dtype)


def ensure_ret_token(model, tokenizer, token: str = RET_TOKEN, init: str = "mean") -> dict:
    """Make ``token`` a real added special token of ``tokenizer`` with an embedding row in ``model``.

    When the token is missing it is added, the input embeddings are resized if the tokenizer now
    outgrows them (hub Qwen2-VL has spare rows, the tiny model has none), and its row is initialised
    per ``init``. A token that already exists keeps its row (it may have been trained).
    ``model`` is a ``Qwen2VLModel`` or anything with ``get_input_embeddings``/``resize_token_embeddings``.
    Returns ``{"token", "id", "added", "init"}`` for the checkpoint's provenance record.
    """
    existing = token in tokenizer.get_vocab()
    n_before = len(tokenizer)
    if not existing:
        tokenizer.add_special_tokens({"additional_special_tokens": [token]}, replace_extra_special_tokens=False)
    ret_id = tokenizer.convert_tokens_to_ids(token)
    assert tokenizer.tokenize(f"a {token}.").count(token) == 1, f"{token} is split by the tokenizer"
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        # mean_resizing=False: the new row is set below; the default would also spend time on a covariance.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if not existing:
        init_ret_row(model.get_input_embeddings(), ret_id, init, tokenizer, n_before)
    return {"token": token, "id": int(ret_id), "added": not existing, "init": init if not existing else "kept"}


def ret_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, ret_id: int) -> torch.Tensor:
    """Index of the last ``[RET]`` in each row: ``(B, S) -> (B,)``, for left or right padding.

    Only attended positions count, so a pad id equal to ``ret_id`` cannot be picked. A row without
    ``[RET]`` is an error (its embedding would silently be some other token's state).
    """
    hit = input_ids == ret_id  # (B, S)
    if attention_mask is not None:
        hit = hit & attention_mask.bool()
    if not bool(hit.any(1).all()):
        bad = (~hit.any(1)).nonzero().flatten().tolist()
        raise ValueError(f"no [RET] token (id {ret_id}) in batch rows {bad}")
    seq = torch.arange(input_ids.shape[1], device=input_ids.device)
    return torch.where(hit, seq, -1).amax(1)  # (B,)
