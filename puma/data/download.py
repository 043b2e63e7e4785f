"""``puma data download mbeir|nli``: fetch M-BEIR and SimCSE's NLI csv from the Hugging Face hub.

* Selective: exactly the files the selected splits need, named by :mod:`puma.data.columns` (``test`` /
  ``val``: each column's query file, qrels and local pool, the split's global pool, and for val
  ``query/union_val``; ``train``: union_train and the global train pool - the per-dataset
  ``query/train`` files are not read by any stage and are not fetched; the instructions tsv always).
  A needed file the hub does not list is an error naming it.
  The ~170 GB image archive (``mbeir_images.tar.gz.part-*``) is fetched, joined and extracted only when
  ``images=True``.
* Resumable: the hub client continues interrupted files (``*.incomplete``); a file already verified
  (recorded in ``.puma_download.json`` with the hub's hash) is not fetched again.
* Verified: sizes always; contents against the hub's LFS sha256, or the git blob sha1 for small files.
  A mismatch deletes the file and raises.
* Offline: a clear :class:`DownloadError` instead of a stack of HTTP errors.

The hub is reached through a small client interface (:class:`HubClient`) so tests run offline
against a local stand-in; :class:`HFHubClient` is the real one (``huggingface_hub``, imported lazily).
"""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from puma.data.columns import (
    EVAL_SPLITS,
    INSTRUCTIONS_FILE,
    SPLITS,
    TABLE1_COLUMNS,
    UNION_TRAIN_QUERIES,
    UNION_VAL_QUERIES,
    global_pool_file,
)
from puma.io import atomic_write, file_digest, write_json_atomic, write_text_atomic

MBEIR_REPO = "TIGER-Lab/M-BEIR"
NLI_REPO = "princeton-nlp/datasets-for-simcse"
NLI_FILE = "nli_for_simcse.csv"
IMAGE_PARTS_PREFIX = "mbeir_images.tar.gz.part-"
IMAGE_ARCHIVE = "mbeir_images.tar.gz"
STATE_FILE = ".puma_download.json"
EXTRACTED_MARK = ".mbeir_images.extracted"


class DownloadError(RuntimeError):
    """A download failed (offline, missing file, checksum mismatch)."""


@dataclass(frozen=True)
class RemoteFile:
    path: str  # relative to the repository root
    size: int | None = None
    sha256: str | None = None  # LFS files
    git_sha1: str | None = None  # small (non-LFS) files: the git blob id


class HubClient(Protocol):
    def list_files(self, repo_id: str) -> list[RemoteFile]: ...

    def download(self, repo_id: str, path: str, local_dir: Path) -> Path: ...


class HFHubClient:
    """The real hub, through ``huggingface_hub`` (dataset repositories)."""

    def __init__(self, revision: str | None = None) -> None:
        self.revision = revision

    def _offline(self, e: Exception, repo_id: str) -> DownloadError:
        return DownloadError(
            f"cannot reach the Hugging Face hub for {repo_id} ({type(e).__name__}: {e}). This machine looks "
            "offline (or HF_HUB_OFFLINE=1 is set): run the download where the hub is reachable and copy the "
            "folder, or use the synthetic data (data.source: synth)")

    def list_files(self, repo_id: str) -> list[RemoteFile]:
        from huggingface_hub import HfApi
        from huggingface_hub.hf_api import RepoFile

        try:
            tree = list(HfApi().list_repo_tree(repo_id, recursive=True, repo_type="dataset", revision=self.revision))
        except Exception as e:  # httpx / OSError / OfflineModeIsEnabled: all mean "cannot list"
            raise self._offline(e, repo_id) from e
        return [RemoteFile(f.path, f.size, f.lfs.sha256 if f.lfs else None, None if f.lfs else f.blob_id)
                for f in tree if isinstance(f, RepoFile)]

    def download(self, repo_id: str, path: str, local_dir: Path) -> Path:
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(repo_id, path, repo_type="dataset", revision=self.revision,
                                        local_dir=local_dir))
        except Exception as e:
            raise self._offline(e, repo_id) from e


# ---------------------------------------------------------------- selection


def needed_files(splits: Iterable[str]) -> list[str]:
    """The M-BEIR paths the selected splits need (without images), in a stable order."""
    splits = set(splits)
    unknown = splits - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; use {', '.join(SPLITS)}")
    paths = {INSTRUCTIONS_FILE}
    for split in splits:
        paths.add(global_pool_file(split))
        if split in EVAL_SPLITS:
            paths.update(f for col in TABLE1_COLUMNS for f in col.files(split))
    if "train" in splits:
        paths.add(UNION_TRAIN_QUERIES)
    if "val" in splits:
        paths.add(UNION_VAL_QUERIES)
    return sorted(paths)


