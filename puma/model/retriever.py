"""``PumaRetriever``: the trained (or pruned) model behind sentence-transformers' encode API.

    >>> from puma import PumaRetriever
    >>> r = PumaRetriever.from_pretrained("artifacts/stage2/model")
    >>> q = r.encode_query([{"text": "a red dress", "instruction": "Find the matching image."}])
    >>> d = r.encode_document(["a red dress", {"image": "img/1.jpg"}], batch_size=64)
    >>> scores = q @ d.T   # cosine similarity: embeddings are L2-normalised by default

Inputs are sorted by length before batching and results are returned in input order; padding and
attention masks make every embedding independent of its batch (one-by-one and batched agree to
1e-5 in fp32).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from puma.model.encoding import collate, length_key, ret_states
from puma.model.prompts import as_item
from puma.model.tokens import RET_TOKEN

PROMPT_FILE = "puma_prompt.json"


def _torch_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    return getattr(torch, dtype)


class PumaRetriever:
    """Embeds queries (with instruction) and documents (without) as ``[RET]`` states.

    ``model`` is a ``Qwen2VLModel`` (or a peft model around one), ``processor`` its processor,
    ``prompt`` the :class:`puma.config.PromptSettings` used for every input.
    """

    def __init__(self, model, processor, prompt=None, ret_token: str = RET_TOKEN):
        from puma.config import PromptSettings

        self.model = model.eval()
        self.processor = processor
        if prompt is None:
            size = processor.image_processor.size
            prompt = PromptSettings(min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])
        self.prompt = prompt
        self.ret_token = ret_token
        if processor.tokenizer.convert_tokens_to_ids(ret_token) in (None, processor.tokenizer.unk_token_id):
            raise ValueError(f"the tokenizer has no {ret_token} token (prune with `puma model prune` to add it)")

    # ---- loading and saving -------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        adapter: str | os.PathLike | None = None,
        merge: bool = True,
        prompt=None,
        attn_implementation: str | None = None,
    ) -> PumaRetriever:
        """Load a retriever from a checkpoint dir (or hub id), optionally with a LoRA adapter on top.

        ``path`` may itself be a peft adapter dir (``adapter_config.json``): its
        ``base_model_name_or_path`` is loaded as the base. ``adapter`` names an adapter dir to put on
        ``path``; it must have been trained on the ``Qwen2VLModel`` of that base (module names
        ``language_model.layers.N...``). ``merge=True`` folds the adapter into the weights.
        The prompt settings saved by :meth:`save_pretrained` are used unless ``prompt`` is given.
        """
        from puma.model.processor import load_processor
        from puma.model.prune import load_qwen2vl

        path = Path(path) if Path(path).exists() else path
        if adapter is None and isinstance(path, Path) and (path / "adapter_config.json").is_file():
            adapter = path
            path = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        kwargs = {"dtype": _torch_dtype(dtype)}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        # A full ForConditionalGeneration checkpoint carries lm_head, which a retriever never uses;
        # anything else missing or left over is an error, never a silent random init.
        model = load_qwen2vl(path, **kwargs)
        proc_dir = path
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter))
            if merge:
                model = model.merge_and_unload()
            if (Path(adapter) / "tokenizer_config.json").is_file():
                proc_dir = adapter
        saved = (getattr(qwen_config(model), "puma", None) or {}).get("prompt")
        if adapter is not None and (Path(adapter) / PROMPT_FILE).is_file():  # an unmerged adapter's own settings
            saved = json.loads((Path(adapter) / PROMPT_FILE).read_text())
        if prompt is None and saved:
            from puma.config import PromptSettings

            prompt = PromptSettings(**saved)
        ret_token = ((getattr(qwen_config(model), "puma", None) or {}).get("ret") or {}).get("token", RET_TOKEN)
        retriever = cls(model, load_processor(proc_dir), prompt=prompt, ret_token=ret_token)
        if device is not None:
            retriever.model.to(device)
        return retriever

    def save_pretrained(self, out: str | os.PathLike) -> Path:
        """Write model + processor + prompt settings to ``out`` atomically.

        The prompt settings go to ``config.json["puma"]["prompt"]``; an unmerged peft model is saved
        as an adapter dir (loadable by :meth:`from_pretrained`) with them in ``puma_prompt.json``.
        """
        from puma.io import atomic_dir

        config = qwen_config(self.model)
        prompt = self.prompt.model_dump(mode="json")
        config.puma = dict(getattr(config, "puma", None) or {}, prompt=prompt)
        with atomic_dir(out) as tmp:
            self.model.save_pretrained(tmp)
            self.processor.save_pretrained(tmp)
            if (tmp / "adapter_config.json").is_file():
                (tmp / PROMPT_FILE).write_text(json.dumps(prompt, indent=2))
        return Path(out)

    def get_sentence_embedding_dimension(self) -> int:
        """Embedding width ``H`` (sentence-transformers' name)."""
        return qwen_config(self.model).text_config.hidden_size

    # ---- encoding -----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_query(self, items, **kwargs):
        """Embed queries: items with optional ``text``, ``image`` and ``instruction``. See :meth:`encode`."""
        return self.encode(items, is_query=True, **kwargs)

    def encode_document(self, items, **kwargs):
        """Embed documents (candidates): items with ``text`` and/or ``image``, no instruction."""
        return self.encode(items, is_query=False, **kwargs)

    def encode(
        self,
        items: Any,
        is_query: bool,
        batch_size: int = 32,
        show_progress_bar: bool = False,
        normalize_embeddings: bool = True,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: str | torch.device | None = None,
    ):
        """Embed ``items`` -> ``(N, H)`` float32 (numpy, or a tensor with ``convert_to_tensor``).

        A single item (str or dict) gives one ``(H,)`` vector. With both conversions off, a list of
        ``(H,)`` tensors is returned (as sentence-transformers does). ``device`` moves the model there.
        """
        single = isinstance(items, (str, dict))
        items = [items] if single else list(items)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        checked = [as_item(x, i, is_query) for i, x in enumerate(items)]
        if device is not None and torch.device(device) != self.device:
            self.model.to(device)
        # Longest first (images, then long texts), ties in input order; results go back to input order.
        order = np.array(sorted(range(len(checked)), key=lambda i: length_key(checked[i]), reverse=True),
                         dtype=np.int64)
        chunks = []
        starts = range(0, len(order), batch_size)
        if show_progress_bar:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="Batches")
        with torch.inference_mode():
            for start in starts:
                batch = [checked[i] for i in order[start : start + batch_size]]
                inputs = collate(self.processor, batch, is_query, self.prompt, self.ret_token).to(self.device)
                emb = ret_states(self.model, inputs).float()  # (b, H)
                if normalize_embeddings:
                    emb = torch.nn.functional.normalize(emb, dim=-1)
                chunks.append(emb.cpu())
        hidden = qwen_config(self.model).text_config.hidden_size
        sorted_emb = torch.cat(chunks) if chunks else torch.empty(0, hidden)  # (N, H), sorted order
        emb = torch.empty_like(sorted_emb)
        emb[torch.from_numpy(order)] = sorted_emb  # back to input order
        if convert_to_tensor:
            return emb[0] if single else emb
        if convert_to_numpy:
            out = emb.numpy()
            return out[0] if single else out
        return emb[0] if single else list(emb)


def qwen_config(model):
    """The ``Qwen2VLConfig`` of a Qwen2VLModel, a ForConditionalGeneration or a peft wrapper."""
    from puma.model.prune import qwen2vl_model

    return qwen2vl_model(model).config

