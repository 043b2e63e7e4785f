"""The retriever as an MLflow pyfunc model: what ``models:/puma-retriever@champion`` loads and serves.

The logged model holds the merged checkpoint folder as its ``checkpoint`` artifact. ``predict`` takes a
pandas DataFrame with one row per item::

    text         str or null
    image        base64 of PNG or JPEG bytes, or null
    instruction  str or null (queries only)
    role         "query" or "document"

and returns an ``(n, d)`` float32 array of L2-normalised embeddings, row i for item i, equal to
:meth:`PumaRetriever.encode_query` / :meth:`~PumaRetriever.encode_document` on the same items. Bad
input raises ``MlflowException(error_code=INVALID_PARAMETER_VALUE)`` naming the row, which
``mlflow models serve`` answers with HTTP 400.
"""

from __future__ import annotations

import base64
import binascii
import io
import threading
from typing import Any

import mlflow.pyfunc

COLUMNS = ("text", "image", "instruction", "role")
ROLES = ("query", "document")
CHECKPOINT = "checkpoint"  # the artifact key (and folder name) of the merged checkpoint


def _bad(message: str):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _cell(value: Any) -> Any:
    """A DataFrame cell with pandas' missing values (None, NaN, NA) as None."""
    import pandas as pd

    if value is None:
        return None
    try:
        return None if pd.isna(value) else value
    except (TypeError, ValueError):  # arrays and the like are not scalars: leave them to the checks
        return value


def _image(value: Any, row: int):
    """Decode one base64 PNG/JPEG cell to a loaded PIL image."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            raise _bad(f"row {row}: image is not valid base64 ({e})") from None
    if not isinstance(value, (bytes, bytearray)):
        raise _bad(f"row {row}: image must be base64 text of PNG or JPEG bytes, got {type(value).__name__}")
    try:
        im = Image.open(io.BytesIO(value))
        if im.format not in ("PNG", "JPEG"):
            raise _bad(f"row {row}: image is {im.format}, expected PNG or JPEG")
        im.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise _bad(f"row {row}: image bytes are not a decodable PNG or JPEG ({e})") from None
    return im


def parse_items(df) -> tuple[list[dict[str, Any]], list[bool]]:
    """Check a request DataFrame and turn it into encoder items and their roles (True = query)."""
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise _bad(f"expected a DataFrame with columns {list(COLUMNS)}, got {type(df).__name__}")
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise _bad(f"missing column(s) {missing}: the input needs columns {list(COLUMNS)}")
    extra = sorted(set(map(str, df.columns)) - set(COLUMNS))
    if extra:
        raise _bad(f"unknown column(s) {extra}: the input takes columns {list(COLUMNS)}")
    items, is_query = [], []
    for row, rec in enumerate(df[list(COLUMNS)].itertuples(index=False, name=None)):
        text, image, instruction, role = (_cell(v) for v in rec)
        if role not in ROLES:
            raise _bad(f"row {row}: role must be 'query' or 'document', got {role!r}")
        for name, val in (("text", text), ("instruction", instruction)):
            if val is not None and not isinstance(val, str):
                raise _bad(f"row {row}: {name} must be a string or null, got {type(val).__name__}")
        if role == "document" and instruction:
            raise _bad(f"row {row}: documents take no instruction; only queries do")
        if not text and image is None:
            raise _bad(f"row {row}: needs text or an image (got neither)")
        item = {"text": text or None, "image": None if image is None else _image(image, row)}
        if role == "query":
            item["instruction"] = instruction or None
        items.append(item)
        is_query.append(role == "query")
    return items, is_query


class PumaPyfunc(mlflow.pyfunc.PythonModel):
    """``mlflow.pyfunc`` wrapper around :class:`puma.model.retriever.PumaRetriever` (see the module doc)."""

    def load_context(self, context) -> None:
        from puma.model.retriever import PumaRetriever

        self.retriever = PumaRetriever.from_pretrained(context.artifacts[CHECKPOINT])
        self._lock = threading.Lock()  # one forward at a time: the server calls predict from threads

    def predict(self, context, model_input, params=None):
        import numpy as np

        items, is_query = parse_items(model_input)
        dim = self.retriever.get_sentence_embedding_dimension()
        out = np.zeros((len(items), dim), dtype=np.float32)
        with self._lock:
            for role in (True, False):
                rows = [i for i, q in enumerate(is_query) if q == role]
                if rows:
                    emb = self.retriever.encode([items[i] for i in rows], is_query=role)
                    out[rows] = np.asarray(emb, dtype=np.float32)
        return out


def signature(dim: int):
    """The model signature: four nullable string columns in, an (n, dim) float32 tensor out."""
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    inputs = Schema([ColSpec("string", "text", required=False), ColSpec("string", "image", required=False),
                     ColSpec("string", "instruction", required=False), ColSpec("string", "role")])
    return ModelSignature(inputs=inputs, outputs=Schema([TensorSpec(np.dtype("float32"), (-1, dim))]))


def input_example():
    """A query and a document, the shape of a request (text only: no model needed to build it)."""
    import pandas as pd

    return pd.DataFrame({"text": ["a red car", "A red car parked on a street."], "image": [None, None],
                         "instruction": ["Find a caption for this description.", None],
                         "role": ["query", "document"]})


def pip_requirements() -> list[str]:
    """The installed versions of what ``predict`` imports (explicit: MLflow then infers nothing)."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("mlflow", "torch", "transformers", "peft", "pillow", "pandas", "numpy", "safetensors",
                "tokenizers", "pydantic", "pydantic-settings"):
        try:
            reqs.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            continue
    return reqs
