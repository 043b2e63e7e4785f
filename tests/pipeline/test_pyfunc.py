"""The registered pyfunc model's contract, in-process on the tiny model: DataFrame in, the encoder's
embeddings out, clear errors for bad input."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

from puma import tracking
from tests.pipeline.pyfunc_helpers import image_b64 as _png
from tests.pipeline.pyfunc_helpers import register_champion


@pytest.fixture(scope="module")
def champion(tmp_path_factory, tiny_dir):
    import mlflow

    root = tmp_path_factory.mktemp("pyfunc")
    settings = register_champion(root, tiny_dir)
    mlflow.set_tracking_uri(tracking.resolve_uri(settings.tracking.uri, root))
    return mlflow.pyfunc.load_model(f"models:/{settings.tracking.model_name}@champion")


def test_predict_equals_the_encoder(champion, tiny_dir):
    import pandas as pd
    from PIL import Image

    from puma.model.retriever import PumaRetriever

    red, blue = _png("red"), _png("blue")
    df = pd.DataFrame({
        "text": ["a red car", None, "a blue boat", "a boat on a lake", None],
        "image": [None, red, blue, None, blue],
        "instruction": ["Find a caption.", "Find a similar image.", None, None, None],
        "role": ["query", "query", "query", "document", "document"],
    })
    out = champion.predict(df)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (5, 64)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    img = lambda b: Image.open(io.BytesIO(base64.b64decode(b)))
    r = PumaRetriever.from_pretrained(tiny_dir)
    q = r.encode_query([{"text": "a red car", "instruction": "Find a caption."},
                        {"image": img(red), "instruction": "Find a similar image."},
                        {"text": "a blue boat", "image": img(blue)}])
    d = r.encode_document([{"text": "a boat on a lake"}, {"image": img(blue)}])
    np.testing.assert_allclose(out, np.concatenate([q, d]), atol=1e-5)


@pytest.mark.parametrize("change, message", [
    ({"role": ["passage"]}, "role must be 'query' or 'document'"),
    ({"image": [base64.b64encode(b"not an image").decode()]}, "not a decodable PNG or JPEG"),
    ({"image": ["%%%"]}, "not valid base64"),
    ({"instruction": ["Find it."], "role": ["document"]}, "documents take no instruction"),
    ({"text": [None]}, "needs text or an image"),
])
def test_bad_input_is_a_clear_error(champion, change, message):
    import pandas as pd
    from mlflow.exceptions import MlflowException

    row = {"text": ["a red car"], "image": [None], "instruction": [None], "role": ["query"], **change}
    with pytest.raises(MlflowException, match=message) as e:
        champion.predict(pd.DataFrame(row))
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"


def test_missing_column_is_a_clear_error(champion):
    import pandas as pd
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="role"):
        champion.predict(pd.DataFrame({"text": ["a"], "image": [None], "instruction": [None]}))
