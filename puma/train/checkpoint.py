"""Atomic, pickle-free training checkpoints: trainable weights, optimizer, scheduler, RNG, data position.

Layout of one checkpoint ``OUT/checkpoints/step-000120/``::

    trainable.safetensors   every parameter with requires_grad (LoRA adapter, trainable [RET] row)
    optimizer.safetensors   optimizer state tensors, keyed "<param index>/<name>"
    optimizer.json          param groups + non-tensor state
    scheduler.json          lr scheduler state_dict
    rng-rank<r>.safetensors torch CPU (+ CUDA) generator states of rank r
    rng-rank<r>.json        python and numpy generator states of rank r
    state.json              TrainState: epoch, step within the epoch, global step
    manifest.json           written last: sha256 and size of every file above, the trainable shapes,
                            and the fingerprint of the run (puma.workdir) it belongs to

Each file is written atomically (puma.io, flushed to disk) into a temporary directory that is renamed
into place, so a run killed at any moment (``kill -9``) leaves either the previous checkpoint or the
new one, never a partial one. A checkpoint is verified before it is loaded (:func:`verify_checkpoint`:
manifest, checksums, fingerprint; shapes against the model): one that fails (a truncated or corrupted
file, a disk error) is reported and skipped in favour of the previous one (:func:`resume_point`).
A failed write (e.g. ENOSPC) raises :class:`CheckpointError` naming the path and leaves nothing behind.
Everything is safetensors or JSON: nothing is unpickled on resume.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

from puma import distributed
from puma.io import file_sha256, write_bytes_atomic, write_json_atomic

PREFIX = "step-"
MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or is incomplete, corrupt or from another run."""


