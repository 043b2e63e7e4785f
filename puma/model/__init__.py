"""PUMA's model: pruning, the ``[RET]`` token, prompts, encoding, the retriever, FLOPs.

Names are imported lazily so ``import puma.model`` does not pull in torch/transformers.
"""

_EXPORTS = {
    "load_processor": "puma.model.processor",
    "prune_layers": "puma.model.prune",
    "load_pruned": "puma.model.prune",
    "save_pruned": "puma.model.prune",
    "count_params": "puma.model.prune",
    "ensure_ret_token": "puma.model.ret",
    "ret_positions": "puma.model.ret",
    "RET_TOKEN": "puma.model.tokens",
    "build_messages": "puma.model.prompts",
    "render_prompt": "puma.model.prompts",
    "collate": "puma.model.encoding",
    "ret_states": "puma.model.encoding",
    "PumaRetriever": "puma.model.retriever",
    "forward_flops": "puma.model.flops",
}

__all__ = [
    "RET_TOKEN",
    "PumaRetriever",
    "build_messages",
    "collate",
    "count_params",
    "ensure_ret_token",
    "forward_flops",
    "load_processor",
    "load_pruned",
    "prune_layers",
    "render_prompt",
    "ret_positions",
    "ret_states",
    "save_pruned",
]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'puma.model' has no attribute {name!r}")
