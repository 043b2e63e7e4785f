"""PUMA: a layer-pruned Qwen2-VL universal multimodal retriever.

``puma`` is the library (no Prefect / MLflow / DVC imports at module level); ``flows/`` and
``dvc.yaml`` call into it. Heavy submodules are imported lazily.
"""

__version__ = "0.1.0"


def __getattr__(name):  # lazy: `import puma` must not pull in torch
    if name == "PumaRetriever":
        from puma.model.retriever import PumaRetriever

        return PumaRetriever
    raise AttributeError(name)
