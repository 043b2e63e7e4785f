"""The model side of embedding: :class:`RetrieverEncoder`, a :class:`puma.embed.run.BatchEncoder`."""

from __future__ import annotations

import numpy as np


class RetrieverEncoder:
    """:class:`BatchEncoder` over a :class:`puma.PumaRetriever`: the same prompts and states as its
    ``encode_query`` / ``encode_document``, with the preprocessing split off for worker processes.

    ``collate`` is a picklable partial of :func:`puma.model.encoding.collate` holding only the
    processor and prompt settings, so worker processes never touch the model; ``forward`` moves the
    batch to the model's device, takes the ``[RET]`` states and L2-normalises them in float32.
    """

    def __init__(self, retriever, is_query: bool):
        from functools import partial

        from puma.model.encoding import collate
        from puma.model.retriever import qwen_config

        self.model = retriever.model
        self.is_query = is_query
        self.collate = partial(collate, retriever.processor, is_query=is_query,
                               prompt_settings=retriever.prompt, ret_token=retriever.ret_token)
        self.dim = int(qwen_config(self.model).text_config.hidden_size)

    def forward(self, batch) -> np.ndarray:
        import torch.nn.functional as F

        from puma.model.encoding import ret_states

        device = next(self.model.parameters()).device
        states = ret_states(self.model, batch.to(device))  # (B, H)
        return F.normalize(states.float(), dim=-1).cpu().numpy()