@dataclass
class TrainState:
    """Where training is: ``step_in_epoch`` optimizer steps done in ``epoch``; ``global_step`` in total."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


def _barrier() -> None:
    if distributed.is_distributed():
        torch.distributed.barrier()


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` of the parameters being trained (contiguous CPU copies)."""
    return {n: p.detach().cpu().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def _optimizer_to_files(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"{idx}/{key}"] = val.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_files(optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, val in tensors.items():
        idx, key = name.split("/", 1)
        state.setdefault(int(idx), {})[key] = val
    for idx, scalars in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(scalars)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _rng_files() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    py_version, py_state, py_gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    meta = {"python": [py_version, list(py_state), py_gauss],
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    return tensors, meta


def _restore_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _write_json(path: Path, obj) -> None:
    write_json_atomic(path, obj)


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    write_bytes_atomic(path, save(tensors))


def _failed(final: Path, tmp: Path, e: OSError) -> CheckpointError:
    shutil.rmtree(tmp, ignore_errors=True)
    where = e.filename or tmp
    return CheckpointError(f"{final}: writing the checkpoint failed at {where}: {e.strerror or e} "
                           "(nothing was kept; the previous checkpoint is intact)")


def save_checkpoint(root: str | Path, model, optimizer, scheduler, state: TrainState, keep: int = 2,
                    fingerprint: str | None = None) -> Path:
    """Write checkpoint ``root/step-<global_step>`` atomically; keep the newest ``keep`` of them.

    ``optimizer=None`` leaves the optimizer state out (DeepSpeed ZeRO keeps it partitioned).
    ``fingerprint`` (the run's work-dir key) is recorded in the manifest and checked on resume.

    Called on every rank (each writes its own RNG state); rank 0 writes the rest and renames.
    """
    root = Path(root)
    final = root / f"{PREFIX}{state.global_step:06d}"
    tmp = root / f".tmp-{final.name}"
    r = distributed.rank()
    try:
        if r == 0:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        _barrier()
        rng_t, rng_meta = _rng_files()
        _write_tensors(tmp / f"rng-rank{r}.safetensors", rng_t)
        _write_json(tmp / f"rng-rank{r}.json", rng_meta)
        _barrier()
        if r == 0:
            weights = trainable_state(model)
            _write_tensors(tmp / "trainable.safetensors", weights)
            if optimizer is not None:
                opt_t, opt_meta = _optimizer_to_files(optimizer)
                _write_tensors(tmp / "optimizer.safetensors", opt_t)
                _write_json(tmp / "optimizer.json", opt_meta)
            _write_json(tmp / "scheduler.json", scheduler.state_dict())
            _write_json(tmp / "state.json", asdict(state))
            files = {f.name: {"sha256": file_sha256(f), "bytes": f.stat().st_size}
                     for f in sorted(tmp.iterdir()) if f.is_file() and not f.name.startswith(".")}
            _write_json(tmp / MANIFEST, {"step": state.global_step, "fingerprint": fingerprint, "files": files,
                                         "shapes": {n: list(t.shape) for n, t in weights.items()}})
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)  # atomic on one filesystem: the checkpoint appears complete or not at all
            for old in list_checkpoints(root)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise _failed(final, tmp, e) from e
    _barrier()
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temporary directories are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def verify_checkpoint(path: str | Path, fingerprint: str | None = None) -> dict:
    """The checkpoint's manifest, after checking every file's size and sha256 (and the fingerprint).

    Raises :class:`CheckpointError` naming the first bad file.
    """
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        raise CheckpointError(f"{path}/{MANIFEST}: missing (incomplete or pre-manifest checkpoint)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}/{MANIFEST}: unreadable ({e})") from None
    if fingerprint is not None and manifest.get("fingerprint") != fingerprint:
        raise CheckpointError(f"{path}: made by another run (fingerprint {manifest.get('fingerprint')} "
                              f"!= {fingerprint})")
    for name, want in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing")
        size = f.stat().st_size
        if size != want["bytes"]:
            raise CheckpointError(f"{f}: {size} bytes, the manifest says {want['bytes']} (truncated?)")
        if file_sha256(f) != want["sha256"]:
            raise CheckpointError(f"{f}: sha256 does not match the manifest (corrupt)")
    return manifest


def resume_point(root: str | Path, fingerprint: str | None = None,
                 log=print) -> tuple[Path | None, list[str]]:
    """The newest checkpoint under ``root`` that verifies, and a line per newer one that did not."""
    skipped: list[str] = []
    for path in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(path, fingerprint)
            return path, skipped
        except CheckpointError as e:
            skipped.append(str(e))
            log(f"checkpoint {path.name} skipped: {e}")
    return None, skipped


def load_checkpoint(path: str | Path, model, optimizer, scheduler, fingerprint: str | None = None) -> TrainState:
    """Restore a checkpoint written by :func:`save_checkpoint` into live objects; returns its TrainState.

    The checkpoint is verified first (:func:`verify_checkpoint`) and its shapes checked against the model.
    """
    path = Path(path)
    manifest = verify_checkpoint(path, fingerprint)
    try:
        weights = load_file(str(path / "trainable.safetensors"))
        params = dict(model.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
        unknown = [n for n in weights if n not in params]
        if missing or unknown:
            raise CheckpointError(f"{path}/trainable.safetensors: does not match the model "
                                  f"(missing {missing[:3]}, unknown {unknown[:3]})")
        bad = [n for n, t in weights.items()
               if list(t.shape) != list(params[n].shape) or manifest["shapes"].get(n) != list(t.shape)]
        if bad:
            raise CheckpointError(f"{path}/trainable.safetensors: {bad[0]} has shape {list(weights[bad[0]].shape)}, "
                                  f"the model {list(params[bad[0]].shape)}, the manifest {manifest['shapes'].get(bad[0])}")
        with torch.no_grad():
            for name, val in weights.items():
                params[name].copy_(val)
        if optimizer is not None:
            _optimizer_from_files(optimizer, load_file(str(path / "optimizer.safetensors")),
                                  json.loads((path / "optimizer.json").read_text()))
        scheduler.load_state_dict(json.loads((path / "scheduler.json").read_text()))
        r = distributed.rank()
        _restore_rng(load_file(str(path / f"rng-rank{r}.safetensors")),
                     json.loads((path / f"rng-rank{r}.json").read_text()))
        return TrainState(**json.loads((path / "state.json").read_text()))
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: incomplete checkpoint ({e.filename} missing)") from None
