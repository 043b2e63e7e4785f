"""Where a stage keeps what must survive a failed run of it: a work directory outside its outputs.

DVC deletes a stage's outputs before it runs the stage, so checkpoints kept inside them are lost to
every retry. A stage writing ``OUT`` therefore keeps what it has finished so far (training checkpoints,
teacher-cache shards, the embed stage's embedding stores) in ``OUT.parent/.puma-work/OUT.name/<key>/``:
beside ``OUT`` (same filesystem), gitignored and ``.dvcignore``'d, never part of what DVC caches (this
project does not use ``persist: true`` outs: a persisted out would also keep the results of a run
with other params, and DVC would cache whatever partial state it held). ``<key>`` is a fingerprint of
everything the stage's result depends on:

- ``code``: sha256 of every ``.py`` file of the ``puma`` package (stricter than the stage's DVC code
  deps: any code change starts fresh, never a resume across a code change);
- ``params``: the stage's params (the settings keys under the prefixes the stage reads);
- ``inputs``: the content sha256 of each input file or directory (model, data, cache).

A run resumes only from the work directory of its own key; a work directory with another key is
reported (which components differ) and removed. When the stage has written its final outputs the
work directory is removed (:meth:`WorkDir.finish`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from puma.io import file_sha256, write_json_atomic

WORK = ".puma-work"
FINGERPRINT = "fingerprint.json"
_SKIP = {"__pycache__"}


def tree_sha256(path: str | Path) -> str:
    """Content hash of a file, or of a directory (relative paths + file hashes); ``missing`` if absent."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        return "missing"
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not _SKIP & set(p.relative_to(path).parts)):
        h.update(f"{f.relative_to(path).as_posix()}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()


def code_sha256() -> str:
    """sha256 over the ``puma`` package's Python sources (the code every stage runs)."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        if "__pycache__" not in f.parts:
            h.update(f"{f.relative_to(root).as_posix()}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()


# Keys that differ between the nodes (or the relaunches) of one multi-node job and never change a result:
# every node must find the same work directory.
NODE_LOCAL_PARAMS = frozenset({"runtime.node_rank", "runtime.rdzv_endpoint", "runtime.rdzv_id"})


def fingerprint(stage: str, settings, param_prefixes: Iterable[str], inputs: Mapping[str, str | Path]) -> dict[str, Any]:
    """The record a stage's checkpoints are keyed by: ``{"key", "stage", "code", "params", "inputs"}``."""
    prefixes = tuple(param_prefixes)
    params = {k: v for k, v in sorted(settings.flat().items())
              if any(k == p or k.startswith(p + ".") for p in prefixes) and k not in NODE_LOCAL_PARAMS}
    record = {"stage": stage, "code": code_sha256(),
              "params": hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest(),
              "param_values": params,
              "inputs": {name: tree_sha256(p) for name, p in sorted(inputs.items())}}
    key = hashlib.sha256(json.dumps({k: record[k] for k in ("stage", "code", "params", "inputs")},
                                    sort_keys=True).encode()).hexdigest()[:16]
    return {"key": key, **record}


def _differences(old: dict, new: dict) -> list[str]:
    out = []
    if old.get("code") != new["code"]:
        out.append("code")
    if old.get("params") != new["params"]:
        a, b = old.get("param_values") or {}, new["param_values"]
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        out.append("params (" + ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:4]) + ")")
    for name in sorted(set(old.get("inputs") or {}) | set(new["inputs"])):
        if (old.get("inputs") or {}).get(name) != new["inputs"].get(name):
            out.append(f"input {name}")
    return out or ["unknown (no readable fingerprint)"]


@dataclass
class WorkDir:
    """The work directory of one stage output ``out`` under fingerprint ``record``."""

    out: Path
    record: dict[str, Any]

    @property
    def root(self) -> Path:
        return self.out.parent / WORK / self.out.name

    @property
    def path(self) -> Path:
        return self.root / self.record["key"]

    @property
    def key(self) -> str:
        return self.record["key"]

    def prepare(self, log: Callable[[str], None] = print) -> Path:
        """Create (or reuse) this key's directory; remove, and say why, work dirs of other keys.

        Only the main process (``RANK`` 0) removes and writes; the others find the directory made.
        """
        if int(os.environ.get("RANK", "0")) != 0:
            self.path.mkdir(parents=True, exist_ok=True)
            return self.path
        if self.root.is_dir():
            for other in sorted(p for p in self.root.iterdir() if p.is_dir() and p != self.path):
                try:
                    old = json.loads((other / FINGERPRINT).read_text())
                except (OSError, ValueError):
                    old = {}
                log(f"{self.record['stage']}: not resuming from {other}: its "
                    f"{', '.join(_differences(old, self.record))} differ from this run's; starting fresh")
                shutil.rmtree(other, ignore_errors=True)
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / FINGERPRINT).is_file():
            write_json_atomic(self.path / FINGERPRINT, self.record, sort_keys=True)
        return self.path

    def publish(self, dst: str | Path) -> None:
        """Hard-link (copy where links are not supported) every file of this work directory except
        ``fingerprint.json`` into ``dst`` under the same relative paths. The work copy stays until
        :meth:`finish`, so a run killed while publishing loses nothing."""
        dst = Path(dst)
        for f in sorted(p for p in self.path.rglob("*") if p.is_file()):
            rel = f.relative_to(self.path)
            if rel.as_posix() == FINGERPRINT:
                continue
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f, dst / rel)
            except OSError:
                shutil.copyfile(f, dst / rel)

    def finish(self) -> None:
        """The stage's outputs are complete: drop its work directory (and empty parents)."""
        shutil.rmtree(self.path, ignore_errors=True)
        for d in (self.root, self.root.parent):
            try:
                d.rmdir()
            except OSError:
                break


__all__ = ["WORK", "WorkDir", "code_sha256", "fingerprint", "tree_sha256"]
