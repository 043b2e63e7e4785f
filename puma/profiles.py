"""Named parameter sets: the embedded default, the paper's 2B / 7B settings, the 2B rehearsal.

A profile is a file ``profiles/<name>.yaml`` of overrides (nested sections, like ``params.yaml``).
``puma config use NAME`` applies ``default`` + ``NAME`` to ``params.yaml`` as in-place key edits
(comments and layout stay; :func:`puma.config.edit_params_text`), validates the result, prints a
unified diff and writes the file atomically. Because the default profile lists every key another
profile sets, switching between any two profiles is complete, and keys no profile names (tracking,
evaluation, your own edits) are left alone. ``params.yaml`` stays the one file DVC reads:
``dvc params diff`` / ``dvc repro`` see a profile switch as ordinary parameter changes.

The active profile is not stored anywhere: it is the profile whose values the settings match
(:func:`active_profile`), so a hand edit shows up as "paper-7b, modified: ...".
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from puma.config import (
    DEFAULT_PARAMS,
    ConfigError,
    Settings,
    edit_params_text,
    read_overrides,
    settings_from_text,
)

PROFILE_DIR = Path(__file__).resolve().parents[1] / "profiles"
DEFAULT = "default"
# Bases whose architecture is one of the bundled hub configs (puma/model/configs/).
_ARCH_OF_BASE = re.compile(r"(?i)(?:qwen2-vl-|random-)(2b|7b)(?:-instruct)?/?$")


def list_profiles(directory: Path = PROFILE_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yaml"))


def profile_overrides(name: str, directory: Path = PROFILE_DIR) -> dict[str, Any]:
    """Dotted ``key -> value`` for profile ``name``: the default profile's keys, then the profile's own."""
    path = directory / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: no profile {name!r}; known: {', '.join(list_profiles(directory))}")
    values = read_overrides(directory / f"{DEFAULT}.yaml")
    if name != DEFAULT:
        own = read_overrides(path)
        extra = sorted(set(own) - set(values))
        if extra:  # switching back to the default could not undo these
            raise ConfigError(f"{path}: keys the default profile does not list: {', '.join(extra)}")
        values.update(own)
    return values


def bundled_arch(base: str) -> str | None:
    """``"2b"`` / ``"7b"`` when ``base`` names a Qwen2-VL of a bundled config (hub id or random-<arch> dir)."""
    m = _ARCH_OF_BASE.search(str(base).rstrip("/"))
    return m.group(1).lower() if m else None


def arch_facts(arch: str) -> dict[str, int]:
    """Dimensions of a bundled architecture that a profile must agree with."""
    from puma.model.flops import load_config

    cfg = load_config(arch)
    t, v = cfg.text_config, cfg.vision_config
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    return {"depth": t.num_hidden_layers, "hidden_size": t.hidden_size, "vocab_size": t.vocab_size,
            "kv_dim": t.num_key_value_heads * head_dim, "pixel_unit": (v.patch_size * v.spatial_merge_size) ** 2}


def check_against_arch(settings: Settings) -> list[str]:
    """Problems between the settings and the bundled config of ``model.base`` (empty: consistent).

    Checks what :mod:`puma.config` cannot know without the architecture: ``model.depth`` equals the
    config's decoder depth, ``k < depth`` (pruning must drop something), LoRA ranks below the narrowest
    adapted projection (the k/v output width), and an image budget in whole 28 x 28 merged patches.
    """
    arch = bundled_arch(settings.model.base)
    if arch is None:
        return []
    f = arch_facts(arch)
    m, problems = settings.model, []
    if m.depth != f["depth"]:
        problems.append(f"model.depth is {m.depth} but {m.base} ({arch}) has {f['depth']} decoder layers")
    if not 1 <= m.prune_layers < f["depth"]:
        problems.append(f"model.prune_layers must be in 1..{f['depth'] - 1} for {arch}, got {m.prune_layers}")
    for stage in ("stage1", "stage2"):
        r = getattr(settings, stage).lora_r
        if r >= f["kv_dim"]:
            problems.append(f"{stage}.lora_r {r} is not below the k/v projection width {f['kv_dim']} of {arch}")
    for key in ("min_pixels", "max_pixels"):
        if getattr(settings.prompt, key) % f["pixel_unit"]:
            problems.append(f"prompt.{key} {getattr(settings.prompt, key)} is not a multiple of {f['pixel_unit']} "
                            f"(one merged 28 x 28 patch)")
    return problems


@dataclass
class Active:
    """Which profile the settings match: ``name`` (None: none fits) and the keys that differ from it."""

    name: str | None
    closest: str
    differs: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # key -> (profile value, actual)

    def describe(self) -> str:
        if self.name:
            return f"profile: {self.name}"
        shown = ", ".join(f"{k}={v[1]!r} (profile: {v[0]!r})" for k, v in list(self.differs.items())[:6])
        more = f" and {len(self.differs) - 6} more" if len(self.differs) > 6 else ""
        return f"profile: none (closest {self.closest}, modified: {shown}{more})"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def active_profile(settings: Settings, directory: Path = PROFILE_DIR) -> Active:
    flat = settings.flat()
    best: Active | None = None
    for name in list_profiles(directory):
        want = profile_overrides(name, directory)
        differs = {k: (v, flat.get(k)) for k, v in want.items() if not _same(v, flat.get(k))}
        if not differs:
            return Active(name, name)
        if best is None or len(differs) < len(best.differs):
            best = Active(None, name, differs)
    assert best is not None, f"{directory}: no profiles"
    return best


@dataclass
class Switch:
    name: str
    old: str
    new: str
    settings: Settings
    warnings: list[str]

    def diff(self, path: str | os.PathLike = DEFAULT_PARAMS) -> str:
        return "".join(difflib.unified_diff(self.old.splitlines(True), self.new.splitlines(True),
                                            f"a/{Path(path).name}", f"b/{Path(path).name}"))


def plan_switch(name: str, params: str | os.PathLike = DEFAULT_PARAMS, directory: Path = PROFILE_DIR) -> Switch:
    """The params text with profile ``name`` applied, validated (nothing is written)."""
    path = Path(params)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    old = path.read_text()
    new = edit_params_text(old, profile_overrides(name, directory), path)
    settings = settings_from_text(new, path)
    problems = check_against_arch(settings)
    if problems:
        raise ConfigError(f"profile {name} is inconsistent with its architecture:\n  " + "\n  ".join(problems))
    warnings = []
    if settings.model.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        warnings.append("model.attn_implementation is flash_attention_2 but flash-attn is not installed here: "
                        "loading will fail on this machine (override with PUMA_MODEL__ATTN_IMPLEMENTATION=sdpa)")
    return Switch(name, old, new, settings, warnings)


def apply_switch(switch: Switch, params: str | os.PathLike = DEFAULT_PARAMS) -> None:
    from puma.io import write_text_atomic

    if switch.new != switch.old:
        write_text_atomic(params, switch.new)
