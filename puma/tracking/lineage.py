"""Lineage of a pipeline run: what DVC ran (``dvc.lock``) and from which git commit."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any


def read_lock(root: Path) -> dict[str, dict[str, Any]]:
    """The stages of ``dvc.lock`` (lineage, not configuration): name -> {cmd, deps, params, outs}."""
    import yaml  # dvc.lock is DVC's record of what ran; params come from puma.config, never from here

    lock = root / "dvc.lock"
    if not lock.exists():
        return {}
    data = yaml.safe_load(lock.read_text()) or {}
    return dict(data.get("stages", {}))


def git_commit(root: Path) -> tuple[str, bool]:
    """(commit sha or "unknown", whether tracked files differ from it)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip() != ""
        return sha, dirty
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False