def select_mbeir(files: Iterable[RemoteFile], splits: Iterable[str], images: bool) -> list[RemoteFile]:
    """The M-BEIR files a run needs, in a stable order; raises if the hub lacks a needed one."""
    by_path = {f.path: f for f in files}
    wanted = needed_files(splits)
    missing = [p for p in wanted if p not in by_path]
    if missing:
        raise DownloadError(f"{MBEIR_REPO}: {len(missing)} needed file(s) not on the hub, e.g. "
                            f"{', '.join(missing[:3])}")
    chosen = [by_path[p] for p in wanted]
    if images:
        chosen += sorted((f for f in by_path.values() if f.path.startswith(IMAGE_PARTS_PREFIX)), key=lambda f: f.path)
    return chosen


# ---------------------------------------------------------------- verification


def verify_file(path: Path, remote: RemoteFile) -> str | None:
    """None if ``path`` matches the hub's size and hash, else the reason it does not."""
    if not path.is_file():
        return "missing"
    if remote.size is not None and path.stat().st_size != remote.size:
        return f"size {path.stat().st_size} != {remote.size} on the hub"
    if remote.sha256 and file_digest(path, "sha256") != remote.sha256:
        return "sha256 differs from the hub's"
    # git hashes "blob <size>\0" + content
    if remote.git_sha1 and file_digest(path, "sha1", prefix=f"blob {path.stat().st_size}\0".encode()) != remote.git_sha1:
        return "git blob sha1 differs from the hub's"
    return None


def _load_state(out: Path) -> dict:
    try:
        return json.loads((out / STATE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _save_state(out: Path, state: dict) -> None:
    write_json_atomic(out / STATE_FILE, state, sort_keys=True)


def fetch(client: HubClient, repo_id: str, files: list[RemoteFile], out: Path, log=print) -> list[Path]:
    """Download and verify ``files`` into ``out``; files verified before are skipped."""
    out.mkdir(parents=True, exist_ok=True)
    state = _load_state(out)
    done = []
    for i, remote in enumerate(files, 1):
        local = out / remote.path
        record = asdict(remote)
        if state.get(remote.path) == record and local.is_file() and (
                remote.size is None or local.stat().st_size == remote.size):
            done.append(local)
            continue
        log(f"[{i}/{len(files)}] {remote.path}" + (f" ({remote.size / 1e6:.1f} MB)" if remote.size else ""))
        got = client.download(repo_id, remote.path, out)
        problem = verify_file(got, remote)
        if problem:
            got.unlink(missing_ok=True)
            raise DownloadError(f"{remote.path}: {problem}; the file was removed, run the download again")
        state[remote.path] = record
        _save_state(out, state)  # after every file, so an interruption keeps the finished ones
        done.append(got)
    return done


# ---------------------------------------------------------------- images


def join_and_extract(out: Path, parts: list[Path], log=print) -> Path:
    """Concatenate the archive parts (in name order) and extract them safely under ``out``."""
    if (out / EXTRACTED_MARK).exists():
        return out
    if not parts:
        raise DownloadError(f"{out}: no {IMAGE_PARTS_PREFIX}* files to join")
    archive = out / IMAGE_ARCHIVE
    log(f"joining {len(parts)} parts into {archive}")

    def join(dst) -> None:
        for part in sorted(parts):
            with part.open("rb") as src:
                shutil.copyfileobj(src, dst, 1 << 24)

    atomic_write(archive, join)
    log(f"extracting {archive}")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            # "data" refuses absolute paths, '..', links out of the tree and device files.
            tar.extractall(out, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise DownloadError(f"{archive}: cannot extract ({e})") from e
    write_text_atomic(out / EXTRACTED_MARK, "ok\n")
    return out


# ---------------------------------------------------------------- entry points


def download_mbeir(out: str | Path, splits: Iterable[str] = ("test",), images: bool = False,
                   client: HubClient | None = None, log=print) -> Path:
    """Fetch the parts of M-BEIR a run needs into ``out`` (the dataset root)."""
    client = client or HFHubClient()
    out = Path(out)
    wanted = select_mbeir(client.list_files(MBEIR_REPO), splits, images)
    paths = fetch(client, MBEIR_REPO, wanted, out, log)
    if images:
        join_and_extract(out, [p for p in paths if p.name.startswith(IMAGE_PARTS_PREFIX)], log)
    return out


def download_nli(out_file: str | Path, client: HubClient | None = None, log=print) -> Path:
    """Fetch SimCSE's ``nli_for_simcse.csv`` to ``out_file``."""
    client = client or HFHubClient()
    out_file = Path(out_file)
    remote = [f for f in client.list_files(NLI_REPO) if f.path == NLI_FILE]
    if not remote:
        raise DownloadError(f"{NLI_REPO}: {NLI_FILE} is not on the hub")
    (got,) = fetch(client, NLI_REPO, remote, out_file.parent, log)
    if got.resolve() != out_file.resolve():
        # Copy (not move) so the verified download stays where the state file says it is.
        def copy(dst) -> None:
            with got.open("rb") as src:
                shutil.copyfileobj(src, dst, 1 << 24)

        atomic_write(out_file, copy)
    return out_file
