"""A registered tiny champion and request images, shared by the in-process pyfunc test (test_pyfunc.py)
and the REST test against the real ``mlflow models serve`` (test_serve.py)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from puma import tracking
from puma.config import Settings, load_settings

COLUMNS = ["visualnews_task0"]


def image_b64(color, fmt: str = "PNG") -> str:
    """Base64 of a 56x56 single-colour image in ``fmt`` (PNG or JPEG)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (56, 56), color).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def register_champion(root: Path, model_dir: Path) -> Settings:
    """A sqlite registry under ``root`` whose ``puma-retriever@champion`` is ``model_dir`` (as the register
    stage logs it: a pipeline run, the pyfunc model, the gate). Returns the settings pointing at it."""
    (root / "params.yaml").write_text("tracking:\n  uri: sqlite:///mlruns.db\n")
    settings = load_settings(root / "params.yaml")
    check = tracking.check_evaluation({p: {"visualnews_task0": 5.0, "avg": 5.0} for p in ("local", "global")},
                                      ["local", "global"], COLUMNS)
    run = tracking.log_pipeline(settings, root)
    version = tracking.register_model(settings, run.run_id, model_dir, check, root)
    assert tracking.promote(settings, version, root).promoted
    return settings
