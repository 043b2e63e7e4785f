"""The base of every params section (:mod:`puma.config`, :mod:`puma.config_bench`): strict, by name or alias."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # Unknown keys are errors (a typo must not silently fall back to a default).
    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_default=True)
