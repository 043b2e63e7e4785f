"""Atomic, pickle-free training checkpoints: trainable weights, optimizer, scheduler, RNG, data position.

Layout of one checkpoint ``OUT/checkpoints/step-000120/``::

    trainable.safetensors   every parameter with requires_grad (LoRA adapter, trainable [RET] row)
    optimizer.safetensors   optimizer state tensors, keyed "<param index>/<name>"
    optimizer.json          param groups + non-tensor state
    scheduler.json          lr scheduler state_dict
    rng-rank<r>.safetensors torch CPU (+ CUDA) generator states of rank r
    rng-rank<r>.json        python and numpy generator states of rank r
    state.json              TrainState: epoch, step within the epoch, global step

The directory is written under a temporary name and renamed into place, so a run killed at any
moment (``kill -9``) leaves either the previous checkpoint or the new one, never a partial one.
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
from safetensors.torch import load_file, save_file

from puma import distributed

PREFIX = "step-"


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
    path.write_text(json.dumps(obj, indent=1))


def save_checkpoint(root: str | Path, model, optimizer, scheduler, state: TrainState, keep: int = 2) -> Path:
    """Write checkpoint ``root/step-<global_step>`` atomically; keep the newest ``keep`` of them.

    ``optimizer=None`` leaves the optimizer state out (DeepSpeed ZeRO keeps it partitioned).

    Called on every rank (each writes its own RNG state); rank 0 writes the rest and renames.
    """
    root = Path(root)
    final = root / f"{PREFIX}{state.global_step:06d}"
    tmp = root / f".tmp-{final.name}"
    if distributed.rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    r = distributed.rank()
    rng_t, rng_meta = _rng_files()
    save_file(rng_t, str(tmp / f"rng-rank{r}.safetensors"))
    _write_json(tmp / f"rng-rank{r}.json", rng_meta)
    _barrier()
    if r == 0:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        if optimizer is not None:
            opt_t, opt_meta = _optimizer_to_files(optimizer)
            save_file(opt_t, str(tmp / "optimizer.safetensors"))
            _write_json(tmp / "optimizer.json", opt_meta)
        _write_json(tmp / "scheduler.json", scheduler.state_dict())
        _write_json(tmp / "state.json", asdict(state))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)  # atomic on one filesystem: the checkpoint appears complete or not at all
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
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


def load_checkpoint(path: str | Path, model, optimizer, scheduler) -> TrainState:
    """Restore a checkpoint written by :func:`save_checkpoint` into live objects; returns its TrainState."""
    path = Path(path)
    try:
        weights = load_file(str(path / "trainable.safetensors"))
        params = dict(model.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
        unknown = [n for n in weights if n not in params]
        if missing or unknown:
            raise ValueError(f"{path}/trainable.safetensors: does not match the model "
                             f"(missing {missing[:3]}, unknown {unknown[:3]})")
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
        raise ValueError(f"{path}: incomplete checkpoint ({e.filename} missing)") from None
